"""The loss-spike detectors large runs use today, re-implemented as baselines.

Each follows the published behaviour summarised in /work/shared/ANCHORS.md with its
default parameters; ``feed(step, loss, grad_norm)`` returns True when it would
trigger on that step. They are re-implementations from the description, not copies.
"""

from __future__ import annotations

import math
from collections import deque


class Megatron:
    """Megatron-LM rerun state machine: NaN/Inf, or >= 10x the max of the first 100 values."""

    name = "megatron"

    def __init__(self, warmup: int = 100, factor: float = 10.0) -> None:
        self.warmup, self.factor = warmup, factor
        self.first: list[float] = []

    def feed(self, step: int, loss: float, grad_norm: float | None) -> bool:
        if not math.isfinite(loss):
            return True
        if len(self.first) < self.warmup:
            self.first.append(loss)
            return False
        return loss >= self.factor * max(self.first)


class LlmFoundry:
    """llm-foundry KillLossSpike: > 2x the mean of the last 100 losses for > 4 steps in a row."""

    name = "llm-foundry"

    def __init__(self, window: int = 100, multiplier: float = 2.0, patience: int = 4,
                 loss_cap: float = 10.0) -> None:
        self.window: deque[float] = deque(maxlen=window)
        self.multiplier, self.patience, self.loss_cap = multiplier, patience, loss_cap
        self.outliers = 0

    def feed(self, step: int, loss: float, grad_norm: float | None) -> bool:
        fired = False
        if len(self.window) == self.window.maxlen:
            mean = sum(self.window) / len(self.window)
            if loss > mean * self.multiplier:
                self.outliers += 1
                fired = self.outliers > self.patience
            else:
                self.outliers = 0
            # Its second check: every loss of a full window above the cap.
            if all(v > self.loss_cap for v in self.window):
                fired = True
        self.window.append(loss)
        return fired


class OlmoCore:
    """OLMo-core SkipStepOptimizer: loss or grad norm > mean + 6 sigma of the last 128 (>= 64)."""

    name = "olmo-core"

    def __init__(self, window: int = 128, min_values: int = 64, sigma: float = 6.0) -> None:
        self.loss: deque[float] = deque(maxlen=window)
        self.grad: deque[float] = deque(maxlen=window)
        self.min_values, self.sigma = min_values, sigma

    def _outlier(self, hist: deque[float], v: float) -> bool:
        if len(hist) < self.min_values:
            return False
        mean = sum(hist) / len(hist)
        std = math.sqrt(sum((h - mean) ** 2 for h in hist) / len(hist))
        return v - mean > self.sigma * std

    def feed(self, step: int, loss: float, grad_norm: float | None) -> bool:
        fired = self._outlier(self.loss, loss)
        if grad_norm is not None:
            fired = fired or self._outlier(self.grad, grad_norm)
            self.grad.append(grad_norm)
        self.loss.append(loss)
        return fired


class OlmoCoreLossOnly(OlmoCore):
    """OLMo-core's rule on the loss alone (its grad-norm check skips harmless steps too)."""

    name = "olmo-core-loss"

    def feed(self, step: int, loss: float, grad_norm: float | None) -> bool:
        return super().feed(step, loss, None)


class Lightning:
    """Lightning SpikeDetection: > 2.0x the running mean of the last 10 losses; NaN counts."""

    name = "lightning"

    def __init__(self, window: int = 10, factor: float = 2.0) -> None:
        self.window: deque[float] = deque(maxlen=window)
        self.factor = factor

    def feed(self, step: int, loss: float, grad_norm: float | None) -> bool:
        if not math.isfinite(loss):
            return True
        fired = False
        if self.window:
            mean = sum(self.window) / len(self.window)
            fired = loss > self.factor * mean
        self.window.append(loss)
        return fired


class Metaseq:
    """metaseq skip_spike: loss / EWM mean (span 9) > ratio.

    metaseq's ``ewm_ratio_to_skip_batch`` has no usable default (the feature is off
    unless set); we use 1.5. The EWM is updated with every loss, as in its trainer.
    """

    name = "metaseq"

    def __init__(self, span: int = 9, ratio: float = 1.5) -> None:
        self.alpha = 2.0 / (span + 1)
        self.ratio = ratio
        self.ewm: float | None = None

    def feed(self, step: int, loss: float, grad_norm: float | None) -> bool:
        if grad_norm is not None and not math.isfinite(grad_norm):
            return True  # its trainer raises FloatingPointError on non-finite gradients
        if self.ewm is None:
            self.ewm = loss
        fired = loss / self.ewm > self.ratio if self.ewm else False
        self.ewm = self.alpha * loss + (1 - self.alpha) * self.ewm
        return fired


PEERS = (Megatron, LlmFoundry, OlmoCore, OlmoCoreLossOnly, Lightning, Metaseq)
