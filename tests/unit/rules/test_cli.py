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
