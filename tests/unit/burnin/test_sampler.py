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
