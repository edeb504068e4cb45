"""The NVML wrapper's field table, read through the fake NVML over the captured H100 dump."""

from __future__ import annotations

import dataclasses
import json

import pytest

from sentinel.gpu.nvml import FIELDS, GpuSample, Nvml
from sentinel.gpu.nvml_replay import H100_LOAD, ReplayBackend

LOAD = H100_LOAD


def load() -> dict:
    return json.loads(LOAD.read_text())


class Counting(ReplayBackend):
    """The replay backend, counting calls by NVML function name."""

    def __init__(self, dump: dict) -> None:
        super().__init__(dump)
        self.by_name: dict[str, int] = {}

    def __getattribute__(self, name: str):
        attr = super().__getattribute__(name)
        if name.startswith("nvmlDevice") and callable(attr):
            counts = super().__getattribute__("by_name")

            def counted(*a, **k):
                counts[name] = counts.get(name, 0) + 1
                return attr(*a, **k)

            return counted
        return attr


def test_the_table_fills_every_value_of_a_sample():
    dump = load()
    # The H100 capture predates the process list; one process, as the training run had.
    dump["devices"][0]["compute_processes"] = [{"pid": 1234, "used_memory": 1 << 30}]
    nv = Nvml(ReplayBackend(dump))
    nv.init()
    s = nv.sample(0)
    assert s.errors == [] and not s.gpu_lost
    empty = [f.name for f in dataclasses.fields(GpuSample)
             if f.name not in ("errors", "gpu_lost") and getattr(s, f.name) in (None, {})]
    assert empty == []
    assert len(s.violation_ns) == 8 and len(s.ecc_errors) == 4
    assert len({f.name for f in FIELDS}) == len(FIELDS), "field names are unique"


def test_a_per_field_return_code_is_an_error_and_not_supported_is_absence():
    dump = load()
    dump["devices"][0]["field_memory_temp"]["nvmlReturn"] = 2  # INVALID_ARGUMENT
    nv = Nvml(ReplayBackend(dump))
    nv.init()
    s = nv.sample(0)
    assert s.memory_temperature_c is None and not s.gpu_lost
    assert s.errors == ["memory_temperature: NVML return 2"]
    assert s.temperature_c is not None  # the fields after it are still read
    dump["devices"][0]["field_memory_temp"]["nvmlReturn"] = 3  # NOT_SUPPORTED
    s = nv.sample(0)
    assert s.memory_temperature_c is None and s.errors == []


def test_a_gpu_lost_mid_sample_gets_no_further_queries():
    dump = load()
    dump["devices"][0]["power_usage_mw"] = {"error": "NVMLError_GpuIsLost", "value": 15}
    backend = Counting(dump)
    nv = Nvml(backend)
    nv.init()
    s = nv.sample(0)
    assert s.gpu_lost and s.errors == ["power: NVMLError_GpuIsLost"]
    assert s.temperature_c is not None and s.memory_used_bytes is not None  # read before
    assert s.power_limit_w is None and s.energy_j is None
    after = {"nvmlDeviceGetEnforcedPowerLimit", "nvmlDeviceGetTotalEnergyConsumption",
             "nvmlDeviceGetViolationStatus", "nvmlDeviceGetRemappedRows"}
    assert not after & set(backend.by_name)


def test_link_topology_nvlink_first_then_the_pcie_level():
    backend = ReplayBackend.from_file(H100_LOAD)
    devs = backend.dump["devices"]
    for i in (1, 2, 3):
        d = json.loads(json.dumps(devs[0]))
        d["uuid"], d["index"] = f"GPU-{i}", i
        devs.append(d)
    backend.dump["device_count"] = 4
    devs[0]["links"] = {"1": {"p2p_nvlink": 0, "common_ancestor": 50},
                        "2": {"p2p_nvlink": 2, "common_ancestor": 20},
                        "3": {"common_ancestor": 30}}
    devs[3]["links"] = {"1": {"p2p_nvlink": {"error": "NVMLError_GpuIsLost", "value": 15}}}
    nv = Nvml(backend)
    nv.init()
    assert nv.link_topology(0, 1) == "nvlink"
    assert nv.link_topology(1, 0) == "nvlink"  # a pair is the same both ways
    assert nv.link_topology(0, 2) == "pxb"  # NVLink P2P not supported: the PCIe level
    assert nv.link_topology(0, 3) == "phb"
    assert nv.link_topology(3, 1) is None  # NVML errors: unknown, not a crash
    assert nv.link_topology(0, 9) is None  # no such GPU


def test_a_followed_replay_file_changes_the_devices_readings_while_it_runs(tmp_path):
    """How the tests give a running agent's GPU a second process or a throttle reason."""
    import os

    from sentinel.gpu import nvml_replay

    path = tmp_path / "gpu.json"
    dump = json.loads(H100_LOAD.read_text())
    dump["devices"][0]["compute_processes"] = [{"pid": 1}]
    path.write_text(json.dumps(dump))
    backend = ReplayBackend.from_file(path)
    nv = Nvml(backend)
    nv.init()
    fields = ("compute_processes", "clock_event_reasons")
    assert (nv.sample_fields(0, fields).compute_processes,
            nv.sample_fields(0, fields).clock_event_reasons) == (1, 0x4)
    dump["devices"][0]["compute_processes"] = [{"pid": 1}, {"pid": 2}]
    dump["devices"][0]["clocks_event_reasons"] = 0x40
    (tmp_path / "new.json").write_text(json.dumps(dump))
    os.replace(tmp_path / "new.json", path)
    backend._follow_next = 0.0  # the XID waiter's loop looks every FOLLOW_INTERVAL_S
    with pytest.raises(nvml_replay.NVMLError):
        backend.nvmlEventSetWait_v2(None, 1)  # no XID: Timeout, after reading the file
    s = nv.sample_fields(0, fields)
    assert (s.compute_processes, s.clock_event_reasons) == (2, 0x40)
    assert s.temperature_c is None  # only the fields asked for are read
