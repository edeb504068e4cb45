"""The warm-up probe, run for real on the CPU at toy size: what a random batch costs."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest

from bench.detectors.warmup_probe import ratios


@pytest.mark.parametrize("config", [["--config", "tiny", "--seeds", "1-2"],
                                    ["--config", "h200", "--smoke", "--seeds", "3"]])
def test_the_probe_measures_a_random_batch_at_every_step(tmp_path, config):
    """The H100 corpus's training and the H200 corpus's (record_gpu's Job, toy size)."""
    r = subprocess.run(
        [sys.executable, "-m", "bench.detectors.warmup_probe", *config, "--steps", "6",
         "--out", str(tmp_path)], capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stderr
    files = sorted(tmp_path.glob("*.jsonl"))
    seeds = config[-1].split("-")
    assert [f.name.rsplit("-", 1)[1] for f in files] == [f"s{s}.jsonl" for s in seeds]
    for f in files:
        rows = [json.loads(line) for line in f.open()]
        assert [x["step"] for x in rows] == list(range(6))
        # Untrained, the model predicts about uniformly: random bytes cost ln(256), as
        # text does; training lowers the loss on text, not on random bytes.
        assert abs(rows[0]["bad_loss"] - math.log(256)) < 0.3
        assert abs(rows[0]["loss"] - math.log(256)) < 0.3
        assert rows[-1]["loss"] < rows[0]["loss"] < rows[-1]["bad_loss"]
        assert all(x["grad_norm"] > 0 and x["bad_grad_norm"] > 0 for x in rows)
    # A header and a line per step after the first, per run.
    assert len(r.stdout.splitlines()) == 6 * len(files)


def test_ratios_are_over_the_step_before_and_the_grad_norms_before():
    rows = [{"step": s, "loss": v, "grad_norm": g, "bad_loss": b, "bad_grad_norm": bg}
            for s, v, g, b, bg in [(0, 4.0, 8.0, 5.0, 1.0), (1, 3.0, 2.0, 6.0, 4.0),
                                   (2, 2.0, 4.0, 4.5, 15.0)]]
    assert ratios(rows) == [
        {"step": 1, "loss_x": 0.75, "grad_x": 0.25, "bad_loss_x": 1.5, "bad_grad_x": 0.5},
        {"step": 2, "loss_x": pytest.approx(2 / 3), "grad_x": 0.8, "bad_loss_x": 1.5,
         "bad_grad_x": 3.0}]
