import io
import json
import logging
import os
import random
import stat
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import torch

import sentinel.train.checkpoint as ck
from sentinel.train.checkpoint import (
    CheckpointError,
    CheckpointStore,
    restore_training_state,
    training_state,
)
from sentinel.train.data import DataPosition
from tests.support.checkpoints import record_by_hand


def _state(v: float) -> dict:
    return {"w": torch.full((64,), v), "note": f"v={v}"}


def _corrupt(path, offset=200):
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def test_save_writes_manifest_with_size_and_sha256(tmp_path):
    store = CheckpointStore(tmp_path)
    info = store.save(100, _state(1.0))
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    (entry,) = manifest["checkpoints"]
    f = tmp_path / entry["file"]
    import hashlib

    assert entry["step"] == 100 and entry["size"] == f.stat().st_size
    assert entry["sha256"] == hashlib.sha256(f.read_bytes()).hexdigest() == info.sha256
    assert store.verify(100)
    assert torch.equal(store.load(100)["w"], torch.full((64,), 1.0))
    assert not [p for p in tmp_path.iterdir() if "tmp" in p.name]


def test_corrupted_and_truncated_checkpoints_are_refused_and_previous_used(tmp_path, caplog):
    store = CheckpointStore(tmp_path, keep=5)
    for s in (10, 20, 30):
        store.save(s, _state(float(s)))
    _corrupt(tmp_path / "step_000000030.pt")
    f20 = tmp_path / "step_000000020.pt"
    f20.write_bytes(f20.read_bytes()[:-100])
    caplog.set_level(logging.WARNING)
    assert not store.verify(30) and not store.verify(20)
    assert store.latest_verified().step == 10
    assert "step 30 does not verify" in caplog.text and "(corrupted)" in caplog.text
    assert "manifest says" in caplog.text and "truncated" in caplog.text
    with pytest.raises(CheckpointError, match=r"checkpoint step 30 refused: .*sha256"):
        store.load(30)
    with pytest.raises(CheckpointError, match=r"step 20 refused: .* bytes, the manifest says"):
        store.load(20)
    info, state = store.load_latest()
    assert info.step == 10 and torch.equal(state["w"], torch.full((64,), 10.0))
    assert store.latest_verified(before_step=25).step == 10
    with pytest.raises(CheckpointError,
                       match=r"no checkpoint for step 15 \(checkpoints in .*: 10, 20, 30\)"):
        store.load(15)


def test_before_step_is_inclusive(tmp_path):
    store = CheckpointStore(tmp_path, keep=5)
    for s in (0, 50, 100):
        store.save(s, _state(float(s)))
    assert store.latest_verified(before_step=100).step == 100  # state before step 100 ran
    assert store.latest_verified(before_step=99).step == 50
    assert store.latest_verified(before_step=-1) is None


def test_retention_keeps_newest_k_and_pins(tmp_path):
    store = CheckpointStore(tmp_path, keep=2)
    store.save(1, _state(1))
    store.save(2, _state(2))
    store.pin(1, "incident-42")
    store.save(3, _state(3))
    store.save(4, _state(4))
    assert [c.step for c in store.checkpoints()] == [1, 3, 4]
    assert sorted(p.name for p in tmp_path.glob("step_*.pt")) == [
        "step_000000001.pt", "step_000000003.pt", "step_000000004.pt"]
    store.unpin("incident-42")
    assert [c.step for c in store.checkpoints()] == [3, 4]
    with pytest.raises(CheckpointError, match="cannot pin step 9: no such checkpoint"):
        store.pin(9, "x")


def test_last_verified_survives_when_newer_ones_are_bad(tmp_path):
    store = CheckpointStore(tmp_path, keep=1)
    store.save(10, _state(10))
    store.keep = 5
    store.save(20, _state(20))
    store.save(30, _state(30))
    _corrupt(tmp_path / "step_000000020.pt")
    _corrupt(tmp_path / "step_000000030.pt")
    store.keep = 2
    assert store.prune() == []  # 10 is the last verified: kept although beyond keep=2
    assert [c.step for c in store.checkpoints()] == [10, 20, 30]
    assert store.latest_verified().step == 10


def test_abandoned_checkpoints_are_never_loaded(tmp_path):
    store = CheckpointStore(tmp_path, keep=5)
    for s in (10, 20, 30):
        store.save(s, _state(s))
    store.pin(30, "inc-1")
    assert store.abandon_after(10, "rollback r1") == [20, 30]
    assert store.latest_verified().step == 10
    assert [c.step for c in store.checkpoints()] == [10]
    assert store.info(30).abandoned == "rollback r1"  # pinned: kept for the incident
    assert store.info(20) is None  # not pinned: deleted
    with pytest.raises(CheckpointError, match="abandoned"):
        store.load(30)
    store.save(20, _state(21))  # the new timeline reaches step 20 again
    assert store.latest_verified().step == 20


def test_deleting_abandoned_checkpoints_hashes_nothing(tmp_path, monkeypatch):
    # A rollback abandons and prunes while the loop waits: no checkpoint is re-hashed for
    # retention then, since only abandoned ones (never loaded again) are deleted.
    store = CheckpointStore(tmp_path, keep=3)
    for s in (10, 20, 30):
        store.save(s, _state(s))
    checked = []
    real = store._problem
    monkeypatch.setattr(store, "_problem", lambda c, d: checked.append(c.step) or real(c, d))
    assert store.abandon_after(10, "rollback r1") == [20, 30]
    assert checked == [] and [c.step for c in store.checkpoints(True)] == [10]
    assert sorted(p.name for p in tmp_path.glob("step_*")) == ["step_000000010.pt"]
    # A live checkpoint beyond keep is still deleted only with a verified one kept.
    for s in (20, 30, 40):
        store.save(s, _state(s))
    assert checked and [c.step for c in store.checkpoints()] == [20, 30, 40]


def test_writer_false_never_writes(tmp_path):
    CheckpointStore(tmp_path).save(1, _state(1))
    reader = CheckpointStore(tmp_path, writer=False)
    with pytest.raises(CheckpointError, match="writer=False"):
        reader.save(2, _state(2))
    assert reader.load(1)["note"] == "v=1"


def _train(model, opt, sched, steps):
    out = []
    for _ in range(steps):
        x = torch.randn(8, 4)  # uses the torch RNG: resumed runs must draw the same
        noise = np.random.rand() + random.random()
        loss = ((torch.nn.functional.dropout(model(x), 0.5)) ** 2).mean() + noise
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        out.append(float(loss.detach()))
    return out


def _objects():
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    opt = torch.optim.AdamW(model.parameters(), lr=0.01)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=3, gamma=0.5)
    return model, opt, sched


def test_training_state_resumes_exactly(tmp_path):
    random.seed(1)
    np.random.seed(1)
    model, opt, sched = _objects()
    _train(model, opt, sched, 5)
    store = CheckpointStore(tmp_path)
    store.save(5, training_state(model, opt, sched, DataPosition(7, 56), {"step": 5}))
    expected = _train(model, opt, sched, 6)

    model2, opt2, sched2 = _objects()  # a new process: fresh objects, other RNG states
    random.seed(99)
    np.random.seed(99)
    torch.manual_seed(99)
    state = store.load(5)
    pos = restore_training_state(state, model2, opt2, sched2)
    assert pos == DataPosition(7, 56) and state["extra"] == {"step": 5}
    assert _train(model2, opt2, sched2, 6) == expected
    assert sched2.get_last_lr() == sched.get_last_lr()


def test_leftover_temporary_and_unrecorded_files_are_cleaned(tmp_path):
    store = CheckpointStore(tmp_path)
    store.save(1, _state(1))
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, timeout=30)
    (tmp_path / f".step_000000002.pt.tmp-{int(dead.stdout)}").write_bytes(b"partial")
    (tmp_path / f".step_000000003.pt.tmp-{os.getpid()}").write_bytes(b"live writer")
    (tmp_path / "step_000000004.pt").write_bytes(b"renamed, never recorded")
    CheckpointStore(tmp_path)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == [f".step_000000003.pt.tmp-{os.getpid()}", "manifest.json",
                     "manifest.lock", "step_000000001.pt", "writer.lock"]


KILLER = textwrap.dedent("""
    import os, signal, sys, torch
    import sentinel.train.checkpoint as ck
    where, d = sys.argv[1], sys.argv[2]
    store = ck.CheckpointStore(d)
    store.save(10, {"w": torch.full((1000,), 1.0)})
    if where == "before_rename":
        real = os.replace
        def replace(src, dst):
            if ".tmp-" in str(src) and "step_" in str(src):
                os.kill(os.getpid(), signal.SIGKILL)
            return real(src, dst)
        ck.os.replace = replace
    elif where == "mid_write":
        real_write = ck._HashingWriter.write
        def write(self, b):
            if self.size > 1000:
                self.f.flush()
                os.kill(os.getpid(), signal.SIGKILL)
            return real_write(self, b)
        ck._HashingWriter.write = write
    elif where == "before_manifest":
        real = ck.CheckpointStore._write_manifest
        def wm(self, data):
            if any(c["step"] == 20 for c in data["checkpoints"]):
                os.kill(os.getpid(), signal.SIGKILL)
            return real(self, data)
        ck.CheckpointStore._write_manifest = wm
    store.save(20, {"w": torch.full((1000,), 2.0)})
    print("not killed")
""")


@pytest.mark.parametrize("where", ["mid_write", "before_rename", "before_manifest"])
def test_killed_while_saving_never_loads_a_partial_checkpoint(tmp_path, where):
    p = subprocess.run([sys.executable, "-c", KILLER, where, str(tmp_path)],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == -9, p.stderr
    leftovers = [x.name for x in tmp_path.iterdir() if "000000020" in x.name]
    assert leftovers, "the kill should have left the step-20 file behind"
    store = CheckpointStore(tmp_path)  # what a restarted job does
    info, state = store.load_latest()
    assert info.step == 10 and torch.equal(state["w"], torch.full((1000,), 1.0))
    assert [c.step for c in store.checkpoints()] == [10]
    assert not [x.name for x in tmp_path.iterdir() if "000000020" in x.name]  # debris removed


def test_damaged_manifest_is_a_clear_error(tmp_path):
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="manifest .* cannot read it"):
        CheckpointStore(tmp_path)


def test_a_failed_save_leaves_no_partial_file_and_keeps_the_old_ones(tmp_path, monkeypatch):
    store = CheckpointStore(tmp_path)
    store.save(1, _state(1))

    class FullDisk(io.FileIO):
        """A file whose device fills up after 100 bytes (the real one: tests/adversarial)."""

        def write(self, b):
            if self.tell() + len(b) > 100:
                raise OSError(28, "No space left on device")
            return super().write(b)

    monkeypatch.setattr(ck, "open", lambda path, mode: FullDisk(path, mode), raising=False)
    for step in (2, 3):  # a job that catches the error and trains on retries each time
        with pytest.raises(CheckpointError, match=f"disk full at {tmp_path}"):
            store.save(step, _state(float(step)))
    # Before: one partial .tmp file per failed attempt, kept (this PID is alive) until
    # a restart, filling the disk that was already full.
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "manifest.json", "manifest.lock", "step_000000001.pt", "writer.lock"]
    assert [c.step for c in store.checkpoints()] == [1]


def test_a_verified_file_that_cannot_be_deserialised_is_a_checkpoint_error(tmp_path):
    store = CheckpointStore(tmp_path)
    store.save(1, {"w": torch.zeros(1)})
    # save() refuses this state (weights_only cannot read it back): an older writer's.
    record_by_hand(tmp_path, 1, {"w": ck.CheckpointInfo(1, "f", 1, "x", 0.0)})
    assert store.verify(1)
    with pytest.raises(CheckpointError, match="verifies but cannot be loaded"):
        store.load(1)


PINNER = textwrap.dedent("""
    import json, random, sys
    from sentinel.train.checkpoint import CheckpointError, CheckpointStore
    d, name, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    store = CheckpointStore(d, writer=False)  # as the controller opens it
    rng = random.Random(name)
    held, bad_reads = {}, 0
    for i in range(n):
        try:
            json.loads(open(d + "/manifest.json").read())
        except ValueError:
            bad_reads += 1
        incident = f"{name}-{i}"
        for _ in range(100):
            step = rng.choice([c.step for c in store.checkpoints(include_abandoned=True)])
            try:
                store.pin(step, incident)
                break
            except CheckpointError:
                continue  # pruned since we looked: choose again
        else:
            sys.exit("could not pin anything in 100 tries")
        held[incident] = step
        if i % 2:
            gone = rng.choice(sorted(held))
            store.unpin(gone)
            del held[gone]
    print(json.dumps({"held": held, "bad_reads": bad_reads}))
""")


def test_pins_from_other_processes_and_saves_never_lose_each_other(tmp_path):
    store = CheckpointStore(tmp_path, keep=2)
    saved = list(range(4))
    for s in saved:
        store.save(s, _state(s))
    procs = [subprocess.Popen([sys.executable, "-c", PINNER, str(tmp_path), f"p{k}", "60"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for k in range(3)]
    try:
        during = 0
        deadline = time.monotonic() + 120
        while any(p.poll() is None for p in procs) and time.monotonic() < deadline:
            saved.append(saved[-1] + 1)
            store.save(saved[-1], _state(saved[-1]))  # save prunes too
            during += 1
            if saved[-1] % 5 == 0:
                store.abandon_after(saved[-1], "no-op: nothing is newer")
        outs = [p.communicate(timeout=60) for p in procs]
    finally:
        for p in procs:
            p.kill()
    for p, (_out, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err
    assert during >= 5, "the saves should overlap the pins"
    results = [json.loads(out) for out, _ in outs]
    assert [r["bad_reads"] for r in results] == [0, 0, 0]  # the manifest always parsed
    pins = {k: v for r in results for k, v in r["held"].items()}
    assert len(pins) == 90  # 3 processes x 60 pins, half of them released
    assert store.pins() == pins  # no pin lost, none released twice
    saved.append(saved[-1] + 1)
    store.save(saved[-1], _state(saved[-1]))  # retention with the final pins
    kept = {c.step for c in store.checkpoints(include_abandoned=True)}
    assert kept == set(saved[-2:]) | set(pins.values())  # no saved entry lost
    on_disk = sorted(p.name for p in tmp_path.glob("step_*.pt"))
    assert on_disk == [ck._file_name(s) for s in sorted(kept)]  # none dropped, none stray
    assert all(store.verify(s) for s in kept)


def test_pins_lists_open_incidents_and_unpin_by_a_reader_leaves_retention_to_the_job(tmp_path):
    store = CheckpointStore(tmp_path, keep=1)
    store.save(1, _state(1))
    controller = CheckpointStore(tmp_path, writer=False)
    controller.pin(1, "inc-a")
    store.save(2, _state(2))
    controller.pin(2, "inc-b")
    assert store.pins() == {"inc-a": 1, "inc-b": 2}
    controller.unpin("inc-a")
    controller.unpin("never-pinned")  # a no-op, not an error
    assert controller.pins() == {"inc-b": 2}
    assert [c.step for c in store.checkpoints()] == [1, 2]  # the reader deleted nothing
    store.save(3, _state(3))  # the job's next save applies retention
    assert [c.step for c in store.checkpoints()] == [2, 3]
    assert not (tmp_path / ck._file_name(1)).exists()


def test_the_lock_file_is_lockable_by_others_whatever_the_umask(tmp_path):
    old = os.umask(0o077)
    try:
        CheckpointStore(tmp_path).save(1, _state(1))
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / ck.LOCK_FILE).stat().st_mode) == 0o644


def test_a_pinned_abandoned_checkpoint_survives_the_new_timelines_save_of_its_step(tmp_path):
    store = CheckpointStore(tmp_path, keep=2)
    for s in (100, 150):
        store.save(s, {"w": torch.full((4,), float(s)), "timeline": "old"})
    old = store.info(150)
    store.pin(150, "incident-1")  # a first incident's rollback target
    store.abandon_after(100, "rollback r1")  # a second incident rolls back further
    new = store.save(150, {"w": torch.zeros(4), "timeline": "new"})
    assert new.file != old.file and (tmp_path / old.file).exists()
    assert store.info(150) == new and store.load(150)["timeline"] == "new"
    both = [(c.file, c.abandoned) for c in store.checkpoints(include_abandoned=True)
            if c.step == 150]
    assert both == [(old.file, "rollback r1"), (new.file, None)]
    # Retention and more saves keep it while pinned, and its bytes are the old timeline's.
    for s in (200, 250, 300):
        store.save(s, {"w": torch.zeros(4), "timeline": "new"})
    assert store._problem(old, None) is None
    store.unpin("incident-1")
    assert not (tmp_path / old.file).exists()
    assert [c.step for c in store.checkpoints(include_abandoned=True)] == [250, 300]


def test_an_unpinned_abandoned_checkpoint_is_replaced_by_the_new_timeline(tmp_path):
    store = CheckpointStore(tmp_path, keep=3)
    for s in (100, 150):
        store.save(s, {"timeline": "old"})
    # The controller abandons (a job resumed by a restart): no file is deleted then.
    CheckpointStore(tmp_path, writer=False).abandon_after(100, "rollback r1")
    store.save(150, {"timeline": "new"})
    assert [(c.step, c.abandoned) for c in store.checkpoints(include_abandoned=True)] == [
        (100, None), (150, None)]
    assert sorted(p.name for p in tmp_path.glob("step_*")) == [
        "step_000000100.pt", "step_000000150.1.pt"]
    assert store.load(150)["timeline"] == "new"


def test_a_version_1_manifest_is_still_read(tmp_path):
    store = CheckpointStore(tmp_path)
    store.save(10, {"x": 1})
    m = json.loads((tmp_path / "manifest.json").read_text())
    m["version"] = 1
    for c in m["checkpoints"]:
        for k in ("uploaded", "local"):
            del c[k]
    (tmp_path / "manifest.json").write_text(json.dumps(m))
    assert store.load(10) == {"x": 1}
    m["version"] = 3
    (tmp_path / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(CheckpointError, match="version 3, this sentinel reads versions 1, 2"):
        store.checkpoints()
