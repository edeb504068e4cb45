"""Judge the links between a node's GPUs from what was measured: pure, no GPU needed.

Every copy direction and the all-reduce are compared with the floor for the GPU model
and the kind of link (``baselines.json``, section ``interconnect``; per GPU count for
the all-reduce), and each copy also with the node's best pair over the same kind of
link (more than ``bandwidth_tolerance`` below it is LOW_BANDWIDTH), so a node whose
floors are not measured yet still has a bad link caught. A copy or an all-reduce that
failed or hung is LOW_BANDWIDTH with the error as evidence; data that arrived wrong is
WRONG_RESULTS. Each problem names the pair or the collective and is charged to the GPUs
it involves, whose verdicts (and so the exit code) it joins.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sentinel.burnin.baselines import LinkFloor, link_floor
from sentinel.burnin.records import AllreduceMeasurement, CopyMeasurement, InterconnectRecord
from sentinel.burnin.typedjson import Fields
from sentinel.burnin.verdict import Problem, Verdict
from sentinel.jsonnum import encode


class LinkVerdict(enum.StrEnum):
    """The outcome of the interconnect check for the node."""

    OK = "OK"
    LOW_BANDWIDTH = "LOW_BANDWIDTH"
    WRONG_RESULTS = "WRONG_RESULTS"
    SKIPPED = "SKIPPED"


@dataclass
class LinkProblem:
    """One bad pair or collective: its verdict, evidence, and the GPUs it is charged to."""

    verdict: Verdict  # LOW_BANDWIDTH or WRONG_RESULTS
    evidence: str
    gpus: list[int]  # CUDA indices
    data: dict[str, Any] = field(default_factory=dict)

    def as_problem(self) -> Problem:
        """Return the problem as it joins each involved GPU's verdict."""
        return Problem(self.verdict, self.evidence, {**self.data, "gpus": self.gpus})


@dataclass
class InterconnectVerdict:
    """The interconnect check's verdict, problems and notes, with what it measured."""

    verdict: LinkVerdict
    record: InterconnectRecord
    problems: list[LinkProblem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    topology: str = "unknown"  # the weakest link among the GPUs (the collective's)
    copy_floor_gbps: float | None = None  # for the node's topology
    allreduce_floor_gbps: float | None = None

    @property
    def ok(self) -> bool:
        """Return True unless a link failed (a skipped check is not a failure)."""
        return self.verdict in (LinkVerdict.OK, LinkVerdict.SKIPPED)

    def gpu_problems(self) -> dict[int, list[Problem]]:
        """Return each involved GPU's share of the problems, keyed by CUDA index."""
        out: dict[int, list[Problem]] = {}
        for p in self.problems:
            for g in p.gpus:
                out.setdefault(g, []).append(p.as_problem())
        return out

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready mapping, measurements included."""
        out: dict[str, Any] = encode({
            "verdict": self.verdict.value,
            "topology": self.topology,
            "problems": [{"verdict": p.verdict.value, "evidence": p.evidence, "gpus": p.gpus,
                          "data": p.data} for p in self.problems],
            "notes": self.notes,
            "copy_floor_gbps": self.copy_floor_gbps,
            "allreduce_floor_gbps": self.allreduce_floor_gbps,
            "record": self.record.to_dict(),
        })
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], where: str = "interconnect") -> InterconnectVerdict:
        """Build the verdict from :meth:`to_dict` output; FormatError names a bad key."""
        f = Fields(d, where)
        out = cls(
            verdict=f.get("verdict", LinkVerdict), topology=f.get("topology", str),
            problems=f.get("problems", list[LinkProblem]), notes=f.get("notes", list[str]),
            copy_floor_gbps=f.get("copy_floor_gbps", float | None),
            allreduce_floor_gbps=f.get("allreduce_floor_gbps", float | None),
            record=InterconnectRecord.from_dict(f.get("record", dict[str, Any]),
                                                f"{where}.record"),
        )
        f.done()
        return out


def judge_interconnect(rec: InterconnectRecord, names: Mapping[int, str], topology: str,
                       floors: Mapping[str, Mapping[str, LinkFloor]],
                       tolerance: float) -> InterconnectVerdict:
    """Return the interconnect verdict; ``names`` maps CUDA index to GPU model."""
    if rec.skipped:
        return InterconnectVerdict(LinkVerdict.SKIPPED, rec, topology=topology,
                                   notes=[f"interconnect not tested: {rec.skipped}", *rec.notes])
    model = names.get(rec.gpus[0], "") if rec.gpus else ""
    node_floor = link_floor(floors, model, topology)
    out = InterconnectVerdict(LinkVerdict.OK, rec, topology=topology, notes=list(rec.notes),
                              copy_floor_gbps=node_floor.copy_gbps if node_floor else None)
    if rec.error is not None:
        out.problems.append(LinkProblem(Verdict.LOW_BANDWIDTH, f"the interconnect check broke "
                                        f"off: {rec.error}", list(rec.gpus),
                                        {"error": rec.error}))
    _judge_copies(rec.copies, names, floors, tolerance, out)
    if rec.allreduce is not None:
        _judge_allreduce(rec.allreduce, model, node_floor, out)
    kinds = {p.verdict for p in out.problems}
    if Verdict.WRONG_RESULTS in kinds:
        out.verdict = LinkVerdict.WRONG_RESULTS
    elif kinds:
        out.verdict = LinkVerdict.LOW_BANDWIDTH
    return out


def _pair(m: CopyMeasurement) -> str:
    return f"copy GPU {m.src} -> GPU {m.dst} over {m.topology}"


def _judge_copies(copies: Sequence[CopyMeasurement], names: Mapping[int, str],
                  floors: Mapping[str, Mapping[str, LinkFloor]], tolerance: float,
                  out: InterconnectVerdict) -> None:
    best: dict[str, CopyMeasurement] = {}
    for m in copies:
        bw = m.gbps
        if bw is not None and m.topology != "unknown" and (
                m.topology not in best or bw > (best[m.topology].gbps or 0.0)):
            best[m.topology] = m
    missing: set[tuple[str, str, str]] = set()
    for m in copies:
        gpus = [m.src, m.dst]
        if m.skipped:
            out.notes.append(f"{_pair(m)} not measured: {m.skipped}")
            continue
        if m.error is not None:
            out.problems.append(LinkProblem(Verdict.LOW_BANDWIDTH, f"{_pair(m)} failed: "
                                            f"{m.error}", gpus, {"error": m.error}))
            continue
        if m.wrong_bytes:
            out.problems.append(LinkProblem(
                Verdict.WRONG_RESULTS, f"{_pair(m)}: {m.wrong_bytes} of {m.bytes_per_copy} "
                f"bytes arrived different from those sent", gpus,
                {"wrong_bytes": m.wrong_bytes, "bytes_per_copy": m.bytes_per_copy}))
        bw = m.gbps or 0.0
        parts: list[str] = []
        data: dict[str, Any] = {"gbps": bw}
        model = names.get(m.src, "")
        floor = link_floor(floors, model, m.topology)
        if floor is None or floor.copy_gbps is None:
            missing.add((model, m.topology, floor.source if floor else ""))
        elif bw < floor.copy_gbps:
            parts.append(f"below the {floor.copy_gbps:.0f} GB/s floor for {model}")
            data["floor_gbps"] = floor.copy_gbps
        top = best.get(m.topology)
        if top is not None and top is not m and top.gbps and bw < (1 - tolerance) * top.gbps:
            parts.append(f"{1 - bw / top.gbps:.1%} below the node's best {m.topology} pair "
                         f"(GPU {top.src} -> GPU {top.dst}: {top.gbps:.1f} GB/s; tolerance "
                         f"{tolerance:.0%})")
            data["best_gbps"] = top.gbps
        if parts:
            out.problems.append(LinkProblem(Verdict.LOW_BANDWIDTH,
                                            f"{_pair(m)}: {bw:.1f} GB/s, " + "; ".join(parts),
                                            gpus, data))
    if any(m.topology == "unknown" and m.gbps for m in copies):
        out.notes.append("link kinds unknown (no NVML topology): copies compared only with "
                         "their floors, not with each other")
    for model, topo, source in sorted(missing):
        why = f" ({source})" if source else ""
        out.notes.append(f"no copy-bandwidth floor for {model!r} over {topo}{why}: compared "
                         f"only with the node's best pair")


def _judge_allreduce(a: AllreduceMeasurement, model: str, floor: LinkFloor | None,
                     out: InterconnectVerdict) -> None:
    what = f"all-reduce ({a.backend}) over GPUs {','.join(map(str, a.gpus))} ({a.topology})"
    if a.error is not None:
        if a.phase == "start":
            out.notes.append(f"{what} not measured: {a.error}")
        else:
            out.problems.append(LinkProblem(Verdict.LOW_BANDWIDTH, f"{what} failed "
                                            f"({a.phase}): {a.error}", list(a.gpus),
                                            {"error": a.error, "phase": a.phase}))
        return
    if a.wrong_elements:
        out.problems.append(LinkProblem(
            Verdict.WRONG_RESULTS, f"{what}: {a.wrong_elements} of {a.message_bytes // 4} "
            f"elements of the checked all-reduce came out wrong", list(a.gpus),
            {"wrong_elements": a.wrong_elements}))
    bus = a.busbw_gbps or 0.0
    want = floor.allreduce_busbw_gbps.get(len(a.gpus)) if floor else None
    out.allreduce_floor_gbps = want
    if want is None:
        why = f" ({floor.source})" if floor and floor.source else ""
        out.notes.append(f"no all-reduce floor for {len(a.gpus)}x {model!r} over "
                         f"{a.topology}{why}: bus bandwidth {bus:.1f} GB/s not judged")
    elif bus < want:
        out.problems.append(LinkProblem(
            Verdict.LOW_BANDWIDTH, f"{what}: bus bandwidth {bus:.1f} GB/s, below the "
            f"{want:.0f} GB/s floor for {len(a.gpus)}x {model}", list(a.gpus),
            {"busbw_gbps": bus, "floor_gbps": want}))
