"""scripts/update_burnin_floors.py turns the bench's figures into floors the burn-in loads."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

from sentinel.burnin.baselines import SHIPPED, load_baselines, load_link_floors

ROOT = Path(__file__).resolve().parents[3]
SCRIPT = ROOT / "scripts" / "update_burnin_floors.py"

MEASURED = {
    "measured_at": "2026-12-01",
    "env": {"gpus": 2, "names": ["NVIDIA H200", "NVIDIA H200"], "driver": "580.159.04",
            "torch": "2.11.0+cu130", "cuda": "13.0", "nccl": "2.27.3",
            "nccl_env": {"NCCL_NVLS_ENABLE": "0"}, "dry_run": False},
    "bf16_tflops": {"NVIDIA H200": 661.9},
    "interconnect": {"NVIDIA H200": {"nvlink": {"copy_gbps": 372.4,
                                                "allreduce_busbw_gbps": {"2": 351.0}}}},
}


def run(tmp_path, measured, *extra):
    table = tmp_path / "baselines.json"
    if not table.exists():
        shutil.copy(SHIPPED, table)
    m = tmp_path / "floors_measured.json"
    m.write_text(json.dumps(measured))
    r = subprocess.run([sys.executable, str(SCRIPT), str(m), "--baselines", str(table), *extra],
                       capture_output=True, text=True, timeout=60)
    return r, table


def test_measured_figures_become_floors_with_their_source(tmp_path):
    r, table = run(tmp_path, MEASURED)
    assert r.returncode == 0, r.stderr
    assert load_baselines(table)["NVIDIA H200"] == 616.0  # 661.9 x 0.93
    assert load_baselines(table)["NVIDIA H100 80GB HBM3"] == 630.0  # untouched
    f = load_link_floors(table)["NVIDIA H200"]["nvlink"]
    assert f.copy_gbps == 335.0 and f.allreduce_busbw_gbps == {2: 316.0}
    assert f.source.startswith("measured 2026-12-01 on 2x NVIDIA H200 (driver 580.159.04, "
                               "torch 2.11.0+cu130, CUDA 13.0, NCCL 2.27.3, NCCL_NVLS_ENABLE=0)")
    data = json.loads(table.read_text())
    assert "661.9 TFLOPS mean" in data["bf16"]["NVIDIA H200"]["source"]
    # The 8-GPU H200 entry, still to be measured, is kept as it was.
    assert data["interconnect"]["NVIDIA H200"]["nvlink"]["allreduce_busbw_gbps"]["8"] is None


def test_check_writes_nothing(tmp_path):
    r, table = run(tmp_path, {"floors_measured": MEASURED}, "--check")
    assert r.returncode == 0 and "bf16 NVIDIA H200: 616 TFLOPS" in r.stdout
    assert table.read_text() == SHIPPED.read_text()


def test_dry_run_figures_and_unknown_links_are_refused(tmp_path):
    r, table = run(tmp_path, {**MEASURED, "env": {**MEASURED["env"], "dry_run": True}})
    assert r.returncode == 2 and "--cpu-dry-run" in r.stderr
    r, table = run(tmp_path, {**MEASURED, "interconnect": {"NVIDIA H200": {"unknown": {
        "copy_gbps": 2.0}}}})
    assert r.returncode == 2 and "links of unknown kind" in r.stderr
    assert table.read_text() == SHIPPED.read_text()
