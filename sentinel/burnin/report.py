"""Show a burn-in: progress bar, final table, JSON lines and the Prometheus textfile."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from sentinel.burnin.verdict import Verdict
from sentinel.jsonnum import dumps

if TYPE_CHECKING:
    from sentinel.burnin.api import BurninReport

BAR_WIDTH = 30


def json_line(event: dict[str, Any]) -> str:
    """Return one JSON line (non-finite numbers spelled "NaN"/"Infinity")."""
    return dumps(event, sort_keys=False)


def result_events(report: BurninReport) -> list[dict[str, Any]]:
    """Return the ``result`` line of every GPU and the final ``verdict`` line."""
    out: list[dict[str, Any]] = []
    for rec, v in zip(report.records, report.verdicts, strict=True):
        rd = rec.to_dict()
        out.append({"event": "result", **v.to_dict(), "correctness": rd["correctness"],
                    "memtest": rd["memtest"], "error": rec.error})
    out.append({
        "event": "verdict",
        "ok": report.ok,
        "exit_code": report.exit_code,
        "hostname": report.hostname,
        "wall_seconds": round(report.wall_seconds, 3),
        "gpus": [{"gpu": v.cuda_index, "uuid": v.uuid, "verdict": v.verdict.value,
                  "problems": [p.verdict.value for p in v.problems]} for v in report.verdicts],
        "notes": report.notes,
    })
    return out


def _num(x: float | None, fmt: str = ".1f") -> str:
    return "-" if x is None else format(x, fmt)


def format_table(report: BurninReport) -> str:
    """Return the human summary: one row per GPU, then each problem's evidence."""
    head = ("GPU", "NAME", "TFLOPS min", "median", "max", "TEMP max", "POWER mean",
            "THROTTLE s", "VERDICT")
    rows = []
    for v in report.verdicts:
        s = v.stats
        rows.append((str(v.cuda_index), v.name, _num(s.tflops_min), _num(s.tflops_median),
                     _num(s.tflops_max), _num(s.temperature_max_c, ".0f") + (" C" if
                     s.temperature_max_c is not None else ""),
                     _num(s.power_mean_w, ".0f") + (" W" if s.power_mean_w is not None else ""),
                     _num(s.throttle_seconds, ".0f"), v.verdict.value))
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
             for r in [head, *rows]]
    for v in report.verdicts:
        for p in v.problems:
            lines.append(f"GPU {v.cuda_index} {p.verdict.value}: {p.evidence}")
        for n in v.notes:
            lines.append(f"GPU {v.cuda_index} note: {n}")
    for n in report.notes:
        lines.append(f"note: {n}")
    failed = [v for v in report.verdicts if not v.ok]
    lines.append(
        f"{'OK' if not failed else 'FAILED'}: {len(report.verdicts) - len(failed)} of "
        f"{len(report.verdicts)} GPUs passed in {report.wall_seconds:.0f} s "
        f"({report.config.dtype} {report.config.size}x{report.config.size}, "
        f"{report.config.duration:.0f} s measured)")
    return "\n".join(lines)


class ProgressBar:
    """A one-line progress bar on a terminal stream, redrawn on every progress event."""

    def __init__(self, stream: IO[str], total_s: float) -> None:
        self.stream = stream
        self.total_s = max(total_s, 1e-9)
        self._drawn = False

    def update(self, event: dict[str, Any]) -> None:
        """Redraw from a ``progress`` event (other events are ignored)."""
        if event.get("event") != "progress":
            return
        gpus = event.get("gpus", [])
        measured = min((g.get("measured_s", 0.0) for g in gpus), default=0.0)
        frac = min(1.0, measured / self.total_s)
        fill = int(frac * BAR_WIDTH)
        phases = sorted({g.get("phase", "") for g in gpus})
        speeds = " ".join(f"{g['gpu']}:{g['tflops']:.0f}" for g in gpus
                          if g.get("tflops") is not None)
        line = (f"\r[{'#' * fill}{'.' * (BAR_WIDTH - fill)}] {frac:4.0%} "
                f"{'/'.join(phases)} {event.get('elapsed', 0):.0f}s"
                + (f" TFLOPS {speeds}" if speeds else ""))
        self.stream.write(line[:200] + "\x1b[K")
        self.stream.flush()
        self._drawn = True

    def close(self) -> None:
        """End the bar's line."""
        if self._drawn:
            self.stream.write("\n")
            self.stream.flush()


def _labels(report: BurninReport, v: Any) -> dict[str, str]:
    # `gpu` is NVML's index, as the agent's GPU series spell it, so the two join.
    gpu = v.nvml_index if v.nvml_index is not None else v.cuda_index
    return {"gpu": str(gpu), "UUID": v.uuid, "modelName": v.name, "hostname": report.hostname}


def render_textfile(report: BurninReport) -> str:
    """Return the results as a Prometheus text exposition (sentinel_burnin_*)."""
    from prometheus_client import CollectorRegistry, Gauge, generate_latest  # noqa: PLC0415

    reg = CollectorRegistry()
    base = ["gpu", "UUID", "modelName", "hostname"]
    tflops = Gauge("sentinel_burnin_tflops", "Burn-in matmul speed per 1 s interval, by "
                   "statistic over the measured window", [*base, "stat"], registry=reg)
    verdict = Gauge("sentinel_burnin_verdict", "Primary burn-in verdict of the GPU (1 for the "
                    "verdict that applies)", [*base, "verdict"], registry=reg)
    ok = Gauge("sentinel_burnin_ok", "1 if the GPU passed the burn-in", base, registry=reg)
    temp = Gauge("sentinel_burnin_max_temperature_celsius", "Hottest GPU temperature during the "
                 "burn-in", base, registry=reg)
    thr = Gauge("sentinel_burnin_throttle_seconds", "Time during the burn-in with a HW or "
                "thermal clock-event reason active", base, registry=reg)
    ts = Gauge("sentinel_burnin_timestamp_seconds", "Unix time the burn-in finished", base,
               registry=reg)
    for v in report.verdicts:
        lab = _labels(report, v)
        s = v.stats
        for stat, x in (("min", s.tflops_min), ("median", s.tflops_median),
                        ("max", s.tflops_max)):
            if x is not None:
                tflops.labels(**lab, stat=stat).set(x)
        verdict.labels(**lab, verdict=v.verdict.value).set(1)
        ok.labels(**lab).set(1 if v.verdict is Verdict.OK else 0)
        if s.temperature_max_c is not None:
            temp.labels(**lab).set(s.temperature_max_c)
        thr.labels(**lab).set(s.throttle_seconds)
        ts.labels(**lab).set(report.finished_at)
    return generate_latest(reg).decode()


def check_textfile_path(path: str | os.PathLike[str]) -> None:
    """Raise BurninConfigError unless ``path`` is a ``*.prom`` file this process can write.

    Checked before any GPU work, so a typo costs nothing and never loses a finished run.
    """
    from sentinel.burnin.config import BurninConfigError  # noqa: PLC0415

    p = Path(path)
    if p.suffix != ".prom":
        raise BurninConfigError(
            f"burnin.textfile: {str(path)!r} does not end in .prom, so the agent's textfile "
            f"collector would never read it (valid: a path such as "
            f"/var/lib/sentinel/textfile/burnin.prom in the agent's --textfile-dir)")
    if p.is_dir():
        raise BurninConfigError(f"burnin.textfile: {str(path)!r} is a directory "
                                f"(valid: a file path ending in .prom)")
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
        os.close(fd)
        os.unlink(tmp)
    except OSError as e:
        raise BurninConfigError(
            f"burnin.textfile: cannot write in {str(p.parent)!r} ({e.strerror or e}); "
            f"give a directory this user can write") from e


def write_textfile(path: str | os.PathLike[str], report: BurninReport) -> None:
    """Write the exposition atomically (temporary file in the same directory, then rename)."""
    p = Path(path)
    text = render_textfile(report)
    p.parent.mkdir(parents=True, exist_ok=True)
    # The temporary name does not end in .prom, so the agent never reads a partial file.
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, p)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
