"""Labeled loss curves: synthetic families with known events, plus recorded real curves.

Synthetic curves follow a power law in "cumulative learning rate" (so LR warmup and
decay shape the curve as they do in real runs), with Gaussian noise in log space and,
in some families, unshuffled-data bumps and harmless grad-norm spikes. Events are
injected with known first and last steps.

Real curves live in ``curves/real/<name>.jsonl`` (detector-input JSON lines: ``step``,
``loss``, optional ``grad_norm``...) next to ``<name>.labels.json``::

    {"healthy": false, "family": "real_bad_batch",
     "events": [{"start": 1200, "end": 1203, "kind": "spike"}]}

``healthy`` true means no events (``events`` empty). ``start``/``end`` are step numbers,
inclusive; a divergence that never recovers ends at the curve's last step. A curve
recorded from examples/train_gpt.py with ``--inject-bad-batch S`` has an event starting
at S; one recorded with a too-high LR is labeled from the first step the loss leaves its
trend. ``family`` defaults to ``real_healthy`` / ``real_events``.
"""

from __future__ import annotations

import json
import math
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from sentinel.rules.jsonl import read_steps

HERE = Path(__file__).resolve().parent
REAL_DIR = HERE / "curves" / "real"  # the H100 curves of record_real.py (held back)
GPU_DIR = HERE / "curves" / "h200"  # the H200 corpus of record_gpu.py (tune / held_out)

EVENT_FAMILIES = ("sharp_spike", "slow_spike", "divergence", "plateau_shift", "nan",
                  "subtle_spike", "early_spike")
HEALTHY_FAMILIES = ("clean", "noisy", "unshuffled", "lr_warmup_decay", "resumed", "high_lr")


@dataclass
class Event:
    """A labeled anomaly: first and last step (inclusive) and its kind."""

    start: int
    end: int
    kind: str


@dataclass
class Curve:
    """One labeled loss curve."""

    name: str
    family: str
    steps: list[int]
    loss: list[float]
    grad_norm: list[float | None]
    events: list[Event] = field(default_factory=list)

    @property
    def healthy(self) -> bool:
        return not self.events


def _base(rng: np.random.Generator, n: int, lr_schedule: bool) -> np.ndarray:
    """Return a healthy log-loss trend of length n."""
    l_inf = rng.uniform(1.6, 2.6)
    amp = rng.uniform(5.0, 8.0)
    t0 = rng.uniform(40, 200)
    alpha = rng.uniform(0.35, 0.7)
    t = np.arange(n, dtype=float)
    if lr_schedule:
        warm = int(rng.uniform(0.05, 0.15) * n)
        lr = np.where(
            t < warm,
            (t + 1) / warm,
            0.1 + 0.9 * 0.5 * (1 + np.cos(np.pi * (t - warm) / max(1, n - warm))),
        )
        tau = np.cumsum(lr)
    else:
        tau = t
    return np.log(l_inf + amp * (1 + tau / t0) ** (-alpha))


def _grad_base(rng: np.random.Generator, n: int) -> np.ndarray:
    t = np.arange(n, dtype=float)
    g = (0.25 + 2.0 * np.exp(-t / rng.uniform(150, 600))) * np.exp(rng.normal(0, 0.12, n))
    # Healthy runs have grad-norm spikes with no loss spike (about one per 800 steps).
    for s in rng.choice(n, size=max(1, n // 800), replace=False):
        g[s] *= rng.uniform(2.0, 5.0)
    return g


def _bumps(rng: np.random.Generator, n: int) -> np.ndarray:
    """Return unshuffled-data noise: correlated bumps of +3..8% lasting 5-30 steps."""
    out = np.zeros(n)
    s = int(rng.integers(0, 60))
    while s < n:
        d = int(rng.integers(5, 31))
        out[s : s + d] += rng.uniform(0.03, 0.08) * rng.choice([1.0, -0.5])
        s += d + int(rng.integers(10, 110))
    return out


def _positions(rng: np.random.Generator, n: int, k: int, lo: int, gap: int) -> list[int]:
    out: list[int] = []
    tries = 0
    while len(out) < k and tries < 1000:
        tries += 1
        s = int(rng.integers(lo, n - gap // 2))
        if all(abs(s - o) >= gap for o in out):
            out.append(s)
    return sorted(out)


def make_curve(family: str, idx: int, n: int, seed: int) -> Curve:
    """Generate one synthetic curve of ``family`` (deterministic in seed and idx)."""
    rng = np.random.default_rng([seed, idx, zlib.crc32(family.encode())])
    lr_sched = family == "lr_warmup_decay" or (family in EVENT_FAMILIES and rng.random() < 0.4)
    base = _base(rng, n, lr_sched)
    sigma = {
        "clean": 0.008,
        "noisy": rng.uniform(0.03, 0.05),
        "unshuffled": 0.015,
        "lr_warmup_decay": rng.uniform(0.01, 0.03),
        "resumed": rng.uniform(0.01, 0.03),
    }.get(family, rng.uniform(0.008, 0.04))
    if family == "subtle_spike":
        # Noise that puts a 1.2-1.4x step at z about 3.5-5 by the detector's scale (about
        # 1.25 sigma: the larger of two estimates): too small for the loss alone.
        sigma = rng.uniform(math.log(1.3) / 6.25, math.log(1.3) / 4.4)
    noise = rng.normal(0, sigma, n)
    x = base + noise
    if family == "unshuffled" or (family in EVENT_FAMILIES and rng.random() < 0.3):
        x += _bumps(rng, n)
    g = _grad_base(rng, n)
    if family == "high_lr":
        # A healthy high-learning-rate run: grad-norm bursts (2-5x) every 50-250 steps,
        # the loss up to +8% on the same step, and back at once.
        s = int(rng.integers(30, 250))
        while s < n:
            g[s] *= rng.uniform(2.0, 5.0)
            x[s] += rng.uniform(0.0, 0.08)
            s += int(rng.integers(50, 250))
        if rng.random() < 0.5:
            # A catapult in the first steps, as measured (bench/detectors/warmup_probe.py,
            # and the H100 high-LR curve's step 10): the loss 1.35-3.6x for one step, the
            # grad norm 6-23x its level so far.
            c = int(rng.integers(5, 17))
            x[c] += rng.uniform(math.log(1.35), math.log(3.6))
            g[c] = float(np.median(g[:c])) * rng.uniform(6.0, 23.0)
    events: list[Event] = []
    min_mag = max(0.26, 8 * sigma)  # a spike is well outside the noise: >= +30% and 8 sigma
    nanmask = np.zeros(n, dtype=bool)
    if family == "sharp_spike":
        for s in _positions(rng, n, int(rng.integers(1, 4)), n // 5, 300):
            d = int(rng.integers(1, 6))
            x[s : s + d] += rng.uniform(min_mag, 1.1)
            if rng.random() < 0.5 and s > 0:
                g[s - 1] *= rng.uniform(3, 10)
            g[s : s + d] *= rng.uniform(3, 10)
            events.append(Event(s, s + d - 1, "spike"))
    elif family == "slow_spike":
        for s in _positions(rng, n, int(rng.integers(1, 3)), n // 5, 600):
            m = rng.uniform(min_mag, 0.9)
            tau = rng.uniform(30, 150)
            t = np.arange(n - s, dtype=float)
            x[s:] += m * np.exp(-t / tau)
            g[s : s + 3] *= rng.uniform(3, 8)
            end = min(n - 1, s + int(tau * math.log(m / max(0.03, 2 * sigma))))
            events.append(Event(s, end, "spike"))
    elif family == "divergence":
        s = int(rng.integers(int(0.4 * n), int(0.75 * n)))
        t = np.arange(n - s, dtype=float)
        rate = rng.uniform(0.002, 0.01)
        excess = rate * t + 0.5 * rng.uniform(0, 2e-5) * t**2
        x[s:] += excess
        g[s:] *= np.exp(excess * rng.uniform(1, 3))
        over = np.nonzero(excess > math.log(50))[0]
        if len(over):
            nanmask[s + int(over[0]) :] = True
        events.append(Event(s, n - 1, "divergence"))
    elif family == "plateau_shift":
        s = int(rng.integers(int(0.3 * n), int(0.7 * n)))
        m = rng.uniform(max(0.15, 8 * sigma), 0.5)
        t = np.arange(n - s, dtype=float)
        x[s:] += m * (0.8 + 0.2 * np.exp(-t / 100))
        g[s : s + 2] *= rng.uniform(2, 6)
        events.append(Event(s, n - 1, "plateau"))
    elif family == "subtle_spike":
        # As on the real H100 curves: one step's loss 1.2-1.4x (z about 3.5-5 against
        # the noise) while the grad norm jumps 1.8-2.7x on the same step.
        # The ratios are the measured ones: against the trend (loss) and the median of
        # the steps before (grad norm).
        for s in _positions(rng, n, int(rng.integers(1, 4)), n // 5, 300):
            x[s] = base[s] + rng.uniform(math.log(1.2), math.log(1.4))
            g[s] = float(np.median(g[s - 32 : s])) * rng.uniform(1.8, 2.7)
            events.append(Event(s, s, "spike"))
    elif family == "early_spike":
        # A bad batch in the first 20 steps, before a rolling baseline exists. Its grad
        # norm stays near the others': the model still predicts almost uniformly, so
        # unpredictable data costs loss, not gradient (0.05-2.4x in the CPU probes of
        # bench/detectors/warmup_probe.py at the usual learning rate).
        s = int(rng.integers(4, 20))
        d = int(rng.integers(1, 3))
        x[s : s + d] += rng.uniform(0.45, 1.1)
        g[s : s + d] *= rng.uniform(0.7, 1.3)
        events.append(Event(s, s + d - 1, "spike"))
    elif family == "nan":
        for s in _positions(rng, n, int(rng.integers(1, 3)), n // 5, 400):
            if rng.random() < 0.3:
                nanmask[s:] = True
                events.append(Event(s, n - 1, "nan"))
                break
            d = int(rng.integers(1, 4))
            nanmask[s : s + d] = True
            events.append(Event(s, s + d - 1, "nan"))
    loss = np.exp(x)
    loss[nanmask] = np.nan
    gl: list[float | None] = [float(v) for v in g]
    for i in np.nonzero(nanmask)[0]:
        gl[int(i)] = math.nan
    steps = list(range(n))
    lossl = [float(v) for v in loss]
    if family == "resumed":
        steps, lossl, gl = _resume(rng, steps, lossl, gl, base, sigma)
    return Curve(f"{family}-{idx:03d}", family, steps, lossl, gl, events)


def _resume(
    rng: np.random.Generator,
    steps: list[int],
    loss: list[float],
    g: list[float | None],
    base: np.ndarray,
    sigma: float,
) -> tuple[list[int], list[float], list[float | None]]:
    """Insert 1-2 restarts: steps rewind to a checkpoint, with a small warm-up bump."""
    n = len(steps)
    out_s: list[int] = []
    out_l: list[float] = []
    out_g: list[float | None] = []
    cuts = sorted(int(c) for c in rng.choice(np.arange(n // 4, n - 300), size=2, replace=False))
    pos = 0
    for c in cuts:
        out_s += steps[pos:c]
        out_l += loss[pos:c]
        out_g += g[pos:c]
        back = int(rng.integers(50, 200))
        pos = c - back
        # Replayed steps after the restart: same trend, fresh noise, a +3% bump fading
        # over ~20 steps (cold dataloader and optimizer state).
        for j in range(back):
            t = pos + j
            bump = 0.03 * math.exp(-j / 20)
            out_s.append(t)
            out_l.append(math.exp(base[t] + rng.normal(0, sigma) + bump))
            gv = g[t]
            out_g.append(gv)
        pos = c
    out_s += steps[pos:]
    out_l += loss[pos:]
    out_g += g[pos:]
    return out_s, out_l, out_g


def synthetic(per_family: int = 12, n: int = 3000, seed: int = 0) -> list[Curve]:
    """Return ``per_family`` curves of each synthetic family."""
    return [
        make_curve(f, i, n, seed)
        for f in (*EVENT_FAMILIES, *HEALTHY_FAMILIES)
        for i in range(per_family)
    ]


def trace_labels(directory: Path, split: str | None = None
                 ) -> list[tuple[Path, dict[str, Any]]]:
    """Return (trace, labels) of each recorded trace in ``directory``, sorted by name.

    ``split`` (``tune`` or ``held_out``) keeps only the traces whose labels say so; a
    trace without a split is then an error. ``*.node.jsonl`` (node signals) are skipped.
    """
    out = []
    for path in sorted(directory.glob("*.jsonl")):
        if path.name.endswith(".node.jsonl"):
            continue
        label_path = path.with_suffix(".labels.json")
        if not label_path.exists():
            raise ValueError(f"{path}: no labels file {label_path.name}")
        labels = json.loads(label_path.read_text())
        if split is not None:
            if labels.get("split") not in ("tune", "held_out"):
                raise ValueError(f"{label_path}: no split (valid: tune, held_out)")
            if labels["split"] != split:
                continue
        out.append((path, labels))
    return out


def load_real(directory: Path = REAL_DIR, split: str | None = None) -> list[Curve]:
    """Load recorded curves and their labels (see the module docstring for the format).

    ``split`` (``tune`` or ``held_out``) keeps only the curves whose labels say so (the
    GPU corpus of bench/detectors/record_gpu.py); a curve without a split is then an
    error, not silently counted in either part. ``*.node.jsonl`` (node signals) are not
    curves.
    """
    curves: list[Curve] = []
    for path, labels in trace_labels(directory, split):
        label_path = path.with_suffix(".labels.json")
        events = [Event(int(e["start"]), int(e["end"]), str(e.get("kind", "spike")))
                  for e in labels.get("events", [])]
        if labels.get("healthy", not events) and events:
            raise ValueError(f"{label_path}: healthy is true but events are listed")
        points = read_steps(path)  # the detector-input format, through its one parser
        steps = [p.step for p in points]
        loss = [p.loss for p in points]
        gn = [p.grad_norm for p in points]
        family = labels.get("family") or ("real_events" if events else "real_healthy")
        curves.append(Curve(path.stem, family, steps, loss, gn, events))
    return curves
