"""Read GPUs through NVML: the only module in sentinel that calls NVML.

Every NVML call goes through :meth:`Nvml._call`, which turns an NVML error into
"no value" for that one field (recorded in ``GpuSample.errors``) so one broken
query, or one broken GPU, never breaks a scrape. ``NOT_SUPPORTED`` is not an error:
a field the board does not have (say, PCIe replay on some SKUs) is simply absent.

The backend is the ``pynvml`` module of ``nvidia-ml-py`` by default; tests and
``--gpu-replay`` pass :class:`sentinel.gpu.nvml_replay.ReplayBackend`, which
answers the same calls from a captured dump.
"""

from __future__ import annotations

import functools
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

# Fields Nvml reads through _read_slow: costly calls (energy 2.4 ms, each violation
# counter 0.4 ms, max clock 0.8 ms on the device machine's H100) or values that do not
# change while the driver is loaded (thresholds, max clock).
SLOW_FIELDS = (
    "slowdown_temperature_c",
    "shutdown_temperature_c",
    "sm_clock_max_hz",
    "energy_j",
    "violation_ns",
    "pcie_replay",
)

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
    errors: list[str] = field(default_factory=list)
    gpu_lost: bool = False


class _Missing(Exception):
    """A field NVML does not support on this device (no value, not an error)."""


def _text(v: Any) -> str:
    return v.decode(errors="replace") if isinstance(v, bytes) else str(v)


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

    def _get(self, s: GpuSample, what: str, fn: Callable[..., Any], *args: Any) -> Any:
        """Call ``fn`` unless the GPU is already known lost (each call would fail slowly)."""
        if s.gpu_lost:
            raise _Missing(what)
        return self._call(s, what, fn, *args)

    def _call(self, s: GpuSample, what: str, fn: Callable[..., Any], *args: Any) -> Any:
        """Call ``fn``; on an NVML error record it in ``s`` and raise _Missing."""
        b = self._backend
        try:
            return fn(*args)
        except b.NVMLError as e:
            code = getattr(e, "value", None)
            if code == _ERROR_NOT_SUPPORTED:
                raise _Missing(what) from None
            s.errors.append(f"{what}: {type(e).__name__}")
            if code in (_ERROR_GPU_IS_LOST, _ERROR_UNKNOWN) or "GpuIsLost" in type(e).__name__:
                s.gpu_lost = True
            raise _Missing(what) from None

    def sample(self, index: int) -> GpuSample:
        """Read every field of GPU ``index``; failures become None plus an error entry."""
        s = GpuSample()
        h = self._handles.get(index)
        if h is None:
            s.errors.append("handle: no NVML handle for this GPU")
            s.gpu_lost = True
            return s
        with self._lock:
            self._sample_into(s, h)
            if not s.gpu_lost:
                self._sample_slow(index, s, h)
        return s

    def _sample_slow(self, index: int, s: GpuSample, h: Any) -> None:
        """Fill SLOW_FIELDS, from the cache while it is fresh enough."""
        now = self._monotonic()
        cached = self._slow_cache.get(index)
        if cached is not None and self._slow_refresh > 0 and now - cached[0] < self._slow_refresh:
            _, values, errors = cached
        else:
            fresh = GpuSample()
            self._read_slow(fresh, h)
            if fresh.gpu_lost:
                s.gpu_lost = True
                s.errors.extend(fresh.errors)
                self._slow_cache.pop(index, None)
                return
            values = {f: getattr(fresh, f) for f in SLOW_FIELDS}
            errors = list(fresh.errors)
            self._slow_cache[index] = (now, values, errors)
        for f, v in values.items():
            setattr(s, f, dict(v) if isinstance(v, dict) else v)
        s.errors.extend(errors)

    def _sample_into(self, s: GpuSample, h: Any) -> None:  # noqa: C901 - one field each
        b = self._backend

        get = functools.partial(self._get, s)

        try:
            s.temperature_c = float(get("temperature", b.nvmlDeviceGetTemperature, h,
                                        _TEMPERATURE_GPU))
        except _Missing:
            pass
        try:
            vals = get("memory_temperature", b.nvmlDeviceGetFieldValues, h,
                       [_FI_DEV_MEMORY_TEMP])
            v = vals[0]
            if int(v.nvmlReturn) == 0:
                if int(v.valueType) == _VALUE_TYPE_DOUBLE:
                    s.memory_temperature_c = float(v.value.dVal)
                else:
                    s.memory_temperature_c = float(v.value.uiVal)
            elif int(v.nvmlReturn) != _ERROR_NOT_SUPPORTED:
                s.errors.append(f"memory_temperature: NVML return {int(v.nvmlReturn)}")
        except _Missing:
            pass
        try:
            s.sm_clock_hz = float(get("sm_clock", b.nvmlDeviceGetClockInfo, h, _CLOCK_SM)) * 1e6
        except _Missing:
            pass
        try:
            s.memory_clock_hz = (
                float(get("memory_clock", b.nvmlDeviceGetClockInfo, h, _CLOCK_MEM)) * 1e6
            )
        except _Missing:
            pass
        try:
            u = get("utilization", b.nvmlDeviceGetUtilizationRates, h)
            s.utilization_gpu_ratio = float(u.gpu) / 100.0
            s.utilization_memory_ratio = float(u.memory) / 100.0
        except _Missing:
            pass
        try:
            m = get("memory", self._memory_info, h)
            s.memory_used_bytes = int(m.used)
            s.memory_total_bytes = int(m.total)
        except _Missing:
            pass
        try:
            s.power_w = float(get("power", b.nvmlDeviceGetPowerUsage, h)) / 1000.0
        except _Missing:
            pass
        try:
            s.power_limit_w = float(get("power_limit", b.nvmlDeviceGetEnforcedPowerLimit, h)) / 1e3
        except _Missing:
            pass
        # Renamed from "ThrottleReasons" in newer nvidia-ml-py; accept either.
        reasons_fn = (
            getattr(b, "nvmlDeviceGetCurrentClocksEventReasons", None)
            or b.nvmlDeviceGetCurrentClocksThrottleReasons
        )
        try:
            s.clock_event_reasons = int(get("clock_event_reasons", reasons_fn, h))
        except _Missing:
            pass
        for tname, et in ECC_TYPES.items():
            for cname, ct in ECC_COUNTERS.items():
                try:
                    s.ecc_errors[(tname, cname)] = int(
                        get(f"ecc_{tname}_{cname}", b.nvmlDeviceGetTotalEccErrors, h, et, ct)
                    )
                except _Missing:
                    pass
        try:
            corr, unc, pending, failure = get("remapped_rows", b.nvmlDeviceGetRemappedRows, h)
            s.remapped_rows_correctable = int(corr)
            s.remapped_rows_uncorrectable = int(unc)
            s.remap_pending = bool(pending)
            s.remap_failure = bool(failure)
        except _Missing:
            pass
    def _read_slow(self, s: GpuSample, h: Any) -> None:
        """Read the fields that are expensive (0.4-2.4 ms each on an H100) or static."""
        b = self._backend

        get = functools.partial(self._get, s)

        try:
            s.slowdown_temperature_c = float(get("slowdown_temperature",
                                                 b.nvmlDeviceGetTemperatureThreshold, h,
                                                 _THRESHOLD_SLOWDOWN))
        except _Missing:
            pass
        try:
            s.shutdown_temperature_c = float(get("shutdown_temperature",
                                                 b.nvmlDeviceGetTemperatureThreshold, h,
                                                 _THRESHOLD_SHUTDOWN))
        except _Missing:
            pass
        try:
            s.sm_clock_max_hz = (
                float(get("sm_clock_max", b.nvmlDeviceGetMaxClockInfo, h, _CLOCK_SM)) * 1e6
            )
        except _Missing:
            pass
        try:
            s.energy_j = float(get("energy", b.nvmlDeviceGetTotalEnergyConsumption, h)) / 1000.0
        except _Missing:
            pass
        for name, policy in VIOLATION_POLICIES.items():
            try:
                vt = get(f"violation_{name}", b.nvmlDeviceGetViolationStatus, h, policy)
                s.violation_ns[name] = int(vt.violationTime)
            except _Missing:
                pass
        try:
            s.pcie_replay = int(get("pcie_replay", b.nvmlDeviceGetPcieReplayCounter, h))
        except _Missing:
            pass


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
