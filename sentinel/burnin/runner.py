"""Burn one GPU: memory test, then back-to-back matmuls timed with CUDA events.

One :class:`GpuWorker` thread per GPU, each with its own CUDA stream. Threads, not
processes: torch is imported once, results need no pickling, and kernel launches are
a tiny share of the host's time (an 8192^3 bf16 matmul runs ~1.5 ms on H100, its
launch ~10 us), so the GIL is not a bottleneck; waiting on CUDA work never holds it
(we poll ``Event.query``). A hung GPU is detected by that poll's deadline.

How the speed is measured (what keeps it at the plain ``a @ b`` loop's level):

- The output is pre-allocated (``matmul(a, b, out=c)``): no allocator work.
- Work is queued in chunks of ~:data:`CHUNK_TARGET_S` between two CUDA events, and two
  chunks are kept in flight, so the GPU never waits for the host, and the host never
  synchronises the device inside the measured window.
- A chunk's speed is (its matmuls' FLOPs) / (GPU time between its events); chunks
  are summed into ~1 s samples. Chunks enqueued during the warm-up are not counted.
- The result check (every ``check_every`` matmuls) runs in the same stream into
  device-side counters, read once at the end.
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sentinel.burnin import correctness
from sentinel.burnin.config import BurninConfig
from sentinel.burnin.memtest import run_memtest
from sentinel.burnin.records import CorrectnessResult, MemtestResult, PerfSample

# ~0.25 s of work between events: four completions per 1 s report, and at most a few
# hundred queued launches per chunk, well under CUDA's ~1024-entry launch queue (a full
# queue would block the launching thread while it holds the GIL).
CHUNK_TARGET_S = 0.25
MAX_CHUNK_MATMULS = 400
CHUNKS_IN_FLIGHT = 2
# How often the host looks whether a chunk finished: far below a chunk's length, and a
# sleep, so a waiting thread costs no CPU and releases the GIL.
POLL_S = 0.001


class GpuHang(RuntimeError):
    """A GPU finished no work within the hang timeout."""


@dataclass
class SharedInputs:
    """The fixed inputs and the CPU's reference rows, made once for every GPU."""

    a: Any  # CPU bf16 N x N
    b: Any
    cpu_rows: Any  # CPU fp32 rows of the exact product (correctness.reference_row_indices)


@dataclass
class WorkerState:
    """What the progress display reads while a worker runs (written by the worker)."""

    phase: str = "setup"  # setup, memtest, reference, warmup, measure, done, failed
    last_tflops: float | None = None
    measured_s: float = 0.0


@dataclass
class WorkerResult:
    """What a worker hands back."""

    perf: list[PerfSample] = field(default_factory=list)
    correctness: CorrectnessResult | None = None
    memtest: MemtestResult | None = None
    error: str | None = None
    window_start: float | None = None  # host clock when measured work began on the GPU
    window_end: float | None = None


def flops_per_matmul(n: int) -> float:
    """Return the floating-point operations of one N x N x N matmul."""
    return 2.0 * n * n * n


class GpuWorker(threading.Thread):
    """Run the burn-in on one CUDA device (a daemon thread: a hung GPU cannot block exit)."""

    def __init__(self, torch: Any, cuda_index: int, cfg: BurninConfig, inputs: SharedInputs,
                 stop: threading.Event,
                 on_sample: Callable[[int, PerfSample], None] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(name=f"burnin-gpu{cuda_index}", daemon=True)
        self.torch = torch
        self.cuda_index = cuda_index
        self.cfg = cfg
        self.inputs = inputs
        self.stop_event = stop
        self.on_sample = on_sample
        self.clock = clock
        self.state = WorkerState()
        self.result = WorkerResult()

    def run(self) -> None:
        """Run every phase; any exception ends the run and is recorded as the error."""
        try:
            self._run()
            self.state.phase = "done"
        except Exception as e:  # noqa: BLE001 - a failing GPU is a result, not a crash
            self.result.error = f"{type(e).__name__}: {e}".strip()
            self.state.phase = "failed"

    def _run(self) -> None:
        torch, cfg = self.torch, self.cfg
        dev = torch.device("cuda", self.cuda_index)
        torch.cuda.set_device(dev)
        stream = torch.cuda.Stream(device=dev)
        with torch.cuda.stream(stream):
            if cfg.memtest_seconds > 0 and cfg.memtest_fraction > 0:
                self.state.phase = "memtest"
                free, _total = torch.cuda.mem_get_info(dev)
                self.result.memtest = run_memtest(
                    torch, dev, int(free * cfg.memtest_fraction), cfg.memtest_seconds,
                    cfg.seed)
                torch.cuda.empty_cache()
            self.state.phase = "reference"
            mm, c, checker, ref_bad = self._prepare(dev)
            self._burn(stream, mm, c, checker, ref_bad)

    def _prepare(self, dev: Any) -> tuple[Callable[[], Any], Any, correctness.ResultChecker, int]:
        torch, cfg, n = self.torch, self.cfg, self.cfg.size
        a = self.inputs.a.to(dev)
        b = self.inputs.b.to(dev)
        qa = correctness.quantize(torch, a, cfg.dtype)
        qb = correctness.quantize(torch, b, cfg.dtype)
        # fp32 on the SIMT path (TF32 off, set by the caller): independent of tensor cores.
        ref = torch.matmul(qa.float(), qb.float())
        ref_bad = correctness.count_reference_mismatches(torch, ref, self.inputs.cpu_rows)
        checker = correctness.ResultChecker(torch, ref, cfg.dtype)
        del ref
        c = torch.empty(n, n, dtype=torch.bfloat16, device=dev)
        if cfg.dtype == "fp8":
            b_col = qb.t().contiguous().t()  # _scaled_mm wants the second operand column-major
            one = torch.ones((), dtype=torch.float32, device=dev)

            def mm() -> Any:
                return torch._scaled_mm(qa, b_col, scale_a=one, scale_b=one,
                                        out_dtype=torch.bfloat16, out=c)
        else:
            def mm() -> Any:
                return torch.matmul(a, b, out=c)
        mm()  # first call: cuBLAS picks its algorithm and allocates its workspace
        return mm, c, checker, ref_bad

    def _wait(self, ev: Any) -> None:
        deadline = self.clock() + self.cfg.hang_timeout
        while not ev.query():
            if self.clock() > deadline:
                raise GpuHang(f"no work completed for {self.cfg.hang_timeout:.0f} s (GPU hung?)")
            time.sleep(POLL_S)

    def _burn(self, stream: Any, mm: Callable[[], Any], c: Any, checker: correctness.ResultChecker,
              ref_bad: int) -> None:
        torch, cfg = self.torch, self.cfg
        flops1 = flops_per_matmul(cfg.size)
        chunk = 1  # the first chunk times one matmul; later chunks aim at CHUNK_TARGET_S
        since_check = 0
        t0 = self.clock()
        warm_end = t0 + cfg.warmup
        end = warm_end + cfg.duration
        inflight: collections.deque[tuple[Any, Any, int, bool]] = collections.deque()
        prev = torch.cuda.Event(enable_timing=True)
        prev.record(stream)
        acc_flops = acc_s = 0.0
        self.state.phase = "warmup" if cfg.warmup > 0 else "measure"
        try:
            while True:
                now = self.clock()
                enqueue = now < end and not self.stop_event.is_set()
                if enqueue:
                    for _ in range(chunk):
                        mm()
                        since_check += 1
                        if since_check >= cfg.check_every:
                            checker.check(c)
                            since_check = 0
                    ev = torch.cuda.Event(enable_timing=True)
                    ev.record(stream)
                    inflight.append((prev, ev, chunk, now >= warm_end))
                    prev = ev
                if not inflight:
                    break
                if len(inflight) < CHUNKS_IN_FLIGHT and enqueue:
                    continue
                start_ev, end_ev, k, measured = inflight.popleft()
                self._wait(end_ev)
                done_at = self.clock()
                secs = start_ev.elapsed_time(end_ev) / 1000.0
                if secs > 0:
                    chunk = max(1, min(MAX_CHUNK_MATMULS, round(CHUNK_TARGET_S * k / secs)))
                if not measured:
                    # The last warm-up chunk's end is where measured work starts on the GPU.
                    self.result.window_start = done_at
                    continue
                if self.result.window_start is None:
                    self.result.window_start = done_at - secs
                self.state.phase = "measure"
                acc_flops += k * flops1
                acc_s += secs
                if acc_s >= cfg.sample_interval:
                    self._emit(done_at, acc_flops, acc_s)
                    acc_flops = acc_s = 0.0
        finally:
            # Keep the work completed before a failure: it is evidence too.
            if acc_s > 0:
                self._emit(self.clock(), acc_flops, acc_s)
            if self.result.window_start is not None:
                self.result.window_end = self.clock()
        # Only after a clean run: synchronising a hung GPU would block forever.
        stream.synchronize()
        checks, bad, max_err = checker.result()
        self.result.correctness = CorrectnessResult(
            checks=checks, mismatches=bad, max_abs_error=max_err, tolerance=checker.rule,
            reference=f"fp32 product of the same inputs on this GPU (TF32 off); "
                      f"{correctness.REFERENCE_ROWS} rows recomputed on the CPU",
            reference_mismatches=ref_bad)

    def _emit(self, done_at: float, flops: float, secs: float) -> None:
        start = self.result.window_start or done_at
        s = PerfSample(t=done_at - start, flops=flops, seconds=secs)
        self.result.perf.append(s)
        self.state.last_tflops = s.tflops
        self.state.measured_s += secs
        if self.on_sample is not None:
            self.on_sample(self.cuda_index, s)
