"""The gpu collector on captured H100 NVML dumps, replayed through the fake NVML."""

from __future__ import annotations

import copy
import json
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from sentinel.agent.collectors.gpu import GpuCollector
from sentinel.agent.exporter import Agent
from sentinel.exposition import render
from sentinel.gpu.nvml import Nvml, NvmlUnavailable
from sentinel.gpu.nvml_replay import ReplayBackend
from sentinel.gpu.reasons import CLOCK_EVENT_REASONS
from tests.support.collectors import H100, NVML_DUMPS, make_ctx, render_collector
from tests.support.metrics import samples, value

UUID = "GPU-52cb8648-0d3c-f8e6-e869-4d0d404c50f2"


def load(phase: str) -> dict:
    return json.loads(NVML_DUMPS[phase].read_text())


def scrape(tmp_path: Path, backend: ReplayBackend, collectors=("gpu",)) -> tuple[str, Agent]:
    ctx = make_ctx(tmp_path, collectors=list(collectors))
    ctx.nvml_backend = backend
    agent = Agent(ctx)
    for c in agent.collectors:
        if c.name != "training":
            c.start()
    try:
        return agent.render().decode(), agent
    finally:
        agent.close()


@pytest.mark.parametrize("phase", ["idle", "load"])
def test_values_match_the_dump(tmp_path, phase):
    dump = load(phase)
    d = dump["devices"][0]
    text, _ = scrape(tmp_path, ReplayBackend(dump))
    lab = {"gpu": "0", "UUID": UUID, "modelName": "NVIDIA H100 80GB HBM3",
           "pci_bus_id": "00000000:00:06.0", "hostname": "node1"}
    assert value(text, "sentinel_gpu_nvml_available", hostname="node1") == 1
    assert value(text, "sentinel_collector_success", collector="gpu") == 1
    assert value(text, "sentinel_gpu_up", **lab) == 1
    assert value(text, "sentinel_gpu_temperature_celsius", **lab) == d["temperature_gpu"]
    assert value(text, "sentinel_gpu_memory_temperature_celsius", **lab) == \
        d["field_memory_temp"]["value_uiVal"]
    assert value(text, "sentinel_gpu_slowdown_temperature_celsius", **lab) == \
        d["temperature_thresholds"]["SLOWDOWN"]
    assert value(text, "sentinel_gpu_shutdown_temperature_celsius", **lab) == \
        d["temperature_thresholds"]["SHUTDOWN"]
    assert value(text, "sentinel_gpu_sm_clock_hertz", **lab) == d["clock_sm"] * 1e6
    assert value(text, "sentinel_gpu_memory_clock_hertz", **lab) == d["clock_mem"] * 1e6
    assert value(text, "sentinel_gpu_sm_clock_max_hertz", **lab) == d["max_clock_sm"] * 1e6
    assert value(text, "sentinel_gpu_utilization_ratio", **lab) == \
        pytest.approx(d["utilization"]["gpu"] / 100)
    assert value(text, "sentinel_gpu_memory_utilization_ratio", **lab) == \
        pytest.approx(d["utilization"]["memory"] / 100)
    assert value(text, "sentinel_gpu_memory_used_bytes", **lab) == d["memory_info_v2"]["used"]
    assert value(text, "sentinel_gpu_memory_total_bytes", **lab) == d["memory_info"]["total"]
    assert value(text, "sentinel_gpu_power_watts", **lab) == \
        pytest.approx(d["power_usage_mw"] / 1000)
    assert value(text, "sentinel_gpu_power_limit_watts", **lab) == \
        pytest.approx(d["enforced_power_limit_mw"] / 1000)
    assert value(text, "sentinel_gpu_energy_joules_total", **lab) == \
        pytest.approx(d["total_energy_mj"] / 1000)
    for name, pol in [("power", "POWER"), ("thermal", "THERMAL"),
                      ("low_utilization", "LOW_UTILIZATION"),
                      ("total_base_clocks", "TOTAL_BASE_CLOCKS")]:
        assert value(text, "sentinel_gpu_violation_seconds_total", reason=name, **lab) == \
            pytest.approx(d["violation_status"][pol]["violationTime"] / 1e9)
    for t in ("corrected", "uncorrected"):
        for c in ("volatile", "aggregate"):
            assert value(text, "sentinel_gpu_ecc_errors_total", type=t, counter=c, **lab) == \
                d["ecc_total"][f"{t}_{c}"]
    assert value(text, "sentinel_gpu_remapped_rows", cause="correctable", **lab) == 0
    assert value(text, "sentinel_gpu_remap_failure", **lab) == 0
    assert value(text, "sentinel_gpu_pcie_replay_total", **lab) == d["pcie_replay_counter"]


@pytest.mark.parametrize("phase", ["idle", "load"])
def test_throttle_reasons_agree_with_nvidia_smi_xml(tmp_path, phase):
    """Every reason is a 0/1 series, and the 1s are what nvidia-smi -q said Active."""
    text, _ = scrape(tmp_path, ReplayBackend(load(phase)))
    got = {r: value(text, "sentinel_gpu_clock_event_active", reason=r) for r in CLOCK_EVENT_REASONS}
    assert set(got.values()) <= {0.0, 1.0}
    root = ET.parse(H100 / f"nvidia-smi-q-{phase}.xml").getroot()
    node = root.find("gpu/clocks_event_reasons")
    if node is None:  # older drivers
        node = root.find("gpu/clocks_throttle_reasons")
    xml_names = {
        "gpu_idle": "clocks_event_reason_gpu_idle",
        "applications_clocks_setting": "clocks_event_reason_applications_clocks_setting",
        "sw_power_cap": "clocks_event_reason_sw_power_cap",
        "hw_slowdown": "clocks_event_reason_hw_slowdown",
        "sync_boost": "clocks_event_reason_sync_boost",
        "sw_thermal_slowdown": "clocks_event_reason_sw_thermal_slowdown",
        "hw_thermal_slowdown": "clocks_event_reason_hw_thermal_slowdown",
        "hw_power_brake_slowdown": "clocks_event_reason_hw_power_brake_slowdown",
        "display_clock_setting": "clocks_event_reason_display_clocks_setting",
    }
    checked = 0
    for reason, tag in xml_names.items():
        el = node.find(tag) if node is not None else None
        if el is None:
            continue
        checked += 1
        assert got[reason] == (1.0 if el.text.strip() == "Active" else 0.0), reason
    assert checked >= 5


def test_each_reason_bit_maps_to_its_own_series(tmp_path):
    for reason, bit in CLOCK_EVENT_REASONS.items():
        dump = load("load")
        dump["devices"][0]["clocks_event_reasons"] = bit
        text, _ = scrape(tmp_path, ReplayBackend(dump))
        active = {r for r in CLOCK_EVENT_REASONS
                  if value(text, "sentinel_gpu_clock_event_active", reason=r) == 1}
        assert active == {reason}


def two_gpus() -> dict:
    dump = load("load")
    second = copy.deepcopy(dump["devices"][0])
    second["uuid"] = "GPU-second"
    second["index"] = 1
    second["temperature_gpu"] = 61
    dump["devices"].append(second)
    dump["device_count"] = 2
    return dump


def test_a_gpu_whose_query_errors_reports_up_0_and_keeps_its_other_series(tmp_path):
    dump = two_gpus()
    dump["devices"][1]["temperature_gpu"] = {"error": "NVMLError_Unknown", "value": 999}
    dump["devices"][1]["power_usage_mw"] = {"error": "NVMLError_NoPermission", "value": 4}
    dump["devices"][1]["temperature_gpu"] = {"error": "NVMLError_NoPermission", "value": 4}
    text, _ = scrape(tmp_path, ReplayBackend(dump))
    assert value(text, "sentinel_gpu_up", gpu="0") == 1
    assert value(text, "sentinel_gpu_up", gpu="1") == 0
    assert value(text, "sentinel_collector_success", collector="gpu") == 1
    ss = samples(text)
    assert not any(n == "sentinel_gpu_power_watts" and ("gpu", "1") in ls for n, ls in ss)
    assert not any(n == "sentinel_gpu_temperature_celsius" and ("gpu", "1") in ls for n, ls in ss)
    temp0 = load("load")["devices"][0]["temperature_gpu"]
    assert value(ss, "sentinel_gpu_temperature_celsius", gpu="0") == temp0
    assert value(ss, "sentinel_gpu_memory_used_bytes", gpu="1") > 0


def test_not_supported_is_absent_not_an_error(tmp_path):
    dump = load("load")
    dump["devices"][0]["pcie_replay_counter"] = {"error": "NVMLError_NotSupported", "value": 3}
    text, _ = scrape(tmp_path, ReplayBackend(dump))
    assert value(text, "sentinel_gpu_up", gpu="0") == 1
    assert "sentinel_gpu_pcie_replay_total{" not in text


def test_lost_gpu_keeps_only_up_0_and_the_other_gpu_is_untouched(tmp_path):
    dump = two_gpus()
    backend = ReplayBackend(dump)
    ctx = make_ctx(tmp_path, collectors=["gpu"])
    ctx.nvml_backend = backend
    c = GpuCollector(ctx)
    c.start()
    try:
        before = render_collector(c)
        assert value(before, "sentinel_gpu_up", gpu="1") == 1
        dump["devices"][1]["lost"] = "GpuIsLost"  # the GPU falls off the bus mid-run
        after = samples(render_collector(c))
    finally:
        c.close()
    assert value(after, "sentinel_gpu_up", gpu="1") == 0
    gpu1 = [n for n, ls in after if ("gpu", "1") in ls]
    assert gpu1 == ["sentinel_gpu_up"]
    assert value(after, "sentinel_gpu_up", gpu="0") == 1
    assert value(after, "sentinel_gpu_power_watts", gpu="0") == pytest.approx(
        load("load")["devices"][0]["power_usage_mw"] / 1000
    )


def test_lost_gpu_is_flagged_by_the_wrapper(tmp_path):
    dump = load("load")
    nv = Nvml(ReplayBackend(dump))
    nv.init()
    dump["devices"][0]["lost"] = "GpuIsLost"
    s = nv.sample(0)
    assert s.gpu_lost
    assert s.temperature_c is None
    assert s.errors and "GpuIsLost" in s.errors[0]
    assert len(s.errors) == 1  # stops querying a lost GPU after the first failure


def test_no_nvml_library_reports_absent_and_the_agent_runs_on(tmp_path):
    backend = ReplayBackend(load("load"), init_error="LibraryNotFound")
    text, _ = scrape(tmp_path, backend, collectors=("gpu", "disk"))
    assert value(text, "sentinel_gpu_nvml_available", hostname="node1") == 0
    assert value(text, "sentinel_collector_success", collector="gpu") == 0
    assert value(text, "sentinel_collector_success", collector="disk") == 1
    assert "sentinel_gpu_up{" not in text
    assert "sentinel_disk_reads_completed_total{" in text


def test_real_pynvml_without_a_gpu_raises_nvml_unavailable():
    pytest.importorskip("pynvml")
    nv = Nvml()
    try:
        nv.init()
    except NvmlUnavailable as e:
        assert "nvmlInit failed" in str(e)
    else:  # a machine with a GPU: the wrapper works for real
        assert nv.devices()
        nv.shutdown()


def test_xid_events_count_every_repeat(tmp_path):
    dump = two_gpus()
    dump["xid_events"] = [{"uuid": UUID, "xid": 79}]
    backend = ReplayBackend(dump)
    ctx = make_ctx(tmp_path, collectors=["gpu"])
    ctx.nvml_backend = backend
    c = GpuCollector(ctx)
    c.start()
    try:
        backend.push_xid(UUID, 79)
        backend.push_xid("GPU-second", 48)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            text = render_collector(c)
            try:
                if (value(text, "sentinel_gpu_xid_errors_total", xid="79") == 2
                        and value(text, "sentinel_gpu_xid_errors_total", xid="48") == 1):
                    break
            except AssertionError:
                pass
            time.sleep(0.05)
    finally:
        c.close()
    assert value(text, "sentinel_gpu_xid_errors_total", xid="79", UUID=UUID, gpu="0") == 2
    assert value(text, "sentinel_gpu_xid_errors_total", xid="48", UUID="GPU-second",
                 gpu="1") == 1


def test_xid_appended_to_the_replay_file_reaches_a_running_collector(tmp_path):
    """How the demo injects a fault: the dump file gains an XID while the agent runs."""
    dump = two_gpus()
    path = tmp_path / "replay.json"
    path.write_text(json.dumps(dump))
    ctx = make_ctx(tmp_path, collectors=["gpu"])
    ctx.nvml_backend = ReplayBackend.from_file(path)
    c = GpuCollector(ctx)
    c.start()

    def xids(text: str) -> float:
        try:
            return value(text, "sentinel_gpu_xid_errors_total", xid="79", UUID=UUID, gpu="0")
        except AssertionError:
            return 0.0

    try:
        time.sleep(0.6)  # the file was looked at twice: nothing new
        assert "sentinel_gpu_xid_errors_total{" not in render_collector(c)
        for n in (1, 2):
            dump["xid_events"] = [{"uuid": UUID, "xid": 79}] * n
            tmp = tmp_path / "replay.json.tmp"
            tmp.write_text(json.dumps(dump))
            tmp.replace(path)  # a new file by rename, as a writer should
            deadline = time.monotonic() + 5
            while xids(render_collector(c)) < n and time.monotonic() < deadline:
                time.sleep(0.05)
            assert xids(render_collector(c)) == n
        time.sleep(0.6)
        assert xids(render_collector(c)) == 2  # each appended event delivered once
    finally:
        c.close()


def test_replay_file_errors_are_clear(tmp_path):
    bad = tmp_path / "x.json"
    bad.write_text("{}")
    with pytest.raises(ValueError, match="'devices' list"):
        ReplayBackend.from_file(bad)
    with pytest.raises(ValueError, match="cannot read"):
        ReplayBackend.from_file(tmp_path / "missing.json")


class _Counting:
    """Wrap a replay backend and count the calls made to it, by name."""

    def __init__(self, inner):
        self._inner = inner
        self.calls: dict[str, int] = {}

    def __getattr__(self, name):
        attr = getattr(self._inner, name)
        if not callable(attr) or not name.startswith("nvmlDevice"):
            return attr

        def counted(*a, **k):
            self.calls[name] = self.calls.get(name, 0) + 1
            return attr(*a, **k)

        return counted


def test_slow_fields_are_cached_between_refreshes():
    clock = [100.0]
    backend = _Counting(ReplayBackend(load("load")))
    nv = Nvml(backend, slow_refresh_seconds=30.0, monotonic=lambda: clock[0])
    nv.init()
    first = nv.sample(0)
    assert first.energy_j is not None and first.violation_ns and first.sm_clock_max_hz
    energy_calls = backend.calls["nvmlDeviceGetTotalEnergyConsumption"]
    temp_calls = backend.calls["nvmlDeviceGetTemperature"]
    clock[0] += 10
    second = nv.sample(0)
    # Cheap fields are read on every sample, expensive ones come from the cache ...
    assert backend.calls["nvmlDeviceGetTemperature"] == temp_calls + 1
    assert backend.calls["nvmlDeviceGetTotalEnergyConsumption"] == energy_calls
    assert second.energy_j == first.energy_j and second.violation_ns == first.violation_ns
    # ... until the refresh interval has passed.
    clock[0] += 25
    nv.sample(0)
    assert backend.calls["nvmlDeviceGetTotalEnergyConsumption"] == energy_calls + 1


def test_no_caching_when_refresh_is_zero():
    backend = _Counting(ReplayBackend(load("load")))
    nv = Nvml(backend)
    nv.init()
    nv.sample(0)
    nv.sample(0)
    assert backend.calls["nvmlDeviceGetTotalEnergyConsumption"] == 2


def test_memory_used_is_v2_like_nvidia_smi():
    """v1 counts reserved memory as used; nvidia-smi (and the agent) report v2."""
    dump = load("load")
    nv = Nvml(ReplayBackend(dump))
    nv.init()
    s = nv.sample(0)
    v2 = dump["devices"][0]["memory_info_v2"]
    assert s.memory_used_bytes == v2["used"] != dump["devices"][0]["memory_info"]["used"]


def test_compute_processes_per_gpu_are_counted(tmp_path):
    """Two processes on GPU 0 (a rank and a competitor), none on GPU 1; an older dump
    without the list (or a driver that does not say) exports no count."""
    dump = two_gpus()
    dump["devices"][0]["compute_processes"] = [{"pid": 4242, "used_memory": 2 << 30},
                                               {"pid": 5151, "used_memory": 1 << 30}]
    dump["devices"][1]["compute_processes"] = []
    text, _ = scrape(tmp_path, ReplayBackend(dump))
    assert value(text, "sentinel_gpu_compute_processes", gpu="0") == 2
    assert value(text, "sentinel_gpu_compute_processes", gpu="1") == 0
    assert value(text, "sentinel_gpu_up", gpu="0") == 1
    del dump["devices"][1]["compute_processes"]
    text, _ = scrape(tmp_path / "older", ReplayBackend(dump))
    assert 'sentinel_gpu_compute_processes{' in text
    assert value(text, "sentinel_gpu_up", gpu="1") == 1
    assert not any(n == "sentinel_gpu_compute_processes" and ("gpu", "1") in ls
                   for n, ls in samples(text))


def test_kept_families_hold_only_the_latest_collect(tmp_path):
    """The collector reuses its families: a changed value replaces the old, none repeats."""
    dump = two_gpus()
    ctx = make_ctx(tmp_path, collectors=["gpu"], gpu_slow_fields_seconds=0.0)
    ctx.nvml_backend = ReplayBackend(dump)
    c = GpuCollector(ctx)
    c.start()
    try:
        first = c.collect()
        before = render(first).decode()
        dump["devices"][0]["power_usage_mw"] = 123456
        dump["devices"][1]["lost"] = "GpuIsLost"
        second = c.collect()
        after = render(second).decode()
    finally:
        c.close()
    assert all(a is b for a, b in zip(first, second, strict=True))  # kept, not rebuilt
    lines = [ln.rsplit(" ", 1)[0] for ln in after.splitlines() if not ln.startswith("#")]
    assert len(lines) == len(set(lines))
    assert value(before, "sentinel_gpu_power_watts", gpu="0") != 123.456
    assert value(after, "sentinel_gpu_power_watts", gpu="0") == 123.456
    assert [n for n, ls in samples(after) if ("gpu", "1") in ls] == ["sentinel_gpu_up"]
    assert value(after, "sentinel_gpu_up", gpu="1") == 0
