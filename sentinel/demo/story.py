"""The demo's story in numbers: the cluster, the job, the three faults, the time-scaled rules.

One place for every constant the stack, the scenario, the view and the full-stack test
share. The faults are real ones, each reaching sentinel the way it would on a cluster:
corrupt data in the batches (the loss), an XID in a GPU's NVML events (the agent), reads
of the job's data getting slow (the disks' statistics and the job's step time).
"""

from __future__ import annotations

from typing import Any

import yaml

from sentinel.rules.rulefile import DEFAULT_RULES, parse_rules

JOB = "demo-gpt"
NODES = ("node1", "node2", "node3", "node4")  # the job's nodes, reservation RESERVATION
SPARE = "node5"                               # staged spare: feature `staged`, burned in
BAD_NODE = "node3"                            # its GPU gets the XID
RESERVATION = "train"
SPARE_FEATURE = "staged"

# The GPT example, tiny (0.12 M parameters): one rank per node, one torch thread each.
MAX_STEPS = 460
SEED = 1234
CHECKPOINT_EVERY = 50
# Each step padded to at least this long: four ranks on two cores step at ~0.05 s, so
# the job's pace (and its tokens/s, the throughput baseline) holds when other work on
# the machine takes a share of it.
STEP_SECONDS = 0.1
# A corrupted shard: 60 batches of random bytes from batch 110. One bad batch, or three,
# is a spike the model shakes off within 50 steps (recoverable_fast: told, not rolled
# back, by the default policy); a stretch this long keeps the loss out of band for more
# than 50 steps (recoverable_slow), which the policy rolls back (docs/DESIGN.md,
# Controller -> rollback_skip, "The end-to-end test's injection").
BAD_BATCHES = range(110, 170)

# Episode 2: the XID (79: "fallen off the bus", a hardware class: spare swap).
XID = 79
# Episode 3: the job's data reads throttled to this many per second on the backing
# device. The four ranks read ~16 blocks a step: ~160/s at the job's pace, so 40/s
# slows the job to about a quarter and each read waits tens of milliseconds.
SLOW_READ_IOPS = 40
# How long the storage stays slow at most (it ends sooner once the diagnosis is told).
SLOW_SECONDS_MAX = 45.0
# Steps after the restart before the storage slows: the throughput baseline needs them.
STEADY_STEPS_BEFORE_SLOW = 100

# Prometheus scrapes every second and the controller cycles every second: the defaults
# (15 s) suit a month-long run, not a three-minute story.
SCRAPE_INTERVAL = "1s"
CONTROLLER_INTERVAL_S = 1.0
# The agents' tokens/s window: short, so a slowdown shows within two scrapes.
AGENT_RATE_WINDOW_S = 2.0

# The default rules (sentinel/rules/default_rules.yml, their PromQL unchanged) with their
# windows scaled from a month-long run to this one: rule -> overrides.
RULE_OVERRIDES: dict[str, dict[str, Any]] = {
    # 6 s of samples at 1 s (5 of 6 below the line) instead of 30 s at 5 s; the baseline
    # is the 40 s before, not 5 minutes.
    "throughput": {"window": "3m", "step": "1s",
                   "thresholds": {"sustain_s": 6.0, "baseline_s": 40.0}},
    "disk-latency": {"window": "5m", "step": "1s",
                     "thresholds": {"sustain_s": 5.0, "baseline_s": 40.0}},
    "gpu-errors": {"step": "1s"},
    "gpu-throttle": {"window": "3m", "step": "1s"},
    "job-stalled": {"window": "3m"},
}


def demo_rules() -> dict[str, Any]:
    """Return the default rules with the demo's windows (a rules file's data)."""
    data: dict[str, Any] = yaml.safe_load(DEFAULT_RULES.read_text())
    for rule in data["rules"]:
        over = RULE_OVERRIDES.get(rule["name"], {})
        for key, value in over.items():
            if key == "thresholds":
                rule["thresholds"] = {**(rule.get("thresholds") or {}), **value}
            else:
                rule[key] = value
    unknown = set(RULE_OVERRIDES) - {r["name"] for r in data["rules"]}
    if unknown:
        raise ValueError(f"demo rule overrides name no default rule: {sorted(unknown)}")
    parse_rules(data, "demo rules")  # the same validation a rules file gets
    return data


def bad_batches_arg() -> str:
    """Return ``--inject-bad-batch``'s value for the corrupted shard."""
    return ",".join(str(b) for b in BAD_BATCHES)
