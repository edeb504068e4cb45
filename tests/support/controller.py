"""Test support for the controller: a toy action whose world is a file, a scripted detector.

The toy action ``touch`` appends one line per step to a world file (its side effects),
and its ``check`` reads that file, as a real action's check reads Slurm: the crash tests
count the lines to prove that no step ran twice and none was skipped.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from sentinel.controller.actions.base import ActionContext, Run, Step
from sentinel.controller.config import ControllerConfig, JobSpec, PolicyConfig
from sentinel.controller.journal import Journal
from sentinel.controller.loop import Controller
from sentinel.controller.model import ActionFailed, Incident
from sentinel.controller.policy import Decision
from sentinel.rules.finding import Finding
from sentinel.rules.window import StepPoint

TOY_STEPS = ("first", "second", "third")


class ToyAction:
    """Appends ``<action id> <step>`` to ``plan['world']`` for each step."""

    name: ClassVar[str] = "rollback_skip"  # stands in for a registered action name

    def __init__(self, fail_verify: bool = False) -> None:
        self.fail_verify = fail_verify

    def plan(self, ctx: ActionContext, incident: Incident, finding: Finding,
             decision: Decision) -> dict[str, Any]:
        world = ctx.extras["world"]
        return {"world": str(world), "job": finding.job, "attempt": decision.params["attempt"]}

    @staticmethod
    def _lines(run: Run) -> list[str]:
        p = Path(run.plan["world"])
        return p.read_text().splitlines() if p.exists() else []

    def steps(self, plan: dict[str, Any]) -> list[Step]:
        def make(name: str) -> Step:
            def do(run: Run) -> dict[str, Any]:
                with open(run.plan["world"], "a") as fh:
                    fh.write(f"{run.record.id} {name}\n")
                return {"did": name}

            def check(run: Run) -> dict[str, Any] | None:
                return {"did": name} if f"{run.record.id} {name}" in self._lines(run) else None

            return Step(name=name, run=do, check=check)

        return [make(n) for n in TOY_STEPS]

    def verify(self, run: Run) -> dict[str, Any]:
        if self.fail_verify:
            raise ActionFailed("the loss did not come back (toy)")
        return {"summary": f"{len(self._lines(run))} lines"}

    def describe(self, plan: dict[str, Any]) -> str:
        return f"append to {plan['world']}"


class ScriptedDetector:
    """Hands the controller prepared findings, one batch per cycle."""

    def __init__(self, batches: Iterable[list[Finding]] = ()) -> None:
        self.batches = list(batches)
        self.lock = threading.Lock()

    def push(self, *findings: Finding) -> None:
        with self.lock:
            self.batches.append(list(findings))

    def cycle(self, now: float | None = None) -> list[Finding]:
        with self.lock:
            return self.batches.pop(0) if self.batches else []


class FixedWorld:
    """The world as the policy sees it, fixed by the test."""

    def __init__(self, **values: Any) -> None:
        self.values = {"nodes_total": 10, "ready_spares": 1, "node_in_job": True} | values

    def snapshot(self, finding: Finding) -> dict[str, Any]:
        return dict(self.values)


class RecordingTeller:
    """Collects what the controller tells, in order."""

    def __init__(self) -> None:
        self.lines: list[tuple[str, str]] = []

    def incident(self, inc: Incident, finding: Finding, decision: Decision, record: Any) -> None:
        self.lines.append(("incident", f"{inc.id} {decision.action} {decision.refusal}"))

    def progress(self, record: Any, what: str, text: str, data: Any = None) -> None:
        self.lines.append(("progress", f"{record.id} {what}"))

    def closed(self, inc: Incident, why: str) -> None:
        self.lines.append(("closed", f"{inc.id} {inc.state}"))

    def breaker(self, tripped: bool, why: str) -> None:
        self.lines.append(("breaker", str(tripped)))

    def flush(self) -> None:
        pass


def make_controller(tmp: Path, detector: Any, *, policy: PolicyConfig | None = None,
                    world: Any = None, teller: Any = None, clock: Any = None,
                    config: ControllerConfig | None = None,
                    steps: dict[str, Callable[[], list[StepPoint]]] | None = None
                    ) -> Controller:
    """Build a Controller over a journal in ``tmp`` with the toy world file ``tmp/world``.

    ``steps`` maps the jobs it follows to their step records (as the loop's step streams).
    """
    import time

    clock = clock or time.time
    cfg = config or ControllerConfig(journal=str(tmp / "controller.db"), scheduler="none",
                                     listen_address="")
    journal = Journal(cfg.journal, clock=clock)
    stop = threading.Event()
    streams = dict(steps or {})

    def steps_of(job: str) -> list[StepPoint]:
        if job not in streams:
            raise KeyError(job)
        return streams[job]()

    ctx = ActionContext(config=cfg, policy=policy or PolicyConfig(), journal=journal,
                        jobs={j: JobSpec(name=j) for j in streams}, clock=clock,
                        sleep=stop.wait, steps_of=steps_of, teller=teller,
                        extras={"world": tmp / "world"})
    return Controller(cfg, ctx.policy, journal, detector, world or FixedWorld(), ctx, teller,
                      clock=clock)


def finding_json(f: Finding) -> str:
    """Return a finding as one JSON line."""
    return json.dumps(f.to_dict(), sort_keys=True)


class SpareWorld(FixedWorld):
    """A world whose scheduler reports ready spares (what the metrics export)."""

    def ready_spares(self) -> int:
        return int(self.values["ready_spares"])


@dataclass
class LiveController:
    """A real Controller looping in a thread, serving its /metrics."""

    controller: Controller
    metrics: Any
    hostport: str


@contextmanager
def live_controller(tmp: Path, detector: Any, *, port: int, interval: float = 0.5,
                    steps: dict[str, Callable[[], list[StepPoint]]] | None = None,
                    world: Any = None) -> Iterator[LiveController]:
    """Run a Controller (toy world file, ``detector``) every ``interval`` s with its metrics."""
    from sentinel.controller.metrics import ControllerMetrics

    cfg = ControllerConfig(journal=str(tmp / "controller.db"), scheduler="none",
                           listen_address=f"127.0.0.1:{port}", interval_seconds=interval)
    ctl = make_controller(tmp, detector, config=cfg, steps=steps,
                          world=world or SpareWorld(ready_spares=2))
    metrics = ControllerMetrics(ctl.journal, cfg, world=ctl.world)
    ctl.observers.append(metrics.observe_cycle)
    server = metrics.serve()
    stop = threading.Event()

    def run() -> None:
        while not stop.is_set():
            ctl.cycle()
            stop.wait(interval)

    thread = threading.Thread(target=run, name="test-controller", daemon=True)
    thread.start()
    try:
        yield LiveController(controller=ctl, metrics=metrics, hostport=f"127.0.0.1:{port}")
    finally:
        stop.set()
        thread.join(timeout=30)
        server.stop()
        ctl.stop()
        ctl.journal.close()
