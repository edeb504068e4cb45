"""rollback_skip end to end: the real example, a real agent, the rules engine, the controller.

The job (examples/train_gpt.py, tiny, one rank) trains through a corrupted shard
(tests/support/rollback_e2e.py says why 60 batches); the controller, built from a config
file by ``sentinel.controller.daemon.build``, follows the job's step stream through the
agent with the real OnlineDetector, decides with the default policy in act mode, rolls
the job back in-process, verifies the loss, and tells the story in a Slack thread
(slack-sdk against the local fake Slack). A control run with the same seed and no bad
batch is the reference for "back on trend".
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import pytest
import yaml

from sentinel.controller.daemon import build, serve
from sentinel.controller.journal import Journal
from sentinel.train.request import token_path
from tests.support.agent import run_agent
from tests.support.example_job import finish
from tests.support.fake_slack import TOKEN, FakeSlack, running_fake_slack
from tests.support.rollback_e2e import (
    BAD,
    check_job,
    config,
    journal_dump,
    start_job,
    wait_for,
    write_config,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture
def slack():
    with running_fake_slack() as s:
        yield s


def _verified(journal: Journal):
    acts = [a for a in journal.actions() if a.action == "rollback_skip"]
    if acts and acts[-1].state in ("verified", "failed"):
        return acts[-1]
    return None


def test_controller_rolls_back_a_spike_and_verifies_it(tmp_path, slack, gpt_control, caplog):
    caplog.set_level(logging.DEBUG)
    token_file = tmp_path / "slack-token"
    token_file.write_text(TOKEN + "\n")
    token_file.chmod(0o600)
    run_dir = tmp_path / "run"
    with run_agent(tmp_path / "agent") as agent:
        cfg = write_config(tmp_path / "sentinel.yml",
                           config(tmp_path, run_dir, agent.url, slack=slack,
                                  token_file=token_file))
        job = start_job(run_dir, agent.socket_path)
        parts = build(yaml.safe_load(cfg.read_text()))
        stop = threading.Event()
        loop = threading.Thread(target=serve, args=(parts, stop), daemon=True)
        loop.start()
        try:
            action = wait_for("rollback verified", lambda: _verified(parts.journal), 150,
                              (job,))
            out = finish(job)
        finally:
            stop.set()
            loop.join(30)
            job.kill()
    assert action.state == "verified", (action.error, out)
    plan = action.plan
    # The plan: the newest checkpoint before the spike's first step less the margin, the
    # batches of the spike's steps (the bad ones and the margin), what it throws away.
    assert plan["spike"]["class"] == "recoverable_slow"
    assert plan["spike"]["step_start"] == BAD[0]
    assert plan["to_step"] == 100 and plan["handler"] is True
    assert plan["skip"] == [[BAD[0] - 5, plan["spike"]["step_end"] + 6]]
    assert plan["spike"]["step_end"] >= BAD[-1]
    figures = check_job(run_dir, gpt_control(), plan)
    verify = action.outcome["verify"]
    assert verify["resumed_at"] == 100 and verify["median_excess"] <= verify["tolerance"]
    [inc] = parts.journal.incidents()
    assert inc.state == "recovered" and inc.detected_at and inc.decided_at and inc.recovered_at
    # The pin held for the incident is released once it is over.
    from sentinel.train.request import pins

    assert pins(run_dir / "checkpoints") == {}

    _check_slack_thread(slack, inc.id)
    _check_no_secret(tmp_path, run_dir, slack, caplog.text)
    assert figures["tail_ratio"] > 0


def _check_slack_thread(slack: FakeSlack, incident: str) -> None:
    """One thread: the finding, the decisions, every step, the verification, the end."""
    [top] = [m for m in slack.top_level() if incident in m.text]
    replies = [m.text for m in slack.thread_of(top.ts)]
    story = "\n".join([top.text, *replies])
    for expected in ("loss spike", "not classified yet", "Decision: rollback_skip (act)",
                     "rollback_skip started", "pinned for incident", "rollback request",
                     "rolled back from step", "resumed at step 100",
                     "rollback_skip verified: loss back on its pre-spike trend"):
        assert expected in story, f"{expected!r} not in the thread:\n{story}"
    order = [story.index(s) for s in ("not classified yet", "Decision: rollback_skip",
                                      "pinned", "rolled back from step", "resumed at step",
                                      "verified")]
    assert order == sorted(order), story


def _check_no_secret(tmp: Path, run_dir: Path, slack: FakeSlack, logs: str) -> None:
    """The run's token is in no journal row, outbox file, Slack message or log line."""
    secret = token_path(run_dir).read_text().strip()
    assert len(secret) == 64
    places = {"journal": journal_dump(tmp / "controller.db"), "logs": logs,
              "slack": "\n".join(m.text for m in slack.messages)}
    for f in sorted((tmp / "outbox").rglob("*")) + sorted(tmp.glob("controller.db*")):
        if f.is_file():
            places[str(f)] = f.read_bytes().decode("latin-1")
    assert places["journal"] and places["slack"] and len(places) > 4
    for where, text in places.items():
        assert secret not in text, f"the run token leaked into {where}"
