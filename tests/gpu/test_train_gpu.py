"""The training side on a real GPU: bf16 example, CUDA RNG in checkpoints, in-process rollback."""

from __future__ import annotations

import uuid

import pytest

torch = pytest.importorskip("torch")

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


def test_cuda_rng_state_round_trips_through_a_checkpoint(tmp_path):
    from sentinel.train.checkpoint import CheckpointStore, rng_state, set_rng_state

    torch.cuda.init()
    torch.cuda.manual_seed_all(5)
    store = CheckpointStore(tmp_path)
    store.save(1, {"rng": rng_state()})
    expected = torch.rand(4, device="cuda")
    torch.cuda.manual_seed_all(99)
    set_rng_state(store.load(1)["rng"])
    assert torch.equal(torch.rand(4, device="cuda"), expected)


def test_example_rolls_back_in_process_on_the_gpu(tmp_path):
    from sentinel.train.request import submit, wait_result
    from tests.support.example_job import finish, read_log, start_job, wait_for_step

    run_dir = tmp_path / "run"
    proc = start_job(run_dir, "--config", "small", "--device", "cuda", "--max-steps", "80",
                     "--checkpoint-every", "20", "--inject-bad-batch", "40,41",
                     "--min-step-seconds", "0.05", "--threads", "0")
    try:
        wait_for_step(proc, run_dir, 43, timeout=300)
        sub = submit(run_dir, "gpt-small", 40, [(40, 42)], request_id=uuid.uuid4().hex,
                     requested_by="gpu test", reason="spike", pids=[proc.pid])
        assert sub.signalled == [proc.pid]
        assert wait_result(run_dir, sub.request.id, 120)["status"] == "done"
        finish(proc, timeout=300)
    finally:
        proc.kill()
    log = read_log(run_dir)
    start = next(e for e in log if e["event"] == "start")
    assert start["device"].startswith("cuda") and start["config"] == "small"
    assert len({e["pid"] for e in log}) == 1
    rb = next(i for i, e in enumerate(log) if e["event"] == "rollback")
    after = [e for e in log[rb + 1 :] if e["event"] == "step"]
    assert [(e["step"], e["batch"]) for e in after] == [
        (s, s if s < 40 else s + 2) for s in range(40, 80)]
    spike = next(e for e in log[:rb] if e["event"] == "step" and e["batch"] == 40)["loss"]
    assert max(e["loss"] for e in after) < spike
    assert all(e["loss"] == e["loss"] for e in after)  # no NaN under bf16
