"""The burn-in as a Python call: what ``sentinel burnin`` and the controller use.

    from sentinel.burnin.api import run_burnin
    from sentinel.burnin.config import BurninConfig

    report = run_burnin(BurninConfig())
    report.ok, report.exit_code, [v.verdict for v in report.verdicts]
    report.interconnect.verdict  # the links between the GPUs (SKIPPED on one GPU)

:func:`run_burnin` raises :class:`BurninUnavailable` when it cannot run at all (no
torch, no CUDA, fp8 on a GPU without it) and
:class:`~sentinel.burnin.config.BurninConfigError` for bad settings; a GPU that fails
is a result (its verdict), never an exception. Imports only the standard library at
module level, torch inside the call.
"""

from __future__ import annotations

import functools
import logging
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from sentinel.burnin.baselines import load_baselines, load_link_floors
from sentinel.burnin.config import BurninConfig, BurninConfigError
from sentinel.burnin.link_verdict import judge_interconnect
from sentinel.burnin.links import measure_copies, node_topology
from sentinel.burnin.records import GpuRecord, InterconnectRecord
from sentinel.burnin.report import BurninReport, check_textfile_path, write_textfile
from sentinel.burnin.verdict import VerdictConfig, judge

log = logging.getLogger(__name__)

# Past the expected end, how long to wait for a worker before calling it hung; the
# worker's own hang timeout normally fires first.
JOIN_GRACE_S = 30.0

Event = dict[str, Any]


class BurninUnavailable(RuntimeError):
    """The burn-in cannot run on this machine; the message says why and what it needs."""


def import_torch() -> Any:
    """Return torch with a usable CUDA device, or raise BurninUnavailable saying why."""
    try:
        import torch  # noqa: PLC0415 - heavy, and only the burn-in needs it
    except ImportError as e:
        raise BurninUnavailable(
            f"sentinel burnin needs PyTorch with CUDA and an NVIDIA GPU; torch is not "
            f"installed ({e}). Install it with pip install 'sentinel[torch]' on a GPU node."
        ) from e
    if not torch.cuda.is_available():
        if torch.version.cuda is None:
            why = f"this torch ({torch.__version__}) is a CPU-only build without CUDA"
        else:
            why = (f"torch {torch.__version__} (CUDA {torch.version.cuda}) sees no GPU: "
                   f"check nvidia-smi, the driver and CUDA_VISIBLE_DEVICES")
        raise BurninUnavailable(f"sentinel burnin needs CUDA and an NVIDIA GPU: {why}")
    return torch


def _cuda_identity(torch: Any, i: int) -> Any:
    from sentinel.burnin.sampler import CudaIdentity  # noqa: PLC0415

    p = torch.cuda.get_device_properties(i)
    uuid = str(getattr(p, "uuid", "") or "")
    if uuid and not uuid.startswith(("GPU-", "MIG-")):
        uuid = f"GPU-{uuid}"
    pci = ""
    if hasattr(p, "pci_bus_id"):
        pci = (f"{int(getattr(p, 'pci_domain_id', 0)):08x}:{int(p.pci_bus_id):02x}:"
               f"{int(getattr(p, 'pci_device_id', 0)):02x}.0")
    return CudaIdentity(cuda_index=i, uuid=uuid, pci_bus_id=pci, name=str(p.name))


def _select_gpus(torch: Any, cfg: BurninConfig) -> list[int]:
    count = torch.cuda.device_count()
    if not cfg.gpus:
        return list(range(count))
    for g in cfg.gpus:
        if g >= count:
            raise BurninConfigError(
                f"--gpus: GPU {g} is not visible (visible CUDA devices: 0-{count - 1}; "
                f"CUDA_VISIBLE_DEVICES renumbers them)")
    return list(cfg.gpus)


def run_burnin(
    cfg: BurninConfig,
    on_event: Callable[[Event], None] | None = None,
    *,
    nvml: Any | None = None,
    torch: Any | None = None,
    allreduce_backend: str = "nccl",
) -> BurninReport:
    """Burn in the configured GPUs, test the links between them, and judge each GPU.

    ``on_event`` receives ``start``, ``progress`` and ``interconnect`` events (dicts,
    the ``--json`` lines) while it runs. ``nvml`` replaces the NVML wrapper and
    ``allreduce_backend="gloo"`` runs the all-reduce on CPU tensors (tests).
    """
    cfg.validate()
    baselines = load_baselines(cfg.baselines_file, cfg.dtype)  # bad file fails before work
    link_floors = load_link_floors(cfg.baselines_file)
    if cfg.textfile:
        check_textfile_path(cfg.textfile)  # a bad path fails before work, not after it
    torch = torch or import_torch()
    gpus = _select_gpus(torch, cfg)
    if cfg.dtype == "fp8":
        _check_fp8(torch, gpus)
    from sentinel.burnin.sampler import NvmlSampler  # noqa: PLC0415

    started, t_start = time.time(), time.monotonic()
    hostname = socket.gethostname()
    # The reference must come from the fp32 SIMT path, never TF32 tensor cores.
    torch.backends.cuda.matmul.allow_tf32 = False
    idents = [_cuda_identity(torch, g) for g in gpus]
    sampler = NvmlSampler(idents, interval=cfg.sample_interval, nvml=nvml)
    emit = on_event or (lambda _e: None)
    start_event = {"event": "start", "time": started, "hostname": hostname}
    links = _Links(torch, cfg, gpus, allreduce_backend)
    try:
        workers = _run_workers(torch, cfg, idents, sampler, emit, start_event, t_start, links)
        records = [_record(ident, w, sampler, cfg)
                   for ident, w in zip(idents, workers, strict=True)]
        link_rec = links.measure(records, emit)
    finally:
        links.close()
    names = {r.cuda_index: r.name for r in records}
    ic = judge_interconnect(link_rec, names, links.topology, link_floors,
                            cfg.bandwidth_tolerance)
    verdicts = judge(records, VerdictConfig(
        tolerance=cfg.tolerance, baselines=baselines, baseline_override=cfg.baseline_tflops,
        sample_interval_s=cfg.sample_interval), ic.gpu_problems())
    report = BurninReport(
        hostname=hostname, started_at=started, finished_at=time.time(),
        wall_seconds=time.monotonic() - t_start, config=cfg, records=records,
        verdicts=verdicts, torch_version=str(torch.__version__),
        notes=[f"NVML: {sampler.error}"] if sampler.error else [], interconnect=ic)
    if cfg.textfile:
        _write_textfile(cfg.textfile, report)
    return report


class _Links:
    """The interconnect check: rank processes started early, copies and all-reduce at the end."""

    def __init__(self, torch: Any, cfg: BurninConfig, gpus: list[int], backend: str) -> None:
        self.torch, self.cfg, self.gpus, self.backend = torch, cfg, gpus, backend
        self.topologies: dict[tuple[int, int], str] = {}
        self.topology = "unknown"
        self.ranks: Any = None
        self.skipped = ""
        if len(gpus) < 2:
            self.skipped = (f"it needs two or more GPUs (this burn-in has {len(gpus)}: "
                            f"GPU {', '.join(map(str, gpus))})")
        elif not cfg.interconnect:
            self.skipped = "turned off (burnin.interconnect: false, --no-interconnect)"

    def start(self, sampler: Any) -> None:
        """Read the link topology and start the all-reduce ranks (they import torch now)."""
        if self.skipped:
            return
        self.topologies = sampler.link_topologies()
        self.topology = node_topology(self.topologies)
        from sentinel.burnin import allreduce  # noqa: PLC0415

        dist = getattr(self.torch, "distributed", None)
        available = getattr(dist, f"is_{self.backend}_available", lambda: False)
        if self.backend == "nccl" and not available():
            self.ranks = f"torch {self.torch.__version__} has no NCCL"
            return
        self.ranks = allreduce.AllreduceRanks(
            self.gpus, self.topology, backend=self.backend, nbytes=allreduce.ALLREDUCE_BYTES,
            iters=allreduce.ITERS, warmup=allreduce.WARMUP_ITERS)
        self.ranks.start()

    def measure(self, records: list[GpuRecord],
                emit: Callable[[Event], None]) -> InterconnectRecord:
        """Measure the copies and the all-reduce (unless skipped, or a GPU failed)."""
        if self.skipped:
            return InterconnectRecord(gpus=self.gpus, skipped=self.skipped)
        bad = [r.cuda_index for r in records if r.error is not None]
        if bad:
            return InterconnectRecord(gpus=self.gpus, skipped=(
                f"GPU {', '.join(map(str, bad))} failed its compute test; its links were "
                f"not tried (a hung GPU would hang them too)"))
        t0 = time.monotonic()
        emit({"event": "phase", "phase": "interconnect", "gpus": self.gpus,
              "topology": self.topology})
        rec = InterconnectRecord(gpus=self.gpus)
        try:
            # The workers' cached blocks go back to the driver: the copies and the rank
            # processes size themselves by what it reports free.
            self.torch.cuda.empty_cache()
            rec.copies = measure_copies(self.torch, self.gpus, self.topologies,
                                        hang_timeout=self.cfg.hang_timeout)
            if isinstance(self.ranks, str):
                rec.notes.append(f"all-reduce not measured: {self.ranks}")
            elif self.ranks is not None:
                rec.allreduce = self.ranks.run()
        except Exception as e:  # noqa: BLE001 - the GPUs' results must survive a broken check
            log.exception("interconnect check broke off")
            rec.error = f"{type(e).__name__}: {e}".strip()
        rec.seconds = time.monotonic() - t0
        return rec

    def close(self) -> None:
        """Stop rank processes still waiting (the burn-in failed or was interrupted)."""
        if self.ranks is not None and not isinstance(self.ranks, str):
            self.ranks.close()


def _check_fp8(torch: Any, gpus: list[int]) -> None:
    """Raise BurninUnavailable unless this torch and every GPU can run fp8 matmuls."""
    if not hasattr(torch, "float8_e4m3fn") or not hasattr(torch, "_scaled_mm"):
        raise BurninUnavailable(f"--dtype fp8 needs torch with float8 matmuls "
                                f"(this is torch {torch.__version__})")
    for g in gpus:
        cc = torch.cuda.get_device_capability(g)
        if cc < (9, 0):
            raise BurninUnavailable(
                f"--dtype fp8 needs compute capability 9.0 or newer; GPU {g} "
                f"({torch.cuda.get_device_name(g)}) is {cc[0]}.{cc[1]} (use --dtype bf16)")


def _run_workers(torch: Any, cfg: BurninConfig, idents: list[Any], sampler: Any,
                 emit: Callable[[Event], None], start_event: Event,
                 t_start: float, links: _Links) -> list[Any]:
    """Run one worker per GPU with NVML sampled alongside; return the finished workers."""
    from sentinel.burnin import correctness  # noqa: PLC0415 - needs torch
    from sentinel.burnin.runner import GpuWorker, SharedInputs  # noqa: PLC0415
    from sentinel.burnin.warmup import MeasureGate  # noqa: PLC0415

    stop = threading.Event()
    workers: list[GpuWorker] = []
    gate = MeasureGate([i.cuda_index for i in idents], cfg.warmup)
    sampler.start()
    # Everything after start() is inside the try: whatever fails (the caller's on_event,
    # making the inputs, ^C), the workers are told to stop and NVML is released, so a
    # caller that goes on running (the controller) leaves no GPU burning and no sampler.
    try:
        links.start(sampler)
        emit({**start_event, "dtype": cfg.dtype, "size": cfg.size, "duration": cfg.duration,
              "warmup": cfg.warmup, "warmup_mode": cfg.warmup_mode,
              "memtest_seconds": cfg.memtest_seconds, "interconnect": links.skipped or "on",
              "nvml": sampler.error or "ok",
              "gpus": [{"gpu": i.cuda_index, "uuid": i.uuid, "name": i.name,
                        "nvml_index": getattr(sampler.matched.get(i.cuda_index), "index",
                                              None)}
                       for i in idents]})
        a, b = correctness.make_inputs(torch, cfg.size, cfg.seed)
        inputs = SharedInputs(a=a, b=b,
                              cpu_rows=correctness.cpu_reference_rows(torch, a, b, cfg.dtype))
        workers.extend(
            GpuWorker(torch, i.cuda_index, cfg, inputs, stop, gate=gate,
                      clocks=functools.partial(sampler.sm_clocks, i.cuda_index))
            for i in idents)
        for w in workers:
            w.start()
        # Memory test (twice its budget: whole passes), the longest warm-up, the longest
        # wait for the slowest GPU, the measured window.
        expected_end = (time.monotonic() + cfg.memtest_seconds * 2 + cfg.warmup * 2
                        + cfg.duration + cfg.hang_timeout + JOIN_GRACE_S)
        while any(w.is_alive() for w in workers) and time.monotonic() < expected_end:
            for w in workers:
                w.join(timeout=cfg.sample_interval / max(1, len(workers)))
            emit({"event": "progress", "elapsed": round(time.monotonic() - t_start, 3),
                  "gpus": [{"gpu": w.cuda_index, "phase": w.state.phase,
                            "tflops": w.state.last_tflops,
                            "measured_s": round(w.state.measured_s, 3)} for w in workers]})
    except BaseException:
        stop.set()
        # One deadline for all workers: eight hung GPUs must not take 8 x hang_timeout.
        deadline = time.monotonic() + cfg.hang_timeout
        for w in workers:
            w.join(timeout=max(0.0, deadline - time.monotonic()))
        raise
    finally:
        sampler.stop()
    return workers


def _record(ident: Any, w: Any, sampler: Any, cfg: BurninConfig) -> GpuRecord:
    """Return what one GPU's worker and the NVML sampler recorded for it."""
    res = w.result
    error = res.error
    if w.is_alive():
        error = error or "the GPU's worker did not finish (GPU hung?)"
    dev = sampler.matched.get(ident.cuda_index)
    readings = []
    if res.window_start is not None:
        readings = sampler.readings(ident.cuda_index, res.window_start,
                                    res.window_end or time.monotonic())
    nvml_error = sampler.error or (None if dev is not None else
                                   "no NVML device with this UUID or PCI bus id")
    return GpuRecord(
        cuda_index=ident.cuda_index, uuid=ident.uuid or getattr(dev, "uuid", ""),
        name=ident.name, pci_bus_id=getattr(dev, "pci_bus_id", "") or ident.pci_bus_id,
        nvml_index=getattr(dev, "index", None), dtype=cfg.dtype, duration_s=cfg.duration,
        perf=res.perf, nvml=readings, correctness=res.correctness, memtest=res.memtest,
        error=error, nvml_error=nvml_error, setup_s=res.setup_s, warmup_s=res.warmup_s,
        warmup_end=res.warmup_end)


def _write_textfile(path: str, report: BurninReport) -> None:
    """Write the textfile; a failure is noted in the report, whose verdicts still stand."""
    try:
        write_textfile(path, report)
    except OSError as e:
        log.error("burn-in textfile %s not written: %s", path, e)
        report.textfile_error = f"{path} not written: {e.strerror or e}"
        report.notes.append(f"textfile {report.textfile_error}")
