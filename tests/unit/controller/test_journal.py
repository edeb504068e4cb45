"""The journal: rows survive reopening, ids resolve by prefix, breaker, approvals, pruning."""

from __future__ import annotations

import os
import stat

import pytest

from sentinel.controller.journal import Journal, JournalError


def test_rows_survive_reopen_and_mode_is_0660(tmp_path):
    path = tmp_path / "db" / "c.db"
    j = Journal(path, clock=lambda: 100.0)
    inc = j.open_incident("node/n1", {"kind": "gpu_xid", "severity": "critical",
                                      "summary": "XID 79", "node": "n1", "time_start": 90.0})
    a = j.add_action(inc.id, "spare_swap", "act", "intent", plan={"node": "n1"}, node="n1",
                     job="gpt", reason="xid")
    j.step_started(a.id, 0, "drain", {"x": 1})
    j.close()
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o660
    j2 = Journal(path)
    assert j2.open_incident_for("node/n1").id == inc.id
    assert j2.incident(inc.id).detected_at == 90.0
    [un] = j2.unfinished_actions()
    assert un.id == a.id and un.plan == {"node": "n1"} and un.attempt == 1
    [st] = j2.steps(a.id)
    assert st.state == "started" and st.inputs == {"x": 1}


def test_attempts_count_act_mode_only(tmp_path):
    j = Journal(tmp_path / "c.db")
    inc = j.open_incident("loss/gpt", {"kind": "loss_spike", "severity": "warning",
                                       "summary": "s"})
    assert j.add_action(inc.id, "rollback_skip", "observe", "observed", plan={}, node=None,
                        job="gpt").attempt == 1
    assert j.add_action(inc.id, "rollback_skip", "act", "intent", plan={}, node=None,
                        job="gpt").attempt == 1
    assert j.add_action(inc.id, "rollback_skip", "act", "intent", plan={}, node=None,
                        job="gpt").attempt == 2


def test_find_action_by_prefix_escapes_wildcards(tmp_path):
    j = Journal(tmp_path / "c.db")
    inc = j.open_incident("g", {"kind": "k", "severity": "info", "summary": "s"})
    a = j.add_action(inc.id, "burnin", "ask", "awaiting_approval", plan={}, node="n", job=None)
    assert [r.id for r in j.find_action(a.id[:5])] == [a.id]
    assert j.find_action("%") == [] and j.find_action("a_") == []


def test_breaker_and_approvals(tmp_path):
    j = Journal(tmp_path / "c.db")
    assert not j.breaker().open
    assert j.trip_breaker("too many drains", now=5.0)
    assert not j.trip_breaker("again", now=6.0)  # already open: first reason kept
    assert j.breaker().reason == "too many drains" and j.breaker().since == 5.0
    assert j.reset_breaker("alice (uid 0)", now=7.0)
    assert not j.breaker().open and j.breaker().reset_by == "alice (uid 0)"
    assert not j.reset_breaker("bob")
    kinds = [e["kind"] for e in j.events()]
    assert kinds == ["breaker_tripped", "breaker_reset"]
    inc = j.open_incident("g", {"kind": "k", "severity": "info", "summary": "s"})
    a = j.add_action(inc.id, "burnin", "ask", "awaiting_approval", plan={}, node="n", job=None)
    assert j.approval(a.id) is None
    j.approve(a.id, "alice")
    assert j.approval(a.id)["by"] == "alice"


def test_badput_charged_once_per_key(tmp_path):
    j = Journal(tmp_path / "c.db")
    assert j.charge("gpt", "rollback", 12.5, key="a-1:lost")
    assert not j.charge("gpt", "rollback", 12.5, key="a-1:lost")
    assert [r["seconds"] for r in j.badput("gpt")] == [12.5]


def test_prune_drops_old_closed_incidents_only(tmp_path):
    j = Journal(tmp_path / "c.db", retention_days=1)
    old = j.open_incident("g1", {"kind": "k", "severity": "info", "summary": "s"}, now=0.0)
    j.update_incident(old.id, now=10.0, state="resolved")
    live = j.open_incident("g2", {"kind": "k", "severity": "info", "summary": "s"}, now=0.0)
    assert j.prune(now=3 * 86400.0) == 1
    assert j.incident(old.id) is None and j.incident(live.id) is not None


def test_unreadable_journal_is_a_clear_error(tmp_path):
    bad = tmp_path / "c.db"
    bad.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(JournalError, match="c.db"):
        Journal(bad)
