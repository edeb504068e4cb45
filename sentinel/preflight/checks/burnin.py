"""Burn-in of every GPU: ``sentinel burnin --json`` here, or on Slurm nodes, read back.

Locally the burn-in is a subprocess of this install (``python -m sentinel burnin --json``
with the config's ``burnin:`` section); with ``preflight.burnin_nodes`` it is
``preflight.burnin_command`` once per node, in parallel. Either output is read with
``BurninReport.from_dict`` (the controller's reader). A burn-in that cannot run here
(exit 2) is skipped when this host has no NVIDIA device, and a problem when it has one.
"""

from __future__ import annotations

import math
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from sentinel.preflight.checks.base import Context
from sentinel.preflight.report import PROBLEM, Result, ok, problem, skipped

TITLE = "burn-in of every GPU"
# Burn-ins through Slurm at once: each is one srun waiting on its node.
MAX_PARALLEL = 32
# The burn-in's own "could not run" exit code (sentinel.burnin.report.EXIT_CANNOT_RUN).
CANNOT_RUN = 2
# Device nodes the NVIDIA driver creates: with none, this host has no GPU to test.
NVIDIA_DEVICES = ("nvidiactl", "nvidia0")
STDERR_TAIL = 600


def _gpus(report: Any) -> list[dict[str, Any]]:
    return [{"gpu": v.cuda_index, "name": v.name, "uuid": v.uuid, "verdict": v.verdict.value,
             "tflops_median": v.stats.tflops_median, "temperature_max_c":
             v.stats.temperature_max_c, "problems": [p.evidence for p in v.problems]}
            for v in report.verdicts]


def judge(stdout: str, stderr: str, returncode: int, where: str) -> dict[str, Any]:
    """Read one burn-in's output: ``{"status", "summary", "gpus", ...}`` for ``where``."""
    from sentinel.controller.actions.burnin import read_report, verdict_text

    try:
        report = read_report(stdout)
    except Exception as e:  # noqa: BLE001 - any unreadable output is the same failure
        err = stderr.strip()[-STDERR_TAIL:] or "(empty)"
        return {"status": PROBLEM, "exit_code": returncode, "stderr": err,
                "summary": f"{where}: no burn-in report (exit code {returncode}): {e}"}
    out: dict[str, Any] = {"exit_code": returncode, "hostname": report.hostname,
                           "wall_seconds": round(report.wall_seconds, 1),
                           "gpus": _gpus(report), "notes": report.notes}
    if not report.verdicts:
        # A burn-in that saw no GPU passes by its own rules, but it is no evidence.
        out.update(status=PROBLEM, summary=f"{where}: the burn-in tested no GPU (host "
                   f"{report.hostname}): check CUDA_VISIBLE_DEVICES and the driver")
    elif report.ok:
        speeds = [v.stats.tflops_median for v in report.verdicts
                  if v.stats.tflops_median is not None]
        rng = f", median TFLOPS {min(speeds):.0f}-{max(speeds):.0f}" if speeds else ""
        out.update(status="ok", summary=f"{where}: {len(report.verdicts)} GPU(s) passed "
                   f"({report.verdicts[0].name}{rng})")
    else:
        out.update(status=PROBLEM, summary=f"{where}: {verdict_text(report)}")
    return out


def _has_gpu(ctx: Context) -> bool:
    return any((ctx.dev / name).exists() for name in NVIDIA_DEVICES)


def _local(ctx: Context) -> Result:
    s = ctx.setup
    argv = ctx.burnin_argv or [sys.executable, "-m", "sentinel", "burnin", "--json",
                               *(["--config", s.path] if s.path else []),
                               *s.preflight.burnin_args]
    timeout = s.preflight.burnin_timeout_seconds
    try:
        res = subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                             check=False)
    except subprocess.TimeoutExpired:
        return problem(f"the burn-in gave no answer within {timeout:.0f} s "
                       "(preflight.burnin_timeout_seconds): a GPU may hang", command=argv)
    except OSError as e:
        return problem(f"cannot start the burn-in: {e}", command=argv)
    if res.returncode == CANNOT_RUN and not res.stdout.strip():
        why = res.stderr.strip().splitlines()[-1] if res.stderr.strip() else "(no message)"
        if not _has_gpu(ctx):
            return skipped(f"no GPU on this host: {why}", command=argv, dev=str(ctx.dev))
        return problem(f"the burn-in cannot run although this host has NVIDIA devices: {why}",
                       command=argv, stderr=res.stderr.strip()[-STDERR_TAIL:])
    j = judge(res.stdout, res.stderr, res.returncode, s.hostname)
    status, summary = j.pop("status"), j.pop("summary")
    return (ok if status == "ok" else problem)(summary, command=argv, **j)


def _on_nodes(ctx: Context, nodes: list[str]) -> Result:
    from sentinel.controller.actions.burnin import fill_command
    from sentinel.controller.model import ActionFailed
    from sentinel.controller.slurm import SlurmError

    s, slurm = ctx.setup, ctx.slurm
    if slurm is None:
        return problem(f"preflight.burnin_nodes names Slurm nodes but {ctx.no_slurm}")
    timeout = s.preflight.burnin_timeout_seconds
    reservation = s.job.reservation if s.job is not None else ""
    try:
        argvs = {n: fill_command(s.preflight.burnin_command, n, reservation,
                                 max(1, math.ceil(timeout / 60)), "preflight.burnin_command")
                 for n in nodes}
    except ActionFailed as e:
        return problem(str(e))

    def one(node: str) -> dict[str, Any]:
        try:
            res = slurm.run(argvs[node], timeout=timeout, check=False)
        except SlurmError as e:
            return {"status": PROBLEM, "summary": f"{node}: {e}"}
        return judge(res.stdout or "", res.stderr or "", res.returncode, node)

    with ThreadPoolExecutor(max_workers=min(MAX_PARALLEL, len(nodes))) as pool:
        results = dict(zip(nodes, pool.map(one, nodes), strict=True))
    bad = [r["summary"] for r in results.values() if r["status"] != "ok"]
    evidence = {"command": s.preflight.burnin_command, "nodes": results}
    gpus = sum(len(r.get("gpus", [])) for r in results.values())
    if bad:
        return problem(f"{len(bad)} of {len(nodes)} node(s) failed: {'; '.join(bad)}",
                       **evidence)
    return ok(f"{gpus} GPU(s) on {len(nodes)} node(s) passed", **evidence)


def check(ctx: Context) -> Result:
    """Burn in this host's GPUs, or those of ``preflight.burnin_nodes`` through Slurm."""
    from sentinel.controller.slurm import expand_hostlist

    try:
        nodes = expand_hostlist(ctx.setup.preflight.burnin_nodes)
    except ValueError as e:
        return problem(f"preflight.burnin_nodes: {e}")
    return _on_nodes(ctx, nodes) if nodes else _local(ctx)
