"""Copies between GPUs on the CPU stand-in: timing, the check of what arrived, hangs, sizing."""

import pytest

from sentinel.burnin.links import (
    COPY_BYTES,
    MIN_COPY_BYTES,
    copy_size,
    measure_copies,
    measure_copy,
    node_topology,
)
from tests.support.fake_cuda import FakeTorch

MB = 1 << 20
FREE = 512 * MB
TOPO = {(0, 1): "nvlink", (0, 2): "nvlink", (1, 2): "sys"}


def test_every_ordered_pair_is_measured_and_checked():
    t = FakeTorch(["GPU-a", "GPU-b", "GPU-c"], free_bytes=FREE)
    out = measure_copies(t, [0, 1, 2], TOPO, nbytes=8 * MB)
    assert [(m.src, m.dst) for m in out] == [(0, 1), (0, 2), (1, 0), (1, 2), (2, 0), (2, 1)]
    assert [m.topology for m in out] == ["nvlink", "nvlink", "nvlink", "sys", "nvlink", "sys"]
    for m in out:
        assert m.error is None and m.wrong_bytes == 0 and m.p2p is True
        assert m.bytes_per_copy == 8 * MB and m.copies >= 3
        assert m.gbps is not None and m.gbps > 0
        assert m.gbps == pytest.approx(m.bytes_per_copy * m.copies / m.seconds / 1e9)


def test_corrupted_data_is_counted():
    t = FakeTorch(["GPU-a", "GPU-b"], free_bytes=FREE, corrupt_copies=True)
    m = measure_copy(t, 0, 1, "nvlink", nbytes=4 * MB)
    assert m.error is None and m.wrong_bytes == 8  # one 8-byte word flipped


def test_a_hung_copy_is_reported_and_the_rest_left_alone():
    t = FakeTorch(["GPU-a", "GPU-b", "GPU-c"], free_bytes=FREE, hang_copies=True)
    out = measure_copies(t, [0, 1, 2], TOPO, nbytes=4 * MB, hang_timeout=0.2)
    assert out[0].error is not None and out[0].error.startswith("CopyHang: a copy from GPU 0 "
                                                                "to GPU 1 did not complete")
    assert out[0].gbps is None
    assert all(m.skipped == "an earlier copy hung" and m.error is None for m in out[1:])
    assert len(out) == 6


def test_copy_size_fits_both_gpus_free_memory():
    assert copy_size(80 << 30, 80 << 30) == COPY_BYTES
    # A nearly full destination: received buffer, expected words and compare mask fit.
    assert copy_size(80 << 30, 200 * MB) == 50 * MB
    assert copy_size(30 * MB, 80 << 30) == 15 * MB
    t = FakeTorch(["GPU-a", "GPU-b"], free_bytes=40 * MB)
    m = measure_copy(t, 0, 1, "nvlink")
    assert m.skipped == f"too little free memory for a {MIN_COPY_BYTES >> 20} MiB copy"
    assert m.error is None and m.gbps is None


def test_node_topology_is_the_weakest_link():
    assert node_topology({(0, 1): "nvlink", (0, 2): "nvlink", (1, 2): "nvlink"}) == "nvlink"
    assert node_topology(TOPO) == "sys"
    assert node_topology({(0, 1): "nvlink", (0, 2): "unknown"}) == "unknown"
    assert node_topology({}) == "unknown"
