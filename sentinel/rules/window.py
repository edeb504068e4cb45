"""The input of a detector: a window of step records and/or labelled time series.

A detector is a pure function ``detect(window, params) -> list[Finding]``. The
window holds everything it may look at, already fetched: step-exact records of a
job (from the agent's step stream or a JSON-lines file), the per-second node records
of its nodes (same sources), and time series from
Prometheus, keyed by a role name the rule maps to PromQL (``tokens_per_sec``,
``disk_read_latency``...). ``findings`` carries what other detectors found in the
same cycle, for the diagnosis detector; ``previous`` what this rule run reported in
earlier cycles, so a detector whose window no longer holds the start of a long
episode (or its baseline) continues it under the same key instead of inventing a new one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from sentinel.rules.finding import Finding


@dataclass(frozen=True)
class StepPoint:
    """One training step: loss, grad norm, throughput, when, where and on which batch."""

    step: int
    loss: float
    grad_norm: float | None = None
    tokens_per_sec: float | None = None
    time: float | None = None
    node: str | None = None
    rank: int | None = None
    # Global batch index the step trained on, when the job reports it: equal to the
    # step until the first skipped batch, so a spike's steps map to the batches to skip.
    batch: int | None = None
    # Tokens the step trained on (the agent's step records): with the previous step's
    # time of the same rank it gives the step's own tokens/sec.
    tokens: float | None = None
    # Which run of several in one file (``run``/``job`` in ``sentinel detect``'s input).
    run: str | None = None
    # False for a record without a loss (a throughput-only trace): ``loss`` is NaN
    # then, and the loss detector skips the record instead of calling it non-finite.
    loss_given: bool = True
    # Seconds the step waited for its input (``Reporter.step(data_s=)``), when reported:
    # a share of the step time that rises with a drop names the input pipeline.
    data_s: float | None = None


@dataclass(frozen=True)
class NodePoint:
    """What one node saw in one second: its disks, its GPUs' processes and throttling.

    The agent samples it once a second (``/api/v1/node``); ``sentinel detect FILE``
    reads it from lines without ``step`` (docs/DETECT-INPUT.md). Per-GPU values are
    keyed by the GPU's index as a string (the ``gpu`` label). ``None``/empty: unknown.
    """

    time: float
    node: str | None = None
    run: str | None = None
    # The worst one-second mean read latency of the node's disks (None: no reads).
    disk_read_latency_s: float | None = None
    # The most I/Os in flight on any of the node's disks at the sample.
    disk_in_flight: int | None = None
    # Compute processes NVML lists per GPU, and the job ranks the agent knows per GPU:
    # processes beyond the ranks are another program's (GPU contention).
    gpu_processes: dict[str, int] = field(default_factory=dict)
    gpu_ranks: dict[str, int] = field(default_factory=dict)
    # Clock-event reasons active per GPU (names from sentinel.gpu.reasons); the agent
    # sends only the bad ones (BAD_REASONS), a file may name any.
    throttle_reasons: dict[str, tuple[str, ...]] = field(default_factory=dict)


@dataclass
class Series:
    """One labelled time series: ``points`` are (unix seconds, value), oldest first."""

    labels: dict[str, str]
    points: list[tuple[float, float]]

    def label(self, *names: str) -> str:
        """Return the first of ``names`` present in the labels, or ""."""
        for n in names:
            v = self.labels.get(n)
            if v:
                return v
        return ""

    def finite(self) -> list[tuple[float, float]]:
        """Return the points whose value is a finite number."""
        return [(t, v) for t, v in self.points if math.isfinite(v)]


@dataclass
class Window:
    """What one detector sees in one evaluation: steps, series, earlier findings."""

    job: str = ""
    steps: list[StepPoint] = field(default_factory=list)
    # Node records of the job's nodes (the agent's /api/v1/node, or a file's node lines).
    nodes: list[NodePoint] = field(default_factory=list)
    series: dict[str, list[Series]] = field(default_factory=dict)
    findings: list[Finding] = field(default_factory=list)
    # Evaluation time (unix seconds); None offline, where the data's end is "now".
    now: float | None = None
    # Resolution of the series in seconds (the range query's step), if known.
    step_s: float | None = None
    # Length of the queried range in seconds, when the series came from a range query.
    range_s: float | None = None
    # What this rule run reported in earlier cycles (firing, and resolved ones the engine
    # still remembers); empty offline and on the first cycle.
    previous: list[Finding] = field(default_factory=list)

    def role(self, name: str) -> list[Series]:
        """Return the series for a role, or an empty list."""
        return self.series.get(name, [])


NODE_LABELS = ("hostname", "node", "instance")


def node_of(s: Series) -> str:
    """Return the node a series belongs to (``hostname``, else ``node``, else ``instance``)."""
    return s.label(*NODE_LABELS)
