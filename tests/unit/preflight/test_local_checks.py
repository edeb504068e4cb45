"""The checks that need no service: burn-in, checkpoint round trip, storage headroom.

The burn-in runs for real (no GPU here: it must say it needs CUDA and be skipped) and
is read from the H200 captures through the replay; the checkpoint round trip uses a
real CheckpointStore in a directory beside a real job store, which it must not touch;
a full disk is a real tiny tmpfs.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sentinel.burnin.replay import RECORDINGS
from sentinel.cli import main
from sentinel.preflight.checks import burnin, checkpoint, storage
from sentinel.preflight.checks.base import Context
from sentinel.preflight.config import load_setup
from sentinel.train.checkpoint import CheckpointStore
from tests.support.strictjson import strict_loads
from tests.support.tmpfs import tiny_tmpfs

ROOT = Path(__file__).resolve().parents[3]
REPLAY = [sys.executable, "-m", "sentinel.burnin.replay"]
FIX = RECORDINGS


def ctx_for(**overrides) -> Context:
    setup = load_setup(None, overrides)
    assert setup.valid, setup.errors
    return Context(setup=setup)


def snapshot(d: Path) -> dict[str, str]:
    """Every file under ``d`` (hidden ones too) and its sha256."""
    return {str(p.relative_to(d)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(d.rglob("*")) if p.is_file()}


def job_store(d: Path, steps=(100, 200), nbytes=1 << 16) -> CheckpointStore:
    store = CheckpointStore(d, keep=3)
    for s in steps:
        store.save(s, {"w": torch.full((nbytes // 4,), float(s))})
    return store


# -- burn-in -----------------------------------------------------------------------------

def test_burnin_without_a_gpu_is_skipped_with_its_reason(tmp_path):
    res = burnin.check(Context(setup=load_setup(None), dev=tmp_path))
    assert res.status == "skipped"
    assert "no GPU on this host" in res.summary and "needs CUDA" in res.summary


def test_burnin_that_cannot_run_on_a_host_with_nvidia_devices_is_a_problem(tmp_path):
    (tmp_path / "nvidiactl").touch()  # this host "has" the driver's device node
    ctx = Context(setup=load_setup(None), dev=tmp_path)
    # What `sentinel burnin` does when CUDA is broken: exit 2, a message, no report.
    ctx.burnin_argv = [sys.executable, "-c", "import sys; sys.stderr.write('sentinel burnin: "
                       "cannot run: CUDA driver too old\\n'); sys.exit(2)"]
    res = burnin.check(ctx)
    assert res.status == "problem"
    assert "cannot run although this host has NVIDIA devices" in res.summary
    assert "CUDA driver too old" in res.summary


@pytest.mark.parametrize(("verdict", "status", "words"), [
    ("pass", "ok", ["1 GPU(s) passed", "NVIDIA H200", "median TFLOPS"]),
    ("fail", "problem", ["GPU 0 LOW_FLOPS"]),
])
def test_burnin_reads_the_report_of_a_real_h200(verdict, status, words):
    ctx = ctx_for()
    ctx.burnin_argv = [*REPLAY, str(FIX / f"h200-{verdict}.report.json")]
    res = burnin.check(ctx)
    assert res.status == status, res.summary
    for w in words:
        assert w in res.summary
    [gpu] = res.evidence["gpus"]
    assert gpu["uuid"] == "GPU-b8165666-1092-95bb-2e75-a9fdb498f280"
    assert gpu["verdict"] == ("OK" if verdict == "pass" else "LOW_FLOPS")


def test_burnin_output_without_a_report_is_a_problem(tmp_path):
    ctx = ctx_for()
    ctx.burnin_argv = [sys.executable, "-c", "print('{\"event\": \"start\"}'); "
                       "import sys; sys.exit(1)"]
    res = burnin.check(ctx)
    assert res.status == "problem" and "no burn-in report (exit code 1)" in res.summary


def test_burnin_that_hangs_is_cut_at_its_timeout():
    ctx = ctx_for()
    ctx.setup.preflight.burnin_timeout_seconds = 1.0
    ctx.burnin_argv = [sys.executable, "-c", "import time; time.sleep(30)"]
    res = burnin.check(ctx)
    assert res.status == "problem" and "no answer within 1 s" in res.summary


# -- checkpoint round trip ---------------------------------------------------------------

def test_round_trip_leaves_the_jobs_store_as_it_was(tmp_path):
    ck = tmp_path / "ckpt"
    job_store(ck)
    before = snapshot(ck)
    ctx = ctx_for(checkpoint_dir=str(ck), roundtrip_bytes=1 << 20)
    res = checkpoint.check(ctx)
    assert res.status == "ok", res.summary
    ev = res.evidence
    assert ev["bytes"] > 1 << 20 and ev["resumed_step"] == checkpoint.STEP
    assert ev["scratch"].startswith(str(ck / checkpoint.SCRATCH_PREFIX))
    assert "resumed equal on cpu" in res.summary
    # The job's newest checkpoint (its resume point) was hashed and verifies.
    assert ev["job_newest_step"] == 200 and "(step 200" in res.summary
    # Nothing of the job's changed and nothing was left behind.
    assert snapshot(ck) == before
    assert [c.step for c in CheckpointStore(ck, writer=False).checkpoints()] == [100, 200]


def test_a_corrupt_newest_checkpoint_of_the_job_is_a_problem(tmp_path):
    ck = tmp_path / "ckpt"
    store = job_store(ck)
    f = ck / store.info(200).file
    data = bytearray(f.read_bytes())
    data[-10] ^= 0xFF
    f.write_bytes(bytes(data))
    res = checkpoint.check(ctx_for(checkpoint_dir=str(ck), roundtrip_bytes=4096))
    assert res.status == "problem"
    assert "newest checkpoint does not verify" in res.summary
    assert "it would resume from step 100" in res.summary


def test_round_trip_on_a_full_disk_is_a_problem(tmp_path):
    with tiny_tmpfs(tmp_path / "small", "1m") as small:
        res = checkpoint.check(ctx_for(checkpoint_dir=str(small / "ck"),
                                       roundtrip_bytes=4 << 20))
        # The store says "disk full at ..."; the summary gives the room left.
        assert res.status == "problem" and "the round trip failed" in res.summary
        assert res.evidence["free_bytes"] < 4 << 20 and " free there)" in res.summary
        assert list((small / "ck").iterdir()) == []  # the scratch store is gone


def test_no_checkpoint_dir_is_skipped_naming_what_to_set():
    res = checkpoint.check(ctx_for())
    assert res.status == "skipped" and "--checkpoint-dir" in res.summary


# -- storage headroom --------------------------------------------------------------------

def test_storage_measures_the_jobs_newest_checkpoint(tmp_path):
    ck = tmp_path / "ckpt"
    job_store(ck, nbytes=1 << 20)
    res = storage.check(ctx_for(checkpoint_dir=str(ck)))
    assert res.status == "ok", res.summary
    ev = res.evidence
    assert ev["size_from"] == "the newest checkpoint in the store"
    assert ev["checkpoint_bytes"] == CheckpointStore(ck, writer=False).checkpoints()[-1].size
    assert ev["peak_bytes"] == 4 * ev["checkpoint_bytes"]


def test_storage_on_a_small_disk_is_a_problem(tmp_path):
    with tiny_tmpfs(tmp_path / "small", "8m") as small:
        ctx = ctx_for(checkpoint_dir=str(small / "ck"), checkpoint_bytes=4 << 20)
        res = storage.check(ctx)
        # 4 x 4 MiB at the peak of a save against 8 MiB free.
        assert res.status == "problem", res.summary
        assert "not enough room" in res.summary and "short by 8.0 MiB" in res.summary
        # keep 1: 2 x 4 MiB fits.
        ctx.setup.preflight.checkpoint_keep = 1
        ctx.setup.preflight.checkpoint_bytes = 3 << 20
        assert storage.check(ctx).status == "ok"


def test_checkpoints_the_store_holds_count_as_room_pinned_ones_do_not(tmp_path):
    with tiny_tmpfs(tmp_path / "small", "3m") as small:
        ck = small / "ck"
        store = job_store(ck, steps=(1, 2), nbytes=900 << 10)
        size = store.checkpoints()[-1].size
        ctx = ctx_for(checkpoint_dir=str(ck), checkpoint_keep=2)
        # Peak 3 x size; the 2 held are room, and ~1.2 MiB is free: it fits.
        res = storage.check(ctx)
        assert res.status == "ok", res.summary
        assert res.evidence["store_bytes"] == 2 * size
        store.pin(1, "i-1")
        res = storage.check(ctx)
        assert res.status == "problem" and res.evidence["pinned_bytes"] == size


def test_storage_without_a_known_size_is_a_problem(tmp_path):
    res = storage.check(ctx_for(checkpoint_dir=str(tmp_path)))
    assert res.status == "problem" and "--checkpoint-bytes" in res.summary


# -- the command -------------------------------------------------------------------------

def test_gpu_machine_command_needs_no_cluster_service_or_library(tmp_path):
    """What the lead runs on the GPU machine, here without a GPU.

    No Slurm, no Prometheus, and the GPU image's libraries: torch, PyYAML, requests,
    prometheus-client, but no slack-sdk, prometheus-api-client or grafana libraries.
    """
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(
        "import sys\nfor m in ('slack_sdk', 'prometheus_api_client', 'grafana_client', "
        "'grafana_foundation_sdk'):\n    sys.modules[m] = None  # as if not installed\n")
    env = {**os.environ, "PYTHONPATH": f"{site}:{ROOT}"}
    r = subprocess.run([sys.executable, "-m", "sentinel", "preflight", "--only",
                        "config,burnin,checkpoint", "--checkpoint-dir", str(tmp_path / "ck"),
                        "--burnin-args", "--duration 1", "--json"], capture_output=True,
                       text=True, timeout=300, env=env)
    rep = strict_loads(r.stdout)
    by = {c["name"]: c for c in rep["checks"]}
    assert r.returncode == 0 and rep["exit_code"] == 0 and rep["ok"] is True, r.stderr[-2000:]
    assert by["burnin"]["status"] == "skipped"  # no GPU here; on the GPU machine: ok
    assert by["checkpoint"]["status"] == "ok"
    assert by["config"]["status"] == "ok"
    # dashboards: loads without grafana-client (its config is apart from the push code).
    assert "not checked on this host" not in by["config"]["summary"]
    assert {by[n]["summary"] for n in ("requeue", "prometheus", "reporter", "spare")} == {
        "not selected (--only config,burnin,checkpoint)"}
    assert rep["counts"] == {"ok": 2, "problem": 0, "skipped": 6}
    for c in rep["checks"]:
        assert set(c) == {"name", "title", "status", "summary", "seconds", "evidence"}
        assert c["seconds"] >= 0


def test_text_report_shows_the_evidence_of_problems(tmp_path, capsys):
    rc = main(["preflight", "--only", "storage", "--checkpoint-dir", str(tmp_path)])
    out = capsys.readouterr().out
    assert rc == 1
    assert "PROBLEM  storage" in out and "directory: " + str(tmp_path) in out
    assert out.rstrip().endswith("exit 1") and "1 problem(s): storage" in out
