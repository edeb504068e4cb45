"""Burn one GPU: back-to-back matmuls timed with CUDA events, and the memory test.

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

Order (``warmup_mode``): *steady* (default) sets up the matmuls first, then runs the
memory test in a :class:`MemtestThread` on a high-priority stream over the memory the
matmuls leave free, while the warm-up matmuls run beside it; the warm-up ends once the
memory test is done and speed and clocks are steady (:mod:`sentinel.burnin.warmup`).
*fixed* (v1) runs the memory test first, then exactly ``warmup`` seconds of matmuls.
Either way every GPU's measured window opens at the same moment
(:class:`~sentinel.burnin.warmup.MeasureGate`) and lasts ``duration`` seconds.
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
from sentinel.burnin.memtest import PATTERNS, plan_memtest, run_memtest
from sentinel.burnin.records import CorrectnessResult, MemtestResult, PerfSample
from sentinel.burnin.warmup import FIXED, PEERS, Chunk, MeasureGate, WarmupTracker

# ~0.25 s of work between events: four completions per 1 s report, and at most a few
# hundred queued launches per chunk, well under CUDA's ~1024-entry launch queue (a full
# queue would block the launching thread while it holds the GIL).
CHUNK_TARGET_S = 0.25
MAX_CHUNK_MATMULS = 400
CHUNKS_IN_FLIGHT = 2
# How often the host looks whether a chunk finished: far below a chunk's length, and a
# sleep, so a waiting thread costs no CPU and releases the GIL.
POLL_S = 0.001
# The memory test's stream outranks the matmuls' (lower is higher in CUDA): its kernels
# get the SMs first, so it runs at nearly its own speed while the warm-up matmuls fill
# the gaps; the warm-up is not measured, so the matmuls lose nothing that counts.
MEMTEST_STREAM_PRIORITY = -1


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
    setup_s: float | None = None
    warmup_s: float | None = None
    warmup_end: str = ""


def flops_per_matmul(n: int) -> float:
    """Return the floating-point operations of one N x N x N matmul."""
    return 2.0 * n * n * n


def matmul_headroom_bytes(n: int) -> int:
    """Return the memory kept free for the matmul loop while the memory test runs beside it.

    The loop's buffers are allocated before the test is sized, but the result checks and
    cuBLAS may still ask for transient memory of the order of a matrix (an H200 with 4 GiB
    free ran out asking for 512 MiB, two fp32 matrices, in the first chunk): keep four
    fp32 matrices (1 GiB at the default 8192).
    """
    return 4 * n * n * 4


def memtest_on_free(torch: Any, dev: Any, cfg: BurninConfig, should_stop: Callable[[], bool],
                    concurrent: bool) -> MemtestResult:
    """Test the memory free on ``dev`` now, sized so no allocation can exceed it.

    Beside the matmuls (``concurrent``) the test leaves them their headroom.
    """
    free, _total = torch.cuda.mem_get_info(dev)
    reserve = matmul_headroom_bytes(cfg.size) if concurrent else 0
    plan = plan_memtest(max(0, int(free) - reserve), cfg.memtest_fraction)
    if plan.test_bytes == 0:
        return MemtestResult(0, 0, 0, 0.0, [], free_bytes=int(free), concurrent=concurrent,
                             note=f"only {int(free)} bytes free: too little to test")
    res = run_memtest(torch, dev, plan.test_bytes, cfg.memtest_seconds, cfg.seed,
                      chunk_bytes=plan.chunk_bytes, min_passes=len(PATTERNS),
                      should_stop=should_stop)
    res.free_bytes = int(free)
    res.concurrent = concurrent
    return res


class MemtestThread(threading.Thread):
    """Run the memory test on its own high-priority stream beside the warm-up matmuls."""

    def __init__(self, torch: Any, dev: Any, cfg: BurninConfig, stop: threading.Event) -> None:
        super().__init__(name=f"burnin-memtest{dev.index}", daemon=True)
        self.torch, self.dev, self.cfg, self.stop_event = torch, dev, cfg, stop
        self.result: MemtestResult | None = None
        self.error: str | None = None

    def run(self) -> None:
        """Run the test; an exception is kept as ``error`` for the worker to report."""
        torch = self.torch
        try:
            torch.cuda.set_device(self.dev)
            stream = torch.cuda.Stream(device=self.dev, priority=MEMTEST_STREAM_PRIORITY)
            with torch.cuda.stream(stream):
                self.result = memtest_on_free(torch, self.dev, self.cfg, self.stop_event.is_set,
                                              concurrent=True)
                stream.synchronize()
        except Exception as e:  # noqa: BLE001 - reported by the worker as the GPU's error
            self.error = f"{type(e).__name__}: {e}".strip()
        finally:
            # Hand the tested memory back now: the interconnect check and other tenants
            # need it, and this thread's cached blocks would otherwise keep it.
            try:
                torch.cuda.empty_cache()
            except Exception:  # noqa: BLE001, S110 - only a cache release; nothing to report
                pass


class GpuWorker(threading.Thread):
    """Run the burn-in on one CUDA device (a daemon thread: a hung GPU cannot block exit)."""

    def __init__(self, torch: Any, cuda_index: int, cfg: BurninConfig, inputs: SharedInputs,
                 stop: threading.Event, gate: MeasureGate | None = None,
                 clocks: Callable[[float], list[float] | None] | None = None,
                 on_sample: Callable[[int, PerfSample], None] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(name=f"burnin-gpu{cuda_index}", daemon=True)
        self.torch = torch
        self.cuda_index = cuda_index
        self.cfg = cfg
        self.inputs = inputs
        self.stop_event = stop
        self.gate = gate or MeasureGate([cuda_index], cfg.warmup, clock)
        # SM clock readings of this GPU since a time (None: NVML cannot tell).
        self.clocks = clocks or (lambda _since: None)
        self.on_sample = on_sample
        self.clock = clock
        self.state = WorkerState()
        self.result = WorkerResult()
        self._since_check = 0

    def run(self) -> None:
        """Run every phase; any exception ends the run and is recorded as the error."""
        try:
            self._run()
            self.state.phase = "done"
        except Exception as e:  # noqa: BLE001 - a failing GPU is a result, not a crash
            self.result.error = f"{type(e).__name__}: {e}".strip()
            self.state.phase = "failed"
        finally:
            self.gate.leave(self.cuda_index)

    def _run(self) -> None:
        torch, cfg = self.torch, self.cfg
        t0 = self.clock()
        dev = torch.device("cuda", self.cuda_index)
        torch.cuda.set_device(dev)
        stream = torch.cuda.Stream(device=dev)
        want_memtest = cfg.memtest_seconds > 0 and cfg.memtest_fraction > 0
        overlap = want_memtest and cfg.warmup_mode != FIXED
        with torch.cuda.stream(stream):
            if want_memtest and not overlap:
                self.state.phase = "memtest"
                self.result.memtest = memtest_on_free(torch, dev, cfg, self.stop_event.is_set,
                                                      concurrent=False)
                torch.cuda.empty_cache()
            self.state.phase = "reference"
            mm, c, checker, ref_bad = self._prepare(dev)
            memtest = None
            if overlap:
                # The reference's temporaries go back first: the test covers what is
                # free once the matmuls hold everything they will ever use.
                torch.cuda.empty_cache()
                # The check's temporaries are allocated (at queue time) and stay cached
                # before the test is sized on what is free.
                checker.check(c)
                memtest = MemtestThread(torch, dev, cfg, self.stop_event)
                memtest.start()
            self.result.setup_s = self.clock() - t0
            try:
                self._burn(stream, mm, c, checker, ref_bad, memtest)
            finally:
                if memtest is not None:
                    self._collect_memtest(memtest)

    def _collect_memtest(self, memtest: MemtestThread) -> None:
        """Keep the overlapped memory test's result; its failure is the GPU's error."""
        memtest.join(timeout=0 if self.result.error else 1.0)
        if memtest.is_alive():
            self.result.error = self.result.error or "the memory test did not finish"
            return
        self.result.memtest = memtest.result
        if memtest.error and self.result.error is None:
            self.result.error = f"memory test failed: {memtest.error}"

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

    def _enqueue(self, stream: Any, mm: Callable[[], Any], c: Any,
                 checker: correctness.ResultChecker, k: int) -> Any:
        """Queue ``k`` matmuls (and the result checks due) and return the event after them."""
        for _ in range(k):
            mm()
            self._since_check += 1
            if self._since_check >= self.cfg.check_every:
                checker.check(c)
                self._since_check = 0
        ev = self.torch.cuda.Event(enable_timing=True)
        ev.record(stream)
        return ev

    def _measure_until(self, now: float, t0: float, tracker: WarmupTracker) -> float | None:
        """Return when the measured window ends, once the gate opened it (None before)."""
        opened = self.gate.opened_at()
        if opened is None:
            return None
        self.result.warmup_s = now - t0
        self.result.warmup_end = tracker.ended or PEERS
        return opened + self.cfg.duration

    def _burn(self, stream: Any, mm: Callable[[], Any], c: Any,
              checker: correctness.ResultChecker, ref_bad: int,
              memtest: MemtestThread | None) -> None:
        torch, cfg = self.torch, self.cfg
        flops1 = flops_per_matmul(cfg.size)
        chunk = 1  # the first chunk times one matmul; later chunks aim at CHUNK_TARGET_S
        t0 = self.clock()
        tracker = WarmupTracker(cfg.warmup_mode, t0, cfg.warmup)
        end: float | None = None  # set when this GPU's measured window begins
        # (start event, end event, matmuls, measured, enqueued with no memory test beside)
        inflight: collections.deque[tuple[Any, Any, int, bool, bool]] = collections.deque()
        prev = torch.cuda.Event(enable_timing=True)
        prev.record(stream)
        acc_flops = acc_s = 0.0
        ready = False
        self.state.phase = "memtest" if memtest is not None else "warmup"
        try:
            while True:
                now = self.clock()
                testing = memtest is not None and memtest.is_alive()
                if memtest is not None and not testing and self.state.phase == "memtest":
                    tracker.restart(now)  # speeds beside the memory test say nothing
                    self.state.phase = "warmup"
                if testing and now > t0 + cfg.memtest_seconds + cfg.hang_timeout:
                    raise GpuHang(f"the memory test did not finish within "
                                  f"{cfg.memtest_seconds + cfg.hang_timeout:.0f} s (GPU hung?)")
                if end is None and not testing:
                    end = self._measure_until(now, t0, tracker)
                enqueue = (end is None or now < end) and not self.stop_event.is_set()
                if enqueue:
                    ev = self._enqueue(stream, mm, c, checker, chunk)
                    inflight.append((prev, ev, chunk, end is not None, not testing))
                    prev = ev
                if not inflight:
                    break
                if len(inflight) < CHUNKS_IN_FLIGHT and enqueue:
                    continue
                start_ev, end_ev, k, measured, clean = inflight.popleft()
                self._wait(end_ev)
                done_at = self.clock()
                secs = start_ev.elapsed_time(end_ev) / 1000.0
                if secs > 0:
                    chunk = max(1, min(MAX_CHUNK_MATMULS, round(CHUNK_TARGET_S * k / secs)))
                if not measured:
                    # The last warm-up chunk's end is where measured work starts on the GPU.
                    self.result.window_start = done_at
                    if clean and secs > 0 and not ready:
                        tracker.add(Chunk(done_at, secs, k * flops1 / secs / 1e12))
                        if tracker.check(done_at, self.clocks(tracker.start)):
                            ready = True
                            self.gate.ready(self.cuda_index)
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
