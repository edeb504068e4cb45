"""GPU metrics through NVML (sentinel.gpu.nvml), plus the XID event counter."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from sentinel.agent.collectors.base import Collector, Context
from sentinel.exposition import (
    CounterMetricFamily,
    GaugeMetricFamily,
    LabelSet,
    MetricFamily,
    Sample,
)
from sentinel.gpu.nvml import (
    DeviceInfo,
    GpuSample,
    Nvml,
    NvmlUnavailable,
    XidWaiter,
)
from sentinel.gpu.reasons import CLOCK_EVENT_REASONS

log = logging.getLogger(__name__)

LABELS = ["gpu", "UUID", "modelName", "pci_bus_id", "hostname"]
# The NVML fields the per-second node records read (sentinel.agent.nodestream): another
# process on a GPU, and why its clocks are held down. Both are 1-8 us calls on an H100.
QUICK_FIELDS = ("compute_processes", "clock_event_reasons")
# Retrying nvmlInit on every scrape would log and cost on GPU-less nodes; once a
# minute still finds a driver loaded after the agent started.
NVML_RETRY_SECONDS = 60.0

# (metric, help, sample attribute) for the plain per-GPU gauges.
_GAUGES: list[tuple[str, str, str]] = [
    ("sentinel_gpu_temperature_celsius", "GPU core temperature.", "temperature_c"),
    ("sentinel_gpu_memory_temperature_celsius", "HBM temperature.", "memory_temperature_c"),
    ("sentinel_gpu_slowdown_temperature_celsius",
     "Temperature at which HW slowdown starts.", "slowdown_temperature_c"),
    ("sentinel_gpu_shutdown_temperature_celsius",
     "Temperature at which the GPU shuts down.", "shutdown_temperature_c"),
    ("sentinel_gpu_sm_clock_hertz", "Current SM clock.", "sm_clock_hz"),
    ("sentinel_gpu_memory_clock_hertz", "Current memory clock.", "memory_clock_hz"),
    ("sentinel_gpu_sm_clock_max_hertz", "Maximum SM clock.", "sm_clock_max_hz"),
    ("sentinel_gpu_utilization_ratio", "GPU utilization (0..1).", "utilization_gpu_ratio"),
    ("sentinel_gpu_memory_utilization_ratio",
     "Memory-controller utilization (0..1).", "utilization_memory_ratio"),
    ("sentinel_gpu_memory_used_bytes", "Framebuffer memory used.", "memory_used_bytes"),
    ("sentinel_gpu_memory_total_bytes", "Framebuffer memory total.", "memory_total_bytes"),
    ("sentinel_gpu_power_watts", "Power draw.", "power_w"),
    ("sentinel_gpu_power_limit_watts", "Enforced power limit.", "power_limit_w"),
    ("sentinel_gpu_compute_processes",
     "Compute processes on the GPU (NVML running processes): more than the job's ranks "
     "on it means another process competes for it.", "compute_processes"),
]


class GpuCollector(Collector):
    """Per-GPU NVML readings; a broken GPU reports sentinel_gpu_up 0, others go on."""

    name = "gpu"

    def __init__(self, ctx: Context, nvml_factory: Callable[[], Nvml] | None = None) -> None:
        super().__init__(ctx)
        self._factory = nvml_factory or (
            lambda: Nvml(
                ctx.nvml_backend,
                slow_refresh_seconds=ctx.config.gpu_slow_fields_seconds,
                monotonic=ctx.monotonic,
            )
        )
        self._nvml: Nvml | None = None
        self._devices: list[DeviceInfo] = []
        self._unavailable: str | None = None
        self._next_try = 0.0
        self._xid: XidWaiter | None = None
        self._xid_counts: dict[tuple[str, int], int] = {}
        self._xid_lock = threading.Lock()
        self._gpu_labels: dict[int, _GpuLabels] = {}
        # The families, built once and reset at every collect (one collect at a time).
        self._fams = _Families()
        self._avail = GaugeMetricFamily(
            "sentinel_gpu_nvml_available",
            "1 if NVML loaded, 0 if no NVML library/driver (no GPU series then).",
            labels=["hostname"],
        )

    def start(self) -> None:
        """Load NVML and start the XID waiter (no NVML: report absent, carry on)."""
        self._try_init()

    def _try_init(self) -> None:
        now = self.ctx.monotonic()
        if self._nvml is not None or now < self._next_try:
            return
        self._next_try = now + NVML_RETRY_SECONDS
        nv = self._factory()
        try:
            nv.init()
        except NvmlUnavailable as e:
            if self._unavailable != str(e):
                log.warning("gpu collector: NVML unavailable, no GPU metrics: %s", e)
            self._unavailable = str(e)
            return
        self._nvml = nv
        self._devices = nv.devices()
        self._unavailable = None
        log.info("gpu collector: %d GPU(s): %s", len(self._devices),
                 ", ".join(f"{d.index}:{d.name}" for d in self._devices))
        self._xid = XidWaiter(nv, self.record_xid)
        if not self._xid.start():
            log.warning("gpu collector: XID counter off: %s", self._xid.error)
            self._xid = None

    def record_xid(self, uuid: str, xid: int) -> None:
        """Count one XID event (called from the waiter thread)."""
        log.warning("XID %d on GPU %s", xid, uuid)
        with self._xid_lock:
            self._xid_counts[(uuid, xid)] = self._xid_counts.get((uuid, xid), 0) + 1

    def _labels(self, d: DeviceInfo) -> list[str]:
        return [str(d.index), d.uuid, d.name, d.pci_bus_id, self.ctx.hostname]

    def _labels_of(self, d: DeviceInfo) -> _GpuLabels:
        """Return the GPU's label sets, kept while its label values stay the same."""
        values = self._labels(d)
        gl = self._gpu_labels.get(d.index)
        if gl is None or gl.values != values:
            gl = self._gpu_labels[d.index] = _GpuLabels(values)
        return gl

    def collect(self) -> list[MetricFamily]:
        """Sample every GPU and build the GPU families."""
        self._try_init()
        avail = self._avail
        avail.reset()
        avail.add_metric([self.ctx.hostname], 0.0 if self._nvml is None else 1.0)
        if self._nvml is None:
            self.success = False
            return [avail]
        self.success = True
        fams = self._fams
        fams.reset()
        for d in self._devices:
            s = self._nvml.sample(d.index)
            if s.errors:
                log.debug("GPU %d: %s", d.index, "; ".join(s.errors))
            fams.add_sample(self._labels_of(d), s)
        self._add_xids(fams.xid)
        return [avail, *fams.metrics()]

    def quick(self) -> list[tuple[int, str, int | None, int | None]]:
        """Return (index, UUID, compute processes, clock-event reasons) of every GPU.

        Two fast NVML fields a GPU, for the agent's per-second node records; None where
        NVML cannot tell, nothing while NVML is not loaded. Never raises (a GPU that
        errors gives None for both).
        """
        nv = self._nvml
        if nv is None:
            return []
        out = []
        for d in self._devices:
            s = nv.sample_fields(d.index, QUICK_FIELDS)
            out.append((d.index, d.uuid, s.compute_processes, s.clock_event_reasons))
        return out

    def _add_xids(self, xid: CounterMetricFamily) -> None:
        """Add the XID counts, labelled like their GPU (an unknown UUID keeps only it)."""
        by_uuid = {d.uuid: d for d in self._devices}
        with self._xid_lock:
            counts = dict(self._xid_counts)
        for (uuid, code), n in sorted(counts.items()):
            dev = by_uuid.get(uuid)
            lab = self._labels(dev) if dev else ["", uuid, "", "", self.ctx.hostname]
            xid.add_metric([*lab, str(code)], float(n))

    def close(self) -> None:
        """Stop the XID waiter and release NVML."""
        if self._xid is not None:
            self._xid.stop()
            self._xid = None
        if self._nvml is not None:
            self._nvml.shutdown()
            self._nvml = None


class _GpuLabels:
    """One GPU's label sets, built once and shared by its series in every scrape.

    Building a label dict per series per scrape was a third of the collect (~30 series
    a GPU carry a label beyond the GPU's own), and the writer then looked each up; as
    :class:`~sentinel.exposition.LabelSet` they are built and formatted once. The extra
    labels come from fixed sets (clock-event reasons, violation policies, ECC kinds,
    remap causes), which bounds the cache.
    """

    __slots__ = ("values", "base", "_extra", "reasons")

    def __init__(self, values: list[str]) -> None:
        self.values = values
        self.base = LabelSet(zip(LABELS, values, strict=True))
        self._extra: dict[tuple[str, ...], LabelSet] = {}
        # (label set, bit) of every clock-event reason, in exposition order.
        extra = self.extra
        self.reasons = [(extra("reason", r), bit) for r, bit in CLOCK_EVENT_REASONS.items()]

    def extra(self, *pairs: str) -> LabelSet:
        """Return the GPU's labels plus ``name, value[, name, value]``."""
        d = self._extra.get(pairs)
        if d is None:
            more = zip(pairs[::2], pairs[1::2], strict=True)
            d = self._extra[pairs] = LabelSet([*self.base.items(), *more])
        return d


class _Families:
    """The per-GPU metric families of one collect, filled one GPU sample at a time."""

    def __init__(self) -> None:
        self.up = GaugeMetricFamily(
            "sentinel_gpu_up",
            "1 if every query of this GPU worked in the last collect, 0 if it errored or vanished.",
            labels=LABELS,
        )
        self.gauges = {
            name: GaugeMetricFamily(name, help_, labels=LABELS) for name, help_, _ in _GAUGES
        }
        # (samples, name, GpuSample attribute) of each plain gauge, for add_sample's loop.
        self._plain = [(self.gauges[name].samples, name, attr) for name, _h, attr in _GAUGES]
        self.energy = CounterMetricFamily(
            "sentinel_gpu_energy_joules", "Energy used since the driver loaded.", labels=LABELS
        )
        self.reasons = GaugeMetricFamily(
            "sentinel_gpu_clock_event_active",
            "1 while this clock-event (throttle) reason is active.",
            labels=[*LABELS, "reason"],
        )
        self.violation = CounterMetricFamily(
            "sentinel_gpu_violation_seconds",
            "Time clocks were held below target, by NVML perf policy.",
            labels=[*LABELS, "reason"],
        )
        self.ecc = CounterMetricFamily(
            "sentinel_gpu_ecc_errors", "ECC error counts.", labels=[*LABELS, "type", "counter"]
        )
        self.remapped = GaugeMetricFamily(
            "sentinel_gpu_remapped_rows", "Rows remapped, by cause.", labels=[*LABELS, "cause"]
        )
        self.pending = GaugeMetricFamily(
            "sentinel_gpu_remap_pending", "1 if a row remap is pending (reset needed).",
            labels=LABELS,
        )
        self.failure = GaugeMetricFamily(
            "sentinel_gpu_remap_failure", "1 if a row remap failed.", labels=LABELS
        )
        self.replay = CounterMetricFamily(
            "sentinel_gpu_pcie_replay", "PCIe replay counter.", labels=LABELS
        )
        self.xid = CounterMetricFamily(
            "sentinel_gpu_xid_errors",
            "XID events seen by the agent's NVML event waiter (every event counts).",
            labels=[*LABELS, "xid"],
        )

    def reset(self) -> None:
        """Empty every family, to fill them from this collect's samples."""
        for f in self.metrics():
            f.reset()

    def add_sample(self, gl: _GpuLabels, s: GpuSample) -> None:
        """Add one GPU's sample; a lost GPU keeps only sentinel_gpu_up 0."""
        base = gl.base
        self.up.add_sample(self.up.name, base, 0.0 if (s.errors or s.gpu_lost) else 1.0)
        if s.gpu_lost:
            return
        for samples, name, attr in self._plain:
            v = getattr(s, attr)
            if v is not None:
                samples.append(Sample(name, base, float(v)))
        plain = ((self.energy, s.energy_j), (self.replay, s.pcie_replay),
                 (self.pending, s.remap_pending), (self.failure, s.remap_failure))
        for fam, value in plain:
            if value is not None:
                fam.add_sample(fam.name, base, float(value))
        extra = gl.extra
        active = s.clock_event_reasons
        if active is not None:
            add, name = self.reasons.samples.append, self.reasons.name
            for labels, bit in gl.reasons:
                add(Sample(name, labels, 1.0 if active & bit else 0.0))
        add, name = self.violation.samples.append, self.violation.name
        for vname, ns in s.violation_ns.items():
            add(Sample(name, extra("reason", vname), ns / 1e9))
        add, name = self.ecc.samples.append, self.ecc.name
        for (etype, counter), n in s.ecc_errors.items():
            add(Sample(name, extra("type", etype, "counter", counter), float(n)))
        add, name = self.remapped.samples.append, self.remapped.name
        if s.remapped_rows_correctable is not None:
            add(Sample(name, extra("cause", "correctable"), float(s.remapped_rows_correctable)))
        if s.remapped_rows_uncorrectable is not None:
            add(Sample(name, extra("cause", "uncorrectable"),
                       float(s.remapped_rows_uncorrectable)))

    def metrics(self) -> list[MetricFamily]:
        """Return the families in exposition order."""
        return [self.up, *self.gauges.values(), self.energy, self.reasons, self.violation,
                self.ecc, self.remapped, self.pending, self.failure, self.replay, self.xid]
