"""What sentinel tells Slack: one :class:`Notification` per message of an incident."""

from __future__ import annotations

import hashlib
import json
import math
import uuid
from dataclasses import asdict, dataclass, field
from typing import Any

from sentinel.jsonnum import decode_number, dumps, encode_number

# Kinds of message. ``open`` starts an incident's thread; the others are replies in it.
KINDS = ("open", "update", "resolved", "image")
SEVERITIES = ("info", "warning", "critical")
# Points kept per curve in a queued message: plenty for a 1000-pixel-wide PNG, and it
# bounds a queued message to a few tens of kB on disk.
MAX_SERIES_POINTS = 2000
MAX_TEXT_CHARS = 3500  # under Slack's 4000-character guidance for one message's text


@dataclass
class Series:
    """Loss and tokens/sec around an incident, for the PNG. NaN/Inf losses are allowed."""

    step: list[int]
    loss: list[float]
    tokens_per_sec: list[float | None] = field(default_factory=list)
    mark_step: int | None = None  # the incident's step, drawn as a vertical line

    def __post_init__(self) -> None:
        if len(self.loss) != len(self.step):
            raise ValueError(
                f"series: {len(self.step)} steps but {len(self.loss)} loss values; "
                "valid: one loss per step"
            )
        if self.tokens_per_sec and len(self.tokens_per_sec) != len(self.step):
            raise ValueError(
                f"series: {len(self.step)} steps but {len(self.tokens_per_sec)} tokens/sec "
                "values; valid: none, or one per step"
            )
        if len(self.step) > MAX_SERIES_POINTS:
            keep = _decimate(self.loss, MAX_SERIES_POINTS)
            self.step = [self.step[i] for i in keep]
            self.loss = [self.loss[i] for i in keep]
            if self.tokens_per_sec:
                self.tokens_per_sec = [self.tokens_per_sec[i] for i in keep]

    def to_json(self) -> dict[str, Any]:
        """Encode for the queue; non-finite numbers become strings JSON can hold."""
        return {
            "step": self.step,
            "loss": [encode_number(v) for v in self.loss],
            "tokens_per_sec": [encode_number(v) for v in self.tokens_per_sec],
            "mark_step": self.mark_step,
        }

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> Series:
        """Decode what :meth:`to_json` wrote."""
        return cls(
            step=[int(s) for s in obj["step"]],
            loss=[math.nan if v is None else decode_number(v) for v in obj["loss"]],
            tokens_per_sec=[None if v is None else decode_number(v)
                            for v in obj.get("tokens_per_sec", [])],
            mark_step=obj.get("mark_step"),
        )


def _decimate(loss: list[float], max_points: int) -> list[int]:
    """Pick at most ``max_points`` indices, keeping each bucket's lowest and highest loss.

    Taking every n-th point would drop a one-step spike or NaN, the very thing the plot
    of an incident is for; min-max decimation keeps it (a non-finite loss counts as the
    highest of its bucket, so a NaN/Inf step is always drawn).
    """
    n = len(loss)
    stride = math.ceil(n / (max_points // 2))
    keep: list[int] = []
    for start in range(0, n, stride):
        idx = range(start, min(start + stride, n))
        hi = max(idx, key=lambda i: loss[i] if math.isfinite(loss[i]) else math.inf)
        lo = min(idx, key=lambda i: loss[i] if math.isfinite(loss[i]) else math.inf)
        keep.extend(sorted({lo, hi}))
    return keep


@dataclass
class Notification:
    """One message about an incident (``incident`` is its stable key, e.g. ``loss_spike:gpt``)."""

    incident: str
    kind: str
    title: str
    text: str = ""
    severity: str = "warning"
    fields: dict[str, str] = field(default_factory=dict)  # job, node, GPU, value...
    series: Series | None = None  # only for kind "image"
    key: str = ""  # idempotency key; a random one when empty

    def __post_init__(self) -> None:
        if not self.incident or len(self.incident) > 200:
            raise ValueError(f"incident: {self.incident!r} must be 1..200 characters")
        if self.kind not in KINDS:
            raise ValueError(f"kind: {self.kind!r} is not valid (valid: {', '.join(KINDS)})")
        if self.severity not in SEVERITIES:
            raise ValueError(
                f"severity: {self.severity!r} is not valid (valid: {', '.join(SEVERITIES)})"
            )
        if self.kind == "image" and self.series is None:
            raise ValueError("kind 'image' needs a series to plot")
        if len(self.text) > MAX_TEXT_CHARS:
            self.text = self.text[: MAX_TEXT_CHARS - 1] + "…"
        if not self.key:
            self.key = uuid.uuid4().hex

    def digest(self) -> str:
        """Hash what a reader sees, for deduplication (not the idempotency key)."""
        raw = json.dumps(
            [self.incident, self.kind, self.title, self.text, sorted(self.fields.items())],
            ensure_ascii=False,
        )
        return hashlib.sha256(raw.encode()).hexdigest()[:32]

    def to_json(self) -> str:
        """Encode for the on-disk queue."""
        obj = asdict(self)
        obj["series"] = self.series.to_json() if self.series is not None else None
        return dumps(obj, ensure_ascii=False)

    @classmethod
    def from_json(cls, raw: str) -> Notification:
        """Decode what :meth:`to_json` wrote."""
        obj = json.loads(raw)
        series = obj.pop("series", None)
        return cls(**obj, series=Series.from_json(series) if series else None)

    def render_text(self) -> str:
        """Plain-text body: title, fields (job, node, GPU, value), then the text."""
        icon = {"open": ":rotating_light:", "update": ":information_source:",
                "resolved": ":white_check_mark:", "image": ":chart_with_upwards_trend:"}
        lines = [f"{icon[self.kind]} *{self.title}*"]
        if self.fields:
            lines.append(" · ".join(f"{k}: `{v}`" for k, v in self.fields.items()))
        if self.text:
            lines.append(self.text)
        return "\n".join(lines)
