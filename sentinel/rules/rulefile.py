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
        enabled: true

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
             "action", "job", "enabled")
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
    enabled: bool = True

    @property
    def spec(self) -> DetectorSpec:
        """Return the detector this rule runs."""
        return DETECTORS[self.detector]

    @property
    def label(self) -> str:
        """Name this rule as it runs: a steps rule runs once per job it follows."""
        return self.name if self.job is None else f"{self.name}[{self.job}]"

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
    return Rule(
        name=name, detector=det, params=params, series=series,
        window_s=parse_duration(f"{where}.window", raw.get("window", "10m")),
        step_s=parse_duration(f"{where}.step", raw.get("step", "5s")),
        severity=sev, action=action, job=job, enabled=enabled,
    )


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
