"""Find GPUs shared with a process that is not a rank of the job (GPU contention).

Input: per GPU, the number of compute processes NVML lists beyond the job's ranks on
that GPU (the agent's ``sentinel_gpu_compute_processes`` minus the ranks its
``sentinel_train_rank_info`` puts on the GPU's UUID; the shipped rule asks Prometheus
only for GPUs where that is above 0). A GPU with extra processes for at least
``min_fraction`` of the recent samples is a finding; the diagnosis then names a
coinciding throughput drop on that node (or, for a job-wide drop, anywhere: a
synchronous job runs at its slowest GPU's pace) GPU contention.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sentinel.rules.finding import Finding
from sentinel.rules.spec import DetectorSpec
from sentinel.rules.window import Window, node_of

NAME = "gpu_contention"


@dataclass
class Params:
    """Thresholds of the GPU-contention detector."""

    recent_s: float = field(
        default=60.0,
        metadata={"help": "seconds of the newest samples looked at: a competing process "
                  "matters while it runs", "min": 1.0},
    )
    min_fraction: float = field(
        default=0.5,
        metadata={"help": "share of those samples with a process beyond the job's ranks",
                  "min": 0.0, "max": 1.0},
    )


def detect(window: Window, params: Params) -> list[Finding]:
    """Return one finding per GPU with a process beyond the job's ranks."""
    p = params
    out: list[Finding] = []
    for s in sorted(window.role("extra_processes"), key=lambda s: (node_of(s),
                                                                   s.labels.get("gpu", ""))):
        pts = s.finite()
        if not pts:
            continue
        end = window.now if window.now is not None else pts[-1][0]
        recent = [(t, v) for t, v in pts if t > end - p.recent_s]
        # Only GPUs with extra processes come back: the window's step gives the count.
        expected = (max(len(recent), int(p.recent_s / window.step_s))
                    if window.step_s else len(recent))
        hits = [(t, v) for t, v in recent if v > 0]
        if not hits or len(hits) / max(1, expected) < p.min_fraction:
            continue
        node, gpu, uuid = node_of(s), s.labels.get("gpu", ""), s.labels.get("UUID", "")
        most = max(v for _, v in hits)
        out.append(Finding(
            kind="gpu_contention", severity="warning",
            summary=(f"GPU {gpu or uuid} on {node}: {most:.0f} compute process(es) besides "
                     "the job's ranks"),
            suggested_action="notify", detector=NAME, job=window.job or None, node=node,
            gpu=gpu or uuid, time_start=hits[0][0], time_end=hits[-1][0],
            confidence=min(1.0, 0.6 + 0.4 * len(hits) / max(1, expected)),
            evidence={"extra_processes": most, "UUID": uuid},
        ))
    return out


SPEC = DetectorSpec(
    name=NAME, params=Params, detect=detect, inputs=("extra_processes",),
    required=("extra_processes",),
    description="another process on a job's GPU (NVML compute processes beyond its ranks)",
)
