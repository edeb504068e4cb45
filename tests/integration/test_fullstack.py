"""The whole loop on a real stack: the demo's story, asserted as a user would check it.

``sentinel demo``'s scenario (sentinel/demo/scenario.py) with everything real: a local
Slurm (node1-4 and the staged spare node5, munged, slurmctld, 5 slurmd) running the GPT
example under ``sbatch --requeue``, an agent per node, Prometheus with sentinel's rules,
Alertmanager (the shipped route and template) posting to the local Slack server's
webhook, and ``sentinel controller run`` in act mode telling the story through
slack-sdk (bot token) to the same local Slack server (tests/support/fake_slack.py).
Three real faults: a corrupted shard, an XID on node3's GPU, slowed reads of the job's
data (where loop devices and blkio throttling exist: in CI, if they exist they must
work). Then the checks a user would make: the job finished with exactly the planned
batches skipped and its loss within 3% of a control run's; node3 drained with a
``sentinel:`` reason and the spare in the job's reservation; one Slack thread per
incident; ``sentinel status`` and the controller's metrics telling the same story; and
nothing done twice.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from sentinel.controller.journal import Journal
from sentinel.demo import story
from sentinel.demo.report import conclude
from sentinel.demo.scenario import Outcome, Scenario
from sentinel.demo.stack import Options
from sentinel.demo.storage import unavailable
from sentinel.demo.view import View
from tests.support.example_job import read_log
from tests.support.fake_slack import TOKEN, FakeSlack, running_fake_slack
from tests.support.metrics import samples
from tests.support.services import alertmanager_config, need_binary
from tests.support.slurm import need_slurm

pytestmark = [pytest.mark.integration, pytest.mark.slurm, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
# The rolled-back run's final evaluation loss against the control run's (same seed and
# steps, no fault): measured 2.227 against 2.257 on this VM (the skipped batches and
# the rollback change which data it saw, not how far it got).
EVAL_TOLERANCE = 0.03


@pytest.fixture
def slack() -> Iterator[FakeSlack]:
    with running_fake_slack() as s:
        yield s


def _control(run_dir: Path) -> subprocess.Popen[str]:
    """The same job without faults (one process: the global batch is the same)."""
    return subprocess.Popen(
        [sys.executable, "-m", "sentinel.examples.gpt", "--config", "tiny", "--run-dir",
         str(run_dir), "--max-steps", str(story.MAX_STEPS), "--seed", str(story.SEED),
         "--checkpoint-every", str(story.CHECKPOINT_EVERY), "--eval-every", "100000",
         "--threads", "1", "--no-resume"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT)


def test_the_whole_loop(tmp_path: Path, slack: FakeSlack, monkeypatch: pytest.MonkeyPatch):
    need_slurm()
    need_binary("prometheus", "prometheus")
    need_binary("prometheus-alertmanager", "prometheus-alertmanager")
    token = tmp_path / "slack-token"
    token.write_text(TOKEN + "\n")
    token.chmod(0o600)
    # The controller is told about Slack as an operator would: the environment.
    monkeypatch.setenv("SENTINEL_NOTIFY_SLACK_TOKEN_FILE", str(token))
    monkeypatch.setenv("SENTINEL_NOTIFY_CHANNEL", slack.channel_id)
    monkeypatch.setenv("SENTINEL_NOTIFY_BASE_URL", slack.api_url)
    storage_why = unavailable()
    control = _control(tmp_path / "control")
    view = View(io.StringIO(), tty=False)
    opts = Options(root=tmp_path / "demo", slack_env=True,
                   alertmanager_config=alertmanager_config(tmp_path, slack.webhook_url))
    try:
        with Scenario(opts, view) as sc:
            outcome = sc.run()
            live = _while_up(sc)
            summary = conclude(sc, outcome, None)
    finally:
        out, _ = control.communicate(timeout=300)
    assert control.returncode == 0, out
    story_text = "\n".join(view.lines)
    by_name = {e.name: e for e in outcome.episodes}
    assert by_name["bad batch"].state == "done", story_text
    assert by_name["GPU fault"].state == "done", story_text
    if storage_why is None:
        assert by_name["slow storage"].state == "done", story_text
    else:
        # The machine cannot slow storage: the demo says why and goes on.
        assert by_name["slow storage"].state == "skipped" and storage_why in \
            by_name["slow storage"].note
    _check_job(outcome, tmp_path / "control", by_name["bad batch"].facts)
    _check_cluster(live, outcome)
    _check_storage(by_name["slow storage"], storage_why)
    journal = Journal(opts.root / "controller" / "controller.db")
    try:
        _check_nothing_twice(journal, outcome)
        _check_slack(slack, journal)
        _check_status_and_metrics(live, journal)
    finally:
        journal.close()
    assert outcome.ok
    _check_summary_and_report(summary, outcome)


def _while_up(sc: Scenario) -> dict[str, Any]:
    """What a user would look at before stopping anything: Slurm, status, metrics."""
    s = sc.stack
    assert s.slurm is not None
    node3 = s.slurm.run("scontrol", "-o", "show", "node", story.BAD_NODE).stdout
    res = s.slurm.run("scontrol", "-o", "show", "reservation", story.RESERVATION).stdout
    job = s.slurm.run("squeue", "-h", "-t", "all", "-j", s.slurm_job, "-O",
                      "State:|,RestartCnt:|,NodeList:").stdout
    status = subprocess.run([sys.executable, "-m", "sentinel", "status", "--config",
                             str(s.config_path), "--json"], capture_output=True, text=True,
                            timeout=60, cwd=ROOT)
    metrics = requests.get(f"http://{s.controller_url}/metrics", timeout=10).text
    nodes = res.split("Nodes=", 1)[1].split()[0]
    return {"node3": node3, "reservation_nodes": s.slurm.run(
                "scontrol", "show", "hostnames", nodes).stdout.split(),
            "job": job, "status": status, "metrics": metrics,
            "slurm_out": (s.run_dir / f"slurm-{s.slurm_job}.out").read_text()}


def _check_job(outcome: Outcome, control_dir: Path, plan: dict[str, Any]) -> None:
    """Finished, exactly the planned batches skipped, loss within tolerance of the control."""
    job = outcome.job
    assert job["state"] == "COMPLETED" and job["step"] == story.MAX_STEPS, job
    assert job["rollbacks"] == 1 and job["restarts"] == 1, job
    log = read_log(Path(job["run_dir"]))
    [rb] = [e for e in log if e["event"] == "rollback"]
    assert rb["to_step"] == plan["to_step"] == 100
    planned = [b for a, e in plan["skip"] for b in range(a, e)]
    assert planned[0] <= story.BAD_BATCHES[0] and planned[-1] >= story.BAD_BATCHES[-1]
    after = log[log.index(rb) + 1:]
    assert not [e for e in after if e["event"] == "inject"], "a bad batch was trained again"
    assert {e["batch"] for e in after if e["event"] == "skip"} == set(planned)
    # The run that finished (after the requeue) trained every batch once, in order,
    # except the skipped ones: exactly the fault-free sequence minus the plan.
    last_start = max(i for i, e in enumerate(log) if e["event"] == "start")
    final = [(e["step"], e["batch"]) for e in log[last_start:] if e["event"] == "step"]
    first = final[0][0]
    n, start = len(planned), planned[0]
    assert final == [(s, s if s < start else s + n) for s in range(first, story.MAX_STEPS)]
    ctl = [e for e in read_log(control_dir) if e["event"] == "eval"][-1]
    assert ctl["step"] == story.MAX_STEPS
    assert abs(job["eval_loss"] / ctl["eval_loss"] - 1) < EVAL_TOLERANCE, (job, ctl)


def _check_cluster(live: dict[str, Any], outcome: Outcome) -> None:
    """node3 drained by sentinel, the spare in the reservation, the job moved once."""
    node3 = dict(kv.split("=", 1) for kv in live["node3"].split() if "=" in kv)
    assert "DRAIN" in node3["State"]
    reason = live["node3"].split("Reason=", 1)[1]
    assert reason.startswith("sentinel: burn-in failed: GPU 0 LOW_FLOPS [incident "), reason
    assert live["reservation_nodes"] == ["node1", "node2", "node4", "node5"]
    state, restarts, nodes = live["job"].strip().split("|")[:3]
    assert (state.strip(), restarts.strip()) == ("COMPLETED", "1")
    starts = [line.split()[3] for line in live["slurm_out"].splitlines()
              if line.startswith("start")]
    assert starts == ["nodes=node[1-4]", "nodes=node[1-2,4-5]"], live["slurm_out"]


def _check_storage(e: Any, why: str | None) -> None:
    """Disk latency really rose on the job's nodes, and the diagnosis said storage."""
    if why is not None:
        return
    f = e.facts
    assert f["disk_latency_peak_s"] > 0.01, f  # the detector's floor: 10 ms
    assert f["tokens_per_sec_low"] < 0.6 * f["tokens_per_sec_before"], f
    assert f["diagnosis"].startswith("storage stall: throughput drop on the whole job")
    assert f["diagnosis"].endswith("data, not the GPUs")
    # Every job node reads through the throttled device; on a loaded machine one node's
    # latency can stay under the detector's floor, so most (not all) of them must show.
    nodes = f["disk_nodes"]
    assert nodes == sorted(nodes) and len(nodes) >= 3, f
    assert set(nodes) <= {"node1", "node2", "node4", "node5"}, f  # not node3: it left


def _check_nothing_twice(j: Journal, outcome: Outcome) -> None:
    """One rollback, one swap, each step once; nothing else acted on."""
    acts = j.actions()
    assert sorted((a.action, a.mode, a.state) for a in acts) == [
        ("rollback_skip", "act", "verified"), ("spare_swap", "act", "verified")]
    for a in acts:
        names = [s.name for s in j.steps(a.id)]
        assert len(names) == len(set(names)) and all(
            s.state == "done" for s in j.steps(a.id)), (a.action, names)
    acted = [d for d in j.decisions() if d["action"] and not d["refusal"]]
    assert sorted(d["action"] for d in acted) == ["rollback_skip", "spare_swap"]
    incidents = {e.incident for e in outcome.episodes if e.incident}
    assert {a.incident_id for a in acts} <= incidents


def _check_slack(slack: FakeSlack, j: Journal) -> None:
    """One thread per incident, every message in its incident's thread, none twice."""
    incs = j.incidents()
    tops = slack.top_level()
    for inc in incs:
        [top] = [m for m in tops if f"[{inc.id}]" in m.text]
        thread = slack.thread_of(top.ts)
        assert all(f"[{inc.id}]" in m.text for m in thread), [m.text for m in thread]
        texts = [m.text for m in [top, *thread]]
        assert len(texts) == len(set(texts)), texts
    assert len(tops) == len(incs), [m.text.splitlines()[0] for m in tops]
    story_text = "\n".join(m.text for m in slack.messages)
    for expected in ("rollback_skip verified: loss back on its pre-spike trend",
                     "spare_swap verified: job demo-gpt runs on node1,node2,node4,node5",
                     "node3 drained: sentinel: XID 79"):
        assert expected in story_text
    assert slack.uploads, "the loss plot was not uploaded into its thread"
    # Alertmanager's side of the same story: the XID alert from the shipped rules.
    titles = [a.get("title", "") for w in slack.webhook_messages
              for a in w.get("attachments", [])]
    assert any(t.startswith("[FIRING:1] SentinelGpuXidError") for t in titles), titles


def _check_status_and_metrics(live: dict[str, Any], j: Journal) -> None:
    """`sentinel status --json` and /metrics say what the journal says."""
    st = live["status"]
    assert st.returncode == 0, st.stdout + st.stderr  # healthy: nothing open
    report = json.loads(st.stdout)
    journal_incs = {(i.id, i.kind, i.state) for i in j.incidents()}
    assert {(i["id"], i["kind"], i["state"]) for i in report["incidents"]["recent"]} \
        == journal_incs
    assert report["incidents"]["open"] == []
    m = samples(live["metrics"])

    def metric(name: str) -> dict[tuple[tuple[str, str], ...], float]:
        return {labels: v for (n, labels), v in m.items() if n == name}

    ended = Counter((i["kind"], i["state"]) for i in report["incidents"]["recent"])
    assert {(dict(k)["kind"], dict(k)["outcome"]): v for k, v in
            metric("sentinel_controller_incidents_total").items() if v} == ended
    acts = Counter((a.action, a.mode, a.state) for a in j.actions())
    assert {(dict(k)["action"], dict(k)["mode"], dict(k)["state"]): v for k, v in
            metric("sentinel_controller_actions").items() if v} == acts
    [g] = report["goodput"]
    assert metric("sentinel_controller_job_productive_seconds") == {
        (("job", story.JOB),): pytest.approx(g["productive_seconds"])}
    lost = {c: v for c, v in g["badput_seconds"].items() if v > 0}
    assert {"rollback", "requeue"} <= set(lost), lost


def _check_summary_and_report(summary: list[str], outcome: Outcome) -> None:
    """What the demo prints at its end, and the report it writes."""
    text = "\n".join(summary)
    assert f"job {story.JOB} (Slurm job " in text and "COMPLETED at step 460" in text
    for i, name in enumerate(("bad batch", "GPU fault", "slow storage"), 1):
        [row] = [line for line in summary if line.startswith(f"{i}. {name}")]
        if "skipped" not in row:
            assert " s " in row and "done:" in row, row  # times to detect and recover
    assert "goodput of the job: " in text and "lost to rollback" in text
    assert "sent to Slack" in text
    report = outcome.report
    assert report is not None and report.exists()
    md = report.read_text()
    assert "| 1. bad batch |" in md and "## Slack" in md
    for png in ("loss.png", "timeline.png", "signals.png"):
        assert (report.parent / png).read_bytes().startswith(b"\x89PNG"), png
        assert f"]({png})" in md
    saved = json.loads((outcome.root / "outcome.json").read_text())
    assert saved["ok"] is True and len(saved["episodes"]) == 3
