"""What a detector found: a Finding, where it is, how sure, and what to do about it.

Detectors return findings and never act; the controller decides. A finding's
``key`` identifies the problem across evaluation cycles, so the engine can tell a
new problem from one it already reported and emit ``resolved`` when it goes away.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sentinel.jsonnum import decode, encode

SEVERITIES = ("info", "warning", "critical")
# What the controller should consider doing; detectors only suggest.
ACTIONS = ("rollback_skip", "burnin", "spare_swap", "notify")
STATES = ("firing", "resolved")


@dataclass
class Finding:
    """One problem seen by a detector: what, where, how sure, suggested action."""

    kind: str
    severity: str
    summary: str
    suggested_action: str
    detector: str = ""
    job: str | None = None
    node: str | None = None
    gpu: str | None = None
    step_start: int | None = None
    step_end: int | None = None
    time_start: float | None = None
    time_end: float | None = None
    confidence: float = 1.0
    evidence: dict[str, Any] = field(default_factory=dict)
    state: str = "firing"
    # Distinguishes two episodes of the same kind at the same place (a second loss
    # spike of the same job); empty when one open problem per place is the rule.
    episode: str = ""
    rule: str = ""
    # When the finding was first emitted: online, the engine's cycle time (and the newest
    # step it had seen); replayed from a file, the time and step of the record at which a
    # live run would have emitted it. The difference from time_start is the detection delay.
    detected_at: float | None = None
    detected_step: int | None = None

    def __post_init__(self) -> None:
        if self.severity not in SEVERITIES:
            raise ValueError(f"severity {self.severity!r} not one of {SEVERITIES}")
        if self.suggested_action not in ACTIONS:
            raise ValueError(f"suggested_action {self.suggested_action!r} not one of {ACTIONS}")
        if self.state not in STATES:
            raise ValueError(f"state {self.state!r} not one of {STATES}")

    @property
    def key(self) -> str:
        """Return the stable dedupe key: the same problem gives the same key each cycle."""
        parts = [self.rule or self.detector, self.kind, self.job or "", self.node or ""]
        parts += [self.gpu or "", self.episode]
        return "/".join(parts)

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict (non-finite numbers as "NaN"/"Infinity" strings)."""
        return {
            "kind": self.kind,
            "severity": self.severity,
            "summary": self.summary,
            "suggested_action": self.suggested_action,
            "state": self.state,
            "detector": self.detector,
            "rule": self.rule,
            "job": self.job,
            "node": self.node,
            "gpu": self.gpu,
            "step_start": self.step_start,
            "step_end": self.step_end,
            "time_start": self.time_start,
            "time_end": self.time_end,
            "confidence": round(self.confidence, 3),
            "detected_at": self.detected_at,
            "detected_step": self.detected_step,
            "episode": self.episode,
            "key": self.key,
            "evidence": encode(self.evidence),
        }

    @classmethod
    def from_dict(cls, d: Any) -> Finding:
        """Rebuild a finding from :meth:`to_dict` output (a findings JSONL line, the journal).

        Raises ValueError naming the key that is missing or wrong.
        """
        if not isinstance(d, dict):
            raise ValueError(f"a finding must be a JSON object, got {type(d).__name__}")
        for k in ("kind", "severity", "summary", "suggested_action"):
            if not isinstance(d.get(k), str):
                raise ValueError(f"finding: key {k!r} missing or not a string")
        kw: dict[str, Any] = {}
        for k in ("detector", "rule", "episode", "state"):
            if d.get(k) is not None:
                if not isinstance(d[k], str):
                    raise ValueError(f"finding: key {k!r} must be a string, got {d[k]!r}")
                kw[k] = d[k]
        for k in ("job", "node", "gpu"):
            v = d.get(k)
            if v is not None and not isinstance(v, str):
                raise ValueError(f"finding: key {k!r} must be a string or null, got {v!r}")
            kw[k] = v
        for k in ("step_start", "step_end", "detected_step"):
            v = d.get(k)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int)):
                raise ValueError(f"finding: key {k!r} must be an integer or null, got {v!r}")
            kw[k] = v
        for k in ("time_start", "time_end", "confidence", "detected_at"):
            v = d.get(k)
            if v is None:
                continue
            if isinstance(v, bool) or not isinstance(v, int | float):
                raise ValueError(f"finding: key {k!r} must be a number or null, got {v!r}")
            kw[k] = float(v)
        ev = d.get("evidence", {})
        if not isinstance(ev, dict):
            raise ValueError(f"finding: key 'evidence' must be an object, got {ev!r}")
        kw["evidence"] = decode(ev)
        f = cls(kind=d["kind"], severity=d["severity"], summary=d["summary"],
                suggested_action=d["suggested_action"], **kw)
        return f

