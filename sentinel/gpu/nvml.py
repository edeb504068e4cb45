"""Read GPUs through NVML: the only module in sentinel that calls NVML.

What is read is one table, :data:`FIELDS`: per query its name, the NVML getter, the
conversion of NVML's answer into :class:`GpuSample` attributes, and whether it is slow
(cached). One loop reads it (:meth:`Nvml._read`); :meth:`Nvml._failed` turns an NVML
error into "no value" for that one field (recorded in
``GpuSample.errors``) so one broken query, or one broken GPU, never breaks a scrape.
``NOT_SUPPORTED`` is not an error: a field the board does not have (say, PCIe replay on
some SKUs) is simply absent. ``GpuIsLost``/``Unknown`` mark the GPU lost: no further
queries to it in that sample.

The backend is the ``pynvml`` module of ``nvidia-ml-py`` by default; tests and
``--gpu-replay`` pass :class:`sentinel.gpu.nvml_replay.ReplayBackend`, which
answers the same calls from a captured dump.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)

# nvml.h enum values (stable ABI), so the replay backend need not define them.
_TEMPERATURE_GPU = 0
_THRESHOLD_SHUTDOWN = 0
_THRESHOLD_SLOWDOWN = 1
_CLOCK_SM = 1
_CLOCK_MEM = 2
_FI_DEV_MEMORY_TEMP = 82
_VALUE_TYPE_DOUBLE = 0
_ERROR_NOT_SUPPORTED = 3
_ERROR_TIMEOUT = 10
_ERROR_GPU_IS_LOST = 15
_ERROR_UNKNOWN = 999
_ERROR_FUNCTION_NOT_FOUND = 13
_ERROR_ARGUMENT_VERSION_MISMATCH = 25
_EVENT_TYPE_XID_CRITICAL = 0x8
_P2P_CAPS_INDEX_NVLINK = 2
_P2P_STATUS_OK = 0
# nvmlGpuTopologyLevel_t -> the names nvidia-smi topo -m prints (lowercase): one PCIe
# switch (pix), several (pxb), the host bridge (phb), the NUMA node (node), across
# NUMA nodes (sys). Internal (two GPUs on one board) counts as one switch.
TOPOLOGY_LEVELS: dict[int, str] = {0: "pix", 10: "pix", 20: "pxb", 30: "phb", 40: "node",
                                   50: "sys"}

VIOLATION_POLICIES: dict[str, int] = {
    "power": 0,
    "thermal": 1,
    "sync_boost": 2,
    "board_limit": 3,
    "low_utilization": 4,
    "reliability": 5,
    "total_app_clocks": 10,
    "total_base_clocks": 11,
}
ECC_TYPES: dict[str, int] = {"corrected": 0, "uncorrected": 1}
ECC_COUNTERS: dict[str, int] = {"volatile": 0, "aggregate": 1}

# How long one XID wait blocks before checking whether to stop: bounds shutdown time.
XID_WAIT_TIMEOUT_MS = 500


class NvmlUnavailable(Exception):
    """NVML cannot be used here (no library, no driver); the message says which."""


@dataclass(frozen=True)
class DeviceInfo:
    """The identity of one GPU, as its labels show it."""

    index: int
    uuid: str
    name: str
    pci_bus_id: str


@dataclass
class GpuSample:
    """One reading of one GPU; every value is None when NVML could not tell."""

    temperature_c: float | None = None
    memory_temperature_c: float | None = None
    slowdown_temperature_c: float | None = None
    shutdown_temperature_c: float | None = None
    sm_clock_hz: float | None = None
    memory_clock_hz: float | None = None
    sm_clock_max_hz: float | None = None
    utilization_gpu_ratio: float | None = None
    utilization_memory_ratio: float | None = None
    memory_used_bytes: int | None = None
    memory_total_bytes: int | None = None
    power_w: float | None = None
    power_limit_w: float | None = None
    energy_j: float | None = None
    clock_event_reasons: int | None = None
    violation_ns: dict[str, int] = field(default_factory=dict)
    ecc_errors: dict[tuple[str, str], int] = field(default_factory=dict)
    remapped_rows_correctable: int | None = None
    remapped_rows_uncorrectable: int | None = None
    remap_pending: bool | None = None
    remap_failure: bool | None = None
    pcie_replay: int | None = None
    # Compute processes NVML sees on the GPU (a job's ranks, and any other: contention).
    compute_processes: int | None = None
    errors: list[str] = field(default_factory=list)
    gpu_lost: bool = False


class _Missing(Exception):
    """A field NVML does not support on this device (no value, not an error)."""


def _text(v: Any) -> str:
    return v.decode(errors="replace") if isinstance(v, bytes) else str(v)


class _BadAnswer(Exception):
    """NVML answered, but with a per-field error code (recorded, the GPU stays usable)."""


@dataclass(frozen=True)
class NvmlField:
    """One NVML query of a device and where its answer goes in a GpuSample."""

    name: str  # the query's name in GpuSample.errors ("power: NVMLError_NoPermission")
    getter: Callable[[Nvml], Callable[..., Any]]  # the NVML function, looked up per call
    args: tuple[Any, ...]  # passed after the device handle
    convert: Callable[[Any], dict[str, Any]]  # NVML's answer -> GpuSample attributes
    slow: bool = False  # costly or fixed: re-read every slow_refresh_seconds only


def _fn(name: str) -> Callable[[Nvml], Callable[..., Any]]:
    return lambda nv: getattr(nv.backend, name)


def _clock_event_reasons_fn(nv: Nvml) -> Callable[..., Any]:
    # Renamed from "ThrottleReasons" in newer nvidia-ml-py; accept either.
    b = nv.backend
    fn: Callable[..., Any] = (getattr(b, "nvmlDeviceGetCurrentClocksEventReasons", None)
                              or b.nvmlDeviceGetCurrentClocksThrottleReasons)
    return fn


def _keyed(attr: str, key: Any, convert: Callable[[Any], Any]) -> Callable[[Any], dict[str, Any]]:
    """Return a conversion that stores one entry of a dict attribute (ECC, violations)."""
    return lambda v: {attr: {key: convert(v)}}


def _memory_temperature(values: list[Any]) -> dict[str, Any]:
    v = values[0]
    code = int(v.nvmlReturn)
    if code == _ERROR_NOT_SUPPORTED:
        raise _Missing("memory_temperature")
    if code != 0:
        raise _BadAnswer(f"NVML return {code}")
    raw = v.value.dVal if int(v.valueType) == _VALUE_TYPE_DOUBLE else v.value.uiVal
    return {"memory_temperature_c": float(raw)}


def _remapped_rows(v: tuple[Any, Any, Any, Any]) -> dict[str, Any]:
    corr, unc, pending, failure = v
    return {"remapped_rows_correctable": int(corr), "remapped_rows_uncorrectable": int(unc),
            "remap_pending": bool(pending), "remap_failure": bool(failure)}


# Slow fields are costly calls (energy 2.4 ms, each violation counter 0.4 ms, max clock
# 0.8 ms on the device machine's H100) or values that do not change while the driver is
# loaded (thresholds, max clock); every other field costs 1-8 us (bench/nvml_calls.py).
SLOW = True

# Every field Nvml.sample reads, in the order it reads them (fast ones, then slow ones).
FIELDS: tuple[NvmlField, ...] = (
    NvmlField("temperature", _fn("nvmlDeviceGetTemperature"), (_TEMPERATURE_GPU,),
              lambda v: {"temperature_c": float(v)}),
    NvmlField("memory_temperature", _fn("nvmlDeviceGetFieldValues"), ([_FI_DEV_MEMORY_TEMP],),
              _memory_temperature),
    NvmlField("sm_clock", _fn("nvmlDeviceGetClockInfo"), (_CLOCK_SM,),
              lambda v: {"sm_clock_hz": float(v) * 1e6}),
    NvmlField("memory_clock", _fn("nvmlDeviceGetClockInfo"), (_CLOCK_MEM,),
              lambda v: {"memory_clock_hz": float(v) * 1e6}),
    NvmlField("utilization", _fn("nvmlDeviceGetUtilizationRates"), (),
              lambda u: {"utilization_gpu_ratio": float(u.gpu) / 100.0,
                         "utilization_memory_ratio": float(u.memory) / 100.0}),
    NvmlField("memory", lambda nv: nv._memory_info, (),
              lambda m: {"memory_used_bytes": int(m.used), "memory_total_bytes": int(m.total)}),
    NvmlField("power", _fn("nvmlDeviceGetPowerUsage"), (),
              lambda v: {"power_w": float(v) / 1000.0}),
    NvmlField("power_limit", _fn("nvmlDeviceGetEnforcedPowerLimit"), (),
              lambda v: {"power_limit_w": float(v) / 1e3}),
    NvmlField("clock_event_reasons", _clock_event_reasons_fn, (),
              lambda v: {"clock_event_reasons": int(v)}),
    *(NvmlField(f"ecc_{tname}_{cname}", _fn("nvmlDeviceGetTotalEccErrors"), (et, ct),
                _keyed("ecc_errors", (tname, cname), int))
      for tname, et in ECC_TYPES.items() for cname, ct in ECC_COUNTERS.items()),
    NvmlField("remapped_rows", _fn("nvmlDeviceGetRemappedRows"), (), _remapped_rows),
    NvmlField("compute_processes", _fn("nvmlDeviceGetComputeRunningProcesses"), (),
              lambda v: {"compute_processes": len(v)}),
    NvmlField("slowdown_temperature", _fn("nvmlDeviceGetTemperatureThreshold"),
              (_THRESHOLD_SLOWDOWN,), lambda v: {"slowdown_temperature_c": float(v)}, SLOW),
    NvmlField("shutdown_temperature", _fn("nvmlDeviceGetTemperatureThreshold"),
              (_THRESHOLD_SHUTDOWN,), lambda v: {"shutdown_temperature_c": float(v)}, SLOW),
    NvmlField("sm_clock_max", _fn("nvmlDeviceGetMaxClockInfo"), (_CLOCK_SM,),
              lambda v: {"sm_clock_max_hz": float(v) * 1e6}, SLOW),
    NvmlField("energy", _fn("nvmlDeviceGetTotalEnergyConsumption"), (),
              lambda v: {"energy_j": float(v) / 1000.0}, SLOW),
    *(NvmlField(f"violation_{name}", _fn("nvmlDeviceGetViolationStatus"), (policy,),
                _keyed("violation_ns", name, lambda vt: int(vt.violationTime)), SLOW)
      for name, policy in VIOLATION_POLICIES.items()),
    NvmlField("pcie_replay", _fn("nvmlDeviceGetPcieReplayCounter"), (),
              lambda v: {"pcie_replay": int(v)}, SLOW),
)
FAST_FIELDS = tuple(f for f in FIELDS if not f.slow)
SLOW_FIELDS = tuple(f for f in FIELDS if f.slow)


class Nvml:
    """A thin, error-tolerant wrapper over the NVML calls the gpu collector needs."""

    def __init__(
        self,
        backend: Any | None = None,
        *,
        slow_refresh_seconds: float = 0.0,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._backend: Any = backend
        # Fields in SLOW_FIELDS are re-read at most every slow_refresh_seconds and served
        # from this cache in between (0: read every time, as burn-in needs).
        self._slow_refresh = slow_refresh_seconds
        self._monotonic = monotonic
        self._slow_cache: dict[int, tuple[float, dict[str, Any], list[str]]] = {}
        self._handles: dict[int, Any] = {}
        self._devices: list[DeviceInfo] = []
        self._initialised = False
        self._lock = threading.Lock()
        self._memory_v2 = True

    @property
    def backend(self) -> Any:
        """Return the backend module or object (pynvml or a replay)."""
        return self._backend

    def init(self) -> None:
        """Load NVML and list devices; raise NvmlUnavailable saying why it cannot."""
        if self._backend is None:
            try:
                import pynvml  # noqa: PLC0415 - only this module imports NVML, and only here
            except ImportError as e:
                raise NvmlUnavailable(
                    f"nvidia-ml-py is not installed ({e}); pip install nvidia-ml-py"
                ) from e
            self._backend = pynvml
        b = self._backend
        try:
            b.nvmlInit()
        except b.NVMLError as e:
            raise NvmlUnavailable(f"nvmlInit failed: {type(e).__name__}: {e}") from e
        except OSError as e:
            raise NvmlUnavailable(f"nvmlInit failed: {e}") from e
        self._initialised = True
        self._enumerate()

    def _enumerate(self) -> None:
        b = self._backend
        try:
            count = int(b.nvmlDeviceGetCount())
        except b.NVMLError as e:
            raise NvmlUnavailable(f"nvmlDeviceGetCount failed: {type(e).__name__}: {e}") from e
        devices: list[DeviceInfo] = []
        handles: dict[int, Any] = {}
        for i in range(count):
            try:
                h = b.nvmlDeviceGetHandleByIndex(i)
                uuid = _text(b.nvmlDeviceGetUUID(h))
                name = _text(b.nvmlDeviceGetName(h))
            except b.NVMLError as e:
                # A GPU that is gone at start still shows up, as lost, under its index.
                log.warning("GPU %d: cannot read its identity: %s: %s", i, type(e).__name__, e)
                devices.append(DeviceInfo(index=i, uuid=f"unknown-{i}", name="unknown",
                                          pci_bus_id=""))
                continue
            try:
                pci = b.nvmlDeviceGetPciInfo_v3(h)
                bus = _text(getattr(pci, "busId", "") or getattr(pci, "busIdLegacy", ""))
            except b.NVMLError:
                bus = ""
            handles[i] = h
            devices.append(DeviceInfo(index=i, uuid=uuid, name=name, pci_bus_id=bus))
        self._handles = handles
        self._devices = devices

    def devices(self) -> list[DeviceInfo]:
        """Return the GPUs NVML listed at init."""
        return list(self._devices)

    def handle(self, index: int) -> Any:
        """Return the backend's handle for GPU ``index`` (KeyError if it had none)."""
        return self._handles[index]

    def _memory_info(self, h: Any) -> Any:
        """Return memory info as nvidia-smi counts it (v2: "used" excludes reserved memory).

        v1 counts the driver's reserved memory as used (about 500 MiB more on an H100, seen
        on the device machine); drivers or bindings without v2 fall back to v1.
        """
        b = self._backend
        v2 = getattr(b, "nvmlMemory_v2", None)
        if v2 is not None and self._memory_v2:
            try:
                return b.nvmlDeviceGetMemoryInfo(h, version=v2)
            except b.NVMLError as e:
                if getattr(e, "value", None) not in (
                    _ERROR_NOT_SUPPORTED,
                    _ERROR_FUNCTION_NOT_FOUND,
                    _ERROR_ARGUMENT_VERSION_MISMATCH,
                ):
                    raise
                self._memory_v2 = False
        return b.nvmlDeviceGetMemoryInfo(h)

    @staticmethod
    def _failed(s: GpuSample, what: str, e: Exception) -> None:
        """Record an NVML error in ``s`` (NOT_SUPPORTED is none: the field is absent)."""
        code = getattr(e, "value", None)
        if code == _ERROR_NOT_SUPPORTED:
            return
        s.errors.append(f"{what}: {type(e).__name__}")
        if code in (_ERROR_GPU_IS_LOST, _ERROR_UNKNOWN) or "GpuIsLost" in type(e).__name__:
            s.gpu_lost = True

    def _start(self, index: int) -> tuple[GpuSample, Any]:
        """Return an empty sample and GPU ``index``'s handle (None: the sample says lost)."""
        s = GpuSample()
        h = self._handles.get(index)
        if h is None:
            s.errors.append("handle: no NVML handle for this GPU")
            s.gpu_lost = True
        return s, h

    def sample(self, index: int) -> GpuSample:
        """Read every field of GPU ``index``; failures become None plus an error entry."""
        s, h = self._start(index)
        if h is None:
            return s
        with self._lock:
            self._read(s, h, FAST_FIELDS)
            if not s.gpu_lost:
                self._sample_slow(index, s, h)
        return s

    def sample_fields(self, index: int, names: tuple[str, ...]) -> GpuSample:
        """Read only the FAST_FIELDS named (``compute_processes``...) of GPU ``index``.

        For readers that need a few fields often (the agent's per-second node records):
        the same definitions and error handling as :meth:`sample`, a fraction of the calls.
        """
        s, h = self._start(index)
        if h is None:
            return s
        fields = tuple(f for f in FAST_FIELDS if f.name in names)
        with self._lock:
            self._read(s, h, fields)
        return s

    def _sample_slow(self, index: int, s: GpuSample, h: Any) -> None:
        """Fill the SLOW_FIELDS' attributes, from the cache while it is fresh enough."""
        now = self._monotonic()
        cached = self._slow_cache.get(index)
        if cached is not None and self._slow_refresh > 0 and now - cached[0] < self._slow_refresh:
            _, values, errors = cached
        else:
            fresh = GpuSample()
            written = self._read(fresh, h, SLOW_FIELDS)
            if fresh.gpu_lost:
                s.gpu_lost = True
                s.errors.extend(fresh.errors)
                self._slow_cache.pop(index, None)
                return
            values = {a: getattr(fresh, a) for a in written}
            errors = list(fresh.errors)
            self._slow_cache[index] = (now, values, errors)
        for a, v in values.items():
            setattr(s, a, dict(v) if isinstance(v, dict) else v)
        s.errors.extend(errors)

    def _read(self, s: GpuSample, h: Any, fields: tuple[NvmlField, ...]) -> set[str]:
        """Query ``fields`` of device ``h`` into ``s``; return the attributes written.

        The loop is the scrape's hot path (~20 fields a GPU): it calls each getter
        itself and hands an NVML error to :meth:`_failed`; once the GPU is lost it stops.
        """
        written: set[str] = set()
        nvml_error = self._backend.NVMLError
        for f in fields:
            if s.gpu_lost:
                break  # each further call would fail, slowly
            try:
                answer = f.getter(self)(h, *f.args)
            except nvml_error as e:
                self._failed(s, f.name, e)
                continue
            try:
                values = f.convert(answer)
            except _Missing:
                continue
            except _BadAnswer as e:
                s.errors.append(f"{f.name}: {e}")
                continue
            for attr, v in values.items():
                if isinstance(v, dict):
                    getattr(s, attr).update(v)
                else:
                    setattr(s, attr, v)
                written.add(attr)
        return written

    def link_topology(self, a: int, b: int) -> str | None:
        """Return how GPUs ``a`` and ``b`` are linked: nvlink, or a PCIe level (pix ... sys).

        NVLink when NVML reports peer-to-peer over NVLink as OK between the two, else the
        PCIe level of their closest common ancestor (:data:`TOPOLOGY_LEVELS`). None when
        NVML cannot tell (unsupported, lost GPU): the caller treats the link as unknown.
        """
        ha, hb = self._handles.get(a), self._handles.get(b)
        if ha is None or hb is None:
            return None
        bk = self._backend
        with self._lock:
            try:
                if int(bk.nvmlDeviceGetP2PStatus(ha, hb, _P2P_CAPS_INDEX_NVLINK)) == _P2P_STATUS_OK:
                    return "nvlink"
            except bk.NVMLError as e:
                log.debug("P2P status of GPUs %d and %d: %s", a, b, e)
            try:
                level = int(bk.nvmlDeviceGetTopologyCommonAncestor(ha, hb))
            except bk.NVMLError as e:
                log.debug("topology of GPUs %d and %d: %s", a, b, e)
                return None
        return TOPOLOGY_LEVELS.get(level)

    def shutdown(self) -> None:
        """Release NVML (safe to call when init failed or twice)."""
        if not self._initialised:
            return
        self._initialised = False
        b = self._backend
        try:
            b.nvmlShutdown()
        except b.NVMLError as e:
            log.debug("nvmlShutdown: %s", e)


class XidWaiter:
    """Wait for NVML critical-XID events in a thread and call ``on_xid(uuid, xid)``.

    Every event is delivered, so repeats of the same XID stay visible. The wait uses
    a timeout (:data:`XID_WAIT_TIMEOUT_MS`) so :meth:`stop` returns promptly.
    """

    def __init__(
        self,
        nvml: Nvml,
        on_xid: Callable[[str, int], None],
        timeout_ms: int = XID_WAIT_TIMEOUT_MS,
    ) -> None:
        self._nvml = nvml
        self._on_xid = on_xid
        self._timeout_ms = timeout_ms
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.registered: list[str] = []
        self.error: str | None = None

    def start(self) -> bool:
        """Register every GPU for XID events and start waiting; False if none could be."""
        b = self._nvml.backend
        try:
            self._set = b.nvmlEventSetCreate()
        except b.NVMLError as e:
            self.error = f"nvmlEventSetCreate: {type(e).__name__}"
            log.warning("XID events unavailable: %s", self.error)
            return False
        for dev in self._nvml.devices():
            try:
                h = self._nvml.handle(dev.index)
                b.nvmlDeviceRegisterEvents(h, _EVENT_TYPE_XID_CRITICAL, self._set)
                self.registered.append(dev.uuid)
            except KeyError:
                continue
            except b.NVMLError as e:
                log.warning("GPU %d: cannot register for XID events: %s", dev.index, e)
        if not self.registered:
            self.error = "no GPU accepted XID event registration"
            self._free()
            return False
        self._thread = threading.Thread(target=self._run, name="sentinel-xid", daemon=True)
        self._thread.start()
        return True

    def _run(self) -> None:
        b = self._nvml.backend
        while not self._stop.is_set():
            try:
                data = b.nvmlEventSetWait_v2(self._set, self._timeout_ms)
            except b.NVMLError as e:
                if getattr(e, "value", None) == _ERROR_TIMEOUT:
                    continue
                self.error = f"nvmlEventSetWait: {type(e).__name__}"
                log.warning("XID waiter: %s; retrying", self.error)
                # Back off so a persistent error does not spin a core.
                self._stop.wait(self._timeout_ms / 1000.0)
                continue
            try:
                uuid = _text(b.nvmlDeviceGetUUID(data.device))
            except b.NVMLError:
                uuid = "unknown"
            try:
                self._on_xid(uuid, int(data.eventData))
            except Exception:  # noqa: BLE001 - the waiter must outlive a bad callback
                log.exception("XID callback failed")
        self._free()

    def _free(self) -> None:
        b = self._nvml.backend
        try:
            b.nvmlEventSetFree(self._set)
        except (b.NVMLError, AttributeError):
            pass

    def stop(self, timeout: float = 2.0) -> None:
        """Ask the waiter to stop and wait for it."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
