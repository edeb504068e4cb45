"""bench/checkpoint_gpu.py's throughput comparison, run for real on the CPU at toy size."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from bench import checkpoint_gpu as bench  # noqa: E402
from sentinel.train.checkpoint import CheckpointStore  # noqa: E402


def test_variants_run_in_the_same_rounds_with_their_own_writer(tmp_path, monkeypatch):
    checks: list[int] = []
    real = CheckpointStore._check_loadable

    def spy(self, step, path, state):
        checks.append(step)
        return real(self, step, path, state)

    monkeypatch.setattr(CheckpointStore, "_check_loadable", spy)
    b = bench.Bench("tiny", torch.device("cpu"), tmp_path, 1 << 30)
    b.ckpt.close()
    b.ram_snapshots = 2.5  # as the bench does (3.5 there): buffers get reused
    ckpts = {v: b.checkpointer(1 << 30, bench.variant_spec(v)[0])
             for v in ("host", "gpu+loadcheck")}
    assert ckpts["gpu+loadcheck"].stage == "gpu"
    out = bench.throughput(b, ckpts, pairs=1, per_segment=1, warm_blocks=1)
    # Rounds: a warm-up, then one counted; each runs without, host, gpu+loadcheck.
    assert b.step == 2 * 3 * 50
    host, checked = out["variants"]["host"], out["variants"]["gpu+loadcheck"]
    assert sorted(checks) == [100, 250]  # only the +loadcheck writes loaded back
    for v in (host, checked):
        assert v["saves_requested"] == 2 and not any(v["staged"])  # CPU: nothing staged
        assert v["steps_counted"]["save"] == 1 and sum(v["steps_counted"].values()) == 50
        # A one-save warm-up allocated one set; the counted save needed a second (the
        # first is held as the rollback target): the table flags it.
        assert v["counted_saves_allocating"] == 1
        assert 0 < v["throughput_ratio"] < 10 and v["save_blocked_s_allocating"]
        assert v["fence_wait_s_all"] == []  # no CUDA: no fence to wait at
        assert v["step_s_mean"]["save"] > 0 and isinstance(v["slow_steps"], list)
    assert out["segment_s_without"] and out["step_s_without_median"] > 0
    table = bench.variant_table("tiny", out)
    assert "gpu+loadcheck" in table.splitlines()[-1] and "of 2" in table
    assert "(1 counted saves allocated)" in table
    for c in ckpts.values():
        c.close()


def test_a_variant_must_be_a_stage_with_an_optional_loadcheck():
    assert bench.variant_spec("host") == ("host", "auto")
    assert bench.variant_spec("auto+loadcheck") == ("auto", "always")
    with pytest.raises(ValueError, match=r"variant 'gpu\+fast': expected one of auto, gpu, host"):
        bench.variant_spec("gpu+fast")
