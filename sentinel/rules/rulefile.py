"""Rules YAML: which detector, its thresholds, which series (PromQL), severity, action.

Format::

    rules:
      - name: throughput                 # unique
        detector: throughput_drop        # one of sentinel.rules.detectors.DETECTORS
        window: 10m                      # range fetched each cycle (default 10m)
        step: 5s                         # resolution of range queries (default 5s)
        series:                          # role -> PromQL: the detector's series inputs,
                                         # its required ones at least (none: read steps)
          tokens_per_sec: 'sum by (hostname) (...)'
          tokens_per_sec_cluster: 'quantile(0.5, sum by (hostname) (...))'
        thresholds: {drop_ratio: 0.1}    # the detector's Params fields
        severity: warning                # optional: overrides the detector's severity
        action: notify                   # optional: overrides the suggested action
        job: gpt-7b                      # steps-sourced rules: the job to follow
        interval: 2s                     # optional: how often it runs (below)
        enabled: true

``interval`` is how often the rule is evaluated. Without it a series rule runs once per
cycle of its driver (``controller.interval_seconds``, ``sentinel detect --interval``: a
Prometheus scrape brings nothing new sooner) and a steps rule every STEPS_INTERVAL_S (at
most once per cycle): it reads the agent's step stream, which has every step as it
happens. Findings rules (the diagnosis) take no interval: they run whenever another rule
ran, on the findings at hand.

Every mistake raises :class:`sentinel.config.ConfigError` naming the rule, the key,
the value and what would be valid.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sentinel.config import ConfigError, load_section, load_yaml
from sentinel.rules.detectors import DETECTORS
from sentinel.rules.finding import ACTIONS, SEVERITIES
from sentinel.rules.spec import DetectorSpec

DEFAULT_RULES = Path(__file__).with_name("default_rules.yml")
RULE_KEYS = ("name", "detector", "window", "step", "series", "thresholds", "severity",
             "action", "job", "interval", "enabled")
# The cycle of the deployed drivers (controller.interval_seconds, sentinel detect
# --interval): Prometheus' usual scrape interval, so a series rule sees new samples each run.
DEFAULT_CYCLE_S = 15.0
# A steps rule's default interval: the step stream has every step as it happens, and a
# drop sustained for 5 of 6 seconds must be emitted within 10 s of its onset. Each run is
# one poll of the agent and a pass over the cached records (docs/DESIGN.md, "Cadence and
# re-judging"; its CPU cost at scale is not measured yet).
STEPS_INTERVAL_S = 2.0
# Bounds of a rule's interval: under half a second the engine would spin on its own
# bookkeeping (the controller's shortest cycle is 0.5 s too); over an hour is no monitor.
MIN_INTERVAL_S, MAX_INTERVAL_S = 0.5, 3600.0
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNIT = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}


def parse_duration(where: str, value: Any) -> float:
    """Return seconds from ``30s``/``5m``/``1h``/a number, or raise ConfigError."""
    if isinstance(value, int | float) and not isinstance(value, bool) and value > 0:
        return float(value)
    m = _DURATION.match(str(value)) if isinstance(value, str) else None
    if not m or float(m.group(1)) <= 0:
        raise ConfigError(f"{where}: {value!r} is not a duration (valid: a positive number of "
                          "seconds or e.g. 30s, 5m, 1h)")
    return float(m.group(1)) * _UNIT[m.group(2)]


@dataclass
class Rule:
    """One validated rule."""

    name: str
    detector: str
    params: Any
    series: dict[str, str] = field(default_factory=dict)
    window_s: float = 600.0
    step_s: float = 5.0
    severity: str | None = None
    action: str | None = None
    job: str | None = None
    # Seconds between evaluations; None: the default for its source (module docstring).
    interval_s: float | None = None
    enabled: bool = True

    @property
    def spec(self) -> DetectorSpec:
        """Return the detector this rule runs."""
        return DETECTORS[self.detector]

    @property
    def label(self) -> str:
        """Name this rule as it runs: a steps rule runs once per job it follows."""
        return self.name if self.job is None else f"{self.name}[{self.job}]"

    def every(self, cycle_s: float | None) -> float | None:
        """Return the seconds between this rule's runs when its driver cycles every
        ``cycle_s``; None: it runs at every evaluation (findings rules, or no cycle given).
        """
        if self.interval_s is not None:
            return self.interval_s
        if cycle_s is None or self.spec.reads_findings:
            return None
        if self.source() == "steps":
            return min(STEPS_INTERVAL_S, cycle_s)
        return cycle_s

    def source(self, *, online: bool = True) -> str | None:
        """Return where this rule's data comes from: ``findings``, ``series`` or ``steps``.

        ``findings`` rules (the diagnosis) run after the others on their findings. Online,
        a rule that maps series reads Prometheus; offline (a JSON-lines file) there is no
        Prometheus, so a rule runs if its detector can read step records. None: the rule
        cannot run there.
        """
        if self.spec.reads_findings:
            return "findings"
        if online and self.series:
            return "series"
        if self.spec.reads_steps:
            return "steps"
        return None


def _rule(i: int, raw: Any, seen: set[str]) -> Rule:
    where = f"rules[{i}]"
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: must be a mapping with keys {', '.join(RULE_KEYS)}, "
                          f"got {type(raw).__name__}")
    for k in raw:
        if k not in RULE_KEYS:
            raise ConfigError(f"{where}: unknown key {k!r} (valid keys: {', '.join(RULE_KEYS)})")
    name = raw.get("name")
    if not isinstance(name, str) or not name.strip():
        raise ConfigError(f"{where}.name: {name!r} is not valid (valid: a non-empty string)")
    where = f"rules[{i}] ({name})"
    if name in seen:
        raise ConfigError(f"{where}.name: {name!r} is used twice (valid: unique names)")
    seen.add(name)
    det = raw.get("detector")
    if det not in DETECTORS:
        raise ConfigError(f"{where}.detector: {det!r} is not valid "
                          f"(valid: {', '.join(DETECTORS)})")
    spec = DETECTORS[det]
    series = _series(where, spec, raw.get("series") or {})
    thresholds = raw.get("thresholds") or {}
    if not isinstance(thresholds, dict):
        raise ConfigError(f"{where}.thresholds: must be a mapping of {det} parameters")
    params = load_section(spec.params, f"{where}.thresholds",
                          file_data={f"{where}.thresholds": thresholds}, env={})
    sev = raw.get("severity")
    if sev is not None and sev not in SEVERITIES:
        raise ConfigError(f"{where}.severity: {sev!r} is not valid "
                          f"(valid: {', '.join(SEVERITIES)})")
    action = raw.get("action")
    if action is not None and action not in ACTIONS:
        raise ConfigError(f"{where}.action: {action!r} is not valid "
                          f"(valid: {', '.join(ACTIONS)})")
    enabled = raw.get("enabled", True)
    if not isinstance(enabled, bool):
        raise ConfigError(f"{where}.enabled: {enabled!r} is not valid (valid: true, false)")
    job = raw.get("job")
    if job is not None and not isinstance(job, str):
        raise ConfigError(f"{where}.job: {job!r} is not valid (valid: a job name string)")
    window_s = parse_duration(f"{where}.window", raw.get("window", "10m"))
    return Rule(
        name=name, detector=det, params=params, series=series, window_s=window_s,
        step_s=parse_duration(f"{where}.step", raw.get("step", "5s")),
        severity=sev, action=action, job=job, enabled=enabled,
        interval_s=_interval(where, spec, raw.get("interval"), window_s),
    )


def _interval(where: str, spec: DetectorSpec, value: Any, window_s: float) -> float | None:
    """Check a rule's ``interval``: a duration in bounds, shorter than its window."""
    if value is None:
        return None
    if spec.reads_findings:
        raise ConfigError(f"{where}.interval: {spec.name} reads the other rules' findings and "
                          "runs whenever one of them ran; it takes no interval (valid: leave "
                          "it out)")
    s = parse_duration(f"{where}.interval", value)
    if not MIN_INTERVAL_S <= s <= MAX_INTERVAL_S:
        raise ConfigError(f"{where}.interval: {value!r} is out of range (valid: "
                          f"{MIN_INTERVAL_S:g}s to {MAX_INTERVAL_S:g}s)")
    if s > window_s:
        raise ConfigError(f"{where}.interval: {value!r} is longer than the rule's window "
                          f"({window_s:g}s): the samples between two runs would never be "
                          f"looked at (valid: at most {window_s:g}s, or a longer window)")
    return s


def _series(where: str, spec: DetectorSpec, series: Any) -> dict[str, str]:
    """Check a rule's role -> PromQL map against what its detector reads and needs."""
    det, valid = spec.name, ", ".join(spec.series_roles) or "none"
    if not isinstance(series, dict):
        raise ConfigError(f"{where}.series: must map a role to a PromQL string "
                          f"(valid roles: {valid})")
    for role, q in series.items():
        if role not in spec.series_roles:
            raise ConfigError(f"{where}.series.{role}: not an input of {det} (valid: {valid})")
        if not isinstance(q, str) or not q.strip():
            raise ConfigError(f"{where}.series.{role}: {q!r} is not valid (valid: a PromQL "
                              "expression string)")
    # With no series a detector that reads steps or findings runs on those; otherwise
    # the rule reads Prometheus and must map what the detector needs from it.
    if not series and (spec.reads_steps or spec.reads_findings):
        return {}
    if not series:
        raise ConfigError(f"{where}.series: {det} reads Prometheus series and the rule maps "
                          f"none (valid roles: {valid}; needed: "
                          f"{', '.join(spec.required) or 'at least one'})")
    missing = [r for r in spec.required if r not in series]
    if missing:
        also = "; or no series, to read steps" if spec.reads_steps else ""
        raise ConfigError(f"{where}.series: {det} needs {', '.join(missing)}, which the rule "
                          f"does not map (valid roles: {valid}{also})")
    return dict(series)


def parse_rules(data: Any, source: str = "rules") -> list[Rule]:
    """Validate parsed YAML into rules."""
    if not isinstance(data, dict) or not isinstance(data.get("rules"), list):
        raise ConfigError(f"{source}: top level must be a mapping with a 'rules:' list")
    extra = set(data) - {"rules"}
    if extra:
        raise ConfigError(f"{source}: unknown top-level key(s) {', '.join(sorted(extra))} "
                          "(valid: rules)")
    seen: set[str] = set()
    rules = [_rule(i, r, seen) for i, r in enumerate(data["rules"])]
    return [r for r in rules if r.enabled]


def load_rules(path: str | Path | None = None) -> list[Rule]:
    """Read and validate a rules file (the packaged defaults when ``path`` is None)."""
    p = Path(path) if path else DEFAULT_RULES
    return parse_rules(load_yaml(p, "rules file"), f"rules file {p}")
