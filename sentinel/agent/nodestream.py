"""What the node saw each second, for the step stream's detectors (``/api/v1/node``).

A throughput drop seen on the step stream is named by what the node saw as it began
(``sentinel/rules/detectors/_signals.py``). Once a second, while a training job reports
to this agent, :class:`NodeSampler` records the newest second of the ``disk_stall``
collector's sampler (the worst device's read latency, the most I/Os in flight: the
seconds that collector exports, not a second reading) and each GPU's compute processes
and clock-event reasons (two fast NVML fields, read through ``sentinel.gpu.nvml`` as the
gpu collector reads them) into a :class:`NodeRing` of NODE_RING_SECONDS packed records.

:func:`node_records` answers ``/api/v1/node?job=J&since=T`` in the detector-input
format of a node record (docs/DETECT-INPUT.md; the rules read it with the same parser
as a file): the records after T, restricted to the GPUs job J's ranks report (every GPU
when none reports one), with the ranks the agent knows on each GPU (those of every
job: processes beyond them are another program's) and the bad clock-event reasons
(``sentinel.gpu.reasons.BAD_REASONS``; power capping is normal under load and left out).
Cost: one lock and a scan of a few devices, two NVML calls per GPU, ~100 bytes a second.
"""

from __future__ import annotations

import logging
import math
import struct
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any, NamedTuple

from sentinel.gpu.reasons import BAD_MASK
from sentinel.gpu.reasons import names as reason_names

log = logging.getLogger(__name__)

INTERVAL_S = 1.0
# Records kept: 15 minutes, more than the step-stream rule's 10-minute window.
NODE_RING_SECONDS = 900
# A record: time, read latency (NaN: no reads), I/Os in flight (-1: unknown), GPUs;
# then per GPU: index, compute processes, reason bits (-1: unknown).
_HEAD = struct.Struct("<ddiH")
_GPU = struct.Struct("<Hii")
MAX_GPUS = 64

# (index, UUID, compute processes, clock-event reason bits) of one GPU.
GpuReading = tuple[int, str, int | None, int | None]


class NodeSample(NamedTuple):
    """One second as the ring holds it (None where the node could not tell)."""

    time: float
    disk_read_latency_s: float | None
    disk_in_flight: int | None
    gpus: tuple[tuple[int, int | None, int | None], ...]  # (index, processes, reasons)


class NodeRing:
    """The newest NODE_RING_SECONDS samples, packed (~100 bytes each with 8 GPUs)."""

    def __init__(self, size: int = NODE_RING_SECONDS) -> None:
        self._q: deque[bytes] = deque(maxlen=size)
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._q)

    def append(self, s: NodeSample) -> None:
        """Add a sample, dropping the oldest when full."""
        gpus = s.gpus[:MAX_GPUS]
        parts = [_HEAD.pack(s.time, math.nan if s.disk_read_latency_s is None
                            else s.disk_read_latency_s,
                            -1 if s.disk_in_flight is None else s.disk_in_flight, len(gpus))]
        parts += [_GPU.pack(i, -1 if p is None else p, -1 if r is None else r)
                  for i, p, r in gpus]
        with self._lock:
            self._q.append(b"".join(parts))

    def since(self, t: float) -> list[NodeSample]:
        """Return the samples newer than ``t``, oldest first."""
        with self._lock:
            raw = list(self._q)
        out = []
        for b in raw:
            when, lat, inflight, n = _HEAD.unpack_from(b)
            if when <= t:
                continue
            gpus = tuple((i, None if p < 0 else p, None if r < 0 else r)
                         for i, p, r in (_GPU.unpack_from(b, _HEAD.size + k * _GPU.size)
                                         for k in range(n)))
            out.append(NodeSample(when, None if math.isnan(lat) else lat,
                                  None if inflight < 0 else inflight, gpus))
        return out


class NodeSampler:
    """A thread recording one NodeSample a second while ``active()`` (a job reports)."""

    def __init__(self, ring: NodeRing, *, disk: Callable[[], tuple[float | None, int | None]]
                 | None, gpus: Callable[[], list[GpuReading]] | None,
                 active: Callable[[], bool], now: Callable[[], float] = time.time,
                 interval: float = INTERVAL_S) -> None:
        self.ring, self.disk, self.gpus, self.active = ring, disk, gpus, active
        self.now, self.interval = now, interval
        self.uuids: dict[int, str] = {}  # GPU index -> UUID, as the readings name them
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.errors = 0

    def start(self) -> None:
        """Start the sampler thread."""
        self._thread = threading.Thread(target=self._run, name="sentinel-node", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.sample()
            except Exception:  # noqa: BLE001 - the node records stop, never the agent
                self.errors += 1
                if self.errors == 1:
                    log.exception("node records: a sample failed (counted; logged once)")

    def sample(self) -> None:
        """Record the node's newest second, if a job reports to this agent."""
        if not self.active():
            return
        lat, inflight = self.disk() if self.disk is not None else (None, None)
        readings = self.gpus() if self.gpus is not None else []
        for index, uuid, _p, _r in readings:
            self.uuids[index] = uuid
        self.ring.append(NodeSample(self.now(), lat, inflight,
                                    tuple((i, p, r) for i, _u, p, r in readings)))

    def close(self) -> None:
        """Stop the sampler thread."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2 * self.interval + 1)


def node_records(samples: list[NodeSample], uuids: dict[int, str], host: str,
                 job_gpus: set[str], ranks: dict[str, int]) -> list[dict[str, Any]]:
    """Return ``samples`` as detector-input node records for one job.

    ``job_gpus``: the UUIDs the job's ranks report (empty: every GPU counts); ``ranks``:
    ranks of any job per GPU UUID; ``host``: the node as the job's step records name it.
    """
    out = []
    for s in samples:
        procs: dict[str, int] = {}
        known: dict[str, int] = {}
        hot: dict[str, list[str]] = {}
        for index, p, r in s.gpus:
            uuid = uuids.get(index, "")
            if job_gpus and uuid not in job_gpus:
                continue
            gpu = str(index)
            if p is not None:
                procs[gpu] = p
                known[gpu] = ranks.get(uuid, 0)
            if r is not None and r & BAD_MASK:
                hot[gpu] = reason_names(r)
        rec: dict[str, Any] = {"node": host, "time": s.time,
                               "disk_read_latency_s": s.disk_read_latency_s,
                               "disk_in_flight": s.disk_in_flight}
        if procs:
            rec["gpu_processes"], rec["gpu_ranks"] = procs, known
        if hot:
            rec["throttle_reasons"] = hot
        out.append(rec)
    return out
