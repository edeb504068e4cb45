"""Sample NVML once a second for the GPUs under test, matched to CUDA devices by UUID.

NVML is reached only through :mod:`sentinel.gpu.nvml`. CUDA and NVML number GPUs
differently (``CUDA_VISIBLE_DEVICES``, ``CUDA_DEVICE_ORDER``), so a CUDA device is
matched to its NVML device by UUID, or by PCI bus id when the UUID is unknown, never
by index. Without NVML the burn-in still runs; throttling is then not judged.
"""

from __future__ import annotations

import collections
import logging
import re
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from sentinel.burnin.records import NvmlReading

log = logging.getLogger(__name__)

# 24 h of 1 s samples per GPU: far more than any burn-in, yet a hard memory bound.
MAX_READINGS_PER_GPU = 86_400

_PCI_RE = re.compile(r"^(?:([0-9a-fA-F]+):)?([0-9a-fA-F]+):([0-9a-fA-F]+)(?:\.([0-7]))?$")


@dataclass(frozen=True)
class CudaIdentity:
    """How torch names one CUDA device."""

    cuda_index: int
    uuid: str  # "GPU-..." or "" when torch does not know
    pci_bus_id: str  # "0000:18:00.0"-like or ""
    name: str


def normalize_pci(bus_id: str) -> tuple[int, int, int] | None:
    """Return (domain, bus, device) of a PCI bus id in NVML's or torch's spelling."""
    m = _PCI_RE.match(bus_id.strip())
    if not m:
        return None
    dom, bus, dev, _fn = m.groups()
    return int(dom or "0", 16), int(bus, 16), int(dev, 16)


def match_devices(cuda: Sequence[CudaIdentity], nvml_devices: Sequence[Any]) -> dict[int, Any]:
    """Map each CUDA index to its NVML ``DeviceInfo`` by UUID, else by PCI bus id."""
    by_uuid = {d.uuid.lower(): d for d in nvml_devices if d.uuid}
    by_pci = {}
    for d in nvml_devices:
        key = normalize_pci(d.pci_bus_id or "")
        if key is not None:
            by_pci[key] = d
    out: dict[int, Any] = {}
    for c in cuda:
        hit = by_uuid.get(c.uuid.lower()) if c.uuid else None
        if hit is None and c.pci_bus_id:
            key = normalize_pci(c.pci_bus_id)
            hit = by_pci.get(key) if key is not None else None
        if hit is not None:
            out[c.cuda_index] = hit
    return out


def reading_from_sample(t: float, s: Any) -> NvmlReading:
    """Keep the fields of an NVML ``GpuSample`` that the burn-in judges."""
    return NvmlReading(
        t=t,
        temperature_c=s.temperature_c,
        power_w=s.power_w,
        sm_clock_hz=s.sm_clock_hz,
        clock_event_reasons=s.clock_event_reasons,
        violation_ns=dict(s.violation_ns),
        gpu_lost=bool(s.gpu_lost),
    )


class NvmlSampler:
    """A thread that samples the matched GPUs every ``interval`` seconds."""

    def __init__(self, cuda: Sequence[CudaIdentity], interval: float = 1.0,
                 nvml: Any | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self._cuda = list(cuda)
        self._interval = interval
        self._nvml = nvml
        self._clock = clock
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.error: str | None = None  # why there are no readings at all
        self.matched: dict[int, Any] = {}  # cuda index -> DeviceInfo
        self._readings: dict[int, collections.deque[tuple[float, NvmlReading]]] = {}

    def start(self) -> None:
        """Start NVML and the sampling thread; on failure record why and sample nothing."""
        try:
            from sentinel.gpu.nvml import Nvml, NvmlUnavailable  # noqa: PLC0415
        except ImportError as e:
            self.error = f"NVML wrapper unavailable: {e}"
            return
        nvml = self._nvml or Nvml()
        try:
            nvml.init()
        except NvmlUnavailable as e:
            self.error = str(e)
            return
        self._nvml = nvml
        self.matched = match_devices(self._cuda, nvml.devices())
        for c in self._cuda:
            if c.cuda_index not in self.matched:
                log.warning("CUDA device %d (%s): no NVML device with that UUID or PCI bus "
                            "id; its throttling will not be judged", c.cuda_index, c.uuid)
            self._readings[c.cuda_index] = collections.deque(maxlen=MAX_READINGS_PER_GPU)
        self._thread = threading.Thread(target=self._run, name="burnin-nvml", daemon=True)
        self._thread.start()

    def sample_once(self) -> None:
        """Take one reading of every matched GPU."""
        assert self._nvml is not None
        for idx, dev in self.matched.items():
            t = self._clock()
            try:
                s = self._nvml.sample(dev.index)
            except Exception as e:  # noqa: BLE001 - the wrapper should not raise; never crash
                log.warning("NVML sample of GPU %d failed: %s", dev.index, e)
                continue
            self._readings[idx].append((t, reading_from_sample(t, s)))

    def _run(self) -> None:
        next_t = self._clock()
        while not self._stop.is_set():
            self.sample_once()
            next_t += self._interval
            self._stop.wait(max(0.0, next_t - self._clock()))

    def stop(self) -> None:
        """Stop sampling and release NVML."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5.0)
        if self._nvml is not None and self.error is None:
            self._nvml.shutdown()

    def sm_clocks(self, cuda_index: int, since: float) -> list[float] | None:
        """Return the SM clocks of ``cuda_index`` read since ``since`` (None: NVML cannot tell).

        None also when readings exist but none has an SM clock (a GPU or VM that does not
        report it), so a warm-up waiting for steady clocks does not wait for ever.
        """
        if self.error is not None or cuda_index not in self.matched:
            return None
        readings = list(self._readings.get(cuda_index, ()))
        if len(readings) >= 2 and all(r.sm_clock_hz is None for _, r in readings):
            return None
        return [r.sm_clock_hz for t, r in readings if t >= since and r.sm_clock_hz is not None]

    def link_topologies(self) -> dict[tuple[int, int], str]:
        """Return how each pair of matched GPUs is linked, keyed by CUDA indices (a < b).

        Read once, before the burn-in, from :meth:`sentinel.gpu.nvml.Nvml.link_topology`;
        a pair NVML cannot describe is "unknown".
        """
        out: dict[tuple[int, int], str] = {}
        idx = sorted(c.cuda_index for c in self._cuda)
        for i, a in enumerate(idx):
            for b in idx[i + 1:]:
                da, db = self.matched.get(a), self.matched.get(b)
                topo = None
                if self.error is None and self._nvml is not None and da and db:
                    try:
                        topo = self._nvml.link_topology(da.index, db.index)
                    except Exception as e:  # noqa: BLE001 - the wrapper should not raise
                        log.warning("link topology of GPUs %d and %d: %s", a, b, e)
                out[(a, b)] = topo or "unknown"
        return out

    def readings(self, cuda_index: int, start: float, end: float) -> list[NvmlReading]:
        """Return readings of ``cuda_index`` taken in [start, end], times relative to start."""
        out = []
        for t, r in list(self._readings.get(cuda_index, ())):
            if start <= t <= end:
                out.append(NvmlReading(t=t - start, temperature_c=r.temperature_c,
                                       power_w=r.power_w, sm_clock_hz=r.sm_clock_hz,
                                       clock_event_reasons=r.clock_event_reasons,
                                       violation_ns=r.violation_ns, gpu_lost=r.gpu_lost))
        return out
