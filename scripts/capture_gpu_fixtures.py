"""Capture NVML readings and nvidia-smi output from a real GPU into test fixtures.

Run on a machine with a GPU (the device tool). Writes into OUTDIR:
  nvml_<phase>.json      every NVML query the gpu collector makes, per device, raw
                         values or the NVML error name, for phase idle and load
  nvidia-smi-q-<phase>.xml  `nvidia-smi -q -x` at the same moment
  nvidia-smi-query-<phase>.csv  `nvidia-smi --query-gpu=...` at the same moment
  diskstats-1.txt / diskstats-2.txt  /proc/diskstats 1 s apart while reading a file
  env.txt                Python, torch, driver and package versions
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import threading
import time
from pathlib import Path

import pynvml as N

SMI_FIELDS = (
    "index,uuid,name,pci.bus_id,temperature.gpu,temperature.memory,clocks.sm,clocks.mem,"
    "clocks.max.sm,utilization.gpu,utilization.memory,memory.used,memory.total,power.draw,"
    "power.limit,clocks_event_reasons.active"
)


def q(fn, *args):
    """Call an NVML function and return a JSON-able value or {'error': name}."""
    try:
        v = fn(*args)
    except N.NVMLError as e:
        return {"error": type(e).__name__, "value": int(getattr(e, "value", -1))}
    except Exception as e:  # noqa: BLE001 - a capture script records everything
        return {"error": type(e).__name__, "message": str(e)}
    return to_json(v)


def to_json(v):
    if isinstance(v, bytes):
        return v.decode(errors="replace")
    if isinstance(v, (int, float, str)) or v is None:
        return v
    if isinstance(v, (list, tuple)):
        return [to_json(x) for x in v]
    if hasattr(v, "_fields_"):
        return {name: to_json(getattr(v, name)) for name, *_ in v._fields_}
    return repr(v)


def dump_device(h):
    d = {}
    d["name"] = q(N.nvmlDeviceGetName, h)
    d["uuid"] = q(N.nvmlDeviceGetUUID, h)
    d["pci_info"] = q(N.nvmlDeviceGetPciInfo_v3, h)
    d["index"] = q(N.nvmlDeviceGetIndex, h)
    d["temperature_gpu"] = q(N.nvmlDeviceGetTemperature, h, N.NVML_TEMPERATURE_GPU)
    fv = None
    try:
        vals = N.nvmlDeviceGetFieldValues(h, [N.NVML_FI_DEV_MEMORY_TEMP])
        fv = {"nvmlReturn": vals[0].nvmlReturn, "value_uiVal": vals[0].value.uiVal,
              "valueType": vals[0].valueType}
    except Exception as e:  # noqa: BLE001
        fv = {"error": type(e).__name__}
    d["field_memory_temp"] = fv
    thr = {}
    for name in ("SHUTDOWN", "SLOWDOWN", "MEM_MAX", "GPU_MAX"):
        c = getattr(N, f"NVML_TEMPERATURE_THRESHOLD_{name}", None)
        if c is not None:
            thr[name] = q(N.nvmlDeviceGetTemperatureThreshold, h, c)
    d["temperature_thresholds"] = thr
    d["clock_sm"] = q(N.nvmlDeviceGetClockInfo, h, N.NVML_CLOCK_SM)
    d["clock_mem"] = q(N.nvmlDeviceGetClockInfo, h, N.NVML_CLOCK_MEM)
    d["max_clock_sm"] = q(N.nvmlDeviceGetMaxClockInfo, h, N.NVML_CLOCK_SM)
    d["max_clock_mem"] = q(N.nvmlDeviceGetMaxClockInfo, h, N.NVML_CLOCK_MEM)
    d["utilization"] = q(N.nvmlDeviceGetUtilizationRates, h)
    d["memory_info"] = q(N.nvmlDeviceGetMemoryInfo, h)
    d["memory_info_v2"] = q(lambda x: N.nvmlDeviceGetMemoryInfo(x, version=N.nvmlMemory_v2), h)
    d["power_usage_mw"] = q(N.nvmlDeviceGetPowerUsage, h)
    d["enforced_power_limit_mw"] = q(N.nvmlDeviceGetEnforcedPowerLimit, h)
    d["total_energy_mj"] = q(N.nvmlDeviceGetTotalEnergyConsumption, h)
    fn = getattr(N, "nvmlDeviceGetCurrentClocksEventReasons", None) or N.nvmlDeviceGetCurrentClocksThrottleReasons
    d["clocks_event_reasons"] = q(fn, h)
    fn2 = getattr(N, "nvmlDeviceGetSupportedClocksEventReasons", None) or N.nvmlDeviceGetSupportedClocksThrottleReasons
    d["supported_clocks_event_reasons"] = q(fn2, h)
    viol = {}
    for name in ("POWER", "THERMAL", "SYNC_BOOST", "BOARD_LIMIT", "LOW_UTILIZATION", "RELIABILITY",
                 "TOTAL_APP_CLOCKS", "TOTAL_BASE_CLOCKS"):
        c = getattr(N, f"NVML_PERF_POLICY_{name}", None)
        if c is not None:
            viol[name] = q(N.nvmlDeviceGetViolationStatus, h, c)
    d["violation_status"] = viol
    ecc = {}
    for et_name, et in (("corrected", N.NVML_MEMORY_ERROR_TYPE_CORRECTED),
                        ("uncorrected", N.NVML_MEMORY_ERROR_TYPE_UNCORRECTED)):
        for ct_name, ct in (("volatile", N.NVML_VOLATILE_ECC), ("aggregate", N.NVML_AGGREGATE_ECC)):
            ecc[f"{et_name}_{ct_name}"] = q(N.nvmlDeviceGetTotalEccErrors, h, et, ct)
    d["ecc_total"] = ecc
    d["ecc_mode"] = q(N.nvmlDeviceGetEccMode, h)
    d["remapped_rows"] = q(N.nvmlDeviceGetRemappedRows, h)
    d["pcie_replay_counter"] = q(N.nvmlDeviceGetPcieReplayCounter, h)
    d["performance_state"] = q(N.nvmlDeviceGetPerformanceState, h)
    d["cuda_compute_capability"] = q(N.nvmlDeviceGetCudaComputeCapability, h)
    d["serial"] = q(N.nvmlDeviceGetSerial, h)
    d["minor_number"] = q(N.nvmlDeviceGetMinorNumber, h)
    return d


def dump_all():
    out = {"captured_at": time.time(), "driver_version": q(N.nvmlSystemGetDriverVersion),
           "nvml_version": q(N.nvmlSystemGetNVMLVersion),
           "cuda_driver_version": q(N.nvmlSystemGetCudaDriverVersion_v2),
           "device_count": N.nvmlDeviceGetCount(), "devices": []}
    for i in range(out["device_count"]):
        out["devices"].append(dump_device(N.nvmlDeviceGetHandleByIndex(i)))
    return out


def run(argv, **kw):
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, **kw).stdout


def snapshot(outdir: Path, phase: str):
    (outdir / f"nvml_{phase}.json").write_text(json.dumps(dump_all(), indent=1))
    (outdir / f"nvidia-smi-q-{phase}.xml").write_text(run(["nvidia-smi", "-q", "-x"]))
    (outdir / f"nvidia-smi-query-{phase}.csv").write_text(
        run(["nvidia-smi", f"--query-gpu={SMI_FIELDS}", "--format=csv"]))


def load(stop: threading.Event):
    import torch

    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    while not stop.is_set():
        for _ in range(20):
            a @ b
        torch.cuda.synchronize()


def main():
    outdir = Path(sys.argv[1])
    outdir.mkdir(parents=True, exist_ok=True)
    N.nvmlInit()
    snapshot(outdir, "idle")
    stop = threading.Event()
    t = threading.Thread(target=load, args=(stop,), daemon=True)
    t.start()
    time.sleep(8)
    snapshot(outdir, "load")
    stop.set()
    t.join()
    # /proc/diskstats pair around a real read.
    p = outdir / "diskstats-1.txt"
    p.write_text(Path("/proc/diskstats").read_text())
    blob = Path("/tmp/sentinel-read-test")
    blob.write_bytes(os.urandom(64 << 20))
    os.system("sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null")  # noqa: S605
    blob.read_bytes()
    time.sleep(1)
    (outdir / "diskstats-2.txt").write_text(Path("/proc/diskstats").read_text())
    import torch

    env = [f"python {platform.python_version()} {sys.executable}", f"torch {torch.__version__}",
           f"cuda {torch.version.cuda}", f"device {torch.cuda.get_device_name(0)}",
           run([sys.executable, "-m", "pip", "list"])]
    (outdir / "env.txt").write_text("\n".join(env))
    print("captured into", outdir)


if __name__ == "__main__":
    main()
