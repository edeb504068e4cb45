"""The burn-in as a Python call: what ``sentinel burnin`` and the controller use.

    from sentinel.burnin.api import run_burnin
    from sentinel.burnin.config import BurninConfig

    report = run_burnin(BurninConfig(duration=30))
    report.ok, report.exit_code, [v.verdict for v in report.verdicts]

:func:`run_burnin` raises :class:`BurninUnavailable` when it cannot run at all (no
torch, no CUDA, fp8 on a GPU without it) and
:class:`~sentinel.burnin.config.BurninConfigError` for bad settings; a GPU that fails
is a result (its verdict), never an exception. Imports only the standard library at
module level, torch inside the call.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from sentinel.burnin.baselines import load_baselines
from sentinel.burnin.config import BurninConfig, BurninConfigError
from sentinel.burnin.records import GpuRecord
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
) -> BurninReport:
    """Burn in the configured GPUs and return every GPU's record and verdict.

    ``on_event`` receives ``start``, ``phase`` and ``progress`` events (dicts, the
    ``--json`` lines) while it runs. ``nvml`` replaces the NVML wrapper (tests).
    """
    cfg.validate()
    baselines = load_baselines(cfg.baselines_file, cfg.dtype)  # bad file fails before work
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
    workers = _run_workers(torch, cfg, idents, sampler, emit, start_event, t_start)
    records = [_record(ident, w, sampler, cfg) for ident, w in zip(idents, workers, strict=True)]
    verdicts = judge(records, VerdictConfig(
        tolerance=cfg.tolerance, baselines=baselines, baseline_override=cfg.baseline_tflops,
        sample_interval_s=cfg.sample_interval))
    report = BurninReport(
        hostname=hostname, started_at=started, finished_at=time.time(),
        wall_seconds=time.monotonic() - t_start, config=cfg, records=records,
        verdicts=verdicts, torch_version=str(torch.__version__),
        notes=[f"NVML: {sampler.error}"] if sampler.error else [])
    if cfg.textfile:
        _write_textfile(cfg.textfile, report)
    return report


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
                 t_start: float) -> list[Any]:
    """Run one worker per GPU with NVML sampled alongside; return the finished workers."""
    from sentinel.burnin import correctness  # noqa: PLC0415 - needs torch
    from sentinel.burnin.runner import GpuWorker, SharedInputs  # noqa: PLC0415

    stop = threading.Event()
    workers: list[GpuWorker] = []
    sampler.start()
    # Everything after start() is inside the try: whatever fails (the caller's on_event,
    # making the inputs, ^C), the workers are told to stop and NVML is released, so a
    # caller that goes on running (the controller) leaves no GPU burning and no sampler.
    try:
        emit({**start_event, "dtype": cfg.dtype, "size": cfg.size, "duration": cfg.duration,
              "warmup": cfg.warmup, "memtest_seconds": cfg.memtest_seconds,
              "nvml": sampler.error or "ok",
              "gpus": [{"gpu": i.cuda_index, "uuid": i.uuid, "name": i.name,
                        "nvml_index": getattr(sampler.matched.get(i.cuda_index), "index",
                                              None)}
                       for i in idents]})
        a, b = correctness.make_inputs(torch, cfg.size, cfg.seed)
        inputs = SharedInputs(a=a, b=b,
                              cpu_rows=correctness.cpu_reference_rows(torch, a, b, cfg.dtype))
        workers.extend(GpuWorker(torch, i.cuda_index, cfg, inputs, stop) for i in idents)
        for w in workers:
            w.start()
        expected_end = (time.monotonic() + cfg.memtest_seconds * 2 + cfg.warmup
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
        error=error, nvml_error=nvml_error)


def _write_textfile(path: str, report: BurninReport) -> None:
    """Write the textfile; a failure is noted in the report, whose verdicts still stand."""
    try:
        write_textfile(path, report)
    except OSError as e:
        log.error("burn-in textfile %s not written: %s", path, e)
        report.textfile_error = f"{path} not written: {e.strerror or e}"
        report.notes.append(f"textfile {report.textfile_error}")
