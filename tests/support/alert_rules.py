"""Make a fast copy of alerts/sentinel.rules.yml for end-to-end tests.

The real rules wait minutes (``for: 5m``, ``[1h]`` baselines). An end-to-end test
cannot, so it runs a copy in which every duration (``for:`` values, range selectors,
subquery ranges and ``offset``) is divided by the same factor: the rules keep their
shape and their thresholds, only the clock runs faster. Generated from the real file,
never copied by hand, so the test exercises the rules that ship.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

RULES_FILE = Path(__file__).resolve().parents[2] / "alerts" / "sentinel.rules.yml"

_UNIT_S = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}
_DURATION = re.compile(r"(\d+)(ms|s|m|h|d|w|y)")
# A range or subquery selector ``[5m]`` / ``[1h:30s]``, or an ``offset 10m``.
_RANGE = re.compile(r"\[(\d+(?:ms|s|m|h|d|w|y))(?::(\d+(?:ms|s|m|h|d|w|y))?)?\]")
_OFFSET = re.compile(r"\boffset\s+(\d+(?:ms|s|m|h|d|w|y))")


def duration_seconds(text: str) -> float:
    """Parse a Prometheus duration such as ``1h30m`` or ``90s`` into seconds."""
    pos, total = 0, 0.0
    for m in _DURATION.finditer(text):
        if m.start() != pos:
            raise ValueError(f"not a Prometheus duration: {text!r}")
        total += int(m.group(1)) * _UNIT_S[m.group(2)]
        pos = m.end()
    if pos != len(text) or not text:
        raise ValueError(f"not a Prometheus duration: {text!r}")
    return total


def _fmt(seconds: float, minimum_s: float) -> str:
    ms = max(round(seconds * 1000), round(minimum_s * 1000))
    return f"{ms // 1000}s" if ms % 1000 == 0 else f"{ms}ms"


def compress_duration(text: str, factor: float, minimum_s: float) -> str:
    """Divide one duration by ``factor``, never below ``minimum_s`` (0 stays 0)."""
    s = duration_seconds(text)
    if s == 0:
        return "0s"
    return _fmt(s / factor, minimum_s)


def compress_expr(expr: str, factor: float, minimum_s: float) -> str:
    """Divide every range, subquery and offset duration of a PromQL expression."""

    def _range(m: re.Match[str]) -> str:
        rng = compress_duration(m.group(1), factor, minimum_s)
        if m.group(0).find(":") < 0:
            return f"[{rng}]"
        step = m.group(2)
        return f"[{rng}:{compress_duration(step, factor, minimum_s) if step else ''}]"

    expr = _RANGE.sub(_range, expr)
    return _OFFSET.sub(lambda m: f"offset {compress_duration(m.group(1), factor, minimum_s)}", expr)


def compressed_rules(
    factor: float, minimum_s: float = 3.0, source: Path = RULES_FILE
) -> dict[str, Any]:
    """Return the rules file with all durations divided by ``factor``.

    ``minimum_s`` keeps range windows wide enough to hold a few scrapes at the test's
    scrape interval (a window shorter than two scrapes makes rate() return nothing).
    """
    data = yaml.safe_load(source.read_text())
    for group in data["groups"]:
        for rule in group["rules"]:
            rule["expr"] = compress_expr(rule["expr"], factor, minimum_s)
            if "for" in rule:
                rule["for"] = compress_duration(str(rule["for"]), factor, 0)
    return data


def write_compressed_rules(path: Path, factor: float, minimum_s: float = 3.0) -> Path:
    """Write the compressed copy of the rules to ``path`` and return it."""
    path.write_text(yaml.safe_dump(compressed_rules(factor, minimum_s), sort_keys=False))
    return path
