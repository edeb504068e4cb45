"""Find GPU errors: new XIDs by severity class, uncorrected ECC, row-remap failure, GPU gone."""

from __future__ import annotations

from dataclasses import dataclass, field

from sentinel.rules.finding import Finding
from sentinel.rules.spec import DetectorSpec
from sentinel.rules.window import Series, Window, node_of

NAME = "gpu_errors"

# XID -> (class, severity, action), after NVIDIA's XID catalogue. "hardware": the GPU or
# its memory is failing, replace the node; "reset": the GPU needs a reset/reboot;
# "application": usually the program's fault (bad memory access), tell people.
XID_CLASSES: dict[int, tuple[str, str, str]] = {
    13: ("application", "info", "notify"),      # graphics engine exception
    31: ("application", "info", "notify"),      # GPU memory page fault
    43: ("application", "info", "notify"),      # GPU stopped processing
    45: ("application", "info", "notify"),      # preemptive cleanup
    48: ("hardware", "critical", "spare_swap"),  # double-bit ECC error
    61: ("reset", "warning", "spare_swap"),     # internal micro-controller breakpoint
    62: ("reset", "warning", "spare_swap"),     # internal micro-controller halt
    63: ("hardware", "warning", "notify"),      # ECC page retirement / row remap recorded
    64: ("hardware", "critical", "spare_swap"),  # ECC page retirement / row remap failure
    74: ("hardware", "critical", "spare_swap"),  # NVLink error
    79: ("hardware", "critical", "spare_swap"),  # GPU has fallen off the bus
    92: ("hardware", "warning", "burnin"),      # high single-bit ECC error rate
    94: ("hardware", "warning", "notify"),      # contained ECC error
    95: ("hardware", "critical", "spare_swap"),  # uncontained ECC error
    119: ("reset", "critical", "spare_swap"),   # GSP RPC timeout
    120: ("reset", "critical", "spare_swap"),   # GSP error
    140: ("hardware", "critical", "spare_swap"),  # unrecovered ECC error
}
UNKNOWN_XID = ("unknown", "warning", "notify")


@dataclass
class Params:
    """Options of the GPU-errors detector."""

    ignore_xids: list[int] = field(
        default_factory=list, metadata={"help": "XIDs never reported (site-specific noise)"},
    )


def _where(s: Series) -> tuple[str, str]:
    return node_of(s), s.labels.get("gpu", "") or s.labels.get("UUID", "")


def _new(s: Series) -> float:
    """Return how many new events the series shows (its values are increases)."""
    vals = [v for _, v in s.finite()]
    return max(vals) if vals else 0.0


def _first_seen(s: Series) -> float | None:
    """Return when the series first shows new events (where time to detect starts).

    A finding without a start would count from its incident's opening.
    """
    return next((t for t, v in s.finite() if v > 0), None)


def detect(window: Window, params: Params) -> list[Finding]:
    """Return one finding per GPU and error kind seen in the window."""
    out: list[Finding] = []
    for s in window.role("xid_new"):
        n = _new(s)
        if n <= 0:
            continue
        try:
            xid = int(float(s.labels.get("xid", "-1")))
        except ValueError:
            xid = -1
        if xid in params.ignore_xids:
            continue
        cls, sev, action = XID_CLASSES.get(xid, UNKNOWN_XID)
        node, gpu = _where(s)
        out.append(Finding(
            kind="gpu_xid", severity=sev, suggested_action=action, detector=NAME,
            summary=f"XID {xid} ({cls}) on {node} GPU {gpu}: {n:.0f} new",
            job=window.job or None, node=node, gpu=gpu, confidence=0.95,
            evidence={"xid": xid, "class": cls, "count": n}, episode=str(xid),
            time_start=_first_seen(s),
        ))
    checks = (
        ("ecc_uncorrected_new", "gpu_ecc_uncorrected", "uncorrected ECC errors: {n:.0f} new"),
        ("remap_failure", "gpu_remap_failure", "row remapping failed"),
    )
    for role, kind, text in checks:
        for s in window.role(role):
            n = _new(s)
            if n <= 0:
                continue
            node, gpu = _where(s)
            out.append(Finding(
                kind=kind, severity="critical", suggested_action="spare_swap", detector=NAME,
                summary=f"{text.format(n=n)} on {node} GPU {gpu}", job=window.job or None,
                node=node, gpu=gpu, confidence=0.95, evidence={"count": n},
            ))
    for s in window.role("gpu_up"):
        pts = s.finite()
        if pts and pts[-1][1] == 0:
            node, gpu = _where(s)
            out.append(Finding(
                kind="gpu_lost", severity="critical", suggested_action="spare_swap",
                detector=NAME, summary=f"GPU {gpu} on {node} stopped answering NVML",
                job=window.job or None, node=node, gpu=gpu, confidence=0.9,
                time_start=next((t for t, v in pts if v == 0), None), evidence={},
            ))
    return out


SPEC = DetectorSpec(
    name=NAME, params=Params, detect=detect,
    inputs=("xid_new", "ecc_uncorrected_new", "remap_failure", "gpu_up"), required=(),
    description="new XIDs by class, uncorrected ECC, row-remap failure, GPU gone",
)
