"""Judge each GPU of a burn-in from what was recorded: a pure function, no GPU needed.

Verdicts, most severe first (:data:`SEVERITY`): ``WRONG_RESULTS``, ``MEMORY_ERRORS``,
``NO_WORK``, ``THROTTLED``, ``LOW_FLOPS``, ``LOW_BANDWIDTH``; ``OK`` when none applies.
Every problem found is reported with its evidence; the primary verdict is the most
severe. The links between GPUs are judged in :mod:`sentinel.burnin.link_verdict`; its
problems join the verdicts of the GPUs they involve (``link_problems``).

How this differs from gpu-fryer (the reference tool):

- Throttle reasons are tested with a bitmask AND, so ``hw_slowdown`` combined with
  ``sw_power_cap`` (0x0C) counts; gpu-fryer compares the whole mask for equality with
  a single reason and misses every combination.
- HW slowdown, HW thermal slowdown and HW power brake always count. SW thermal
  slowdown and SW power cap count only when speed also suffers: an H100 under a matmul
  burn sits at its power cap most of the time while delivering full speed.
- Speed is judged against the node's best GPU *and* a per-model floor, so a node whose
  GPUs are all slow, or a node with one GPU, is still caught.
"""

from __future__ import annotations

import enum
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sentinel.burnin.config import DEFAULT_TOLERANCE
from sentinel.burnin.records import GpuRecord, NvmlReading, PerfSample
from sentinel.burnin.typedjson import Fields
from sentinel.gpu.reasons import (
    BAD_MASK,
    CLOCK_EVENT_REASONS,
    HW_THROTTLE_REASONS,
    POWER_CAP_MASK,
    POWER_CAP_REASON,
    SW_THERMAL_REASON,
)
from sentinel.jsonnum import encode


class Verdict(enum.StrEnum):
    """The outcome for one GPU."""

    OK = "OK"
    LOW_FLOPS = "LOW_FLOPS"
    THROTTLED = "THROTTLED"
    WRONG_RESULTS = "WRONG_RESULTS"
    MEMORY_ERRORS = "MEMORY_ERRORS"
    NO_WORK = "NO_WORK"
    LOW_BANDWIDTH = "LOW_BANDWIDTH"


# Most severe first. Wrong math and bad memory silently corrupt training, so they
# outrank a GPU that visibly does nothing; throttling outranks low speed because it
# names the cause of the low speed. A slow link comes last: it is shared by two GPUs
# (or all, for the collective), so a GPU's own problem is the better first lead.
SEVERITY: tuple[Verdict, ...] = (
    Verdict.WRONG_RESULTS,
    Verdict.MEMORY_ERRORS,
    Verdict.NO_WORK,
    Verdict.THROTTLED,
    Verdict.LOW_FLOPS,
    Verdict.LOW_BANDWIDTH,
)

# Reasons that count only when the GPU is also slow (see the module docstring): SW
# thermal slowdown and SW power cap. HW reasons (sentinel.gpu.reasons) always count.
SW_THROTTLE_REASONS: tuple[str, ...] = (SW_THERMAL_REASON, POWER_CAP_REASON)
# Time counted as "throttled" in reports: the shared bad set (HW reasons and SW thermal
# slowdown), as the alert and the dashboards count it. SW power cap is reported apart: a
# healthy H100 is power-capped most of a burn-in, and counting it would make the fleet's
# throttle-time panel useless.
THROTTLE_TIME_MASK = BAD_MASK

# One second of HW slowdown during a burn-in is already a hardware event worth a
# look. gpud waits for 6 of 10 minutes because it watches training, where brief events
# are tolerated; a 30 s burn-in on an idle node has no such excuse.
HW_THROTTLE_MIN_SAMPLES = 1


@dataclass(frozen=True)
class VerdictConfig:
    """What the verdict compares against."""

    tolerance: float = DEFAULT_TOLERANCE
    baselines: Mapping[str, float] = field(default_factory=dict)  # model name -> floor
    baseline_override: float | None = None  # one floor for every GPU (a flag)
    sample_interval_s: float = 1.0
    hw_throttle_min_samples: int = HW_THROTTLE_MIN_SAMPLES


@dataclass
class Problem:
    """One thing wrong with a GPU and the evidence for it."""

    verdict: Verdict
    evidence: str
    data: dict[str, Any] = field(default_factory=dict)


@dataclass
class GpuStats:
    """Summary numbers of one GPU's run (None: nothing to summarise)."""

    tflops_min: float | None = None
    tflops_median: float | None = None
    tflops_max: float | None = None
    tflops_mean: float | None = None  # total work / total GPU time
    work_seconds: float = 0.0
    samples: int = 0
    temperature_max_c: float | None = None
    power_mean_w: float | None = None
    sm_clock_median_hz: float | None = None
    throttle_seconds: float = 0.0  # THROTTLE_TIME_MASK active
    power_capped_seconds: float = 0.0
    reason_seconds: dict[str, float] = field(default_factory=dict)
    violation_seconds: dict[str, float] = field(default_factory=dict)  # counter growth


@dataclass
class GpuVerdict:
    """The verdict for one GPU, its problems, numbers and notes."""

    cuda_index: int
    nvml_index: int | None
    uuid: str
    name: str
    verdict: Verdict
    problems: list[Problem]
    stats: GpuStats
    baseline_tflops: float | None
    node_best_tflops: float | None
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Return True when the GPU passed."""
        return self.verdict is Verdict.OK

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready mapping."""
        s = self.stats
        out: dict[str, Any] = encode({
            "gpu": self.cuda_index,
            "nvml_index": self.nvml_index,
            "uuid": self.uuid,
            "name": self.name,
            "verdict": self.verdict.value,
            "problems": [
                {"verdict": p.verdict.value, "evidence": p.evidence, "data": p.data}
                for p in self.problems
            ],
            "tflops": {"min": s.tflops_min, "median": s.tflops_median, "max": s.tflops_max,
                       "mean": s.tflops_mean},
            "work_seconds": s.work_seconds,
            "samples": s.samples,
            "temperature_max_c": s.temperature_max_c,
            "power_mean_w": s.power_mean_w,
            "sm_clock_median_hz": s.sm_clock_median_hz,
            "throttle_seconds": s.throttle_seconds,
            "power_capped_seconds": s.power_capped_seconds,
            "reason_seconds": s.reason_seconds,
            "violation_seconds": s.violation_seconds,
            "baseline_tflops": self.baseline_tflops,
            "node_best_tflops": self.node_best_tflops,
            "notes": self.notes,
        })
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], where: str = "verdict") -> GpuVerdict:
        """Build a verdict from :meth:`to_dict` output; FormatError names a bad key."""
        f = Fields(d, where)
        tflops = f.object("tflops")
        stats = GpuStats(
            tflops_min=tflops.get("min", float | None),
            tflops_median=tflops.get("median", float | None),
            tflops_max=tflops.get("max", float | None),
            tflops_mean=tflops.get("mean", float | None),
            work_seconds=f.get("work_seconds", float),
            samples=f.get("samples", int),
            temperature_max_c=f.get("temperature_max_c", float | None),
            power_mean_w=f.get("power_mean_w", float | None),
            sm_clock_median_hz=f.get("sm_clock_median_hz", float | None),
            throttle_seconds=f.get("throttle_seconds", float),
            power_capped_seconds=f.get("power_capped_seconds", float),
            reason_seconds=f.get("reason_seconds", dict[str, float]),
            violation_seconds=f.get("violation_seconds", dict[str, float]),
        )
        tflops.done()
        out = cls(
            cuda_index=f.get("gpu", int), nvml_index=f.get("nvml_index", int | None),
            uuid=f.get("uuid", str), name=f.get("name", str), verdict=f.get("verdict", Verdict),
            problems=f.get("problems", list[Problem]), stats=stats,
            baseline_tflops=f.get("baseline_tflops", float | None),
            node_best_tflops=f.get("node_best_tflops", float | None),
            notes=f.get("notes", list[str]),
        )
        f.done()
        return out


def _mean_tflops(perf: Sequence[PerfSample]) -> float | None:
    secs = sum(p.seconds for p in perf)
    if secs <= 0:
        return None
    return sum(p.flops for p in perf) / secs / 1e12


def summarize(rec: GpuRecord, sample_interval_s: float = 1.0) -> GpuStats:
    """Compute one GPU's numbers from its samples."""
    st = GpuStats()
    perf = [p for p in rec.perf if p.seconds > 0]
    if perf:
        tf = [p.tflops for p in perf]
        st.tflops_min, st.tflops_max = min(tf), max(tf)
        st.tflops_median = statistics.median(tf)
        st.tflops_mean = _mean_tflops(perf)
        st.work_seconds = sum(p.seconds for p in perf)
        st.samples = len(perf)
    temps = [r.temperature_c for r in rec.nvml if r.temperature_c is not None]
    st.temperature_max_c = max(temps) if temps else None
    powers = [r.power_w for r in rec.nvml if r.power_w is not None]
    st.power_mean_w = statistics.fmean(powers) if powers else None
    clocks = [r.sm_clock_hz for r in rec.nvml if r.sm_clock_hz is not None]
    st.sm_clock_median_hz = statistics.median(clocks) if clocks else None
    for r in rec.nvml:
        bits = r.clock_event_reasons
        if bits is None:
            continue
        for name, bit in CLOCK_EVENT_REASONS.items():
            if bits & bit:
                st.reason_seconds[name] = st.reason_seconds.get(name, 0.0) + sample_interval_s
        if bits & THROTTLE_TIME_MASK:
            st.throttle_seconds += sample_interval_s
        if bits & POWER_CAP_MASK:
            st.power_capped_seconds += sample_interval_s
    with_counters = [r for r in rec.nvml if r.violation_ns]
    if len(with_counters) >= 2:
        first, last = with_counters[0].violation_ns, with_counters[-1].violation_ns
        for k in sorted(set(first) & set(last)):
            st.violation_seconds[k] = max(0, last[k] - first[k]) / 1e9
    return st


def _samples_overlapping(perf: Sequence[PerfSample], readings: Sequence[NvmlReading],
                         mask: int) -> tuple[list[PerfSample], list[PerfSample]]:
    """Split perf samples into those during which a reading had ``mask`` bits, and the rest."""
    hit_times = [r.t for r in readings if r.clock_event_reasons and r.clock_event_reasons & mask]
    during: list[PerfSample] = []
    clean: list[PerfSample] = []
    for p in perf:
        start = p.t - p.seconds
        (during if any(start < t <= p.t for t in hit_times) else clean).append(p)
    return during, clean


def _first_seen(readings: Sequence[NvmlReading], bit: int) -> float | None:
    for r in readings:
        if r.clock_event_reasons is not None and r.clock_event_reasons & bit:
            return r.t
    return None


def baseline_for(rec: GpuRecord, config: VerdictConfig) -> float | None:
    """Return the TFLOPS floor that applies to ``rec`` (override, exact or case-blind name)."""
    if config.baseline_override is not None:
        return config.baseline_override
    if rec.name in config.baselines:
        return config.baselines[rec.name]
    low = {k.lower(): v for k, v in config.baselines.items()}
    return low.get(rec.name.lower())


@dataclass(frozen=True)
class _NodeBest:
    """The node's fastest GPU, against which each GPU's speed and clocks are judged."""

    tflops: float | None  # its work-weighted mean TFLOPS (None: no GPU did work)
    rec: GpuRecord | None
    sm_clock_hz: float | None  # its SM clock median
    n_worked: int  # GPUs that did work without an error


def judge(records: Sequence[GpuRecord], config: VerdictConfig | None = None,
          link_problems: Mapping[int, Sequence[Problem]] | None = None) -> list[GpuVerdict]:
    """Return one verdict per GPU record, in the records' order.

    ``link_problems`` (by CUDA index) are the interconnect check's problems charged to
    each GPU (:meth:`~sentinel.burnin.link_verdict.InterconnectVerdict.gpu_problems`).
    """
    config = config or VerdictConfig()
    stats = [summarize(r, config.sample_interval_s) for r in records]
    worked = [(s.tflops_mean, r) for s, r in zip(stats, records, strict=True)
              if s.tflops_mean is not None and s.tflops_mean > 0 and r.error is None]
    best, best_rec = max(worked, key=lambda x: x[0]) if worked else (None, None)
    best_clock = None
    if best_rec is not None:
        best_clock = stats[list(records).index(best_rec)].sm_clock_median_hz
    node = _NodeBest(best, best_rec, best_clock, len(worked))
    links = link_problems or {}
    return [_judge_one(rec, st, config, node, links.get(rec.cuda_index, ()))
            for rec, st in zip(records, stats, strict=True)]


def _judge_one(rec: GpuRecord, st: GpuStats, config: VerdictConfig, node: _NodeBest,
               link_problems: Sequence[Problem] = ()) -> GpuVerdict:
    notes: list[str] = []  # in the order of the checks: results, speed, throttling
    baseline = baseline_for(rec, config)
    found = [_no_work(rec, st), _wrong_results(rec, st, notes), _memory_errors(rec)]
    low_flops = _low_flops(rec, st, config, node, baseline, notes)
    found += [low_flops, _throttled(rec, st, config, node, low_flops is not None, notes)]
    found += list(link_problems)
    _warmup_notes(rec, notes)
    if any(r.gpu_lost for r in rec.nvml):
        notes.append("NVML reported the GPU lost during the run")
    problems = sorted((p for p in found if p is not None),
                      key=lambda p: SEVERITY.index(p.verdict))
    verdict = problems[0].verdict if problems else Verdict.OK
    return GpuVerdict(
        cuda_index=rec.cuda_index, nvml_index=rec.nvml_index, uuid=rec.uuid, name=rec.name,
        verdict=verdict, problems=problems, stats=st, baseline_tflops=baseline,
        node_best_tflops=node.tflops, notes=notes,
    )


def _warmup_notes(rec: GpuRecord, notes: list[str]) -> None:
    """Say when measuring began on a GPU whose speed had not settled, or beside a memtest."""
    if rec.warmup_end == "cap":
        notes.append(f"speed and clocks were not steady after {rec.warmup_s or 0:.1f} s of "
                     f"warm-up (the longest wait): measured anyway")
    elif rec.warmup_end == "peers":
        notes.append("measuring began before this GPU was steady: the other GPUs had "
                     "waited for it as long as the warm-up allows")


def _no_work(rec: GpuRecord, st: GpuStats) -> Problem | None:
    """NO_WORK: nothing completed, or the runner stopped (crash, CUDA error, hang)."""
    if st.tflops_mean is None or st.tflops_mean <= 0:
        why = f": {rec.error}" if rec.error else ""
        return Problem(Verdict.NO_WORK, f"completed no matmul work{why}", {"error": rec.error})
    if rec.error is not None:
        return Problem(
            Verdict.NO_WORK,
            f"stopped after {st.work_seconds:.1f} s of work of the {rec.duration_s:.0f} s "
            f"asked: {rec.error}",
            {"error": rec.error, "work_seconds": st.work_seconds},
        )
    return None


def _wrong_results(rec: GpuRecord, st: GpuStats, notes: list[str]) -> Problem | None:
    """WRONG_RESULTS: any element beyond tolerance, or a reference the CPU disagrees with."""
    c = rec.correctness
    if c is not None and (c.mismatches > 0 or c.reference_mismatches > 0):
        parts = []
        if c.mismatches > 0:
            parts.append(f"{c.mismatches} result elements beyond tolerance in {c.checks} "
                         f"checks (max |error| {c.max_abs_error:.4g}; {c.tolerance})")
        if c.reference_mismatches > 0:
            parts.append(f"the GPU's fp32 reference disagrees with the CPU in "
                         f"{c.reference_mismatches} checked elements")
        return Problem(Verdict.WRONG_RESULTS, "; ".join(parts), {
            "mismatches": c.mismatches, "checks": c.checks, "max_abs_error": c.max_abs_error,
            "reference_mismatches": c.reference_mismatches})
    if c is None and st.tflops_mean:
        notes.append("results were not checked")
    elif c is not None and c.checks == 0 and st.tflops_mean:
        notes.append("no result check completed")
    return None


def _memory_errors(rec: GpuRecord) -> Problem | None:
    """MEMORY_ERRORS: words the memory test read back different from what it wrote."""
    m = rec.memtest
    if m is None or m.mismatches == 0:
        return None
    where = "" if m.first_bad_offset is None else f", first at byte offset {m.first_bad_offset:#x}"
    ex = f" ({'; '.join(m.examples[:3])})" if m.examples else ""
    return Problem(Verdict.MEMORY_ERRORS,
                   f"{m.mismatches} words read back wrong in {m.bytes_tested / 2**30:.1f} GiB "
                   f"tested ({m.passes} passes of {', '.join(m.patterns)}){where}{ex}",
                   {"mismatches": m.mismatches, "bytes_tested": m.bytes_tested,
                    "first_bad_offset": m.first_bad_offset})


def _low_flops(rec: GpuRecord, st: GpuStats, config: VerdictConfig, node: _NodeBest,
               baseline: float | None, notes: list[str]) -> Problem | None:
    """LOW_FLOPS against the node's best GPU and against the model's floor."""
    parts: list[str] = []
    data: dict[str, Any] = {}
    mean = st.tflops_mean
    tol = config.tolerance
    if mean and node.tflops is not None and node.rec is not None and node.rec is not rec:
        below = 1.0 - mean / node.tflops
        if below > tol:
            parts.append(
                f"mean {mean:.1f} TFLOPS is {below:.1%} below the node's best GPU "
                f"(GPU {node.rec.cuda_index}: {node.tflops:.1f} TFLOPS; tolerance {tol:.0%})")
            data.update(node_best_tflops=node.tflops, below_best=below)
    if mean and baseline is not None and mean < baseline:
        parts.append(f"mean {mean:.1f} TFLOPS is below the {baseline:.0f} TFLOPS floor "
                     f"for {rec.name} {rec.dtype}")
        data.update(baseline_tflops=baseline)
    if baseline is None:
        notes.append(f"no TFLOPS floor for {rec.name!r} {rec.dtype}: compared only with the "
                     f"node's best GPU (set --baseline-tflops or --baselines)")
    if node.n_worked < 2 and baseline is None and mean:
        notes.append("one GPU with work and no floor: its speed was not judged")
    if not parts:
        return None
    data["tflops_mean"] = mean
    return Problem(Verdict.LOW_FLOPS, "; ".join(parts), data)


def _throttled(rec: GpuRecord, st: GpuStats, config: VerdictConfig, node: _NodeBest,
               speed_suffers: bool, notes: list[str]) -> Problem | None:
    """THROTTLED: HW reasons always; SW reasons only when speed suffers."""
    if rec.nvml_error:
        notes.append(f"no NVML readings ({rec.nvml_error}): throttling not checked")
    readings = rec.nvml
    n_read = sum(1 for r in readings if r.clock_event_reasons is not None)
    parts: list[str] = []
    data: dict[str, Any] = {}
    for name in HW_THROTTLE_REASONS:
        bit = CLOCK_EVENT_REASONS[name]
        n = _count(readings, bit)
        if n >= config.hw_throttle_min_samples:
            parts.append(f"{name} active in {n} of {n_read} samples "
                         f"(first at {_first_seen(readings, bit):.1f} s)")
            data[name] = n
    _sw_throttle(rec, st, config, node, speed_suffers, n_read, parts, data)
    if not parts:
        return None
    masks = sorted({r.clock_event_reasons for r in readings
                    if r.clock_event_reasons
                    and r.clock_event_reasons & (BAD_MASK | POWER_CAP_MASK)})
    extra = [f"reason bitmasks seen: {', '.join(f'{x:#06x}' for x in masks)}"]
    grown = {k: v for k, v in st.violation_seconds.items() if v > 0}
    if grown:
        extra.append("violation time " + ", ".join(f"{k} +{v:.1f} s" for k, v in grown.items()))
    if st.temperature_max_c is not None:
        extra.append(f"max temperature {st.temperature_max_c:.0f} C")
    data.update(bitmasks=masks, violation_seconds=grown, temperature_max_c=st.temperature_max_c)
    return Problem(Verdict.THROTTLED, "; ".join(parts + extra), data)


def _count(readings: Sequence[NvmlReading], bit: int) -> int:
    return sum(1 for r in readings
               if r.clock_event_reasons is not None and r.clock_event_reasons & bit)


def _sw_throttle(rec: GpuRecord, st: GpuStats, config: VerdictConfig, node: _NodeBest,
                 speed_suffers: bool, n_read: int, parts: list[str],
                 data: dict[str, Any]) -> None:
    """Add the SW reasons (thermal, power cap) that explain a slowdown to ``parts``/``data``."""
    tol = config.tolerance
    # A healthy H100 sits at its power cap through a whole burn-in at full speed, and a
    # GPU slowed by another process is power-capped too. So power cap on a slow GPU
    # counts only if its clocks are also below the best GPU's: then the cap is the cause.
    clocks_low = (st.sm_clock_median_hz is not None and node.sm_clock_hz is not None
                  and node.rec is not rec
                  and st.sm_clock_median_hz < (1.0 - tol) * node.sm_clock_hz)
    for name in SW_THROTTLE_REASONS:
        bit = CLOCK_EVENT_REASONS[name]
        n = _count(rec.nvml, bit)
        if n == 0 or not rec.perf:
            continue
        during, clean = _samples_overlapping(rec.perf, rec.nvml, bit)
        m_during, m_clean = _mean_tflops(during), _mean_tflops(clean)
        slower_while = (m_during is not None and m_clean is not None
                        and m_during < (1.0 - tol) * m_clean)
        explains = speed_suffers and (name != POWER_CAP_REASON or clocks_low)
        if not (explains or slower_while):
            continue
        if slower_while and m_during is not None and m_clean is not None:
            how = f"{m_during:.1f} TFLOPS while active vs {m_clean:.1f} otherwise"
        elif name == POWER_CAP_REASON and st.sm_clock_median_hz and node.sm_clock_hz:
            how = (f"SM clock median {st.sm_clock_median_hz / 1e6:.0f} MHz vs "
                   f"{node.sm_clock_hz / 1e6:.0f} MHz on the best GPU, while slow "
                   f"(mean {st.tflops_mean:.1f} TFLOPS)")
        else:
            how = f"while the GPU is slow (mean {st.tflops_mean:.1f} TFLOPS)"
        parts.append(f"{name} active in {n} of {n_read} samples, {how}")
        data[name] = n
