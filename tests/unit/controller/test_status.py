"""``sentinel status`` over a journal the real loop wrote: text, JSON and exit codes."""

from __future__ import annotations

import json
import time

import pytest

from sentinel.cli import main
from sentinel.controller.actions import ACTIONS
from sentinel.controller.config import PolicyConfig
from sentinel.controller.status import duration
from sentinel.rules.finding import Finding
from sentinel.rules.window import StepPoint
from tests.support.controller import FixedWorld, ScriptedDetector, ToyAction, make_controller

T0 = float(int(time.time())) - 600.0  # status reads the real clock: recent is recent


def spike(job, t):
    return Finding(kind="loss_spike", severity="critical", summary=f"spike on {job}",
                   suggested_action="rollback_skip", detector="loss_spike", rule="loss-spike",
                   job=job, step_start=120, step_end=122, episode="120", time_start=t,
                   evidence={"classification": "plateau"})


def xid(node, t):
    return Finding(kind="gpu_xid", severity="critical", summary=f"XID 79 on {node}",
                   rule="gpu-errors", suggested_action="spare_swap", node=node, job="gpt",
                   time_start=t)


@pytest.fixture
def written(tmp_path, monkeypatch):
    """A journal the loop wrote: a spike rolled back (verified), a swap waiting for approval."""
    monkeypatch.setitem(ACTIONS, "rollback_skip", ToyAction())
    monkeypatch.setitem(ACTIONS, "spare_swap", ToyAction())
    now = [T0]
    det = ScriptedDetector([[spike("gpt", T0 - 30)], [xid("node3", T0 - 5)]])
    steps = [StepPoint(step=s, loss=2.0, time=T0 - 300 + s, rank=0) for s in range(200)]
    # Restarted by someone from step 150, 6 s after step 199 (before the loop's actions).
    steps += [StepPoint(step=s, loss=2.0, time=T0 - 95 + s - 150, rank=0)
              for s in range(150, 170)]
    ctl = make_controller(tmp_path, det, clock=lambda: now[0],
                          policy=PolicyConfig(spare_swap_mode="ask"),
                          world=FixedWorld(ready_spares=2, nodes_total=16),
                          steps={"gpt": lambda: steps})
    ctl.cycle()
    assert ctl.executor.wait_idle(30)
    now[0] += 15
    ctl.cycle()
    ctl.stop()
    ctl.journal.close()
    cfg = tmp_path / "c.yml"
    cfg.write_text(f"controller:\n  journal: {tmp_path / 'controller.db'}\n"
                   "jobs:\n  - name: gpt\n")
    return cfg, tmp_path


def status(capsys, *args):
    rc = main(["status", *args])
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_text_shows_incidents_actions_spares_and_goodput(written, capsys):
    cfg, _ = written
    rc, out, _err = status(capsys, "--config", str(cfg))
    assert rc == 1  # the swap's incident is open
    assert "breaker: closed" in out
    assert "spares: 2 ready" in out
    assert "incidents open: 1" in out and "gpu_xid job=gpt node=node3 open: XID 79" in out
    assert "approve with: sentinel controller approve a-" in out
    assert "incidents ended in the last 24 h: 1" in out
    assert "loss_spike job=gpt recovered: spike on gpt" in out
    assert "detected in 30.0 s, decided in 0.0 s, recovered in 30.0 s" in out
    assert "step first: done" in out and "step third: done" in out
    # 200 steps, then 6 s later steps 150..169 again: 50 steps and the gap lost.
    assert "gpt: " in out and "lost: restart 55.0 s" in out
    assert out.rstrip().endswith("needs attention: 1 incident(s) open")


def test_json_and_healthy_exit(written, capsys):
    cfg, tmp = written
    rc, out, _ = status(capsys, "--config", str(cfg), "--json")
    rep = json.loads(out)
    assert rc == 1 and not rep["healthy"]
    [op] = rep["incidents"]["open"]
    assert op["kind"] == "gpu_xid" and op["actions"][0]["state"] == "awaiting_approval"
    assert rep["awaiting_approval"][0]["id"] == op["actions"][0]["id"]
    [rec] = rep["incidents"]["recent"]
    assert rec["time_to"] == {"detect": 30.0, "decide": 0.0, "recover": 30.0}
    [g] = rep["goodput"]
    assert g["job"] == "gpt" and g["badput_seconds"]["restart"] == pytest.approx(55.0)
    assert g["ratio"] == pytest.approx(g["productive_seconds"] / g["wall_seconds"])
    assert rep["spares"]["ready"] == 2 and rep["jobs_followed"] == ["gpt"]
    # Close what is open: healthy, exit 0; the breaker open: exit 1 again.
    from sentinel.controller.journal import Journal

    j = Journal(tmp / "controller.db")
    j.update_incident(op["id"], state="resolved")
    rc, out, _ = status(capsys, "--config", str(cfg))
    assert rc == 0 and out.rstrip().endswith("healthy")
    j.trip_breaker("4 drains in an hour")
    rc, out, _ = status(capsys, "--config", str(cfg))
    assert rc == 1 and "breaker: OPEN since" in out and "4 drains in an hour" in out


def test_bad_config_and_missing_journal_exit_2(tmp_path, capsys):
    cfg = tmp_path / "c.yml"
    cfg.write_text(f"controller:\n  journal: {tmp_path / 'none.db'}\n")
    rc, _out, err = status(capsys, "--config", str(cfg))
    assert rc == 2 and "no journal at" in err and "controller.journal" in err
    assert not (tmp_path / "none.db").exists()  # status never creates one
    cfg.write_text("controller:\n  interval_seconds: fast\n")
    rc, _out, err = status(capsys, "--config", str(cfg))
    assert rc == 2 and "controller.interval_seconds" in err


def test_duration():
    assert [duration(x) for x in (None, 3.14, 303, 7500)] == ["-", "3.1 s", "5m 03s", "2h 05m"]
