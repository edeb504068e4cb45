"""`sentinel preflight` on a GPU machine: the command the lead runs for the record.

    sentinel preflight --only burnin,checkpoint --checkpoint-dir DIR --json

Without Slurm or Prometheus. The burn-in must test every visible GPU and pass, and the
checkpoint round trip must run on the GPU (save from CUDA tensors, load back onto
CUDA). With SENTINEL_PREFLIGHT_RECORD=FILE the JSON report is also written there.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA and an NVIDIA GPU"),
]


def test_preflight_burnin_and_checkpoint_on_the_gpu(tmp_path):
    r = subprocess.run([sys.executable, "-m", "sentinel", "preflight", "--only",
                        "burnin,checkpoint", "--checkpoint-dir", str(tmp_path / "ckpt"),
                        "--burnin-args", "--duration 10 --warmup 3", "--json"],
                       capture_output=True, text=True, timeout=600)
    print(r.stdout[-4000:], r.stderr[-2000:])
    record = os.environ.get("SENTINEL_PREFLIGHT_RECORD")
    if record:
        Path(record).write_text(r.stdout)
    rep = json.loads(r.stdout)
    checks = {c["name"]: c for c in rep["checks"]}
    assert r.returncode == 0 and rep["exit_code"] == 0, checks["burnin"]["summary"]
    burnin = checks["burnin"]
    assert burnin["status"] == "ok"
    assert len(burnin["evidence"]["gpus"]) == torch.cuda.device_count()
    assert {g["verdict"] for g in burnin["evidence"]["gpus"]} == {"OK"}
    ck = checks["checkpoint"]
    assert ck["status"] == "ok" and ck["evidence"]["device"] == "cuda"
    assert ck["evidence"]["resumed_step"] == 100
