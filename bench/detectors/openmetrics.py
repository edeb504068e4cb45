"""Write series as OpenMetrics text and backfill them into a Prometheus TSDB with promtool."""

from __future__ import annotations

import shutil
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


RECORDING_RULES = Path(__file__).resolve().parents[2] / "alerts" / "sentinel.rules.yml"
PROMETHEUS_READY_S = 60.0


def backfill_rules(
    tsdb: Path,
    start: float,
    end: float,
    eval_interval_s: float,
    rules_file: Path = RECORDING_RULES,
    promtool: str = "promtool",
    prometheus: str = "prometheus",
) -> None:
    """Backfill the recording rules over [start, end] into ``tsdb``, as Prometheus would have.

    A running Prometheus evaluates recording rules as data arrives; data backfilled
    into a TSDB has no such history. ``promtool tsdb create-blocks-from rules`` computes
    it from a Prometheus serving the raw data, into blocks that join the TSDB.
    """
    from tests.support.services import free_port, stop, wait_http  # noqa: PLC0415

    out = tsdb.parent / (tsdb.name + "-rules")
    shutil.rmtree(out, ignore_errors=True)
    port = free_port()
    cfg = tsdb.parent / (tsdb.name + "-backfill.yml")
    cfg.write_text("global: {scrape_interval: 1m}\n")
    proc = subprocess.Popen(
        [prometheus, f"--config.file={cfg}", f"--storage.tsdb.path={tsdb}",
         f"--web.listen-address=127.0.0.1:{port}", "--storage.tsdb.retention.time=30d"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        wait_http(f"{url}/-/ready", timeout=PROMETHEUS_READY_S, proc=proc)
        r = subprocess.run(
            [promtool, "tsdb", "create-blocks-from", "rules", f"--start={int(start)}",
             f"--end={int(end) + 1}", f"--url={url}", f"--output-dir={out}",
             f"--eval-interval={max(1, int(eval_interval_s))}s", str(rules_file)],
            capture_output=True, text=True, timeout=PROMTOOL_TIMEOUT_S,
        )
        if r.returncode != 0:
            raise RuntimeError(f"promtool rules backfill failed ({r.returncode}): "
                               f"{r.stderr[-2000:]}")
    finally:
        stop(proc, timeout=30)
    for block in out.iterdir():
        shutil.move(str(block), str(tsdb / block.name))
    shutil.rmtree(out, ignore_errors=True)
    cfg.unlink(missing_ok=True)
