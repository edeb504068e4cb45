"""CUDA-to-NVML matching and sampling through sentinel.gpu.nvml (replayed H100)."""

import itertools

from sentinel.burnin.sampler import CudaIdentity, NvmlSampler, match_devices, normalize_pci
from sentinel.gpu.nvml import DeviceInfo, Nvml
from sentinel.gpu.nvml_replay import H100_LOAD, ReplayBackend

LOAD = H100_LOAD


def test_pci_spellings_agree():
    assert normalize_pci("00000000:18:00.0") == normalize_pci("0000:18:00.0") == (0, 0x18, 0)
    assert normalize_pci("18:00.0") == (0, 0x18, 0)
    assert normalize_pci("garbage") is None


def test_match_by_uuid_not_index():
    nvml = [DeviceInfo(0, "GPU-aaa", "H100", "00000000:18:00.0"),
            DeviceInfo(1, "GPU-bbb", "H100", "00000000:2a:00.0")]
    # CUDA_VISIBLE_DEVICES=1,0: CUDA 0 is NVML 1.
    cuda = [CudaIdentity(0, "GPU-bbb", "", "H100"), CudaIdentity(1, "GPU-AAA", "", "H100")]
    m = match_devices(cuda, nvml)
    assert m[0].index == 1 and m[1].index == 0


def test_match_by_pci_when_uuid_unknown():
    nvml = [DeviceInfo(0, "GPU-aaa", "H100", "00000000:18:00.0"),
            DeviceInfo(1, "GPU-bbb", "H100", "00000000:2A:00.0")]
    cuda = [CudaIdentity(0, "", "00000000:2a:00.0", "H100"), CudaIdentity(1, "", "", "H100")]
    m = match_devices(cuda, nvml)
    assert m[0].index == 1 and 1 not in m


def test_sampler_reads_the_replayed_h100():
    backend = ReplayBackend.from_file(LOAD)
    uuid = backend.dump["devices"][0]["uuid"]
    ticks = itertools.count()
    s = NvmlSampler([CudaIdentity(0, uuid, "", "NVIDIA H100 80GB HBM3")], interval=1.0,
                    nvml=Nvml(backend), clock=lambda: float(next(ticks)))
    s.start()
    s.stop()  # the thread took its first sample at start
    s.sample_once()
    assert s.error is None and s.matched[0].uuid == uuid
    readings = s.readings(0, 0.0, 1000.0)
    assert readings, "no readings"
    r = readings[-1]
    # Captured under a bf16 matmul load: ~700 W of 700, SW power cap (0x4).
    dev = backend.dump["devices"][0]
    assert r.clock_event_reasons == 0x4
    assert r.temperature_c == float(dev["temperature_gpu"])
    assert 690 < (r.power_w or 0) <= 700
    assert r.violation_ns["power"] > 0


def test_sampler_without_nvml_records_why():
    backend = ReplayBackend({"devices": []}, init_error="LibraryNotFound")
    s = NvmlSampler([CudaIdentity(0, "GPU-x", "", "H100")], nvml=Nvml(backend))
    s.start()
    s.stop()
    assert s.error and "LibraryNotFound" in s.error
    assert s.readings(0, 0, 1e9) == []


def _three_gpus():
    """The H100 dump as three GPUs: 0 and 1 on NVLink, 2 across the system from both."""
    import copy

    backend = ReplayBackend.from_file(LOAD)
    devs = backend.dump["devices"]
    for i in (1, 2):
        d = copy.deepcopy(devs[0])
        d["uuid"], d["index"] = f"GPU-replayed-{i}", i
        d["pci_info"] = {**d["pci_info"], "busId": f"00000000:0{i}:00.0"}
        devs.append(d)
    backend.dump["device_count"] = 3
    devs[0]["links"] = {"1": {"p2p_nvlink": 0, "common_ancestor": 10},
                        "2": {"p2p_nvlink": 5, "common_ancestor": 50}}
    devs[1]["links"] = {"2": {"p2p_nvlink": 5}}  # NVML cannot say the PCIe level of 1-2
    return backend, [d["uuid"] for d in devs]


def test_link_topologies_read_once_from_nvml():
    backend, uuids = _three_gpus()
    # CUDA numbers the GPUs in another order than NVML: topology follows the UUIDs.
    cuda = [CudaIdentity(0, uuids[2], "", "H100"), CudaIdentity(1, uuids[0], "", "H100"),
            CudaIdentity(2, uuids[1], "", "H100")]
    s = NvmlSampler(cuda, nvml=Nvml(backend))
    s.start()
    try:
        assert s.link_topologies() == {(0, 1): "sys", (0, 2): "unknown", (1, 2): "nvlink"}
    finally:
        s.stop()


def test_sm_clocks_since_a_time_and_none_without_nvml():
    backend = ReplayBackend.from_file(LOAD)
    uuid = backend.dump["devices"][0]["uuid"]
    ticks = itertools.count()
    s = NvmlSampler([CudaIdentity(0, uuid, "", "H100")], nvml=Nvml(backend),
                    clock=lambda: float(next(ticks)))
    s.start()
    s.stop()
    for _ in range(3):
        s.sample_once()
    clocks = s.sm_clocks(0, 0.0)
    assert len(clocks) >= 3 and all(c == clocks[0] and c > 1e9 for c in clocks)
    assert len(s.sm_clocks(0, 2.5)) < len(clocks)
    assert s.sm_clocks(7, 0.0) is None  # not a GPU under test
    dead = NvmlSampler([CudaIdentity(0, "GPU-x", "", "H100")],
                       nvml=Nvml(ReplayBackend({"devices": []}, init_error="LibraryNotFound")))
    dead.start()
    dead.stop()
    assert dead.sm_clocks(0, 0.0) is None
    assert dead.link_topologies() == {}


def test_a_gpu_that_reports_no_sm_clock_gives_none_not_an_endless_wait():
    backend = ReplayBackend.from_file(LOAD)
    dev = backend.dump["devices"][0]
    dev["clock_sm"] = None  # NotSupported, as some VMs answer
    s = NvmlSampler([CudaIdentity(0, dev["uuid"], "", "H100")], nvml=Nvml(backend))
    s.start()
    s.stop()
    s.sample_once()
    s.sample_once()
    assert s.sm_clocks(0, 0.0) is None
