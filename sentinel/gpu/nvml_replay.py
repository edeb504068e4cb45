"""Answer NVML calls from a captured dump: the fake NVML for tests and ``--gpu-replay``.

The dump is what ``scripts/capture_gpu_fixtures.py`` writes (``nvml_<phase>.json``):
per device, each query's raw value or ``{"error": "NVMLError_X", "value": code}``.
:class:`ReplayBackend` exposes the subset of the ``pynvml`` API that
:class:`sentinel.gpu.nvml.Nvml` calls, raising its own :class:`NVMLError` (with
the same ``value`` codes) where the dump recorded an error, so the wrapper's error
handling is exercised exactly as on a real GPU. A dump may also carry
``"xid_events": [{"uuid": "GPU-...", "xid": 79}, ...]``, delivered once through the
event-set calls, and per device ``"links": {"<peer index>": {"p2p_nvlink": 0,
"common_ancestor": 50}}`` for the link-topology calls (absent: NotSupported). A backend
loaded with :meth:`ReplayBackend.from_file` follows its file: events appended to
``xid_events`` while it runs are delivered too, and the devices' readings are taken
from the file as it is now (write the new file to a temporary name and rename it over
the old one). That is how ``sentinel demo`` and the tests inject an XID, another
compute process or a throttle reason into a running agent's replayed GPU. (The file is
looked at by the XID waiter's loop, every FOLLOW_INTERVAL_S.)
"""

from __future__ import annotations

import copy
import json
import os
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

NVML_ERROR_CODES: dict[str, int] = {
    "Uninitialized": 1,
    "InvalidArgument": 2,
    "NotSupported": 3,
    "NoPermission": 4,
    "NotFound": 6,
    "DriverNotLoaded": 9,
    "Timeout": 10,
    "LibraryNotFound": 12,
    "FunctionNotFound": 13,
    "GpuIsLost": 15,
    "Unknown": 999,
}


class NVMLError(Exception):
    """An NVML error with its numeric ``value``, named like pynvml's subclasses."""

    def __init__(self, value: int, name: str | None = None) -> None:
        self.value = value
        self.name = name or _name_for(value)
        super().__init__(self.name)


_CLASSES: dict[str, type[NVMLError]] = {}


def _name_for(code: int) -> str:
    for n, c in NVML_ERROR_CODES.items():
        if c == code:
            return n
    return f"Code{code}"


def error(name_or_code: str | int) -> NVMLError:
    """Build the NVMLError subclass instance for ``NVMLError_GpuIsLost``, 15, etc."""
    if isinstance(name_or_code, int):
        short = _name_for(name_or_code)
        code = name_or_code
    else:
        short = name_or_code.removeprefix("NVMLError_")
        code = NVML_ERROR_CODES.get(short, 999)
    cls = _CLASSES.get(short)
    if cls is None:
        cls = type(f"NVMLError_{short}", (NVMLError,), {})
        _CLASSES[short] = cls
    return cls(code, short)


REPLAY_WAIT_MS = 50
# How often a followed dump file is looked at for new XID events (a stat per look).
FOLLOW_INTERVAL_S = 0.25

# The dump of one H100 under load (captured as tests/fixtures/README.md describes), shipped
# in the package: `sentinel demo` replays it where there is no NVML, and the tests use
# this one copy. Package data (pyproject's **/*.json), so it works installed from a wheel.
H100_LOAD = Path(__file__).with_name("replays") / "h100_load.json"

_THRESHOLDS = {0: "SHUTDOWN", 1: "SLOWDOWN", 2: "MEM_MAX", 3: "GPU_MAX"}
_POLICIES = {0: "POWER", 1: "THERMAL", 2: "SYNC_BOOST", 3: "BOARD_LIMIT", 4: "LOW_UTILIZATION",
             5: "RELIABILITY", 10: "TOTAL_APP_CLOCKS", 11: "TOTAL_BASE_CLOCKS"}
_ECC_TYPES = {0: "corrected", 1: "uncorrected"}
_ECC_COUNTERS = {0: "volatile", 1: "aggregate"}
_CLOCKS = {1: "clock_sm", 2: "clock_mem"}
_MAX_CLOCKS = {1: "max_clock_sm", 2: "max_clock_mem"}


def _file_sig(path: Path) -> tuple[int, int, int] | None:
    """Return what tells a replaced file from the old one (inode, size, mtime), or None."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_ino, st.st_size, st.st_mtime_ns


class _Handle:
    """A replayed device handle: just the index into the dump's devices."""

    __slots__ = ("index",)

    def __init__(self, index: int) -> None:
        self.index = index

    def __repr__(self) -> str:
        return f"<replay GPU {self.index}>"


class ReplayBackend:
    """A pynvml look-alike that serves a captured NVML dump (see module docstring)."""

    NVMLError = NVMLError

    def __init__(self, dump: dict[str, Any], *, init_error: str | None = None,
                 follow: Path | None = None) -> None:
        self.dump = dump
        self.init_error = init_error
        self._events: list[dict[str, Any]] = list(dump.get("xid_events") or [])
        self._events_lock = threading.Lock()
        self.calls = 0
        # The file whose new xid_events are delivered too; what of it was seen already.
        self._follow = follow
        self._follow_seen = len(self._events)
        self._follow_sig = _file_sig(follow) if follow is not None else None
        self._follow_next = 0.0

    @classmethod
    def from_file(cls, path: str | Path) -> ReplayBackend:
        """Load a dump written by scripts/capture_gpu_fixtures.py (clear error if bad)."""
        p = Path(path)
        try:
            data = json.loads(p.read_text(encoding="utf-8"))
        except OSError as e:
            raise ValueError(f"GPU replay file {p}: cannot read it ({e.strerror or e})") from e
        except json.JSONDecodeError as e:
            raise ValueError(f"GPU replay file {p}: not JSON ({e})") from e
        if not isinstance(data, dict) or not isinstance(data.get("devices"), list):
            raise ValueError(
                f"GPU replay file {p}: expected an object with a 'devices' list, as written "
                "by scripts/capture_gpu_fixtures.py"
            )
        return cls(data, follow=p)

    def copy(self) -> ReplayBackend:
        """Return an independent backend over a deep copy of the dump (tests mutate it)."""
        return ReplayBackend(copy.deepcopy(self.dump), init_error=self.init_error)

    # ---- helpers ----
    def _dev(self, h: _Handle) -> dict[str, Any]:
        if not isinstance(h, _Handle):
            raise error("InvalidArgument")
        devs = self.dump["devices"]
        if h.index >= len(devs):
            raise error("GpuIsLost")
        d: dict[str, Any] = devs[h.index]
        lost = d.get("lost")
        if lost:
            raise error(lost if isinstance(lost, str) else "GpuIsLost")
        return d

    def _value(self, v: Any) -> Any:
        self.calls += 1
        if v is None:
            raise error("NotSupported")
        if isinstance(v, dict) and "error" in v:
            code = v.get("value")
            e = error(v["error"])
            if isinstance(code, int) and code >= 0:
                e.value = code
            raise e
        return v

    def _get(self, h: _Handle, key: str, sub: str | None = None) -> Any:
        d = self._dev(h)
        v = d.get(key)
        if sub is not None:
            v = self._value(v)
            v = v.get(sub) if isinstance(v, dict) else None
        return self._value(v)

    # ---- library ----
    def nvmlInit(self) -> None:  # noqa: N802 - pynvml's names
        """Fail like pynvml would if this replay says NVML is absent."""
        if self.init_error:
            raise error(self.init_error)

    def nvmlShutdown(self) -> None:  # noqa: N802
        """Do nothing: nothing to release."""

    def nvmlDeviceGetCount(self) -> int:  # noqa: N802
        """Return the number of devices in the dump."""
        return int(self.dump.get("device_count", len(self.dump["devices"])))

    def nvmlDeviceGetHandleByIndex(self, i: int) -> _Handle:  # noqa: N802
        """Return a handle for device ``i``."""
        if i < 0 or i >= len(self.dump["devices"]):
            raise error("InvalidArgument")
        return _Handle(i)

    def nvmlDeviceGetUUID(self, h: _Handle) -> str:  # noqa: N802
        """Return the UUID."""
        return str(self._get(h, "uuid"))

    def nvmlDeviceGetName(self, h: _Handle) -> str:  # noqa: N802
        """Return the model name."""
        return str(self._get(h, "name"))

    def nvmlDeviceGetPciInfo_v3(self, h: _Handle) -> Any:  # noqa: N802
        """Return an object with ``busId``."""
        v = self._get(h, "pci_info")
        return SimpleNamespace(**v) if isinstance(v, dict) else v

    def nvmlDeviceGetTemperature(self, h: _Handle, sensor: int) -> int:  # noqa: N802
        """Return the GPU temperature."""
        return int(self._get(h, "temperature_gpu"))

    def nvmlDeviceGetFieldValues(self, h: _Handle, ids: list[int]) -> list[Any]:  # noqa: N802
        """Return the memory-temperature field as pynvml's c_nvmlFieldValue_t would."""
        v = self._get(h, "field_memory_temp")
        out = []
        for _ in ids:
            out.append(SimpleNamespace(
                nvmlReturn=int(v.get("nvmlReturn", 0)),
                valueType=int(v.get("valueType", 1)),
                value=SimpleNamespace(uiVal=v.get("value_uiVal", 0), dVal=v.get("value_dVal", 0.0)),
            ))
        return out

    def nvmlDeviceGetTemperatureThreshold(self, h: _Handle, t: int) -> int:  # noqa: N802
        """Return a temperature threshold."""
        return int(self._get(h, "temperature_thresholds", _THRESHOLDS.get(t, str(t))))

    def nvmlDeviceGetClockInfo(self, h: _Handle, clock: int) -> int:  # noqa: N802
        """Return a current clock in MHz."""
        return int(self._get(h, _CLOCKS.get(clock, f"clock_{clock}")))

    def nvmlDeviceGetMaxClockInfo(self, h: _Handle, clock: int) -> int:  # noqa: N802
        """Return a max clock in MHz."""
        return int(self._get(h, _MAX_CLOCKS.get(clock, f"max_clock_{clock}")))

    def nvmlDeviceGetUtilizationRates(self, h: _Handle) -> Any:  # noqa: N802
        """Return utilization percentages (gpu, memory)."""
        return SimpleNamespace(**self._get(h, "utilization"))

    nvmlMemory_v2 = 0x2000028  # same value as pynvml's; the version asked for below

    def nvmlDeviceGetMemoryInfo(self, h: _Handle, version: int | None = None) -> Any:  # noqa: N802
        """Return framebuffer memory (total, free, used[, reserved]) in bytes.

        With ``version`` (v2) the dump's ``memory_info_v2`` is used where it was captured,
        else the v1 record (older dumps).
        """
        if version is not None and "memory_info_v2" in self._dev(h):
            return SimpleNamespace(**self._get(h, "memory_info_v2"))
        return SimpleNamespace(**self._get(h, "memory_info"))

    def nvmlDeviceGetPowerUsage(self, h: _Handle) -> int:  # noqa: N802
        """Return power draw in mW."""
        return int(self._get(h, "power_usage_mw"))

    def nvmlDeviceGetEnforcedPowerLimit(self, h: _Handle) -> int:  # noqa: N802
        """Return the enforced power limit in mW."""
        return int(self._get(h, "enforced_power_limit_mw"))

    def nvmlDeviceGetTotalEnergyConsumption(self, h: _Handle) -> int:  # noqa: N802
        """Return energy since driver load in mJ."""
        return int(self._get(h, "total_energy_mj"))

    def nvmlDeviceGetCurrentClocksEventReasons(self, h: _Handle) -> int:  # noqa: N802
        """Return the clock-event reason bitmask."""
        return int(self._get(h, "clocks_event_reasons"))

    def nvmlDeviceGetViolationStatus(self, h: _Handle, policy: int) -> Any:  # noqa: N802
        """Return {referenceTime, violationTime} for a perf policy."""
        v = self._get(h, "violation_status", _POLICIES.get(policy, str(policy)))
        return SimpleNamespace(**v)

    def nvmlDeviceGetTotalEccErrors(self, h: _Handle, et: int, ct: int) -> int:  # noqa: N802
        """Return an ECC error count."""
        key = f"{_ECC_TYPES.get(et, et)}_{_ECC_COUNTERS.get(ct, ct)}"
        return int(self._get(h, "ecc_total", key))

    def nvmlDeviceGetRemappedRows(self, h: _Handle) -> tuple[int, int, int, int]:  # noqa: N802
        """Return (correctable, uncorrectable, pending, failure)."""
        v = self._get(h, "remapped_rows")
        return (int(v[0]), int(v[1]), int(v[2]), int(v[3]))

    def nvmlDeviceGetComputeRunningProcesses(self, h: _Handle) -> list[Any]:  # noqa: N802
        """Return the compute processes: the dump's ``compute_processes`` ({pid, used_memory})."""
        return [SimpleNamespace(pid=int(p["pid"]), usedGpuMemory=p.get("used_memory"))
                for p in self._get(h, "compute_processes")]

    def nvmlDeviceGetPcieReplayCounter(self, h: _Handle) -> int:  # noqa: N802
        """Return the PCIe replay counter."""
        return int(self._get(h, "pcie_replay_counter"))

    # ---- events ----
    def _link(self, h1: _Handle, h2: _Handle, key: str) -> Any:
        """Return ``links[<peer>][key]`` recorded on either device (NotSupported if absent).

        NVML answers a pair the same both ways, so a dump records each pair once.
        """
        for a, b in ((h1, h2), (h2, h1)):
            entry = (self._dev(a).get("links") or {}).get(str(b.index)) or {}
            if key in entry:
                return self._value(entry[key])
        return self._value(None)

    def nvmlDeviceGetP2PStatus(self, h1: _Handle, h2: _Handle, index: int) -> int:  # noqa: N802
        """Return the P2P status recorded for the pair (only the NVLink index, 2, is kept)."""
        if index != 2:
            raise error("NotSupported")
        return int(self._link(h1, h2, "p2p_nvlink"))

    def nvmlDeviceGetTopologyCommonAncestor(self, h1: _Handle, h2: _Handle) -> int:  # noqa: N802
        """Return the recorded nvmlGpuTopologyLevel_t of the pair."""
        return int(self._link(h1, h2, "common_ancestor"))

    def nvmlEventSetCreate(self) -> object:  # noqa: N802
        """Return an event set token."""
        return object()

    def nvmlDeviceRegisterEvents(self, h: _Handle, types: int, es: object) -> None:  # noqa: N802
        """Accept the registration if the device is present."""
        self._dev(h)

    def _follow_file(self) -> None:
        """Queue the XID events appended to the followed file since it was last read."""
        now = time.monotonic()
        if self._follow is None or now < self._follow_next:
            return
        self._follow_next = now + FOLLOW_INTERVAL_S
        sig = _file_sig(self._follow)
        if sig is None or sig == self._follow_sig:
            return
        try:
            data = json.loads(self._follow.read_text(encoding="utf-8"))
            events = data.get("xid_events")
        except (OSError, ValueError, AttributeError):
            return  # mid-write or gone: looked at again next time
        self._follow_sig = sig
        devices = data.get("devices")
        if isinstance(devices, list) and len(devices) == len(self.dump["devices"]) and all(
                isinstance(d, dict) for d in devices):
            # The devices' readings as the file says now (a test gives a GPU a second
            # compute process or a throttle reason while the agent runs). One assignment:
            # a reader sees the old list or the new one.
            self.dump["devices"] = devices
        if not isinstance(events, list):
            return
        with self._events_lock:
            self._events.extend(e for e in events[self._follow_seen:] if isinstance(e, dict))
            self._follow_seen = max(self._follow_seen, len(events))

    def nvmlEventSetWait_v2(self, es: object, timeout_ms: int) -> Any:  # noqa: N802
        """Deliver the next recorded XID event, else sleep the timeout and raise Timeout."""
        self._follow_file()
        with self._events_lock:
            ev = self._events.pop(0) if self._events else None
        if ev is None:
            # Shorter than real NVML's wait so tests and demos stop quickly.
            time.sleep(min(timeout_ms, REPLAY_WAIT_MS) / 1000.0)
            raise error("Timeout")
        index = 0
        for i, d in enumerate(self.dump["devices"]):
            if d.get("uuid") == ev.get("uuid"):
                index = i
                break
        return SimpleNamespace(device=_Handle(index), eventType=0x8,
                               eventData=int(ev.get("xid", 0)))

    def push_xid(self, uuid: str, xid: int) -> None:
        """Queue one more XID event (tests: repeats must be counted)."""
        with self._events_lock:
            self._events.append({"uuid": uuid, "xid": xid})

    def nvmlEventSetFree(self, es: object) -> None:  # noqa: N802
        """Do nothing."""
