"""Measure the links between GPUs: device-to-device copies for every ordered pair.

Each pair is measured alone (one direction at a time), so two transfers never share a
PCIe switch or an NVLink and the figure is the link's own. A copy runs on the source
GPU's current stream (``dst.copy_(src)`` does so in torch, through peer access where
the pair allows it, else staged through host memory by the driver) and is timed with
CUDA events on that stream, like the matmuls. What arrives is compared with what was
sent. A copy that does not complete within the hang timeout is reported, not waited for.

The collective (NCCL all-reduce) is :mod:`sentinel.burnin.allreduce`; the judging of
both is :mod:`sentinel.burnin.link_verdict`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from sentinel.burnin.records import CopyMeasurement

# Best to worst, as nvidia-smi topo -m orders them; "unknown" when NVML cannot tell.
TOPOLOGIES: tuple[str, ...] = ("nvlink", "pix", "pxb", "phb", "node", "sys", "unknown")
# 256 MiB per copy: ~0.7 ms over NVLink 4, far above the ~10 us a copy costs to start,
# so the figure is the link's bandwidth (nvbandwidth's default buffer is 512 MiB).
COPY_BYTES = 256 << 20
# Each direction is timed for ~0.1 s after one untimed copy (peer mapping, first touch):
# 150 copies over NVLink, a few over a slow PCIe path; 56 directions of an 8-GPU node
# then take ~6 s.
COPY_TARGET_S = 0.1
MIN_COPIES, MAX_COPIES = 3, 400
# Smaller than this (a nearly full GPU) and per-copy overhead would show in the figure.
MIN_COPY_BYTES = 16 << 20
POLL_S = 0.001


def node_topology(pairs: Mapping[tuple[int, int], str]) -> str:
    """Return the weakest link among ``pairs``: what a collective over all of them crosses."""
    if not pairs:
        return "unknown"
    return max(pairs.values(), key=lambda t: TOPOLOGIES.index(t) if t in TOPOLOGIES
               else len(TOPOLOGIES))


def copy_size(free_src: int, free_dst: int, want: int = COPY_BYTES) -> int:
    """Return the bytes per copy that fit in the free memory of both GPUs.

    The source holds one buffer; the destination the received buffer, the expected words
    and the comparison (a byte per word): at most a quarter of the free memory each.
    """
    fit = min(free_src // 2, free_dst // 4)
    size = min(want, fit)
    return size - size % (1 << 20)


class CopyHang(RuntimeError):
    """A copy did not complete within the hang timeout."""


def _wait(ev: Any, timeout: float, clock: Callable[[], float], what: str) -> None:
    deadline = clock() + timeout
    while not ev.query():
        if clock() > deadline:
            raise CopyHang(f"{what} did not complete within {timeout:.0f} s (link hung?)")
        time.sleep(POLL_S)


def measure_copy(torch: Any, src: int, dst: int, topology: str, *, nbytes: int = COPY_BYTES,
                 target_s: float = COPY_TARGET_S, hang_timeout: float = 30.0,
                 clock: Callable[[], float] = time.monotonic) -> CopyMeasurement:
    """Time copies of ``nbytes`` from CUDA device ``src`` to ``dst`` and check what arrived."""
    out = CopyMeasurement(src=src, dst=dst, topology=topology)
    what = f"a copy from GPU {src} to GPU {dst}"
    try:
        out.p2p = bool(torch.cuda.can_device_access_peer(src, dst))
        s_dev, d_dev = torch.device("cuda", src), torch.device("cuda", dst)
        size = copy_size(torch.cuda.mem_get_info(s_dev)[0], torch.cuda.mem_get_info(d_dev)[0],
                         nbytes)
        if size < min(MIN_COPY_BYTES, nbytes):
            out.skipped = (f"too little free memory for a {min(MIN_COPY_BYTES, nbytes) >> 20} "
                           f"MiB copy")
            return out
        words = size // 8
        with torch.cuda.device(s_dev):
            stream = torch.cuda.current_stream(s_dev)
            a = torch.arange(words, dtype=torch.int64, device=s_dev)  # each word its index
            b = torch.empty(words, dtype=torch.int64, device=d_dev)

            def timed(n: int) -> float:
                start, end = (torch.cuda.Event(enable_timing=True) for _ in range(2))
                start.record(stream)
                for _ in range(n):
                    b.copy_(a, non_blocking=True)
                end.record(stream)
                _wait(end, hang_timeout, clock, what)
                return float(start.elapsed_time(end)) / 1000.0

            timed(1)  # untimed: peer mapping and first touch
            one = timed(1)
            n = max(MIN_COPIES, min(MAX_COPIES, round(target_s / one) if one > 0 else MAX_COPIES))
            out.seconds = timed(n)
            out.bytes_per_copy, out.copies = size, n
        expected = torch.arange(words, dtype=torch.int64, device=d_dev)
        out.wrong_bytes = int((b != expected).sum()) * 8
    except Exception as e:  # noqa: BLE001 - a failing link is a result, not a crash
        out.error = f"{type(e).__name__}: {e}".strip()
    return out


def measure_copies(torch: Any, gpus: Sequence[int], topologies: Mapping[tuple[int, int], str],
                   *, nbytes: int = COPY_BYTES, hang_timeout: float = 30.0,
                   should_stop: Callable[[], bool] = lambda: False,
                   clock: Callable[[], float] = time.monotonic) -> list[CopyMeasurement]:
    """Measure every ordered pair of ``gpus``; after a hang, leave the rest unmeasured."""
    out: list[CopyMeasurement] = []
    hung = False
    for a in gpus:
        for b in gpus:
            if a == b:
                continue
            topo = topologies.get((min(a, b), max(a, b)), "unknown")
            if hung or should_stop():
                # A hung copy leaves the GPUs unusable: further copies would hang too.
                out.append(CopyMeasurement(src=a, dst=b, topology=topo, skipped=(
                    "an earlier copy hung" if hung else "the burn-in was stopped")))
                continue
            m = measure_copy(torch, a, b, topo, nbytes=nbytes, hang_timeout=hang_timeout,
                             clock=clock)
            out.append(m)
            hung = bool(m.error and m.error.startswith(CopyHang.__name__))
            if not hung:
                torch.cuda.empty_cache()
    return out
