"""A burn-in's report: the format (to and from JSON), and how it is shown.

:class:`BurninReport` is what :func:`sentinel.burnin.api.run_burnin` returns and what
``--json``'s final ``verdict`` line carries (``report``), read back by
:meth:`BurninReport.from_dict`. The rest shows it: progress bar, table, JSON lines and
the Prometheus textfile.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

from sentinel.burnin.config import BurninConfig, BurninConfigError
from sentinel.burnin.link_verdict import InterconnectVerdict, LinkVerdict
from sentinel.burnin.records import GpuRecord
from sentinel.burnin.typedjson import Fields, FormatError, read_dataclass
from sentinel.burnin.verdict import GpuVerdict, Verdict
from sentinel.jsonnum import dumps, encode

EXIT_OK, EXIT_FAILED, EXIT_CANNOT_RUN = 0, 1, 2
BAR_WIDTH = 30


@dataclass
class BurninReport:
    """The outcome of one burn-in: every GPU's record and verdict."""

    hostname: str
    started_at: float  # Unix time
    finished_at: float
    wall_seconds: float
    config: BurninConfig
    records: list[GpuRecord]
    verdicts: list[GpuVerdict]
    torch_version: str = ""
    notes: list[str] = field(default_factory=list)
    textfile_error: str | None = None  # why --textfile was not written (None: written/off)
    # The links between the GPUs (None: a report from before v2, which had no such check).
    interconnect: InterconnectVerdict | None = None

    @property
    def ok(self) -> bool:
        """Return True when every GPU passed (a failed link fails the GPUs it joins)."""
        return all(v.ok for v in self.verdicts)

    @property
    def exit_code(self) -> int:
        """Return 0 when every GPU passed, 1 otherwise."""
        return EXIT_OK if self.ok else EXIT_FAILED

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready mapping of the whole report."""
        out: dict[str, Any] = encode({
            "hostname": self.hostname,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "wall_seconds": self.wall_seconds,
            "ok": self.ok,
            "exit_code": self.exit_code,
            "config": asdict(self.config),
            "torch_version": self.torch_version,
            "notes": self.notes,
            "textfile_error": self.textfile_error,
            "gpus": [{**v.to_dict(), "record": r.to_dict()}
                     for r, v in zip(self.records, self.verdicts, strict=True)],
        })
        if self.interconnect is not None:
            out["interconnect"] = self.interconnect.to_dict()
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> BurninReport:
        """Read back a report from :meth:`to_dict` output (e.g. another node's ``--json``).

        Raises FormatError naming the key that is missing, unknown or of the wrong type
        (``report.gpus[3].verdict: 'SLOW' is not a valid Verdict (valid: OK, ...)``), or
        a derived value (``ok``, ``exit_code``) that disagrees with the verdicts.
        """
        f = Fields(d, "report")
        records, verdicts = [], []
        for i, g in enumerate(f.get("gpus", list[dict[str, Any]])):
            where = f"report.gpus[{i}]"
            gf = dict(g)
            if "record" not in gf:
                raise FormatError(f"{where}.record: missing")
            rec = GpuRecord.from_dict(gf.pop("record"), f"{where}.record")
            v = GpuVerdict.from_dict(gf, where)
            if rec.cuda_index != v.cuda_index:
                raise FormatError(f"{where}.record.cuda_index: {rec.cuda_index} is not the "
                                  f"verdict's GPU {v.cuda_index}")
            records.append(rec)
            verdicts.append(v)
        report = cls(
            hostname=f.get("hostname", str), started_at=f.get("started_at", float),
            finished_at=f.get("finished_at", float), wall_seconds=f.get("wall_seconds", float),
            config=_config(f.get("config", dict[str, Any])), records=records,
            verdicts=verdicts, torch_version=f.get("torch_version", str),
            notes=f.get("notes", list[str]),
            # Older reports lack it; None says no textfile write is known to have failed.
            textfile_error=f.get("textfile_error", str | None, None),
        )
        links = f.get("interconnect", dict[str, Any] | None, None)  # absent before v2
        if links is not None:
            report.interconnect = InterconnectVerdict.from_dict(links, "report.interconnect")
        for key, derived in (("ok", report.ok), ("exit_code", report.exit_code)):
            said = f.get(key, type(derived))
            if said != derived:
                raise FormatError(f"report.{key}: {said!r}, but the GPUs' verdicts give "
                                  f"{derived!r}")
        f.done()
        return report


# Settings added in v2, and what a report written before them ran with: the v1 burn-in
# ran the memory test first and a fixed warm-up, and had no interconnect check.
V1_SETTINGS: dict[str, Any] = {"warmup_mode": "fixed", "interconnect": False}


def _config(d: dict[str, Any]) -> BurninConfig:
    d = {**{k: v for k, v in V1_SETTINGS.items() if k not in d}, **d}
    cfg = read_dataclass(BurninConfig, d, "report.config")
    try:
        cfg.validate()
    except BurninConfigError as e:
        raise FormatError(f"report.config: {e}") from e
    return cfg


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
    if report.interconnect is not None:
        out.append({"event": "interconnect", **report.interconnect.to_dict()})
    out.append({
        "event": "verdict",
        "ok": report.ok,
        "exit_code": report.exit_code,
        "hostname": report.hostname,
        "wall_seconds": round(report.wall_seconds, 3),
        "gpus": [{"gpu": v.cuda_index, "uuid": v.uuid, "verdict": v.verdict.value,
                  "problems": [p.verdict.value for p in v.problems]} for v in report.verdicts],
        "notes": report.notes,
        "interconnect": (report.interconnect.verdict.value
                         if report.interconnect is not None else None),
        # The whole report, for a reader on another node (BurninReport.from_dict).
        "report": report.to_dict(),
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
    if report.interconnect is not None:
        lines.extend(_interconnect_lines(report.interconnect))
    for n in report.notes:
        lines.append(f"note: {n}")
    failed = [v for v in report.verdicts if not v.ok]
    lines.append(
        f"{'OK' if not failed else 'FAILED'}: {len(report.verdicts) - len(failed)} of "
        f"{len(report.verdicts)} GPUs passed in {report.wall_seconds:.0f} s "
        f"({report.config.dtype} {report.config.size}x{report.config.size}, "
        f"{report.config.duration:.0f} s measured)")
    return "\n".join(lines)


def _interconnect_lines(ic: InterconnectVerdict) -> list[str]:
    """Return the table's interconnect lines: verdict, figures, problems, notes."""
    rec = ic.record
    if ic.verdict is LinkVerdict.SKIPPED:
        return [f"interconnect: not tested: {rec.skipped}"]
    figures = [f"copy {m.src}->{m.dst} {_num(m.gbps)} GB/s" for m in rec.copies]
    if rec.allreduce is not None:
        figures.append(f"all-reduce busbw {_num(rec.allreduce.busbw_gbps)} GB/s")
    lines = [f"interconnect {ic.verdict.value} ({ic.topology}): {', '.join(figures)}"]
    lines += [f"interconnect {p.verdict.value}: {p.evidence}" for p in ic.problems]
    lines += [f"interconnect note: {n}" for n in ic.notes]
    return lines


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
    if report.interconnect is not None:
        _interconnect_series(reg, report)
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


def _interconnect_series(reg: Any, report: BurninReport) -> None:
    """Add the interconnect verdict and bandwidths to the textfile's registry."""
    from prometheus_client import Gauge  # noqa: PLC0415

    ic = report.interconnect
    assert ic is not None
    host = {"hostname": report.hostname}
    verdict = Gauge("sentinel_burnin_interconnect_verdict", "Verdict of the burn-in's check "
                    "of the links between the node's GPUs (1 for the verdict that applies)",
                    ["hostname", "verdict"], registry=reg)
    verdict.labels(**host, verdict=ic.verdict.value).set(1)
    # The agent's GPU series number GPUs as NVML does; so do these, to join with them.
    nvml = {v.cuda_index: v.nvml_index if v.nvml_index is not None else v.cuda_index
            for v in report.verdicts}
    copy = Gauge("sentinel_burnin_copy_bandwidth_bytes_per_second", "Device-to-device copy "
                 "bandwidth from gpu to peer_gpu during the burn-in",
                 ["hostname", "gpu", "peer_gpu", "topology"], registry=reg)
    for m in ic.record.copies:
        if m.gbps is not None:
            copy.labels(**host, gpu=str(nvml.get(m.src, m.src)),
                        peer_gpu=str(nvml.get(m.dst, m.dst)), topology=m.topology).set(
                m.gbps * 1e9)
    a = ic.record.allreduce
    if a is not None and a.busbw_gbps is not None:
        bus = Gauge("sentinel_burnin_allreduce_bus_bandwidth_bytes_per_second", "All-reduce "
                    "bus bandwidth over the node's GPUs during the burn-in (nccl-tests' busbw)",
                    ["hostname", "gpu_count", "topology"], registry=reg)
        bus.labels(**host, gpu_count=str(len(a.gpus)), topology=a.topology).set(
            a.busbw_gbps * 1e9)


def check_textfile_path(path: str | os.PathLike[str]) -> None:
    """Raise BurninConfigError unless ``path`` is a ``*.prom`` file this process can write.

    Checked before any GPU work, so a typo costs nothing and never loses a finished run.
    """
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


@dataclass(frozen=True)
class TextfileGpu:
    """One GPU's result as :func:`render_textfile` wrote it (read back by Slurm hooks)."""

    gpu: str
    uuid: str
    hostname: str
    ok: bool
    verdict: str
    finished_at: float | None


def read_textfile(text: str, where: str = "textfile") -> list[TextfileGpu]:
    """Read the per-GPU verdicts back from :func:`render_textfile` output.

    Raises ValueError naming ``where`` when the text is not an exposition or holds no
    ``sentinel_burnin_ok`` series (another file in the textfile directory, say).
    """
    from prometheus_client.parser import text_string_to_metric_families  # noqa: PLC0415

    ok: dict[str, tuple[dict[str, str], float]] = {}
    verdicts: dict[str, str] = {}
    finished: dict[str, float] = {}
    try:
        for fam in text_string_to_metric_families(text):
            for s in fam.samples:
                key = s.labels.get("UUID") or s.labels.get("gpu", "")
                if s.name == "sentinel_burnin_ok":
                    ok[key] = (dict(s.labels), s.value)
                elif s.name == "sentinel_burnin_verdict" and s.value == 1:
                    verdicts[key] = s.labels.get("verdict", "")
                elif s.name == "sentinel_burnin_timestamp_seconds":
                    finished[key] = s.value
    except ValueError as e:
        raise ValueError(f"{where}: not a Prometheus text exposition ({e})") from e
    if not ok:
        raise ValueError(f"{where}: no sentinel_burnin_ok series (valid: a file written by "
                         "`sentinel burnin --textfile`)")
    out = [TextfileGpu(gpu=lab.get("gpu", ""), uuid=lab.get("UUID", ""),
                       hostname=lab.get("hostname", ""), ok=value == 1,
                       verdict=verdicts.get(key, "OK" if value == 1 else "?"),
                       finished_at=finished.get(key))
           for key, (lab, value) in ok.items()]
    return sorted(out, key=lambda g: (int(g.gpu) if g.gpu.isdigit() else 1 << 30, g.uuid))
