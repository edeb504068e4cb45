"""Find a job that stopped reporting steps for much longer than its usual step time."""

from __future__ import annotations

from dataclasses import dataclass, field

from sentinel.rules.detectors._rolling import median
from sentinel.rules.finding import Finding
from sentinel.rules.spec import DetectorSpec
from sentinel.rules.window import Series, Window, node_of

NAME = "job_stalled"


@dataclass
class Params:
    """Thresholds of the job-stalled detector."""

    stall_factor: float = field(
        default=10.0,
        metadata={"help": "a gap this many times the median step time is a stall (NVRx's hang "
                  "timeout is 5x the longest interval; 10x the median is as patient)",
                  "min": 1.0},
    )
    min_stall_s: float = field(
        default=60.0,
        metadata={"help": "never call a gap shorter than this a stall (checkpoint saves and "
                  "evaluations of fast-stepping jobs)", "min": 0.0},
    )


def _threshold(step_time: float, p: Params) -> float:
    return max(p.stall_factor * step_time, p.min_stall_s)


def _from_steps(window: Window, p: Params) -> list[Finding]:
    times: list[tuple[float, int]] = []
    last_step: int | None = None
    for sp in window.steps:
        if sp.time is None or sp.step == last_step:
            continue
        times.append((sp.time, sp.step))
        last_step = sp.step
    times.sort()
    if len(times) < 3:
        return []
    gaps = [b[0] - a[0] for a, b in zip(times, times[1:], strict=False)]
    usual = median(gaps)
    limit = _threshold(usual, p)
    out: list[Finding] = []
    for (t0, s0), (t1, _s1), gap in zip(times, times[1:], gaps, strict=False):
        if gap > limit:
            out.append(_finding(window, t0, t1, s0, gap, usual, "resolved"))
    if window.now is not None and window.now - times[-1][0] > limit:
        t0, s0 = times[-1]
        out.append(_finding(window, t0, None, s0, window.now - t0, usual, "firing"))
    return out


def _finding(
    window: Window, t0: float, t1: float | None, step: int, gap: float, usual: float,
    state: str, node: str | None = None,
) -> Finding:
    where = f" on {node}" if node else ""
    return Finding(
        kind="job_stalled", severity="critical" if state == "firing" else "warning",
        summary=(f"no step reported{where} for {gap:.0f} s after step {step} "
                 f"(usual step time {usual:.2f} s)"),
        suggested_action="notify", detector=NAME, job=window.job or None, node=node,
        step_start=step, step_end=step, time_start=t0, time_end=t1,
        confidence=min(1.0, 0.5 + gap / (20 * max(usual, 1e-3))),
        evidence={"gap_s": gap, "usual_step_s": usual}, state=state, episode=str(step),
    )


def _last(s: Series) -> float | None:
    pts = s.finite()
    return pts[-1][1] if pts else None


def _from_series(window: Window, p: Params) -> list[Finding]:
    durations = {(s.labels.get("job", ""), node_of(s)): _last(s)
                 for s in window.role("step_duration")}
    known = [d for d in durations.values() if d]
    fallback = median(known) if known else None
    out: list[Finding] = []
    for s in window.role("seconds_since_last_report"):
        age = _last(s)
        key = (s.labels.get("job", ""), node_of(s))
        usual = durations.get(key) or fallback
        if age is None or usual is None:
            continue
        if age > _threshold(usual, p):
            job = key[0] or window.job
            w = Window(job=job)
            now = s.finite()[-1][0]
            out.append(_finding(w, now - age, None, -1, age, usual, "firing", node=key[1] or None))
            out[-1].step_start = out[-1].step_end = None
            out[-1].episode = ""
    return out


def detect(window: Window, params: Params) -> list[Finding]:
    """Return stalls seen in step records (gaps) or in the agent's report-age series."""
    if window.role("seconds_since_last_report"):
        return _from_series(window, params)
    return _from_steps(window, params)


SPEC = DetectorSpec(
    name=NAME, params=Params, detect=detect,
    # From series both are needed: a report age means nothing without the usual step time.
    inputs=("steps", "seconds_since_last_report", "step_duration"),
    required=("seconds_since_last_report", "step_duration"),
    description="no step for much longer than the usual step time",
)
