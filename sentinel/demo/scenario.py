"""The story: start the stack, let three real faults happen, follow sentinel through each.

1. *bad batch*: the job trains through a corrupted shard (story.BAD_BATCHES). Done when
   the controller's rollback_skip is verified (the loss back on its pre-spike trend).
2. *GPU fault*: an XID is appended to node3's replayed NVML; its agent counts it,
   Prometheus scrapes it, the gpu-errors rule finds it. Done when the spare swap is
   verified (job running again with the spare, node3 drained and burned in); without
   Slurm, when the controller decided (observe mode).
3. *slow storage*: the job's reads of its data are throttled (storage.py); the disks'
   latency and the job's throughput show it, the diagnosis names storage. Done when the
   diagnosis is told; the storage is then restored and the job catches up.

Then the job runs to its end. :meth:`Scenario.run` returns an :class:`Outcome`: per
episode, when the fault happened, when sentinel opened its incident and when the
incident was over, plus the job's end, the controller's status (``sentinel status``'s
data) and what Slack got. The demo prints it; the full-stack test asserts on it.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sentinel.demo import story
from sentinel.demo.stack import Options, Stack
from sentinel.demo.view import View
from sentinel.demo.watch import JobView, JournalWatch, LogTail, scalar

log = logging.getLogger(__name__)

POLL_S = 0.5
# How long each wait may take before the demo says so and moves on (a loaded machine is
# slower; these are several times what each took on the project's 2-core VM).
SETUP_TIMEOUT_S = 120.0
FIRST_STEP_TIMEOUT_S = 120.0
EPISODE_TIMEOUT_S = 150.0
JOB_END_TIMEOUT_S = 240.0
JOB_DONE_STATES = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "GONE")


@dataclass
class Episode:
    """One fault and what sentinel did about it."""

    name: str
    state: str = "waiting"         # waiting, running, done, failed, skipped
    note: str = ""                 # what it showed, or why it failed or was skipped
    fault_at: float | None = None  # when the fault happened (the demo made it)
    detected_at: float | None = None   # incident opened
    handled_at: float | None = None    # told (storage) or action started
    recovered_at: float | None = None  # verified / over
    incident: str | None = None
    facts: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Return the episode as JSON-ready data."""
        return {k: getattr(self, k) for k in ("name", "state", "note", "fault_at",
                                              "detected_at", "handled_at", "recovered_at",
                                              "incident", "facts")}


@dataclass
class Outcome:
    """What the demo showed: the basis of the summary, the report and the test."""

    root: Path
    started_at: float
    ended_at: float = 0.0
    episodes: list[Episode] = field(default_factory=list)
    job: dict[str, Any] = field(default_factory=dict)
    status: dict[str, Any] = field(default_factory=dict)
    messages: list[dict[str, Any]] = field(default_factory=list)
    why_no_slurm: str = ""
    why_no_storage: str = ""
    report: Path | None = None

    @property
    def ok(self) -> bool:
        """Whether every episode that could run ended as it should, and the job finished."""
        return all(e.state in ("done", "skipped") for e in self.episodes) \
            and self.job.get("state") == "COMPLETED"

    def to_dict(self) -> dict[str, Any]:
        """Return the outcome as JSON-ready data (``outcome.json`` in the run directory)."""
        return {"root": str(self.root), "started_at": self.started_at,
                "ended_at": self.ended_at, "ok": self.ok,
                "episodes": [e.to_dict() for e in self.episodes], "job": self.job,
                "status": self.status, "messages": self.messages,
                "why_no_slurm": self.why_no_slurm, "why_no_storage": self.why_no_storage,
                "report": str(self.report) if self.report else None}


class Scenario:
    """The three episodes over one stack; ``with Scenario(...) as sc: sc.run()``."""

    def __init__(self, opts: Options, view: View) -> None:
        self.opts = opts
        self.view = view
        self.stack = Stack(opts)
        self.job = JobView(LogTail(self.stack.run_dir / "log" / "rank0.jsonl"))
        self.journal = JournalWatch(self.stack.journal_path)
        self.outcome = Outcome(root=opts.root, started_at=time.time())
        self.episodes = {e.name: e for e in (Episode("bad batch"), Episode("GPU fault"),
                                             Episode("slow storage"))}
        self.outcome.episodes = list(self.episodes.values())
        self._job_state: tuple[str, list[str], int] = ("PENDING", [], 0)
        self._signals: dict[str, float | None] = {}
        self._next_signals = 0.0

    def __enter__(self) -> Scenario:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop everything (the storage throttle first, so the job is not left slow)."""
        if self.stack.storage is not None:
            self.stack.storage.restore()
        self.journal.close()
        self.stack.close()

    # -- the run -----------------------------------------------------------------------

    def run(self) -> Outcome:
        """Set up, play the three episodes, wait for the job's end; return the outcome."""
        self.setup()
        self.wait_first_step()
        self.episode_bad_batch()
        self.episode_gpu_fault()
        self.episode_slow_storage()
        self.wait_job_end()
        self.outcome.ended_at = time.time()
        return self.outcome

    def setup(self) -> None:
        """Start the stack, burn the spare in, start the controller and the job."""
        v, s = self.view, self.stack
        v.header("setting up (one machine, no GPU)")
        t = time.time()
        s.start_infra()
        if s.slurm is not None:
            v.say("slurm", f"local Slurm 22.05: {', '.join(story.NODES)} for the job, "
                  f"{story.SPARE} a staged spare (feature '{story.SPARE_FEATURE}'); "
                  f"slurmctld and 5 slurmd, {time.time() - t:.1f} s", at=time.time())
        else:
            v.say("slurm", f"no local Slurm: {s.why_no_slurm}. The ranks run as local "
                  "processes and spare swaps stay in observe mode (the controller decides "
                  "and says what it would do)")
        self.outcome.why_no_slurm = s.why_no_slurm
        if s.storage is not None:
            devs = ", ".join(f"{n} /dev/{d}" for n, d in s.storage.device_names().items())
            v.say("storage", f"each node's copy of the dataset on its own loop device ({devs}),"
                  f" all backed by {s.storage.backing}; the job reads every batch with "
                  "O_DIRECT")
        else:
            v.say("storage", f"no slowed-storage rig: {s.why_no_storage}. The job reads its "
                  "data from memory and episode 3 is skipped")
        self.outcome.why_no_storage = s.why_no_storage
        assert s.prometheus is not None
        v.say("agents", f"one sentinel agent per node ({len(s.agents)}), each with the replayed "
              f"NVML of a real H100; Prometheus {s.prometheus.url} scrapes them every "
              f"{story.SCRAPE_INTERVAL} with sentinel's recording and alert rules")
        v.say("spare", s.burn_in_spare())
        s.start_controller()
        v.say("control", f"sentinel controller (act mode) on http://{s.controller_url}, "
              f"journal {s.journal_path}; rules: the defaults with windows scaled to a "
              "3-minute run")
        how = s.submit_job()
        v.say("job", f"{story.JOB}: the GPT example (tiny, {len(story.NODES)} ranks, one per "
              f"node, gloo on CPU) as {how}; {self.opts.max_steps} steps, checkpoint every "
              f"{story.CHECKPOINT_EVERY}")

    def wait_first_step(self) -> None:
        """Wait until the job trains (torch starts on every rank)."""
        deadline = time.monotonic() + FIRST_STEP_TIMEOUT_S
        while self.job.step < 0:
            self.poll()
            state = self._job_state[0]
            ended = state in ("FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY",
                              "BOOT_FAIL", "DEADLINE", "COMPLETED")
            if ended or time.monotonic() > deadline:
                why = "ended" if ended else f"did not train within {FIRST_STEP_TIMEOUT_S:.0f} s"
                raise RuntimeError(f"the job {why} before its first step: {state} (its output: "
                                   f"{self.stack.run_dir}){self._job_output_tail()}")
            time.sleep(POLL_S)
        self.view.say("job", f"training on {', '.join(self._job_state[1])}: step "
                      f"{self.job.step}, loss {self.job.loss:.2f}")

    def _job_output_tail(self, lines: int = 30) -> str:
        """Return the end of the job's Slurm output, to say why it did not train."""
        s = self.stack
        path = s.run_dir / f"slurm-{s.slurm_job}.out" if s.slurm_job else None
        try:
            text = path.read_text(errors="replace") if path else ""
        except OSError as e:
            return f"; its output could not be read: {e}"
        tail = text.splitlines()[-lines:]
        return ("; the end of " + str(path) + ":\n" + "\n".join(tail)) if tail else ""

    # -- polling -----------------------------------------------------------------------

    def poll(self) -> None:
        """Read the job's log, the journal and (each second) Slurm and Prometheus."""
        for t, kind, data in self.journal.news():
            self._journal_record(t, kind, data)
        for r in self.job.update():
            self._job_record(r)
        now = time.monotonic()
        if now >= self._next_signals:
            self._next_signals = now + 1.0
            self._job_state = self.stack.job_state()
            p = self.stack.prometheus
            self._signals = {
                "tps": scalar(p, f'job:sentinel_train_tokens_per_second:sum{{job="{story.JOB}"}}'),
                "disk_ms": scalar(p, "max(sentinel_disk_read_latency_seconds) * 1000")}
        self.view.status(self._status_line())

    def _status_line(self) -> str:
        state, nodes, restarts = self._job_state
        tps, disk = self._signals.get("tps"), self._signals.get("disk_ms")
        running = next((e for e in self.episodes.values() if e.state == "running"), None)
        parts = [f"{story.JOB} {state.lower()}",
                 f"step {self.job.step} loss {self.job.loss:.2f}" if self.job.step >= 0 else "",
                 f"{tps / 1000:.1f}k tok/s" if tps is not None else "",
                 f"disk {disk:.1f} ms" if disk is not None else "",
                 ",".join(nodes), f"restarts {restarts}" if restarts else "",
                 f"episode: {running.name}" if running else ""]
        return " | ".join(p for p in parts if p)

    def _job_record(self, r: dict[str, Any]) -> None:
        v, ev = self.view, r.get("event")
        if ev == "inject" and r["batch"] == story.BAD_BATCHES[0]:
            v.say("fault", f"the job reads a corrupted shard: batches {story.BAD_BATCHES[0]}-"
                  f"{story.BAD_BATCHES[-1]} are random bytes (step {r['step']})", at=r["time"])
        elif ev == "rollback":
            v.say("job", f"rolled back in-process from step {r['from_step']} to checkpoint "
                  f"{r['to_step']} in {r['total_s']:.2f} s", at=r["time"])
        elif ev == "resume":
            v.say("job", f"started again on the new nodes, resumed from checkpoint "
                  f"{r['checkpoint']} (step {r['step']})", at=r["time"])
        elif ev == "terminated":
            v.say("job", f"rank 0 stopped by Slurm at step {r['step']} (SIGTERM)", at=r["time"])
        elif ev == "done":
            v.say("job", f"finished: step {r['step']}", at=r["time"])

    def _journal_record(self, t: float, kind: str, data: dict[str, Any]) -> None:
        v = self.view
        if kind == "finding":
            f = data["finding"]
            state = "" if f.get("state") == "firing" else f" [{f.get('state')}]"
            v.say("finding", f"{f.get('summary')}{state}  -> incident {data['incident']}", at=t)
        elif kind == "decision":
            what = data.get("action") or "no action"
            mode = f" ({data.get('mode')})" if data.get("action") else ""
            refusal = f", refused: {data['refusal']}" if data.get("refusal") else ""
            v.say("decision", f"{what}{mode}{refusal}: {data.get('reason')}", at=t)
        elif kind == "event":
            v.say("action", data["message"], at=t)

    def _wait(self, what: str, cond: Any, timeout: float) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            self.poll()
            got = cond()
            if got:
                return got
            if time.monotonic() > deadline:
                return None
            if self._job_state[0] in JOB_DONE_STATES and self.job.done:
                return None
            time.sleep(POLL_S)

    def _latest_incident(self, group: str) -> Any:
        j = self.journal.open()
        if j is None:
            return None
        incs = [i for i in j.incidents(limit=200) if i.group == group]
        return max(incs, key=lambda i: i.opened_at) if incs else None

    def _action(self, incident_id: str, action: str) -> Any:
        j = self.journal.open()
        if j is None:
            return None
        acts = [a for a in j.actions(incident_id=incident_id) if a.action == action]
        return acts[-1] if acts else None

    def _action_ended(self, incident_id: str, action: str, what: str) -> Any:
        """Wait for the incident's ``action`` to be verified or failed; None if it was not."""
        def ended() -> Any:
            a = self._action(incident_id, action)
            return a if a is not None and a.state in ("verified", "failed") else None

        return self._wait(what, ended, EPISODE_TIMEOUT_S)

    # -- episode 1 ---------------------------------------------------------------------

    def episode_bad_batch(self) -> None:
        """Follow the corrupted shard to a verified rollback."""
        e = self.episodes["bad batch"]
        e.state = "running"
        self.view.header(f"1. bad batch: a corrupted shard in the data (batches "
                         f"{story.BAD_BATCHES[0]}-{story.BAD_BATCHES[-1]})")
        group = f"loss/{story.JOB}"
        inc = self._wait("the loss spike's incident", lambda: self._latest_incident(group),
                         EPISODE_TIMEOUT_S)
        e.fault_at = self.job.inject_time
        if inc is None:
            self._fail(e, "no loss-spike incident was opened")
            return
        e.incident, e.detected_at = inc.id, inc.opened_at
        act = self._action_ended(inc.id, "rollback_skip", "the rollback")
        if act is None or act.state != "verified":
            self._fail(e, f"rollback_skip {act.state if act else 'not started'}: "
                       f"{act.error if act else 'no rollback within the time'}")
            return
        e.handled_at, e.recovered_at = act.started_at, act.ended_at
        p, out = act.plan, act.outcome or {}
        e.facts = {"to_step": p["to_step"], "skip": p["skip"], "spike": p["spike"],
                   "steps_lost": p["steps_lost"], "verify": out.get("verify", {})}
        ranges = ", ".join(f"{a}-{b - 1}" for a, b in p["skip"])
        e.note = (f"spike at step {p['spike']['step_start']} classified "
                  f"{p['spike']['class']}; rolled back to checkpoint {p['to_step']}, batches "
                  f"{ranges} skipped; loss back on its pre-spike trend")
        self._done(e)

    # -- episode 2 ---------------------------------------------------------------------

    def episode_gpu_fault(self) -> None:
        """Inject an XID on node3's GPU 0 and follow the spare swap."""
        e = self.episodes["GPU fault"]
        e.state = "running"
        self.view.header(f"2. GPU fault: XID {story.XID} on {story.BAD_NODE} GPU 0")
        self.inject_xid()
        e.fault_at = time.time()
        self.view.say("fault", f"XID {story.XID} (GPU fallen off the bus) appended to "
                      f"{story.BAD_NODE}'s replayed NVML events; its agent counts it")
        group = f"node/{story.BAD_NODE}"
        inc = self._wait("the XID's incident", lambda: self._latest_incident(group),
                         EPISODE_TIMEOUT_S)
        if inc is None:
            self._fail(e, f"no incident for {story.BAD_NODE}")
            return
        e.incident, e.detected_at = inc.id, inc.opened_at
        if self.stack.slurm is None:
            d = self._wait("the decision", lambda: self._decided(inc.id), EPISODE_TIMEOUT_S)
            if d is None:
                self._fail(e, "no decision about the XID")
                return
            e.handled_at = d["time"]
            e.facts = {"decision": d}
            e.note = (f"no Slurm here ({self.stack.why_no_slurm}): the controller decided "
                      f"{d.get('action')} in {d.get('mode')} mode ({d.get('reason')}); with no "
                      "scheduler to plan it on, it handed the incident to a person")
            self._done(e)
            return
        act = self._action_ended(inc.id, "spare_swap", "the spare swap")
        if act is None or act.state != "verified":
            self._fail(e, f"spare_swap {act.state if act else 'not started'}: "
                       f"{act.error if act else 'no swap within the time'}")
            return
        e.handled_at, e.recovered_at = act.started_at, act.ended_at
        v = (act.outcome or {}).get("verify", {})
        e.facts = {"spare": act.plan.get("spare"), "job_nodes": v.get("job_nodes"),
                   "burnin_failed": v.get("burnin_failed"), "summary": v.get("summary")}
        e.note = v.get("summary", "verified")
        self._done(e)

    def inject_xid(self) -> None:
        """Append the XID to node3's replay dump (a new file by rename: the agent follows it)."""
        agent = self.stack.agents[story.BAD_NODE]
        dump = json.loads(agent.replay.read_text())
        uuid = dump["devices"][0]["uuid"]
        dump["xid_events"] = [*(dump.get("xid_events") or []), {"uuid": uuid, "xid": story.XID}]
        tmp = agent.replay.with_suffix(".tmp")
        tmp.write_text(json.dumps(dump))
        os.replace(tmp, agent.replay)

    def _decided(self, incident_id: str) -> dict[str, Any] | None:
        j = self.journal.open()
        ds = j.decisions(incident_id) if j is not None else []
        return ds[-1] if ds else None

    # -- episode 3 ---------------------------------------------------------------------

    def episode_slow_storage(self) -> None:
        """Throttle the job's data reads; wait for the diagnosis; restore the storage."""
        e = self.episodes["slow storage"]
        self.view.header("3. slow storage: the job's data reads get slow")
        s = self.stack
        if s.storage is None:
            e.state, e.note = "skipped", f"no slowed-storage rig here: {s.why_no_storage}"
            self.view.say("skipped", e.note)
            return
        e.state = "running"
        # After a spare swap the job restarts: its throughput baseline is the new run's.
        starts = 2 if self.episodes["GPU fault"].state == "done" and s.slurm is not None else 1
        steady = self._wait("a steady job", lambda: self._job_state[0] == "RUNNING"
                            and self.job.starts >= starts
                            and self.job.steps_since_start >= story.STEADY_STEPS_BEFORE_SLOW,
                            EPISODE_TIMEOUT_S)
        if not steady:
            self._fail(e, "the job was not running steadily after the swap")
            return
        from sentinel.train.request import job_pids

        before = self._signals.get("tps")
        pids = job_pids(s.run_dir)
        moved = s.storage.slow(pids, story.SLOW_READ_IOPS)
        e.fault_at = time.time()
        self.view.say("fault", f"reads of the job's data throttled to {story.SLOW_READ_IOPS}/s "
                      f"on {s.storage.backing}, under every node's data device (the job's "
                      f"{len(moved)} ranks moved into a blkio group)")
        def told() -> Any:
            # The diagnosis naming storage, whichever incident it joined (the job's or the
            # cluster's throughput: Prometheus-sourced drops name no job).
            j = self.journal.open()
            for f in j.findings(since=(e.fault_at or 0.0) - 5) if j is not None else []:
                if f["finding"].get("evidence", {}).get("cause") == "storage_stall":
                    inc = j.incident(f["incident"])  # type: ignore[union-attr]
                    return (inc, f) if inc is not None else None
            return None

        got = self._wait("the storage diagnosis", told, story.SLOW_SECONDS_MAX)
        peak = scalar(s.prometheus, "max(max_over_time(sentinel_disk_read_latency_seconds[1m]))")
        during = scalar(s.prometheus, f'min_over_time(job:sentinel_train_tokens_per_second:sum'
                                      f'{{job="{story.JOB}"}}[20s])')
        s.storage.restore()
        self.view.say("fault", "storage back to normal speed (throttle lifted)")
        e.facts = {"disk_latency_peak_s": peak, "tokens_per_sec_before": before,
                   "tokens_per_sec_low": during, "ranks_moved": len(moved)}
        if got is None:
            self._fail(e, "no storage diagnosis within the slow period")
            return
        inc, diagnosis = got
        e.incident, e.detected_at, e.handled_at = inc.id, inc.opened_at, diagnosis["time"]
        e.facts["diagnosis"] = diagnosis["finding"]["summary"]
        e.facts["disk_nodes"] = diagnosis["finding"]["evidence"].get("disk_latency_nodes")
        ended = self._wait("the incident's end", lambda: self._closed(inc.id), 60.0)
        e.recovered_at = ended.closed_at if ended else None
        e.note = (f"diagnosed as storage, not the GPUs, and told (no action: nothing to "
                  f"swap); disk read latency up to {1000 * (peak or 0):.0f} ms")
        self._done(e)

    def _closed(self, incident_id: str) -> Any:
        j = self.journal.open()
        inc = j.incident(incident_id) if j is not None else None
        return inc if inc is not None and not inc.open else None

    # -- the end -----------------------------------------------------------------------

    def wait_job_end(self) -> None:
        """Wait for the job to finish, then read the controller's story from its journal."""
        self.view.header("the job runs to its end")
        self._wait("the job's end", lambda: self.job.done and
                   self._job_state[0] in JOB_DONE_STATES, JOB_END_TIMEOUT_S)
        time.sleep(2 * story.CONTROLLER_INTERVAL_S)  # the controller accounts the last steps
        self.poll()
        state, nodes, restarts = self._job_state
        self.outcome.job = {"state": state, "step": self.job.step, "restarts": restarts,
                            "starts": self.job.starts, "eval_loss": self.job.eval_loss,
                            "rollbacks": len(self.job.rollbacks), "run_dir": str(
                                self.stack.run_dir), "slurm_job": self.stack.slurm_job}
        from sentinel.controller.status import collect

        j = self.journal.open()
        if j is not None:
            self.outcome.status = collect(j, time.time(), followed=[story.JOB])
        self.outcome.messages = messages(self.stack.outbox_dir)

    def _done(self, e: Episode) -> None:
        e.state = "done"
        self.view.say("done", e.note)

    def _fail(self, e: Episode, why: str) -> None:
        e.state, e.note = "failed", why
        self.view.say("FAILED", why)


def messages(outbox_dir: Path) -> list[dict[str, Any]]:
    """Return what the controller gave Slack (sent, or waiting), oldest first."""
    from sentinel.notify.message import Notification
    from sentinel.notify.queue import DB_NAME, Outbox

    if not (outbox_dir / DB_NAME).exists():
        return []
    box = Outbox(outbox_dir)
    try:
        out = []
        for row in box.messages():
            n = Notification.from_json(row.body)
            out.append({"incident": row.incident, "kind": row.kind, "state": row.state,
                        "title": n.title, "text": n.render_text() if n.kind != "image"
                        else f"(plot) {n.title}"})
        return out
    finally:
        box.close()
