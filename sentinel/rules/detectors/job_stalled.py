"""Find a job that stopped reporting steps for much longer than its usual step time."""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field

from sentinel.rules.detectors._rolling import MedianSketch, median
from sentinel.rules.finding import Finding
from sentinel.rules.spec import MAX_STREAM_FINDINGS, DetectorSpec
from sentinel.rules.window import Series, StepPoint, Window, node_of

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


class _Gaps:
    """Gaps between reported steps, fed in time order, and the stalls among them.

    The usual step time is the median gap (:class:`MedianSketch`: exact for a window,
    within 0.1% past 65,536 steps); only gaps above ``min_stall_s`` can be stalls, and
    at most ``keep`` of the longest are kept, so a run of any length takes bounded memory.
    """

    def __init__(self, p: Params, keep: int = MAX_STREAM_FINDINGS) -> None:
        self.p = p
        self.keep = keep
        self.gaps = MedianSketch()
        self.count = 0
        self.last: tuple[float, int] | None = None
        self.longest: list[tuple[float, float, float, int]] = []  # heap: (gap, t0, t1, step)
        self.dropped = 0

    def add(self, t: float, step: int) -> None:
        """Take the time of the next step reported."""
        if self.last is not None:
            t0, s0 = self.last
            gap = t - t0
            self.gaps.add(gap)
            if gap > self.p.min_stall_s:  # no stall limit is below min_stall_s
                heapq.heappush(self.longest, (gap, t0, t, s0))
                if len(self.longest) > self.keep:
                    heapq.heappop(self.longest)
                    self.dropped += 1
        self.last = (t, step)
        self.count += 1

    def findings(self, window: Window) -> list[Finding]:
        """Return a finding per gap above the stall limit (and one for a stall ongoing)."""
        if self.count < 3 or self.last is None:
            return []
        usual = self.gaps.median()
        limit = _threshold(usual, self.p)
        out = [_finding(window, t0, t1, s0, gap, usual, "resolved")
               for gap, t0, t1, s0 in sorted(self.longest, key=lambda x: (x[1], x[3]))
               if gap > limit]
        if window.now is not None and window.now - self.last[0] > limit:
            t0, s0 = self.last
            out.append(_finding(window, t0, None, s0, window.now - t0, usual, "firing"))
        for f in out:
            # Live, the stall is seen once the gap passes the limit, after the last step.
            assert f.time_start is not None
            f.detected_at, f.detected_step = f.time_start + limit, f.step_start
        return out


def _from_steps(window: Window, p: Params) -> list[Finding]:
    times: list[tuple[float, int]] = []
    last_step: int | None = None
    for sp in window.steps:
        if sp.time is None or sp.step == last_step:
            continue
        times.append((sp.time, sp.step))
        last_step = sp.step
    gaps = _Gaps(p)
    for t, step in sorted(times):
        gaps.add(t, step)
    return gaps.findings(window)


class Stream:
    """The detector over a stream of step records (``sentinel detect FILE``).

    Records come in the file's order, which ``sentinel detect`` checks is time order
    (give or take the clocks of the ranks), so they are not sorted here.
    """

    def __init__(self, params: Params, job: str) -> None:
        self.window = Window(job=job)
        self.gaps = _Gaps(params)
        self.last_step: int | None = None
        self.latest: float | None = None
        self.notes: list[str] = []

    def feed(self, pt: StepPoint) -> None:
        """Take the next step record (one per step: the ranks' duplicates are skipped)."""
        if pt.time is None or pt.step == self.last_step:
            return
        self.last_step = pt.step
        # A record a little older than the newest (another rank's clock) is no gap.
        t = pt.time if self.latest is None else max(pt.time, self.latest)
        self.latest = t
        self.gaps.add(t, pt.step)

    def finish(self) -> list[Finding]:
        """Return the stalls found."""
        if self.gaps.dropped:
            self.notes.append(f"only the {self.gaps.keep} longest gaps were kept; "
                              f"{self.gaps.dropped} shorter ones above min_stall_s were not")
        return self.gaps.findings(self.window)


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
    stream=Stream,
)
