"""On a real GPU under matmul load, the agent's values agree with nvidia-smi read at once.

Run on the GPU machine: SENTINEL_GPU_OUT=out python -m pytest -m gpu tests/gpu/test_agent_gpu.py -v
Writes the comparison table to $SENTINEL_GPU_OUT/agent_vs_nvidia_smi.json when set.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.gpu

FIELDS = ("index,temperature.gpu,memory.used,memory.total,clocks.sm,clocks.mem,power.draw,"
          "power.limit,clocks_event_reasons.active")


def _need_gpu():
    smi = shutil.which("nvidia-smi")
    if smi is None:
        pytest.skip("no nvidia-smi: not a GPU machine")
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    return smi, torch


def _smi(smi: str) -> list[dict[str, float]]:
    out = subprocess.run([smi, f"--query-gpu={FIELDS}", "--format=csv,noheader,nounits"],
                         capture_output=True, text=True, timeout=30, check=True).stdout
    rows = []
    for line in out.strip().splitlines():
        f = [x.strip() for x in line.split(",")]
        rows.append({
            "index": int(f[0]), "temperature_c": float(f[1]),
            "memory_used_bytes": float(f[2]) * 2**20, "memory_total_bytes": float(f[3]) * 2**20,
            "sm_clock_hz": float(f[4]) * 1e6, "memory_clock_hz": float(f[5]) * 1e6,
            "power_w": float(f[6]), "power_limit_w": float(f[7]),
            "clock_event_reasons": int(f[8], 16),
        })
    return rows


def test_agent_matches_nvidia_smi_under_load():
    smi, torch = _need_gpu()
    from sentinel.gpu.nvml import Nvml

    stop = threading.Event()

    def load():
        a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
        b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
        while not stop.is_set():
            for _ in range(10):
                a @ b
            torch.cuda.synchronize()

    t = threading.Thread(target=load, daemon=True)
    t.start()
    nv = Nvml()
    nv.init()
    table = []
    try:
        time.sleep(8)  # reach steady clocks and power
        for _ in range(5):
            # nvidia-smi takes tens of ms; read NVML right before and after and use the
            # reading closest to it, so both describe the same moment.
            before = {d.index: nv.sample(d.index) for d in nv.devices()}
            ref = _smi(smi)
            after = {d.index: nv.sample(d.index) for d in nv.devices()}
            for row in ref:
                i = row["index"]
                for s in (before[i], after[i]):
                    table.append({"gpu": i, "nvidia_smi": row, "agent": {
                        k: getattr(s, k) for k in row if k != "index"}})
            time.sleep(0.5)
    finally:
        stop.set()
        t.join(30)
        nv.shutdown()
    out = os.environ.get("SENTINEL_GPU_OUT")
    if out:
        Path(out).mkdir(parents=True, exist_ok=True)
        Path(out, "agent_vs_nvidia_smi.json").write_text(json.dumps(table, indent=1))
    # Pair each nvidia-smi row with the closer of the two NVML readings, field by field.
    by_round: dict[tuple[int, int], list[dict]] = {}
    for k, entry in enumerate(table):
        by_round.setdefault((k // 2, entry["gpu"]), []).append(entry)
    failures = []
    for (_, gpu), pair in by_round.items():
        ref = pair[0]["nvidia_smi"]

        def best(field, pair=pair, ref=ref, gpu=gpu):
            vals = [p["agent"][field] for p in pair if p["agent"][field] is not None]
            assert vals, f"GPU {gpu}: agent has no {field}"
            return min(vals, key=lambda v: abs(v - ref[field]))

        checks = [
            ("temperature_c", abs(best("temperature_c") - ref["temperature_c"]) <= 2),
            ("memory_used_bytes",
             abs(best("memory_used_bytes") - ref["memory_used_bytes"])
             <= 0.01 * ref["memory_used_bytes"] + 2**20),  # smi rounds to MiB
            ("memory_total_bytes",
             abs(best("memory_total_bytes") - ref["memory_total_bytes"]) <= 0.01 * ref[
                 "memory_total_bytes"]),
            ("sm_clock_hz", abs(best("sm_clock_hz") - ref["sm_clock_hz"]) <= 0.05 * ref[
                "sm_clock_hz"]),
            ("memory_clock_hz", abs(best("memory_clock_hz") - ref["memory_clock_hz"]) <= 0.02
             * ref["memory_clock_hz"]),
            ("power_w", abs(best("power_w") - ref["power_w"]) <= max(0.10 * ref["power_w"], 15)),
            ("power_limit_w", abs(best("power_limit_w") - ref["power_limit_w"]) <= 1),
            ("clock_event_reasons",
             ref["clock_event_reasons"] in [p["agent"]["clock_event_reasons"] for p in pair]),
        ]
        failures += [(gpu, name, ref[name], [p["agent"][name] for p in pair])
                     for name, ok in checks if not ok]
    assert not failures, failures


def test_agent_once_serves_real_gpu_series(tmp_path):
    smi, _ = _need_gpu()
    import sys

    r = subprocess.run([sys.executable, "-m", "sentinel", "agent", "--once",
                        f"--socket={tmp_path / 's.sock'}"], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    assert 'sentinel_gpu_nvml_available{' in r.stdout and '} 1.0' in r.stdout
    assert "sentinel_gpu_up{" in r.stdout
    ups = [ln for ln in r.stdout.splitlines() if ln.startswith("sentinel_gpu_up{")]
    assert ups and all(ln.endswith(" 1.0") for ln in ups), ups
    out = os.environ.get("SENTINEL_GPU_OUT")
    if out:
        Path(out).mkdir(parents=True, exist_ok=True)
        Path(out, "agent_once_gpu.prom").write_text(r.stdout)
