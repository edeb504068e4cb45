"""Write series as OpenMetrics text and backfill them into a Prometheus TSDB with promtool."""

from __future__ import annotations

import subprocess
from collections.abc import Iterable, Iterator
from pathlib import Path

PROMTOOL_TIMEOUT_S = 900


def _labels(labels: dict[str, str]) -> str:
    inner = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    return "{" + inner + "}" if inner else ""


SeriesData = Iterable[tuple[dict[str, str], Iterable[tuple[float, float]]]]


def lines(families: Iterable[tuple[str, str, SeriesData]]) -> Iterator[str]:
    """Yield OpenMetrics lines: per family (name, type, [(labels, [(t, v)])])."""
    for name, mtype, series in families:
        yield f"# TYPE {name} {mtype}\n"
        yield f"# HELP {name} backfilled test data\n"
        for labels, points in series:
            lab = _labels(labels)
            for t, v in points:
                yield f"{name}{lab} {v!r} {t:.3f}\n"
    yield "# EOF\n"


def backfill(om_path: Path, tsdb: Path, promtool: str = "promtool") -> None:
    """Turn an OpenMetrics file into TSDB blocks under ``tsdb`` (raises on failure)."""
    tsdb.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(
        [promtool, "tsdb", "create-blocks-from", "openmetrics", str(om_path), str(tsdb)],
        capture_output=True, text=True, timeout=PROMTOOL_TIMEOUT_S,
    )
    if r.returncode != 0:
        raise RuntimeError(f"promtool backfill failed ({r.returncode}): {r.stderr[-2000:]}")
