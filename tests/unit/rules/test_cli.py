import json
import math
import subprocess
import sys

import numpy as np

from tests.support.strictjson import strict_loads


def detect(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "sentinel", "detect", *map(str, args)],
                          capture_output=True, text=True, timeout=60, cwd=cwd)


def write(tmp_path, records, name="run.jsonl"):
    p = tmp_path / name
    p.write_text("".join(json.dumps(r) + "\n" for r in records))
    return p


def loss_curve(n=600, spike_at=None):
    rng = np.random.default_rng(0)
    x = np.log(2.0 + 6.0 * (1 + np.arange(n) / 100) ** -0.5) + rng.normal(0, 0.01, n)
    if spike_at is not None:
        x[spike_at] += 0.7
    return [{"step": i, "loss": float(math.exp(v)), "grad_norm": 1.0, "time": 1000.0 + i}
            for i, v in enumerate(x)]


def test_healthy_run_exits_0_with_no_output(tmp_path):
    r = detect(write(tmp_path, loss_curve()))
    assert (r.returncode, r.stdout) == (0, ""), r.stderr


def test_spike_exits_1_with_one_json_finding_per_line(tmp_path):
    recs = loss_curve(spike_at=400)
    recs[500]["loss"] = "NaN"
    r = detect(write(tmp_path, recs))
    assert r.returncode == 1, r.stderr
    out = [strict_loads(line) for line in r.stdout.splitlines()]
    spikes = [f for f in out if f["kind"] == "loss_spike"]
    assert [(f["step_start"], f["step_end"]) for f in spikes] == [(400, 400), (500, 500)]
    for f in out:
        assert {"kind", "step_start", "step_end", "severity", "summary",
                "suggested_action"} <= set(f)
    assert spikes[1]["evidence"]["peak_ratio"] == "Infinity"


def test_bad_rules_file_exits_2(tmp_path):
    rules = tmp_path / "rules.yml"
    rules.write_text("rules:\n  - name: x\n    detector: loss_spikes\n")
    r = detect(write(tmp_path, loss_curve()), "--rules", rules)
    assert r.returncode == 2
    assert "rules[0] (x).detector: 'loss_spikes' is not valid" in r.stderr


def test_throughput_from_steps_offline_finds_a_straggler(tmp_path):
    recs = []
    for i in range(300):
        for n in range(4):
            slow = 0.7 if (n == 1 and i >= 150) else 1.0
            recs.append({"step": i, "loss": 2.0, "time": 1000.0 + 5 * i, "node": f"n{n}",
                         "tokens_per_sec": 1000.0 * slow})
    r = detect(write(tmp_path, recs))
    assert r.returncode == 1, r.stderr
    diag = [json.loads(x) for x in r.stdout.splitlines() if '"diagnosis"' in x]
    assert [(d["node"], d["evidence"]["cause"]) for d in diag] == [("n1", "straggler")]


def _throughput_trace(run=None, *, drop=(300.0, 360.0), key="tokens_per_sec", loss=False):
    """One record per step (0.5 s apart, 4 nodes) over 8 minutes; 40% slower in ``drop``."""
    rng = np.random.default_rng(1)
    recs = []
    for i in range(960):
        t = 1000.0 + 0.5 * i
        slow = 0.6 if drop[0] <= t - 1000.0 < drop[1] else 1.0
        for n in range(4):
            r = {"step": i, "time": t + 0.01 * n, "node": f"n{n}",
                 key: 4000.0 * slow * (1 + float(rng.uniform(-0.05, 0.05)))}
            if loss:
                r["loss"] = 2.0
            if run is not None:
                r["run"] = run
            recs.append(r)
    return recs


def test_a_throughput_only_trace_needs_no_loss_and_says_when_it_would_be_found(tmp_path):
    r = detect(write(tmp_path, _throughput_trace()))
    assert r.returncode == 1, r.stderr
    out = [strict_loads(x) for x in r.stdout.splitlines()]
    (drop,) = [f for f in out if f["kind"] == "throughput_drop"]
    # Time-based: found seconds after the onset (t=1300), not minutes of samples later.
    assert drop["rule"] == "throughput-steps" and abs(drop["time_start"] - 1300.0) <= 1.0
    assert 0 < drop["detected_at"] - 1300.0 <= 10.0
    assert drop["detected_step"] == round((drop["detected_at"] - 1000.0) / 0.5)
    assert all(f["detected_at"] is not None for f in out)


def test_unknown_keys_are_named_with_the_known_ones_and_refused_under_strict(tmp_path):
    path = write(tmp_path, _throughput_trace(key="tokens_per_second"))
    r = detect(path)
    assert r.returncode == 0, r.stderr  # nothing to detect without the throughput key
    assert r.stderr.count("unknown key 'tokens_per_second' ignored") == 1, r.stderr
    assert "(known: step, loss, grad_norm, tokens_per_sec," in r.stderr
    r = detect(path, "--strict")
    assert r.returncode == 2
    assert f"bad input: {path}:1: unknown key 'tokens_per_second' (known: step" in r.stderr


def test_runs_in_one_file_are_kept_apart_and_named(tmp_path):
    a = _throughput_trace("run-a", drop=(300.0, 360.0), loss=True)
    b = _throughput_trace("run-b", drop=(1000.0, 1000.0), loss=True)  # healthy
    merged = sorted(a + b, key=lambda r: (r["time"], r["run"]))
    r = detect(write(tmp_path, merged))
    assert r.returncode == 1, r.stderr
    out = [strict_loads(x) for x in r.stdout.splitlines()]
    assert {(f["kind"], f["job"]) for f in out} == {("throughput_drop", "run-a"),
                                                    ("diagnosis", "run-a")}
    # Interleaved runs' steps going back and forth are two runs, not a shuffled file.
    assert "out of order" not in r.stderr and "resume" not in r.stderr


def test_a_catapult_in_the_first_steps_is_said_on_stderr_not_a_finding(tmp_path):
    """The H100 high-LR curve's first 30 steps (step 10: loss 2.1x, grad norm 15x the
    step before, 5.9x its level)."""
    from pathlib import Path
    real = Path(__file__).resolve().parents[3] / "bench" / "detectors" / "curves" / "real"
    recs = [json.loads(line) for line in (real / "high_lr.jsonl").open()][:30]
    r = detect(write(tmp_path, recs))
    assert (r.returncode, r.stdout) == (0, ""), r.stderr
    assert ("rule loss-spike: 1 warm-up step with the loss and the grad norm jumping "
            "together taken as a learning-rate transient, not a spike") in r.stderr
    # Without a grad norm nothing tells it from a bad batch: a spike on its step.
    r = detect(write(tmp_path, [{k: v for k, v in x.items() if k != "grad_norm"}
                                for x in recs], "nogn.jsonl"))
    assert r.returncode == 1, r.stderr
    (f,) = [strict_loads(line) for line in r.stdout.splitlines()]
    assert (f["evidence"]["detected_step"], f["evidence"]["trigger"]) == (10, "warmup")
