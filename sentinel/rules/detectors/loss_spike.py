"""Find loss spikes, NaN/Inf losses and divergence, and classify how each one ends.

Works on log-loss against a robust rolling baseline: the median of the last
``history`` normal steps, with a noise scale from the median absolute change between
consecutive steps (so steady descent and LR warmup/decay do not inflate it). A step
is anomalous when it sits both ``z_threshold`` noise scales and ``min_jump`` (log
units) above the baseline; a NaN or Inf loss or grad norm is anomalous at once. A
slow rise that the rolling median would follow (divergence) is caught by comparing
the baseline with its own recent minimum (``drift_jump``). Grad-norm spikes do not
fire on their own (healthy runs have them), but one within ``grad_lookback`` steps
before a loss spike moves the spike's first step back to it: the bad batch is the
one that produced the gradient. A smaller loss rise is a spike when the grad norm
jumps on the same step (``joint_*``). Until the baseline has ``min_history`` steps a
step is judged against the previous one (``warmup_*``); there, a rise with the grad
norm far above its level so far is the optimizer's own transient (a catapult of a high
learning rate), which a bad batch that early does not produce at a usual one.

After a spike the baseline is frozen and the trajectory followed: back within the
band for ``recover_steps`` steps is *recoverable_fast* (within
``fast_recovery_steps`` of the first anomalous step) or *recoverable_slow*; still out
after ``plateau_check_steps`` is *diverged* if it keeps rising, *plateau* if it
settled higher. The finding carries the first and last anomalous steps, which is
what rollback-and-skip needs.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from sentinel.rules.detectors._rolling import DIFF_MAD_TO_SIGMA, RobustLevel, median
from sentinel.rules.finding import Finding
from sentinel.rules.spec import MAX_STREAM_FINDINGS, DetectorSpec
from sentinel.rules.window import StepPoint, Window

NAME = "loss_spike"


@dataclass
class Params:
    """Thresholds of the loss-spike detector (log-loss units where noted)."""

    history: int = field(
        default=64,
        metadata={"help": "normal steps in the rolling baseline: long enough for a robust "
                  "median, short enough to follow the descent", "min": 8, "max": 10000},
    )
    min_history: int = field(
        default=20,
        metadata={"help": "steps of history before spikes can be flagged (NaN/Inf always are)",
                  "min": 3, "max": 10000},
    )
    z_threshold: float = field(
        default=5.0,
        metadata={"help": "noise scales above the baseline for a spike. The scale is the larger "
                  "of two robust estimates, so 5 is already ~1e-7 per step for Gaussian noise; "
                  "6 missed real +33% spikes on noisy curves in bench/detectors",
                  "min": 1.0},
    )
    min_jump: float = field(
        default=0.15,
        metadata={"help": "smallest spike in log-loss (0.15 = +16%): unshuffled-data noise "
                  "makes correlated bumps of up to ~+8% (plus noise) that are not spikes; "
                  "0.12 gave false alarms on them in bench/detectors", "min": 0.0},
    )
    drift_jump: float = field(
        default=0.15,
        metadata={"help": "rise of the rolling median above its recent minimum (log units) "
                  "that counts as divergence/plateau even without a sudden jump", "min": 0.01},
    )
    drift_horizon: int = field(
        default=1000,
        metadata={"help": "steps over which the baseline's minimum is remembered", "min": 10},
    )
    grad_z_threshold: float = field(
        default=6.0, metadata={"help": "noise scales above baseline for a grad-norm spike",
                               "min": 1.0},
    )
    grad_min_ratio: float = field(
        default=2.0, metadata={"help": "grad norm must also be this many times its baseline",
                               "min": 1.0},
    )
    grad_lookback: int = field(
        default=5,
        metadata={"help": "a grad-norm spike this many steps before a loss spike is its start",
                  "min": 0, "max": 1000},
    )
    joint_z: float = field(
        default=2.5,
        metadata={"help": "noise scales above the baseline that make a spike when the grad "
                  "norm jumps on the same step (joint evidence): subtle bad batches raise "
                  "the loss 1.2-1.4x (z ~4) while the grad norm jumps 1.8-2.7x", "min": 1.0},
    )
    joint_grad_z: float = field(
        default=3.5,
        metadata={"help": "noise scales above its baseline for the grad norm's part of the "
                  "joint evidence", "min": 1.0},
    )
    joint_grad_ratio: float = field(
        default=1.7,
        metadata={"help": "the grad norm must also be this many times its baseline for the "
                  "joint evidence", "min": 1.0},
    )
    subtle_z: float = field(
        default=3.5,
        metadata={"help": "subtle rule (a bad batch without a grad-norm jump): noise scales "
                  "above the baseline (and `min_jump`) when the step also clears "
                  "`subtle_ratio`. H200 tune split: healthy steps reached z 2.89, the "
                  "calibrated x1.26-1.31 batches it catches 3.78-4.64 (docs/DESIGN.md, "
                  "\"Subtle bad batches\")", "min": 1.0},
    )
    subtle_ratio: float = field(
        default=2.5,
        metadata={"help": "subtle rule's second line: the step's rise above the least-squares "
                  "trend of the baseline window, over the highest rise of any of the "
                  "window's steps above that line. H200 tune: healthy steps reached 1.99, "
                  "the calibrated batches 2.76-5.1; 2.3 gave a false alarm per ~120k steps "
                  "of Gaussian noise, 2.5 none", "min": 1.0},
    )
    warmup_steps: int = field(
        default=3,
        metadata={"help": "steps of history before a spike can be flagged at all; until "
                  "min_history, the warm-up rule applies (NaN/Inf always are flagged)",
                  "min": 2, "max": 10000},
    )
    warmup_jump: float = field(
        default=0.3,
        metadata={"help": "warm-up rule: rise above the previous step's log-loss (0.3 = "
                  "+35%) that makes a spike while the baseline is too short (the loss falls "
                  "fast then, so the median lags above it)", "min": 0.0},
    )
    warmup_settle_steps: int = field(
        default=128,
        metadata={"help": "steps of history until which the warm-up rule keeps judging "
                  "beside the baseline rule (without the transient test): while the "
                  "baseline's window still holds the first fast fall, its median lags "
                  "above the loss and its spread is widened by the fall, which hid 2x "
                  "spikes injected at steps 20-75 of every healthy H200 tune run; twice "
                  "`history` is when the window holds none of the first `history` steps",
                  "min": 0, "max": 100000},
    )
    warmup_grad_ratio: float = field(
        default=3.0,
        metadata={"help": "warm-up rule: a jump whose grad norm is at least this many times "
                  "the median of the run's grad norms so far is a learning-rate transient "
                  "(a catapult), not a spike. In the first 20 steps a batch of random bytes "
                  "moves the grad norm 0.05-2.4x at the usual LR (the model still predicts "
                  "almost uniformly), a catapult that raises the loss 1.35x or more 5-23x "
                  "(bench/detectors/warmup_probe.py); 3 sits between", "min": 1.0},
    )
    warmup_transient_steps: int = field(
        default=3,
        metadata={"help": "consecutive warm-up steps taken as a learning-rate transient at "
                  "most; a rise that lasts longer opens a spike from the first of them "
                  "(catapults measured lasted 1-2 steps)", "min": 0, "max": 1000},
    )
    recover_z: float = field(
        default=3.0, metadata={"help": "back within this many noise scales counts as recovered",
                               "min": 0.0},
    )
    recover_steps: int = field(
        default=5, metadata={"help": "consecutive in-band steps that make a recovery",
                             "min": 1, "max": 10000},
    )
    fast_recovery_steps: int = field(
        default=50,
        metadata={"help": "recovered within this many steps of the first anomalous step is "
                  "'fast' (no rollback needed)", "min": 1},
    )
    plateau_check_steps: int = field(
        default=300,
        metadata={"help": "steps without recovery before deciding diverged vs plateau; "
                  "BLOOM's spike took ~200 steps to recover by itself", "min": 10},
    )
    max_follow_steps: int = field(
        default=2000,
        metadata={"help": "a still-slowly-falling event is called a plateau after this long",
                  "min": 10},
    )
    nonfinite_diverged_steps: int = field(
        default=3, metadata={"help": "consecutive NaN/Inf steps that mean divergence", "min": 1},
    )
    min_scale: float = field(
        default=0.002,
        metadata={"help": "floor of the noise scale (log units) so a perfectly smooth curve "
                  "does not make every wiggle a spike", "min": 0.0},
    )
    trend_window: int = field(
        default=100, metadata={"help": "steps compared (two halves) for the rise/flat verdict",
                               "min": 10},
    )


@dataclass
class _Event:
    start: int
    detected_at: int
    trigger: str
    b0: float
    s0: float
    peak_r: float
    peak_step: int
    last_anom: int
    grad_precursor: bool
    nonfinite_steps: int = 0
    nonfinite_run: int = 0
    in_band: int = 0
    # pending, then recoverable_fast, recoverable_slow, diverged or plateau
    cls: str = "pending"
    time_start: float | None = None
    time_end: float | None = None
    recent: deque[float] = field(default_factory=deque)
    detected_time: float | None = None  # the time of the step it was found on


def _log(v: float) -> float:
    return math.log(max(v, 1e-12))


class _Merge:
    """Collapse consecutive records of the same step (one per rank) into their mean.

    Held as running sums, so any number of ranks (or a file of one step repeated)
    takes constant memory.
    """

    def __init__(self) -> None:
        self._reset()

    def _reset(self) -> None:
        self.first: StepPoint | None = None
        self.n = 0
        self.loss = 0.0
        self.gn_sum, self.gn_n = 0.0, 0
        self.time: float | None = None

    def add(self, p: StepPoint) -> StepPoint | None:
        """Take a record; return the previous step's merged point when the step changes."""
        out = self.flush() if self.first is not None and p.step != self.first.step else None
        if self.first is None:
            self.first = p
        self.n += 1
        self.loss += p.loss  # NaN in any rank stays NaN
        if p.grad_norm is not None:
            self.gn_sum += p.grad_norm
            self.gn_n += 1
        if p.time is not None:
            self.time = p.time if self.time is None else max(self.time, p.time)
        return out

    def flush(self) -> StepPoint | None:
        """Return the merged point of the records held (None if none), and forget them."""
        first, n = self.first, self.n
        if first is None:
            return None
        out = first if n == 1 else StepPoint(
            step=first.step, loss=self.loss / n,
            grad_norm=self.gn_sum / self.gn_n if self.gn_n else None, time=self.time)
        self._reset()
        return out


def _merge_ranks(steps: list[StepPoint]) -> list[StepPoint]:
    """Collapse consecutive records of the same step (one per rank) into their mean."""
    m = _Merge()
    out = [pt for p in steps if (pt := m.add(p)) is not None]
    last = m.flush()
    return out + [last] if last is not None else out


class _Tracker:
    """The state machine over one job's steps; ``feed`` one step at a time."""

    def __init__(self, p: Params, max_events: int | None = None) -> None:
        self.p = p
        self.max_events = max_events
        self.dropped_events = 0  # events past max_events: counted, not kept
        self.nonpositive = 0  # finite losses <= 0: log-loss cannot judge them
        self.loss = RobustLevel(p.history)
        self.grad = RobustLevel(p.history)
        self.medians: deque[tuple[int, float]] = deque()
        # The medians that may still be the smallest: increasing, so the first is the
        # minimum (a rolling minimum in O(1) per step instead of a scan of 1,000).
        self._lowest: deque[tuple[int, float]] = deque()
        self.last_grad_anom: int | None = None
        # Warm-up steps taken as learning-rate transients: the current run of them (its
        # first step) and how many in all (said, not hidden: `sentinel detect` notes it).
        self.transient_first: int | None = None
        self.transient_run = 0
        self.transients = 0
        self.event: _Event | None = None
        self.events: list[_Event] = []
        # Accepted (step, log-loss), to restore the baseline when a run resumes from an
        # earlier checkpoint (steps go backwards); bounded by the longest look-back.
        self.accepted: deque[tuple[int, float]] = deque(maxlen=p.drift_horizon + p.history)
        self.n_accepted = 0  # steps accepted as normal so far (the rolling windows cap theirs)
        self.last_step: int | None = None
        # Whether the steps began at the run's start: the warm-up rules assume the first
        # fast fall of the loss; a window that starts mid-run (online, the agent's ring
        # holds the newest 20,000 records) has none, and its first steps are ordinary.
        self.young: bool | None = None

    def _rewind(self, step: int) -> None:
        """Return to the state at ``step``: the run restarted from a checkpoint there."""
        if self.event is not None:
            self._close()
        while self.accepted and self.accepted[-1][0] >= step:
            self.accepted.pop()
            self.n_accepted -= 1
        self.loss.reset(x for _, x in list(self.accepted)[-self.p.history:])
        while self.medians and self.medians[-1][0] >= step:
            self.medians.pop()
        self._rebuild_lowest()
        self.last_grad_anom = None
        self.transient_first, self.transient_run = None, 0

    def feed(self, pt: StepPoint) -> None:
        p = self.p
        if self.last_step is not None and pt.step < self.last_step:
            self._rewind(pt.step)
        self.last_step = pt.step
        if self.young is None:
            self.young = pt.step < p.min_history
        loss_ok = math.isfinite(pt.loss)
        if loss_ok and pt.loss <= 0:
            # Not a cross-entropy: a ratio to a baseline means nothing (main reported
            # "2e10x the baseline 1e-12"). Skipped, not fed into the baseline.
            self.nonpositive += 1
            return
        gn = pt.grad_norm
        gn_bad = gn is not None and not math.isfinite(gn)
        # This step's grad norm over its level so far (held as logs): the warm-up rule's
        # evidence of a learning-rate transient.
        gn_ratio = (math.exp(math.log(gn) - self.grad.median())
                    if gn is not None and gn > 0 and not gn_bad and len(self.grad) else None)
        grad_jump = self._grad(pt.step, gn)
        if self.event is not None:
            self._follow(pt, loss_ok, gn_bad)
            return
        if not loss_ok or gn_bad:
            self._open(pt, "nonfinite", b0=self._level_or_nan(), s0=self._scale(), r=math.inf)
            return
        x = _log(pt.loss)
        if (self.young and p.warmup_steps <= len(self.loss) < p.min_history
                and self._warmup(pt, x, gn_ratio)):
            return
        self.transient_first, self.transient_run = None, 0
        if len(self.loss) >= p.min_history:
            m = self.loss.median()
            s = self._scale()
            r = x - m
            if r > max(p.z_threshold * s, p.min_jump):
                self._open(pt, "spike", b0=m, s0=s, r=r)
                return
            if grad_jump and r > max(p.joint_z * s, p.min_jump):
                # Joint evidence: a loss rise too small alone, with the grad norm jumping
                # on the same step (healthy grad-norm bursts come without it).
                self._open(pt, "joint", b0=m, s0=s, r=r)
                return
            if (r > max(p.subtle_z * s, p.min_jump) and self._settled()
                    and self._trend_excess(x) >= p.subtle_ratio):
                # One step far above the local trend, further than any step of the
                # baseline window went: a bad batch too small for the 5-scale line.
                self._open(pt, "subtle", b0=m, s0=s, r=r)
                return
            if (self.young and self.n_accepted < p.warmup_settle_steps
                    and (jump := self._step_jump(x))):
                # The baseline still holds the first fast fall: the step before judges too.
                prev, s1, r1 = jump
                self._open(pt, "warmup", b0=prev, s0=s1, r=r1)
                return
            self._remember_median(pt.step, m)
            best = self._lowest[0][1]
            if m - best > p.drift_jump:
                start = self._drift_start(best)
                self._open(pt, "drift", b0=best, s0=s, r=x - best, start=start)
                return
        self.loss.add(x)
        self.accepted.append((pt.step, x))
        self.n_accepted += 1

    def _settled(self) -> bool:
        """Say whether the subtle rule may judge: a full window, past a run's first fall.

        Its second line compares with the highest of ``history`` steps (fewer would
        make any rise look high), and a window that still holds the first fast fall
        is no line: a young run waits ``warmup_settle_steps``.
        """
        p = self.p
        return len(self.loss) >= p.history and (
            not self.young or self.n_accepted >= p.warmup_settle_steps)

    def _trend_excess(self, x: float) -> float:
        """Return how many times ``x`` rises above the baseline window's trend line as far
        as the window's own highest step does.

        The line is the least-squares fit of the window's log-losses against their order,
        extrapolated one step on: unlike the median, it does not lag a falling loss. Run
        only for a step that already cleared the ``subtle_z`` line (O(``history``)).
        """
        v = self.loss.level.values()
        n = len(v)
        xm = (n - 1) / 2
        vm = math.fsum(v) / n
        sxx = sum((i - xm) ** 2 for i in range(n))
        b = math.fsum((i - xm) * (y - vm) for i, y in enumerate(v)) / sxx
        a = vm - b * xm
        highest = max(y - (a + b * i) for i, y in enumerate(v))
        return (x - (a + b * n)) / max(highest, self.p.min_scale)

    def _step_jump(self, x: float) -> tuple[float, float, float] | None:
        """Return (previous log-loss, scale, rise) if ``x`` jumps above the step before.

        The jump must clear both ``warmup_jump`` and ``z_threshold`` scales of the step
        changes so far (the rolling median of a fast-falling loss lags above it, so the
        step before is the reference while the run is young).
        """
        p = self.p
        if not self.accepted:
            return None
        prev = self.accepted[-1][1]
        s = max(self.loss.diffs.median() / DIFF_MAD_TO_SIGMA, p.min_scale)
        r = x - prev
        return (prev, s, r) if r > max(p.warmup_jump, p.z_threshold * s) else None

    def _warmup(self, pt: StepPoint, x: float, gn_ratio: float | None) -> bool:
        """Judge a step of the first ``min_history`` against the one before; say if taken.

        A jump with the grad norm at ``warmup_grad_ratio`` times its level is a
        learning-rate transient: kept out of the baseline and not flagged, unless it lasts
        past ``warmup_transient_steps``.
        """
        p = self.p
        jump = self._step_jump(x)
        if jump is None:
            return False
        if (gn_ratio is not None and gn_ratio >= p.warmup_grad_ratio
                and self.transient_run < p.warmup_transient_steps):
            if self.transient_first is None:
                self.transient_first = pt.step
            self.transient_run += 1
            self.transients += 1
            return True
        prev, s, r = jump
        self._open(pt, "warmup", b0=prev, s0=s, r=r, start=self.transient_first)
        self.transient_first, self.transient_run = None, 0
        return True

    def _scale(self) -> float:
        return max(self.loss.scale(), self.p.min_scale)

    def _level_or_nan(self) -> float:
        return self.loss.median() if len(self.loss) else math.nan

    def _remember_median(self, step: int, m: float) -> None:
        self.medians.append((step, m))
        while self._lowest and self._lowest[-1][1] >= m:
            self._lowest.pop()
        self._lowest.append((step, m))
        oldest = step - self.p.drift_horizon
        while self.medians and self.medians[0][0] < oldest:
            self.medians.popleft()
        while self._lowest and self._lowest[0][0] < oldest:
            self._lowest.popleft()

    def _rebuild_lowest(self) -> None:
        """Recompute the rolling minimum's candidates (after medians were cut back)."""
        self._lowest.clear()
        for item in self.medians:
            while self._lowest and self._lowest[-1][1] >= item[1]:
                self._lowest.pop()
            self._lowest.append(item)

    def _drift_start(self, best: float) -> int:
        # The rise began after the last step whose baseline was still near the minimum.
        near = best + self.p.drift_jump / 3
        for step, m in reversed(self.medians):
            if m <= near:
                return step
        return self.medians[0][0]

    def _grad(self, step: int, gn: float | None) -> bool:
        """Track the grad norm; return whether it jumps on this step (joint evidence)."""
        p = self.p
        if gn is None or not math.isfinite(gn) or gn <= 0:
            return False
        lg = math.log(gn)
        if len(self.grad) >= p.min_history:
            r = lg - self.grad.median()
            s = max(self.grad.scale(), p.min_scale)
            joint = r > max(p.joint_grad_z * s, math.log(p.joint_grad_ratio))
            if r > max(p.grad_z_threshold * s, math.log(p.grad_min_ratio)):
                self.last_grad_anom = step
                return joint
            if joint:
                return True  # kept out of the baseline, but not a precursor on its own
        self.grad.add(lg)
        return False

    def _open(
        self, pt: StepPoint, trigger: str, *, b0: float, s0: float, r: float,
        start: int | None = None,
    ) -> None:
        p = self.p
        first = pt.step if start is None else start
        precursor = (
            self.last_grad_anom is not None
            and 0 <= pt.step - self.last_grad_anom <= p.grad_lookback
        )
        if precursor and self.last_grad_anom is not None and trigger != "drift":
            first = min(first, self.last_grad_anom)
        ev = _Event(
            start=first, detected_at=pt.step, trigger=trigger, b0=b0, s0=s0,
            peak_r=r, peak_step=pt.step, last_anom=pt.step, grad_precursor=precursor,
            time_start=pt.time, time_end=pt.time, detected_time=pt.time,
            recent=deque(maxlen=max(p.history, p.trend_window)),
        )
        if trigger == "nonfinite":
            ev.nonfinite_steps = ev.nonfinite_run = 1
            if ev.nonfinite_run >= p.nonfinite_diverged_steps:
                ev.cls = "diverged"
        else:
            ev.recent.append(_log(pt.loss))
        self.event = ev
        if self.max_events is None or len(self.events) < self.max_events:
            self.events.append(ev)
        else:
            self.dropped_events += 1

    def _follow(self, pt: StepPoint, loss_ok: bool, gn_bad: bool) -> None:
        p = self.p
        ev = self.event
        assert ev is not None
        ev.time_end = pt.time if pt.time is not None else ev.time_end
        if not loss_ok or gn_bad:
            ev.nonfinite_steps += 1
            ev.nonfinite_run += 1
            ev.in_band = 0
            ev.last_anom = pt.step
            ev.peak_r = math.inf
            ev.peak_step = pt.step
            if ev.nonfinite_run >= p.nonfinite_diverged_steps:
                ev.cls = "diverged"
            return
        ev.nonfinite_run = 0
        x = _log(pt.loss)
        ev.recent.append(x)
        b0 = ev.b0 if math.isfinite(ev.b0) else x
        if not math.isfinite(ev.b0):
            ev.b0 = x  # NaN in the very first steps: the first finite value is the level
        r = x - b0
        band = max(p.recover_z * ev.s0, p.min_jump / 2)
        if r <= band:
            ev.in_band += 1
        else:
            ev.in_band = 0
            ev.last_anom = pt.step
            if r > ev.peak_r or not math.isfinite(ev.peak_r):
                if math.isfinite(ev.peak_r) or ev.nonfinite_steps == 0:
                    ev.peak_r, ev.peak_step = r, pt.step
        if ev.in_band >= p.recover_steps:
            ev.cls = (
                "recoverable_fast"
                if ev.last_anom - ev.start <= p.fast_recovery_steps
                else "recoverable_slow"
            )
            self._close()
            return
        age = pt.step - ev.start
        if age >= p.plateau_check_steps and len(ev.recent) >= p.trend_window:
            tail = list(ev.recent)[-p.trend_window:]
            half = len(tail) // 2
            first, second = median(tail[:half]), median(tail[half:])
            # Halves' medians differ by noise of ~1.25 s0/sqrt(half); 4x that is a trend.
            slope_eps = max(4 * ev.s0 / math.sqrt(half), 0.02)
            if second - first > slope_eps:
                ev.cls = "diverged"
            elif first - second > slope_eps and age < p.max_follow_steps:
                ev.cls = "pending"  # still coming down: a slow recovery, keep following
            else:
                ev.cls = "plateau"
                # The higher level is the new normal: close, and restart the baseline
                # from it so later spikes on the plateau are still found.
                self.loss.reset(list(ev.recent)[-p.history:])
                self.medians.clear()
                self._lowest.clear()
                self._close()

    def _close(self) -> None:
        assert self.event is not None
        self.event.recent.clear()  # only needed while following; a closed event is kept
        self.event = None
        self.medians.clear()
        self._lowest.clear()


def _severity_action(ev: _Event) -> tuple[str, str]:
    if ev.cls == "recoverable_fast":
        return "warning", "notify"
    if ev.cls == "recoverable_slow":
        return "warning", "rollback_skip"
    if ev.cls in ("diverged", "plateau") or ev.nonfinite_steps:
        return "critical", "rollback_skip"
    return "warning", "notify"  # pending: too early to ask for a rollback


def _finding(ev: _Event, job: str) -> Finding:
    sev, action = _severity_action(ev)
    base = math.exp(ev.b0) if math.isfinite(ev.b0) else math.nan
    ratio = math.exp(ev.peak_r) if math.isfinite(ev.peak_r) else math.inf
    if ev.nonfinite_steps and ev.peak_r == math.inf:
        what = f"non-finite loss/grad norm ({ev.nonfinite_steps} steps)"
    elif ev.trigger == "drift":
        what = f"loss rose to {ratio:.2f}x its recent minimum {base:.4g}"
    else:
        what = f"loss spike to {ratio:.2f}x the baseline {base:.4g}"
    z = ev.peak_r / ev.s0 if ev.s0 > 0 and math.isfinite(ev.peak_r) else math.inf
    conf = 1.0 if not math.isfinite(z) else min(1.0, 0.6 + z / 40)
    if ev.grad_precursor:
        conf = min(1.0, conf + 0.1)
    evidence: dict[str, Any] = {
        "classification": ev.cls,
        "trigger": ev.trigger,
        "detected_step": ev.detected_at,
        "first_anomalous_step": ev.start,
        "last_anomalous_step": ev.last_anom,
        "peak_step": ev.peak_step,
        "baseline_loss": base,
        "peak_ratio": ratio,
        "nonfinite_steps": ev.nonfinite_steps,
        "grad_norm_precursor": ev.grad_precursor,
    }
    return Finding(
        kind="loss_spike",
        severity=sev,
        summary=f"{what} at steps {ev.start}-{ev.last_anom}: {ev.cls.replace('_', ' ')}",
        suggested_action=action,
        detector=NAME,
        job=job or None,
        step_start=ev.start,
        step_end=ev.last_anom,
        time_start=ev.time_start,
        time_end=ev.time_end,
        confidence=conf,
        evidence=evidence,
        state="resolved" if ev.cls.startswith("recoverable") else "firing",
        episode=str(ev.start), detected_at=ev.detected_time, detected_step=ev.detected_at,
    )


def detect(window: Window, params: Params) -> list[Finding]:
    """Return one finding per loss-spike event in the window's steps."""
    tr = _Tracker(params)
    for pt in _merge_ranks([p for p in window.steps if p.loss_given]):
        tr.feed(pt)
    return [_finding(ev, window.job) for ev in tr.events]


class Stream:
    """The detector over a stream of step records (``sentinel detect FILE``)."""

    def __init__(self, params: Params, job: str) -> None:
        self.job = job
        self.merge = _Merge()
        self.tracker = _Tracker(params, max_events=MAX_STREAM_FINDINGS)
        self.notes: list[str] = []

    def feed(self, pt: StepPoint) -> None:
        """Take the next step record (one without a loss is skipped)."""
        if not pt.loss_given:
            return
        merged = self.merge.add(pt)
        if merged is not None:
            self.tracker.feed(merged)

    def finish(self) -> list[Finding]:
        """Return one finding per event."""
        last = self.merge.flush()
        if last is not None:
            self.tracker.feed(last)
        tr = self.tracker
        if tr.dropped_events:
            self.notes.append(f"{tr.dropped_events} more events not shown (at most "
                              f"{MAX_STREAM_FINDINGS})")
        if tr.nonpositive:
            self.notes.append(f"{tr.nonpositive} steps with a loss <= 0 not judged")
        if tr.transients:
            n = tr.transients
            self.notes.append(f"{n} warm-up step{'s' if n > 1 else ''} with the loss and the "
                              "grad norm jumping together taken as a learning-rate transient, "
                              "not a spike")
        return [_finding(ev, self.job) for ev in tr.events]


SPEC = DetectorSpec(
    name=NAME,
    params=Params,
    detect=detect,
    inputs=("steps",),
    required=(),
    description="loss/grad-norm spikes, NaN/Inf and divergence with recovery classification",
    stream=Stream,
)
