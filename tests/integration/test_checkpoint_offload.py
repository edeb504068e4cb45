"""Checkpoint offload against moto's standalone S3 server (a real HTTP server)."""

import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from sentinel.train.checkpoint import CheckpointError, CheckpointStore
from sentinel.train.offload import Offloader, S3Remote
from tests.support.s3 import moto_server, read_only_server

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
MIB = 1 << 20


def big(value: float, mib: int = 12) -> dict:
    return {"w": torch.full((mib * MIB // 4,), value), "step": int(value)}


@pytest.fixture
def s3(monkeypatch):
    with moto_server() as srv:
        for k, v in srv.env().items():
            monkeypatch.setenv(k, v)
        yield srv


def test_uploads_verify_then_local_copies_go_and_the_bucket_restores_them(s3, tmp_path):
    remote = S3Remote("s3://ckpt-bucket/run-1", endpoint_url=s3.endpoint, part_bytes=5 * MIB,
                      create_bucket=True)
    store = CheckpointStore(tmp_path, keep=1)
    off = Offloader(store, remote)
    try:
        for s in (10, 20, 30):
            store.save(s, big(float(s)))
            off.poke()
            assert off.wait_idle(60), off.last_error
    finally:
        off.close(30)
    entries = store.checkpoints()
    assert [(c.step, c.uploaded, c.local) for c in entries] == [
        (10, True, False), (20, True, False), (30, True, True)]
    assert sorted(p.name for p in tmp_path.glob("step_*")) == ["step_000000030.pt"]
    head = s3.client().head_object(Bucket="ckpt-bucket", Key="run-1/step_000000010.pt")
    assert head["ETag"].strip('"').endswith("-3")  # 12 MiB + pickle in 5 MiB parts
    assert head["Metadata"]["sha256"] == entries[0].sha256
    # The local copy is gone: a reader with the remote verifies and loads from the bucket.
    reader = CheckpointStore(tmp_path, writer=False, remote=remote)
    assert reader.verify(10)
    assert torch.equal(reader.load(20)["w"], big(20.0)["w"])
    # Without local copies of any, latest_verified still finds the newest in the bucket.
    (tmp_path / "step_000000030.pt").unlink()
    assert reader.latest_verified().step == 20
    # An object changed in the bucket is refused, naming it.
    s3.client().put_object(Bucket="ckpt-bucket", Key="run-1/step_000000020.pt",
                           Body=b"x" * entries[1].size, Metadata={"sha256": entries[1].sha256})
    with pytest.raises(CheckpointError, match=r"step_000000020.pt: downloaded .* \(refused\)"):
        reader.load(20)
    without = CheckpointStore(tmp_path, writer=False)
    with pytest.raises(CheckpointError, match="only in object storage"):
        without.load(10)


def test_a_bucket_that_refuses_writes_keeps_every_local_copy(tmp_path, monkeypatch, caplog):
    caplog.set_level(logging.DEBUG, logger="sentinel")
    with read_only_server("ro-bucket") as srv:
        for k, v in srv.env().items():
            monkeypatch.setenv(k, v)
        remote = S3Remote("s3://ro-bucket/run", endpoint_url=srv.endpoint, part_bytes=5 * MIB)
        store = CheckpointStore(tmp_path, keep=1)
        off = Offloader(store, remote, retry_s=0.2)
        try:
            for s in (10, 20, 30):
                store.save(s, big(float(s), 1))
                off.poke()
            deadline = time.monotonic() + 30
            while off.last_error is None:
                assert time.monotonic() < deadline
                time.sleep(0.05)
        finally:
            off.close(30)
        assert "AccessDenied" in off.last_error and "s3://ro-bucket/run" in off.last_error
        assert [(c.step, c.uploaded, c.local) for c in store.checkpoints()] == [
            (10, False, True), (20, False, True), (30, False, True)]
        assert len(list(tmp_path.glob("step_*"))) == 3
        assert srv.secret_key not in caplog.text and srv.access_key not in caplog.text


CHILD = r"""
import sys, time
from sentinel.train.checkpoint import CheckpointStore
from sentinel.train.offload import Offloader, S3Remote
import torch

remote = S3Remote("s3://crash-bucket/r", endpoint_url=sys.argv[2], part_bytes=5 << 20)
real = remote.client.upload_part
def slow(**kw):
    time.sleep(1.0)
    return real(**kw)
remote.client.upload_part = slow
store = CheckpointStore(sys.argv[1], keep=1)
store.save(10, {"w": torch.ones(5 << 20)})  # 20 MiB: 4 parts
Offloader(store, remote)
print("uploading", flush=True)
time.sleep(600)
"""


def test_kill_9_during_an_upload_then_the_next_start_uploads_it_again(s3, tmp_path):
    s3.client().create_bucket(Bucket="crash-bucket")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    p = subprocess.Popen([sys.executable, "-c", CHILD, str(tmp_path), s3.endpoint], env=env,
                         stdout=subprocess.PIPE, text=True)
    c = s3.client()
    try:
        assert p.stdout.readline().strip() == "uploading"
        deadline = time.monotonic() + 60
        while True:
            ups = c.list_multipart_uploads(Bucket="crash-bucket").get("Uploads", [])
            if ups and c.list_parts(Bucket="crash-bucket", Key=ups[0]["Key"],
                                    UploadId=ups[0]["UploadId"]).get("Parts"):
                break
            assert time.monotonic() < deadline
            time.sleep(0.05)
        os.kill(p.pid, signal.SIGKILL)
    finally:
        p.kill()
        p.wait(10)
    store = CheckpointStore(tmp_path, keep=1)
    (entry,) = store.checkpoints()
    assert (entry.uploaded, entry.local) == (False, True)
    with pytest.raises(c.exceptions.ClientError):
        c.head_object(Bucket="crash-bucket", Key="r/step_000000010.pt")
    remote = S3Remote("s3://crash-bucket/r", endpoint_url=s3.endpoint, part_bytes=5 * MIB)
    off = Offloader(store, remote)
    try:
        assert off.wait_idle(60), off.last_error
    finally:
        off.close(30)
    assert store.checkpoints()[0].uploaded
    assert c.list_multipart_uploads(Bucket="crash-bucket").get("Uploads", []) == []
    remote.check(entry.file, entry.size, entry.sha256)


def test_the_example_saves_in_the_background_and_offloads(s3, tmp_path):
    import json

    s3.client().create_bucket(Bucket="example-bucket")
    run_dir = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1",
           "SENTINEL_CHECKPOINT_URL": "s3://example-bucket/gpt",
           "SENTINEL_CHECKPOINT_ENDPOINT": s3.endpoint}
    r = subprocess.run([sys.executable, "-m", "sentinel.examples.gpt", "--config", "tiny",
                        "--max-steps", "50", "--checkpoint-every", "20", "--keep", "1",
                        "--eval-every", "1000", "--run-dir", str(run_dir), "--threads", "1",
                        "--checkpoint-ram-gb", "0.5"],
                       env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    log = [json.loads(x) for x in (run_dir / "log" / "rank0.jsonl").read_text().splitlines()]
    assert [e["step"] for e in log if e["event"] == "checkpoint_written"] == [0, 20, 40]
    store = CheckpointStore(run_dir / "checkpoints", writer=False)
    assert [(c.step, c.uploaded, c.local) for c in store.checkpoints()] == [
        (0, True, False), (20, True, False), (40, True, True)]
    keys = [o["Key"] for o in s3.client().list_objects_v2(Bucket="example-bucket")["Contents"]]
    assert keys == ["gpt/step_000000000.pt", "gpt/step_000000020.pt", "gpt/step_000000040.pt"]
