"""The pre-spike loss trend, and whether a rolled-back job is back on it.

The trend is a power law in the step, fitted by least squares to log(loss) against
log(step) over the last :data:`FIT_STEPS` steps before the skipped ones, and not before
half-way there: language-model loss curves are close to power laws over a few hundred
steps, a power law flattens where a straight line in the step would keep falling (and
so fail a healthy run), and a young run's first steps (warm-up, the initial drop) are
not on the power law of its later ones. On the recorded healthy curves (the H100 run in
bench/detectors/curves/real, the tiny example on CPU), fitted before 45 would-be spikes,
the next 120 steps were within the tolerance below in 184 of 185 windows of 20 steps
(with the first steps in the fit: 177 of 185, every miss on a young run).

A job is back on trend when the median excess of log(loss) over the trend, over
:data:`VERIFY_WINDOW` consecutive steps after the skipped batches, is at most the
tolerance: three standard errors of that median (the step-to-step noise of the fit's
residuals) and of the trend's prediction there (the fit's own uncertainty, growing with
the distance from the fitted steps), and never less than :data:`TOLERANCE_FLOOR`. A step
whose loss exceeds the trend by the loss-spike detector's own thresholds (``z_threshold``
noise scales and ``min_jump``) is the spike coming back.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import asdict, dataclass
from typing import Any

from sentinel.rules.detectors.loss_spike import Params as SpikeParams
from sentinel.rules.window import StepPoint

# Steps fitted: enough that the fit's own uncertainty is small next to the step-to-step
# noise, few enough that the curve's bend over a long run does not bias the extrapolation
# (50, 100 and 200 did equally well on the recorded curves: 185, 184, 185 of 185).
FIT_STEPS = 100
# Fewer finite-loss steps before the spike than this: the trend is unknown.
MIN_FIT_STEPS = 20
# Steps whose median excess is judged: a step's loss is noisy (batch to batch, ~4% on
# the tiny example, ~5% on the H100 curves), a median of 20 is not.
VERIFY_WINDOW = 20
# Standard errors of the window's median (and of the prediction) allowed above the trend.
CONFIDENCE = 3.0
# The smallest tolerance in log(loss) (3%): below it a smooth curve would fail on the
# bend of the loss curve, which a power law fitted over 100 steps does not follow.
TOLERANCE_FLOOR = 0.03
# sd(median) / sd(mean) for normal noise.
_MEDIAN_EFFICIENCY = 1.2533
# 1.4826 x MAD estimates a standard deviation for normal noise.
_MAD_SCALE = 1.4826


class TrendError(ValueError):
    """The steps before the spike do not give a trend; the message says why."""


@dataclass(frozen=True)
class Trend:
    """log(loss) = a + b log(step), fitted over steps ``from_step..to_step``."""

    a: float
    b: float
    sigma: float      # robust noise scale of the residuals (log units)
    n: int
    x_mean: float
    sxx: float
    from_step: int
    to_step: int
    spike_band: float  # excess over the trend that is a spike (log units)

    def predict(self, step: int) -> float:
        """Return the trend's log(loss) at ``step``."""
        return self.a + self.b * math.log(max(step, 1))

    def excess(self, p: StepPoint) -> float:
        """Return log(loss) above the trend at ``p`` (inf for a NaN/Inf loss)."""
        if not math.isfinite(p.loss) or p.loss <= 0:
            return math.inf
        return math.log(p.loss) - self.predict(p.step)

    def tolerance(self, step: int, window: int = VERIFY_WINDOW) -> float:
        """Return the median excess over ``window`` steps centred near ``step`` allowed."""
        se_median = _MEDIAN_EFFICIENCY * self.sigma / math.sqrt(window)
        dx = math.log(max(step, 1)) - self.x_mean
        se_pred = self.sigma * math.sqrt(1 / self.n + dx * dx / self.sxx)
        return max(TOLERANCE_FLOOR, CONFIDENCE * math.hypot(se_median, se_pred))

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON form kept in the action's plan."""
        return dict(asdict(self), fit="least squares of log(loss) on log(step)")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Trend:
        """Read the plan's JSON form."""
        return cls(**{k: d[k] for k in ("a", "b", "sigma", "n", "x_mean", "sxx", "from_step",
                                        "to_step", "spike_band")})


def fit(chain: list[StepPoint], before: int, steps: int = FIT_STEPS,
        spike: SpikeParams | None = None) -> Trend:
    """Fit the trend to the last ``steps`` finite-loss steps of ``chain`` before ``before``.

    Steps before ``before // 2`` are left out.
    """
    # Not before half-way: a young run's first steps (warm-up, the initial drop) are not
    # on the power law of its later ones.
    pts = [p for p in chain if max(1, before // 2) <= p.step < before
           and math.isfinite(p.loss) and p.loss > 0][-steps:]
    if len(pts) < MIN_FIT_STEPS:
        raise TrendError(f"only {len(pts)} steps with a finite loss before step {before} "
                         f"(at least {MIN_FIT_STEPS} give a trend to verify against)")
    xs = [math.log(p.step) for p in pts]
    ys = [math.log(p.loss) for p in pts]
    xm, ym = statistics.fmean(xs), statistics.fmean(ys)
    sxx = sum((x - xm) ** 2 for x in xs)
    if sxx <= 0:
        raise TrendError(f"steps {pts[0].step}-{pts[-1].step} give no trend")
    b = sum((x - xm) * (y - ym) for x, y in zip(xs, ys, strict=True)) / sxx
    a = ym - b * xm
    res = [y - (a + b * x) for x, y in zip(xs, ys, strict=True)]
    med = statistics.median(res)
    sigma = _MAD_SCALE * statistics.median(abs(r - med) for r in res)
    sp = spike or SpikeParams()
    sigma = max(sigma, sp.min_scale)
    return Trend(a=a, b=b, sigma=sigma, n=len(pts), x_mean=xm, sxx=sxx,
                 from_step=pts[0].step, to_step=pts[-1].step,
                 spike_band=max(sp.z_threshold * sigma, sp.min_jump))


@dataclass(frozen=True)
class Verdict:
    """Where a rolled-back job stands: ``pending``, ``passed`` or ``failed`` (and why)."""

    state: str
    summary: str
    data: dict[str, Any]


def judge(trend: Trend, resumed: list[StepPoint], *, to_step: int,
          skip: list[tuple[int, int]], spike_end: int, verify_steps: int) -> Verdict:
    """Judge the steps a job ran since it resumed at checkpoint ``to_step``."""
    if not resumed:
        return Verdict("pending", f"waiting for the job's first step from {to_step}", {})
    first = resumed[0]
    if first.step != to_step:
        return Verdict("failed", f"the job resumed at step {first.step}, not at checkpoint "
                       f"{to_step}", {"resumed_at": first.step})
    for p in resumed:
        if p.batch is not None and any(a <= p.batch < b for a, b in skip):
            return Verdict("failed", f"step {p.step} trained on batch {p.batch}, which the "
                           "plan skips", {"step": p.step, "batch": p.batch})
        x = trend.excess(p)
        if x > trend.spike_band:
            return Verdict("failed", f"the spike came back at step {p.step} (batch {p.batch}):"
                           f" loss {p.loss:.4g}, {math.exp(min(x, 50)):.2f}x the pre-spike "
                           "trend", {"recurrence_step": p.step, "excess": x})
    last_skip = max((b for _, b in skip), default=0)
    past = [p for p in resumed if p.batch is None or p.batch >= last_skip]
    past = past if any(p.batch is not None for p in resumed) else \
        [p for p in resumed if p.step > spike_end]
    for i in range(len(past) - VERIFY_WINDOW + 1):
        win = past[i:i + VERIFY_WINDOW]
        med = statistics.median(trend.excess(p) for p in win)
        tol = trend.tolerance(win[len(win) // 2].step)
        if med <= tol:
            return Verdict("passed", f"loss back on its pre-spike trend: steps {win[0].step}-"
                           f"{win[-1].step} at {math.exp(med):.3f}x the trend (tolerance "
                           f"{math.exp(tol):.3f}x)", {
                               "resumed_at": first.step, "window": [win[0].step, win[-1].step],
                               "median_excess": med, "tolerance": tol,
                               "past_skips_at": past[0].step})
    if resumed[-1].step > spike_end + verify_steps:
        return Verdict("failed", f"the loss is not back on its pre-spike trend {verify_steps} "
                       f"steps after the spike's end (step {spike_end}; "
                       "controller.verify_steps)", {"step": resumed[-1].step})
    return Verdict("pending", f"job at step {resumed[-1].step}", {})
