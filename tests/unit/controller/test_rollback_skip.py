"""rollback_skip: its plan, its steps against a real run directory and handler, and Slurm."""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch

from sentinel.controller.actions import ACTIONS
from sentinel.controller.actions.base import ActionContext, Run
from sentinel.controller.config import ControllerConfig, JobSpec, PolicyConfig
from sentinel.controller.journal import Journal
from sentinel.controller.model import PERMANENT, TRANSIENT, ActionFailed
from sentinel.controller.policy import Decision
from sentinel.controller.slurm import Slurm
from sentinel.rules.finding import Finding
from sentinel.rules.window import StepPoint
from sentinel.train.checkpoint import CheckpointStore
from sentinel.train.request import pins, prior_request, read_result, skip_ranges, status
from sentinel.train.rollback import RollbackHandler, ensure_token
from sentinel.train.skipplan import SkipPlan
from tests.support.slurm import Done, text

ACTION = ACTIONS["rollback_skip"]
JOB = "gpt"


def curve(step: int) -> float:
    """A loss curve close to a power law, with a deterministic wiggle."""
    return 6.0 * (step + 1) ** -0.2 * (1 + 0.01 * math.sin(step * 1.7))


def stream(steps: range, *, t0: float = 1000.0, batch_of=lambda s: s, loss=curve,
           rank: int = 0) -> list[StepPoint]:
    return [StepPoint(step=s, loss=loss(s), time=t0 + i, batch=batch_of(s), rank=rank)
            for i, s in enumerate(steps)]


def spike_finding(start=160, end=170, cls="recoverable_slow", time_start=None) -> Finding:
    return Finding(kind="loss_spike", severity="warning", summary="spike",
                   suggested_action="rollback_skip", detector="loss_spike", rule="loss-spike",
                   job=JOB, step_start=start, step_end=end, episode=str(start),
                   time_start=time_start, evidence={"classification": cls})


def decision(attempt=1, widen=1, margin=5) -> Decision:
    return Decision("rollback_skip", "act", "test",
                    params={"attempt": attempt, "skip_margin": margin, "widen": widen})


@dataclass
class World:
    """A run directory with checkpoints, a journal, a step stream and a fake clock."""

    dir: Path
    points: list[StepPoint] = field(default_factory=list)
    now: float = 5000.0
    slurm: Any = None
    handler: bool = True
    slurm_job: str = ""
    config: ControllerConfig | None = None
    policy: PolicyConfig = field(default_factory=PolicyConfig)

    def __post_init__(self) -> None:
        self.run_dir = self.dir / "run"
        self.store = CheckpointStore(self.run_dir / "checkpoints", keep=10)
        self.journal = Journal(self.dir / "controller.db", clock=lambda: self.now)
        self.config = self.config or ControllerConfig(
            journal=str(self.dir / "controller.db"), scheduler="none", listen_address="",
            rollback_answer_seconds=5.0, verify_steps=60, verify_timeout_seconds=30.0,
            interval_seconds=0.5)

    def save(self, *steps: int) -> None:
        for s in steps:
            self.store.save(s, {"w": torch.full((2,), float(s)), "step": s})

    def ctx(self) -> ActionContext:
        spec = JobSpec(name=JOB, run_dir=str(self.run_dir), rollback_handler=self.handler,
                       slurm_job=self.slurm_job)
        assert self.config is not None
        return ActionContext(config=self.config, policy=self.policy, journal=self.journal,
                             jobs={JOB: spec}, clock=lambda: self.now, sleep=self.sleep,
                             steps_of=self.steps_of, slurm=self.slurm)

    def sleep(self, s: float) -> bool:
        # The fake clock runs 5-10x faster than the real one: a FakeJob (real time) has
        # the time it needs to answer within a fake deadline, even on a loaded machine.
        self.now += s
        time.sleep(min(s / 5, 0.05))
        return False

    def steps_of(self, job: str) -> list[StepPoint]:
        if job != JOB:
            raise KeyError(job)
        return list(self.points)

    def incident(self):
        return self.journal.open_incident("loss/gpt", spike_finding().to_dict(), self.now)

    def plan(self, finding=None, d=None, inc=None) -> dict[str, Any]:
        return ACTION.plan(self.ctx(), inc or self.incident(), finding or spike_finding(),
                           d or decision())

    def record(self, plan: dict[str, Any]):
        return self.journal.add_action(plan["incident"], "rollback_skip", "act", "started",
                                       plan=plan, node=None, job=JOB, now=self.now)


@pytest.fixture
def world(tmp_path):
    w = World(tmp_path)
    w.save(0, 50, 100, 150, 200)
    w.points = stream(range(0, 210))
    ensure_token(w.run_dir)
    pid_dir = w.run_dir / ".sentinel" / "pids"
    pid_dir.mkdir(parents=True, exist_ok=True)
    (pid_dir / "rank-0.pid").write_text('{"pid": 1, "host": "elsewhere"}')
    return w


# -- plan --------------------------------------------------------------------------------


def test_plan_takes_the_newest_verified_checkpoint_before_the_skipped_steps(world):
    plan = world.plan()
    # Steps 155-175 are skipped (160-170 and a margin of 5): the checkpoint before 155.
    assert plan["to_step"] == 150 and plan["skip"] == [[155, 176]]
    assert plan["skipped_batches"] == 21 and plan["current_step"] == 209
    assert plan["steps_lost"] == 59 and plan["handler"] is True
    assert plan["trend"]["to_step"] == 154 and plan["trend"]["from_step"] == 77
    assert "roll job gpt back from step 209 to checkpoint 150" in ACTION.describe(plan)
    # A wider skip (second attempt) reaches further back; a corrupted checkpoint is passed.
    data = bytearray((world.store.dir / "step_000000100.pt").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (world.store.dir / "step_000000100.pt").write_bytes(bytes(data))
    wide = world.plan(d=decision(attempt=2, widen=4))
    assert wide["to_step"] == 50 and wide["skip"] == [[140, 191]]
    assert wide["request_id"].endswith("-r2") and wide["margin"] == 20


def test_plan_refuses_to_throw_away_too_many_steps(world):
    world.policy = PolicyConfig(max_rollback_steps=40)
    with pytest.raises(ActionFailed, match="throw away 59 steps .* policy.max_rollback_steps") \
            as e:
        world.plan()
    assert e.value.outcome_class == PERMANENT


def test_plan_refuses_without_a_checkpoint_or_history(tmp_path, world):
    young = World(tmp_path / "young", handler=False, slurm=Slurm(runner=SlurmRunner()))
    young.save(50, 100)
    young.points = stream(range(0, 210))
    with pytest.raises(ActionFailed, match="no verified checkpoint at or before step 45 .*"
                                           "every checkpoint is newer"):
        young.plan(spike_finding(start=50, end=52))
    world.points = stream(range(150, 210))
    with pytest.raises(ActionFailed, match="only 5 steps .* before step 155"):
        world.plan()


def test_batches_come_from_the_spikes_own_timeline(world):
    """After one rollback the stream holds two timelines; each spike maps to its own."""
    old = stream(range(0, 200))  # batch == step, spike at 160-170
    # Rolled back to 150 skipping 155-175: the new timeline's step 155 trains batch 176.
    new = stream(range(150, 240), t0=2000.0, batch_of=lambda s: s if s < 155 else s + 21)
    world.points = old + new
    SkipPlan(world.run_dir).add([(155, 176)], added_by="t", reason="first rollback")
    world.save(210)
    # A second spike at steps 220-225 of the new timeline: batches 241-251 (+ margin).
    plan = world.plan(spike_finding(start=220, end=225, time_start=2070.0))
    assert plan["to_step"] == 210 and plan["skip"] == [[236, 252]]
    # The first spike, seen again (its time picks the old timeline), widened: batches
    # 140-190, less 155-175 the plan skips already.
    again = world.plan(spike_finding(start=160, end=170, time_start=1160.0),
                       d=decision(attempt=2, widen=4))
    assert again["skip"] == [[140, 155], [176, 191]]


def test_missing_steps_and_batch_ids(world):
    # A dropped report (step 163) between contiguous batch ids is filled in exactly.
    world.points = [p for p in stream(range(0, 210)) if p.step != 163]
    assert world.plan()["skip"] == [[155, 176]]
    world.points = stream(range(0, 210), batch_of=lambda s: None)
    with pytest.raises(ActionFailed, match="reports no batch ids"):
        world.plan()


def test_the_request_id_is_fixed_and_reused(world):
    inc = world.incident()
    first = world.plan(inc=inc)
    assert first["request_id"] == f"{inc.id}-r1"
    assert world.plan(inc=inc)["request_id"] == first["request_id"]
    # Once submitted, a retry asks for that same rollback even if the world moved on.
    run = Run(world.ctx(), world.record(first))
    with pytest.raises(ActionFailed, match="did not answer") as e:
        for step in ACTION.steps(first):
            step.run(run)
    assert e.value.outcome_class == TRANSIENT
    world.save(250)
    world.points = stream(range(0, 260))
    retry = world.plan(inc=inc)
    assert (retry["to_step"], retry["skip"]) == (first["to_step"], first["skip"])
    assert prior_request(world.run_dir, first["request_id"])["status"] == "pending"


# -- steps: a job with a rollback handler --------------------------------------------------


class FakeJob:
    """A training loop in a thread: steps, and the real handler at each boundary."""

    def __init__(self, run_dir: Path, job: str = JOB) -> None:
        self.restored: list[int] = []
        self.handler = RollbackHandler(run_dir, job, CheckpointStore(run_dir / "checkpoints"),
                                       SkipPlan(run_dir), self._restore, poll_interval_s=0.0)
        self.handler.install()
        self.step = 300
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def _restore(self, state: dict[str, Any]) -> None:
        self.restored.append(int(state["step"]))
        self.step = int(state["step"])

    def _loop(self) -> None:
        while not self.stop.is_set():
            self.handler.at_step_boundary(self.step)
            self.step += 1
            time.sleep(0.005)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)
        self.handler.uninstall()


def test_submit_rolls_the_job_back_once_and_pins_until_verified(world):
    job = FakeJob(world.run_dir)
    try:
        plan = world.plan()
        run = Run(world.ctx(), world.record(plan))
        for step in ACTION.steps(plan):
            run.outputs[step.name] = step.run(run)
        assert run.outputs["submit"]["status"] == "done" and job.restored == [150]
        assert pins(world.store.dir) == {plan["incident"]: 150}
        # Killed after the step, before journaling it: the checks see it done; a rerun
        # of submit asks again under the same id and changes nothing.
        for step in ACTION.steps(plan):
            assert step.check is not None and step.check(run) is not None
        again = ACTION.steps(plan)[1].run(run)
        assert again["answered_at"] == run.outputs["submit"]["answered_at"]
        time.sleep(0.05)
        assert job.restored == [150]
        assert skip_ranges(world.run_dir) == [(155, 176)]
    finally:
        job.close()
    # Verification: the new timeline starts at 150 after the answer, skips 155-175.
    answered = run.outputs["submit"]["answered_at"]
    world.points += stream(range(150, 200), t0=answered + 1,
                           batch_of=lambda s: s if s < 155 else s + 21)
    evidence = ACTION.verify(run)
    assert evidence["resumed_at"] == 150 and evidence["median_excess"] <= evidence["tolerance"]
    assert pins(world.store.dir) == {}  # the incident is over: the pin is released


def test_a_refused_request_fails_permanently_with_the_jobs_reason(world):
    job = FakeJob(world.run_dir, job="another-job")
    try:
        plan = world.plan()
        run = Run(world.ctx(), world.record(plan))
        steps = ACTION.steps(plan)
        steps[0].run(run)
        with pytest.raises(ActionFailed, match="refused .* this is job 'another-job'") as e:
            steps[1].run(run)
        assert e.value.outcome_class == PERMANENT
        assert status(world.run_dir, plan["request_id"]) == "refused"
    finally:
        job.close()


# -- verify --------------------------------------------------------------------------------


def _verifying(world, plan, resumed):
    run = Run(world.ctx(), world.record(plan))
    run.outputs["submit"] = {"answered_at": 3000.0}
    world.points += resumed
    return run


def test_verify_fails_on_a_recurrence_a_skipped_batch_or_the_wrong_step(world):
    plan = world.plan()
    shifted = dict(batch_of=lambda s: s if s < 155 else s + 21, t0=3001.0)
    spiked = stream(range(150, 200), loss=lambda s: curve(s) * (2.0 if s == 170 else 1.0),
                    **shifted)
    with pytest.raises(ActionFailed, match="spike came back at step 170") as e:
        ACTION.verify(_verifying(world, plan, spiked))
    assert e.value.outcome_class == PERMANENT
    world.points = stream(range(0, 210))
    with pytest.raises(ActionFailed, match="trained on batch 155, which the plan skips"):
        ACTION.verify(_verifying(world, plan, stream(range(150, 200), t0=3001.0)))
    world.points = stream(range(0, 210))
    with pytest.raises(ActionFailed, match="resumed at step 100, not at checkpoint 150"):
        ACTION.verify(_verifying(world, plan, stream(range(100, 200), t0=3001.0)))


def test_verify_fails_when_the_loss_stays_off_trend_and_waits_transiently(world):
    plan = world.plan()
    high = stream(range(150, 240), loss=lambda s: curve(s) * 1.08, t0=3001.0,
                  batch_of=lambda s: s if s < 155 else s + 21)
    # 8% above the trend: no spike (16%), but not back (3% here) by step 170 + 60.
    with pytest.raises(ActionFailed, match="not back on its pre-spike trend 60 steps"):
        ACTION.verify(_verifying(world, plan, high))
    world.points = stream(range(0, 210))
    with pytest.raises(ActionFailed, match="no verdict within 30 s") as e:
        ACTION.verify(_verifying(world, plan, high[:10]))  # the job stalls
    assert e.value.outcome_class == TRANSIENT


# -- steps: a job without a rollback handler, restarted through Slurm ----------------------


class SlurmRunner:
    """Slurm 22.05 as captured on the local cluster (tests/fixtures/slurm/squeue-hold-*):
    a job that stops when held (COMPLETING for two reads, then PENDING) and is
    scheduled again when released. Records every command."""

    def __init__(self) -> None:
        self.state = "running"
        self.completing_reads = 2
        self.calls: list[str] = []

    def __call__(self, argv: list[str], timeout: float, env: dict[str, str]) -> Done:
        cmd = " ".join(argv)
        self.calls.append(cmd)
        if argv[:2] == ["scontrol", "requeuehold"]:
            self.state = "completing"
        elif argv[:2] == ["scontrol", "release"]:
            self.state = "released"
        elif argv[0] == "squeue":
            out = text(f"squeue-hold-{self.state}.txt")
            if self.state == "completing":
                self.completing_reads -= 1
                if self.completing_reads <= 0:
                    self.state = "pending"
            return Done(0, out, "")
        return Done(0, "", "")

    def writes(self) -> list[str]:
        return [c for c in self.calls if c.startswith("scontrol")]


def test_no_handler_holds_writes_the_plan_and_releases_once(tmp_path):
    runner = SlurmRunner()
    world = World(tmp_path, handler=False, slurm=Slurm(runner=runner), slurm_job="gpt-x")
    world.save(0, 50, 100, 150, 200)
    world.points = stream(range(0, 210))
    plan = world.plan()
    assert plan["handler"] is False and "rollback_handler is false" in ACTION.describe(plan)
    run = Run(world.ctx(), world.record(plan))
    steps = ACTION.steps(plan)
    assert [s.name for s in steps] == ["pin", "hold", "skip_plan", "release"]
    for step in steps:
        run.outputs[step.name] = step.run(run)
    assert runner.writes() == ["scontrol requeuehold 1", "scontrol release 1"]
    assert skip_ranges(world.run_dir) == [(155, 176)]
    # The job restarts from 150: 200 is off the timeline, its file left to the job.
    assert [c.step for c in world.store.checkpoints()] == [0, 50, 100, 150]
    assert (world.store.dir / "step_000000200.pt").exists()
    # After a crash each step's check sees it done, and running them again is harmless.
    assert steps[1].check(run) is None  # released: not held any more...
    assert steps[3].check(run) == {"released": "1"}  # ...because it was released
    assert steps[2].run(run) == {"added": False, "abandoned": []}
    assert runner.writes() == ["scontrol requeuehold 1", "scontrol release 1"]
    # The job was looked up by name (jobs[].slurm_job), then by id.
    assert runner.calls[0].startswith("squeue -h -t all -n gpt-x -O JobID:|")
    # The restarted job reports from 150 after the hold; verification follows it.
    world.points += stream(range(150, 200), t0=run.outputs["hold"]["stopped_at"] + 1,
                           batch_of=lambda s: s if s < 155 else s + 21)
    assert ACTION.verify(run)["resumed_at"] == 150


def test_no_handler_without_a_scheduler_cannot_be_planned(tmp_path):
    world = World(tmp_path)  # a handler is configured, but the run shows none
    world.save(0, 50, 100, 150, 200)
    world.points = stream(range(0, 210))
    with pytest.raises(ActionFailed, match="runs no rollback handler .*no run token.* no "
                                           "Slurm"):
        world.plan()
    assert read_result(world.run_dir, "x") is None
