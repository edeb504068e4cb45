"""Time each NVML call the gpu collector makes, on a real GPU, to find the slow ones.

Prints a table (median microseconds per call, over --repeat calls) and writes JSON to
--out/nvml_calls.json. Run on the GPU machine: python bench/nvml_calls.py --out out
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import pynvml as N


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="out")
    ap.add_argument("--repeat", type=int, default=30)
    args = ap.parse_args()
    N.nvmlInit()
    h = N.nvmlDeviceGetHandleByIndex(0)
    calls = {
        "temperature": lambda: N.nvmlDeviceGetTemperature(h, N.NVML_TEMPERATURE_GPU),
        "field_memory_temp": lambda: N.nvmlDeviceGetFieldValues(h, [N.NVML_FI_DEV_MEMORY_TEMP]),
        "threshold_slowdown": lambda: N.nvmlDeviceGetTemperatureThreshold(
            h, N.NVML_TEMPERATURE_THRESHOLD_SLOWDOWN),
        "clock_sm": lambda: N.nvmlDeviceGetClockInfo(h, N.NVML_CLOCK_SM),
        "max_clock_sm": lambda: N.nvmlDeviceGetMaxClockInfo(h, N.NVML_CLOCK_SM),
        "utilization": lambda: N.nvmlDeviceGetUtilizationRates(h),
        "memory_v1": lambda: N.nvmlDeviceGetMemoryInfo(h),
        "memory_v2": lambda: N.nvmlDeviceGetMemoryInfo(h, version=N.nvmlMemory_v2),
        "power": lambda: N.nvmlDeviceGetPowerUsage(h),
        "power_limit": lambda: N.nvmlDeviceGetEnforcedPowerLimit(h),
        "energy": lambda: N.nvmlDeviceGetTotalEnergyConsumption(h),
        "clock_event_reasons": lambda: N.nvmlDeviceGetCurrentClocksEventReasons(h),
        "violation_power": lambda: N.nvmlDeviceGetViolationStatus(h, N.NVML_PERF_POLICY_POWER),
        "ecc_total": lambda: N.nvmlDeviceGetTotalEccErrors(
            h, N.NVML_MEMORY_ERROR_TYPE_UNCORRECTED, N.NVML_VOLATILE_ECC),
        "remapped_rows": lambda: N.nvmlDeviceGetRemappedRows(h),
        "pcie_replay": lambda: N.nvmlDeviceGetPcieReplayCounter(h),
        "uuid": lambda: N.nvmlDeviceGetUUID(h),
        "field_values_batch": lambda: N.nvmlDeviceGetFieldValues(h, [
            N.NVML_FI_DEV_MEMORY_TEMP, N.NVML_FI_DEV_POWER_INSTANT,
            N.NVML_FI_DEV_TOTAL_ENERGY_CONSUMPTION, N.NVML_FI_DEV_PCIE_REPLAY_COUNTER,
            N.NVML_FI_DEV_ECC_SBE_VOL_TOTAL, N.NVML_FI_DEV_ECC_DBE_VOL_TOTAL,
            N.NVML_FI_DEV_ECC_SBE_AGG_TOTAL, N.NVML_FI_DEV_ECC_DBE_AGG_TOTAL,
            N.NVML_FI_DEV_REMAPPED_COR, N.NVML_FI_DEV_REMAPPED_UNC,
            N.NVML_FI_DEV_REMAPPED_PENDING, N.NVML_FI_DEV_REMAPPED_FAILURE]),
    }
    res = {}
    for name, fn in calls.items():
        ts = []
        for _ in range(args.repeat):
            t = time.perf_counter()
            try:
                fn()
            except N.NVMLError as e:
                res[name + "_error"] = type(e).__name__
            ts.append((time.perf_counter() - t) * 1e6)
        res[name] = statistics.median(ts)
        print(f"{name:24s} {res[name]:10.1f} us")
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "nvml_calls.json").write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
