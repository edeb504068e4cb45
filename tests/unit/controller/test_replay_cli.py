"""Replay decides as the live loop did; the CLI approves, resets and prints the journal."""

from __future__ import annotations

import json

import pytest

from sentinel.cli import main
from sentinel.controller.actions import ACTIONS
from sentinel.controller.config import PolicyConfig
from sentinel.controller.journal import Journal
from sentinel.controller.replay import read_records, replay
from sentinel.rules.finding import Finding
from tests.support.controller import FixedWorld, ScriptedDetector, ToyAction, make_controller


def spike(cls, start, t):
    return Finding(kind="loss_spike", severity="critical", summary=f"spike {cls} at {start}",
                   suggested_action="rollback_skip", detector="loss_spike", rule="loss-spike",
                   job="gpt", step_start=start, step_end=start + 2, episode=str(start),
                   time_start=t, time_end=t + 5, evidence={"classification": cls,
                                                           "detected_step": start + 60})


def xid(node, t):
    return Finding(kind="gpu_xid", severity="critical", summary=f"XID 79 on {node}",
                   rule="gpu-errors", suggested_action="spare_swap", node=node, job="gpt",
                   time_start=t)


def test_replay_of_the_journal_gives_the_live_decisions(tmp_path, monkeypatch):
    monkeypatch.setitem(ACTIONS, "rollback_skip", ToyAction())
    monkeypatch.setitem(ACTIONS, "spare_swap", ToyAction())
    now = [1000.0]
    batches = [[spike("pending", 120, 990)], [spike("plateau", 120, 990)],
               [xid("node3", 1100)], [xid("node4", 1200)], [xid("node5", 1300)],
               [spike("recoverable_fast", 400, 1400)]]
    det = ScriptedDetector(batches)
    policy = PolicyConfig(spare_swap_mode="act", max_drains_per_hour=1)
    ctl = make_controller(tmp_path, det, policy=policy, clock=lambda: now[0],
                          world=FixedWorld(ready_spares=2, nodes_total=100))
    for _ in batches:
        ctl.cycle()
        assert ctl.executor.wait_idle(30)
        now[0] += 100
    live = [(d["action"], d["mode"], d["refusal"]) for d in ctl.journal.decisions()]
    assert ("spare_swap", "act", "drain_rate") in live  # a refusal is a decision too
    export = tmp_path / "findings.jsonl"
    export.write_text("".join(json.dumps(r) + "\n" for r in ctl.journal.findings()))
    got = replay(read_records(export, {}), policy)
    assert [(d["action"], d["mode"], d["refusal"]) for d in got] == live
    rollback = next(d for d in got if d["action"] == "rollback_skip" and not d["refusal"])
    assert rollback["estimate"]["steps_lost"] == 180 - 100  # back to the checkpoint at 100


def test_replay_cli_on_detect_output(tmp_path, capsys):
    f = tmp_path / "f.jsonl"
    f.write_text(json.dumps(spike("plateau", 300, 10).to_dict()) + "\n"
                 + json.dumps(xid("node2", 20).to_dict()) + "\n")
    rc = main(["controller", "replay", str(f), "--spares", "0", "--json"])
    out = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert rc == 1
    assert [(d["action"], d["refusal"]) for d in out] == [("rollback_skip", None),
                                                          ("spare_swap", "no_ready_spare")]


def test_replay_names_a_bad_line(tmp_path, capsys):
    f = tmp_path / "f.jsonl"
    f.write_text('{"kind": "x"}\n')
    assert main(["controller", "replay", str(f)]) == 2
    assert "f.jsonl:1" in capsys.readouterr().err


@pytest.fixture
def config(tmp_path):
    p = tmp_path / "sentinel.yml"
    p.write_text(f"controller:\n  journal: {tmp_path / 'c.db'}\n  scheduler: none\n")
    return p


def test_approve_reset_and_journal_commands(tmp_path, config, capsys):
    j = Journal(tmp_path / "c.db")
    inc = j.open_incident("loss/gpt", spike("plateau", 120, 10).to_dict())
    a = j.add_action(inc.id, "rollback_skip", "ask", "awaiting_approval", plan={}, node=None,
                     job="gpt")
    assert main(["controller", "approve", a.id[:6], "--config", str(config)]) == 0
    assert j.approval(a.id) is not None
    assert main(["controller", "approve", "a-nope", "--config", str(config)]) == 2
    assert main(["controller", "reset-breaker", "--config", str(config)]) == 0
    assert "not open" in capsys.readouterr().out
    j.trip_breaker("too many")
    assert main(["controller", "reset-breaker", "--reason", "fixed", "--config",
                 str(config)]) == 0
    assert not j.breaker().open and "fixed" in j.breaker().reset_by
    assert main(["controller", "journal", "--config", str(config)]) == 0
    assert inc.id in capsys.readouterr().out
    assert main(["controller", "journal", "--json", "--config", str(config)]) == 0
    assert json.loads(capsys.readouterr().out)[0]["incident"]["id"] == inc.id


def test_bad_config_is_exit_2(tmp_path, capsys):
    p = tmp_path / "s.yml"
    p.write_text("policy:\n  spare_swap_mode: yolo\n")
    assert main(["controller", "journal", "--config", str(p)]) == 2
    assert "policy.spare_swap_mode: 'yolo' is not valid (valid: observe, ask, act)" in \
        capsys.readouterr().err
    p.write_text("jobs:\n  - name: a\n    colour: red\n")
    assert main(["controller", "journal", "--config", str(p)]) == 2
    assert "jobs[0].colour: unknown key" in capsys.readouterr().err
