"""An all-reduce over every GPU under test, one process per GPU, timed as nccl-tests does.

Training runs one process per GPU and talks NCCL through ``torch.distributed``; so does
this check. :class:`AllreduceRanks` starts the rank processes (``python -m
sentinel.burnin.allreduce``, argv lists) when the burn-in starts: they import torch
while the GPUs burn, say ``ready`` and wait for a ``go`` line on stdin, so their start
costs the verdict nothing. On ``go`` each rank joins the group (a file store in a
private directory: no port to pick), checks one all-reduce's result, runs
:data:`WARMUP_ITERS` untimed and :data:`ITERS` timed all-reduces of
:data:`ALLREDUCE_BYTES` and prints one JSON line. The time of one all-reduce is the
slowest rank's mean; bus bandwidth is algbw x 2(n-1)/n, nccl-tests' all-reduce factor
(its PERFORMANCE.md), so figures compare with nccl-tests' ``busbw`` column.

``backend="gloo"`` runs the same code on CPU tensors (the CPU tests). NVLink SHARP
(NVLS) is off unless the environment sets ``NCCL_NVLS_ENABLE``: it needs multicast
objects some administrators disable, and the floors are measured without it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from datetime import timedelta
from pathlib import Path
from typing import IO, Any

from sentinel.burnin.records import AllreduceMeasurement

# 256 MiB of fp32 per all-reduce: nccl-tests' bus bandwidth on NVLink is within a few
# percent of its plateau there, and one takes ~1 ms at NVLink speeds.
ALLREDUCE_BYTES = 256 << 20
# nccl-tests' defaults: 5 warm-up and 20 timed iterations.
WARMUP_ITERS = 5
ITERS = 20
# From go to the last result line: group set-up (NCCL init: ~1-3 s), the check and the
# timed loop (~0.05 s over NVLink, ~0.5 s over PCIe). Past this the collective is hung.
ALLREDUCE_TIMEOUT_S = 60.0
# Waiting for a rank that has not said ready by the time the burn-in wants it: its
# torch import should have long finished (it ran beside the burn-in).
READY_TIMEOUT_S = 60.0
ERROR_TAIL_CHARS = 600


def _sentinel_root() -> str:
    """Return the directory holding the ``sentinel`` package (put on the ranks' path)."""
    return str(Path(__file__).resolve().parents[2])


def rank_env(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """Return the environment of a rank: this one, sentinel importable, NVLS off by default."""
    env = dict(os.environ if base is None else base)
    root = _sentinel_root()
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
    env.setdefault("NCCL_NVLS_ENABLE", "0")
    return env


class AllreduceRanks:
    """Start one rank process per GPU now; run the all-reduce when :meth:`run` is called."""

    def __init__(self, gpus: Sequence[int], topology: str, *, backend: str = "nccl",
                 nbytes: int = ALLREDUCE_BYTES, iters: int = ITERS,
                 warmup: int = WARMUP_ITERS, timeout: float = ALLREDUCE_TIMEOUT_S,
                 env: Mapping[str, str] | None = None) -> None:
        self.gpus = list(gpus)
        self.topology = topology
        self.backend = backend
        self.nbytes, self.iters, self.warmup, self.timeout = nbytes, iters, warmup, timeout
        self.env = rank_env(env)
        self._dir: str | None = None
        self._procs: list[subprocess.Popen[str]] = []
        # Each rank's stdout and stderr go to files, not pipes: a rank printing a lot
        # (NCCL_DEBUG=INFO writes to stdout) can never block on a full pipe mid-collective.
        self._outs: list[IO[str]] = []
        self._logs: list[IO[str]] = []
        self.start_error: str | None = None

    def _argv(self, rank: int, store: str) -> list[str]:
        device = str(self.gpus[rank]) if self.backend == "nccl" else "cpu"
        return [sys.executable, "-m", "sentinel.burnin.allreduce", "--rank", str(rank),
                "--world-size", str(len(self.gpus)), "--device", device,
                "--backend", self.backend, "--store", store, "--bytes", str(self.nbytes),
                "--iters", str(self.iters), "--warmup", str(self.warmup),
                "--timeout", str(self.timeout)]

    def start(self) -> None:
        """Start the rank processes (they import torch, then wait for go)."""
        try:
            self._dir = tempfile.mkdtemp(prefix="sentinel-allreduce-")
            store = os.path.join(self._dir, "store")
            for r in range(len(self.gpus)):
                out, log = (open(os.path.join(self._dir, f"rank{r}.{kind}"), "w+",  # noqa: SIM115
                                 encoding="utf-8") for kind in ("out", "log"))
                self._outs.append(out)
                self._logs.append(log)
                self._procs.append(subprocess.Popen(  # noqa: S603 - our argv, no shell
                    self._argv(r, store), stdin=subprocess.PIPE, stdout=out, stderr=log,
                    text=True, env=self.env))
        except OSError as e:
            self.start_error = f"could not start the rank processes: {e}"
            self.close()

    def _measurement(self, **kw: Any) -> AllreduceMeasurement:
        env = {k: v for k, v in sorted(self.env.items()) if k.startswith("NCCL_")}
        return AllreduceMeasurement(gpus=self.gpus, topology=self.topology,
                                    backend=self.backend, message_bytes=self.nbytes,
                                    iters=self.iters, env=env, **kw)

    def run(self) -> AllreduceMeasurement:
        """Tell every rank to go, collect their results (within the timeout) and close."""
        try:
            if self.start_error is not None:
                return self._measurement(error=self.start_error, phase="start")
            for p in self._procs:
                try:
                    assert p.stdin is not None
                    p.stdin.write("go\n")
                    p.stdin.flush()
                except (BrokenPipeError, OSError):
                    pass  # that rank is gone; its missing result says so below
            outs = self._collect(time.monotonic() + self.timeout + READY_TIMEOUT_S)
            if isinstance(outs, AllreduceMeasurement):
                return outs
            return self._combine(outs)
        finally:
            self.close()

    def _collect(self, deadline: float) -> list[str] | AllreduceMeasurement:
        for r, p in enumerate(self._procs):
            try:
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                return self._measurement(
                    error=f"the all-reduce did not finish within {self.timeout:.0f} s "
                          f"(rank {r} on GPU {self.gpus[r]} still running: hung?)",
                    phase="timeout")
        return [_read(f) for f in self._outs]

    def _combine(self, outs: list[str]) -> AllreduceMeasurement:
        results: list[dict[str, Any]] = []
        for r, out in enumerate(outs):
            lines = _json_lines(out)
            res = next((x for x in lines if x.get("event") == "result"), None)
            if res is None:
                started = any(x.get("event") == "ready" for x in lines)
                return self._measurement(
                    error=f"rank {r} (GPU {self.gpus[r]}) exited with code "
                          f"{self._procs[r].returncode} and no result: {self._tail(r)}",
                    phase="init" if started else "start")
            if not res.get("ok"):
                return self._measurement(
                    error=f"rank {r} (GPU {self.gpus[r]}): {res.get('error')}",
                    phase=str(res.get("phase", "")))
            results.append(res)
        secs = [float(x["seconds_per_iter"]) for x in results]
        return self._measurement(
            seconds_per_iter=max(secs), rank_seconds=secs,
            wrong_elements=max(int(x.get("wrong_elements", 0)) for x in results),
            version=str(results[0].get("version", "")))

    def _tail(self, rank: int) -> str:
        text = " ".join(_read(self._logs[rank]).split()) if rank < len(self._logs) else ""
        return text[-ERROR_TAIL_CHARS:] or "(nothing on stderr)"

    def close(self) -> None:
        """Stop any rank still running and remove the private directory (idempotent)."""
        for p in self._procs:
            if p.poll() is None:
                p.kill()
                try:
                    p.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    pass
            if p.stdin is not None:
                try:
                    p.stdin.close()
                except OSError:
                    pass
        for f in (*self._outs, *self._logs):
            f.close()
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None


def _read(f: IO[str]) -> str:
    """Return what a rank wrote to one of its files ("" if it cannot be read)."""
    try:
        f.seek(0)
        return f.read()
    except (OSError, ValueError):
        return ""


def _json_lines(text: str) -> list[dict[str, Any]]:
    """Return the JSON objects among ``text``'s lines (NCCL_DEBUG may print others)."""
    out = []
    for line in text.splitlines():
        if line.startswith("{"):
            try:
                obj = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(obj, dict):
                out.append(obj)
    return out


# ---- the rank process ----

def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m sentinel.burnin.allreduce",
                                description="One rank of sentinel burnin's all-reduce check.")
    p.add_argument("--rank", type=int, required=True)
    p.add_argument("--world-size", type=int, required=True)
    p.add_argument("--device", required=True, help="CUDA index, or cpu (gloo)")
    p.add_argument("--backend", choices=["nccl", "gloo"], default="nccl")
    p.add_argument("--store", required=True, help="file store path shared by the ranks")
    p.add_argument("--bytes", type=int, default=ALLREDUCE_BYTES)
    p.add_argument("--iters", type=int, default=ITERS)
    p.add_argument("--warmup", type=int, default=WARMUP_ITERS)
    p.add_argument("--timeout", type=float, default=ALLREDUCE_TIMEOUT_S)
    return p


def _version(torch: Any, cuda: bool) -> str:
    if not cuda:
        return f"gloo (torch {torch.__version__})"
    v = torch.cuda.nccl.version()
    return ".".join(map(str, v)) if isinstance(v, tuple) else str(v)


def _measure(torch: Any, dist: Any, args: argparse.Namespace) -> dict[str, Any]:
    """Join the group, check one all-reduce, time the rest; return the result line."""
    phase = "init"
    cuda = args.backend == "nccl"
    try:
        dev = torch.device("cuda", int(args.device)) if cuda else torch.device("cpu")
        if cuda:
            torch.cuda.set_device(dev)

        def sync() -> None:
            if cuda:
                torch.cuda.synchronize(dev)

        dist.init_process_group(args.backend, init_method=f"file://{args.store}",
                                rank=args.rank, world_size=args.world_size,
                                timeout=timedelta(seconds=args.timeout),
                                **({"device_id": dev} if cuda else {}))
        phase = "check"
        n = max(1, args.bytes // 4)
        x = torch.full((n,), float(args.rank + 1), dtype=torch.float32, device=dev)
        dist.all_reduce(x)
        want = args.world_size * (args.world_size + 1) / 2  # exact in fp32 at these sizes
        wrong = int((x != want).sum())
        x.zero_()  # sums of zeros stay zero: the timed all-reduces cannot overflow
        phase = "measure"
        for _ in range(args.warmup):
            dist.all_reduce(x)
        mark = torch.zeros(1, device=dev)
        dist.all_reduce(mark)  # every rank leaves this one together: the timing starts even
        sync()
        t = time.perf_counter()
        for _ in range(args.iters):
            dist.all_reduce(x)
        sync()
        secs = (time.perf_counter() - t) / max(1, args.iters)
        return {"event": "result", "rank": args.rank, "ok": True, "seconds_per_iter": secs,
                "wrong_elements": wrong, "version": _version(torch, cuda)}
    except Exception as e:  # noqa: BLE001 - reported to the parent, which judges it
        return {"event": "result", "rank": args.rank, "ok": False, "phase": phase,
                "error": f"{type(e).__name__}: {e}".strip()[:ERROR_TAIL_CHARS]}
    finally:
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()


def main(argv: Sequence[str] | None = None) -> int:
    """Run one rank: import torch, say ready, wait for go, measure, print the result."""
    args = _parser().parse_args(argv)
    import torch  # noqa: PLC0415 - the point of starting early is this import
    import torch.distributed as dist  # noqa: PLC0415

    print(json.dumps({"event": "ready", "rank": args.rank}), flush=True)
    if sys.stdin.readline().strip() != "go":
        return 0  # the burn-in ended without needing us
    res = _measure(torch, dist, args)
    print(json.dumps(res), flush=True)
    return 0 if res["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
