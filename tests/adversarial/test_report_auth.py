"""Issue 13, agent item 2: another local user cannot forge or crowd out a job's reports.

As ``nobody`` a local user forged a job's rank 0 (NaN loss, step 999999), hid a hung job
with ``finished``, rewrote a rank's PID and GPU, and took every job slot so a real job
was dropped. The agent now reads each datagram's kernel credentials (SO_PASSCRED):
a job belongs to the uid that first reported it, a uid holds at most
``agent.max_jobs_per_uid`` job slots, an allow-list can name the users and groups that
may report, and the socket is group-writable only.
"""

from __future__ import annotations

import grp
import math
import os
import shutil
import stat
import time

import pytest

from sentinel.agent.collectors.training import TrainingCollector
from sentinel.agent.exporter import Agent
from sentinel.config import ConfigError
from tests.support.collectors import make_ctx, render_collector
from tests.support.metrics import value
from tests.support.probe import (
    ensure_group,
    ensure_user,
    event_datagram,
    need_root,
    open_dir,
    send_as,
    step_datagram,
)

pytestmark = pytest.mark.adversarial

GROUP = "sntl-adv-report"  # the users allowed to write to the socket (its group)
ALICE = "sntl-adv-alice"  # runs the real job
MALLORY = "sntl-adv-mallory"  # another user of the node, in the group too
OUTSIDER = "sntl-adv-outsider"  # not in the group


@pytest.fixture(scope="module")
def users():
    need_root()
    return {
        "group": ensure_group(GROUP),
        ALICE: ensure_user(ALICE, (GROUP,)),
        MALLORY: ensure_user(MALLORY, (GROUP,)),
        OUTSIDER: ensure_user(OUTSIDER),
    }


@pytest.fixture
def make_agent(users, tmp_path):
    started = []
    dirs = []

    def start(**cfg):
        d = open_dir()
        dirs.append(d)
        cfg.setdefault("socket_group", GROUP)
        ctx = make_ctx(tmp_path, collectors=["training"], socket=str(d / "agent.sock"), **cfg)
        a = Agent(ctx)
        a.start()
        started.append(a)
        tr = a.training
        assert isinstance(tr, TrainingCollector)
        return tr, ctx.config.socket

    yield start
    for a in started:
        a.close()
    for d in dirs:
        shutil.rmtree(d, ignore_errors=True)


def _settle(store, n, timeout=10.0):
    """Wait until the store has seen ``n`` datagrams (accepted or dropped)."""
    deadline = time.monotonic() + timeout
    while store.received + sum(store.dropped.values()) < n:
        assert time.monotonic() < deadline, (store.received, store.dropped)
        time.sleep(0.01)


def test_another_user_cannot_forge_hide_rewrite_or_crowd_out_a_job(make_agent, users):
    tr, sock = make_agent()
    store = tr.store
    real = [step_datagram("llm", rank=r, step=100, loss=2.0, pid=1000 + r, gpu=f"GPU-{r}")
            for r in (0, 1)]
    assert send_as(ALICE, sock, real) == ["ok", "ok"]
    _settle(store, 2)
    forged = [
        step_datagram("llm", rank=0, step=999999, loss=math.nan),  # the rollback_skip bait
        event_datagram("llm", 0, "finished"),  # hide a hung job
        event_datagram("llm", 1, "finished"),
        step_datagram("llm", rank=1, step=101, pid=1, gpu="GPU-evil"),  # rewrite PID/GPU
        step_datagram("llm", rank=7, step=101),  # add a rank to someone else's job
    ]
    squat = [step_datagram(f"squat-{i}", step=1) for i in range(16)]  # every job slot
    assert send_as(MALLORY, sock, forged + squat) == ["ok"] * (len(forged) + len(squat))
    _settle(store, 2 + len(forged) + len(squat))
    assert send_as(ALICE, sock, [step_datagram("second", step=5)]) == ["ok"]
    _settle(store, 3 + len(forged) + len(squat))

    text = render_collector(tr)
    for r in (0, 1):
        lab = {"job": "llm", "rank": str(r)}
        assert value(text, "sentinel_train_step", **lab) == 100
        assert value(text, "sentinel_train_loss", **lab) == 2.0
        assert value(text, "sentinel_train_rank_info", pid=str(1000 + r), UUID=f"GPU-{r}",
                     **lab) == 1
        assert value(text, "sentinel_train_seconds_since_last_report", **lab) >= 0  # not hidden
    assert value(text, "sentinel_train_job_info", job="llm", ranks="2") == 1
    assert [s["step"] for s in store.steps("llm", 0)] == [100, 100]
    quota = tr.ctx.config.max_jobs_per_uid
    squatted = [j for j in store.job_names() if j.startswith("squat-")]
    assert len(squatted) == quota < 16
    assert value(text, "sentinel_train_step", job="second", rank="0") == 5  # a real job fits
    assert value(text, "sentinel_train_datagrams_dropped_total", reason="not_owner") == len(forged)
    assert value(text, "sentinel_train_datagrams_dropped_total", reason="over_quota") == 16 - quota
    print(f"\nPROBE forged reports refused: {len(forged)} of {len(forged)}; "
          f"job slots taken by one uid: {len(squatted)} of 16")


def test_the_job_is_free_again_once_it_expired(make_agent, users):
    tr, sock = make_agent()
    store = tr.store
    send_as(ALICE, sock, [step_datagram("llm", step=1)])
    _settle(store, 1)
    store.expiry = 0.0  # what an hour of silence does
    assert store.expire() == ["llm"]
    send_as(MALLORY, sock, [step_datagram("llm", step=2)])
    _settle(store, 2)
    assert store.steps("llm", 0)[0]["step"] == 2


def test_the_socket_is_group_writable_only(make_agent, users):
    tr, sock = make_agent()
    st = os.stat(sock)
    assert stat.S_IMODE(st.st_mode) == 0o660
    assert st.st_gid == users["group"]
    assert send_as(OUTSIDER, sock, [step_datagram("x")]) == ["EACCES"]
    assert send_as(ALICE, sock, [step_datagram("x")]) == ["ok"]


def test_an_allow_list_of_uids_and_groups(make_agent, users):
    alice_uid = users[ALICE][0]
    tr, sock = make_agent(report_allow_uids=[alice_uid], socket_mode="0666")
    assert send_as(MALLORY, sock, [step_datagram("m")]) == ["ok"]
    assert send_as(OUTSIDER, sock, [step_datagram("o")]) == ["ok"]
    assert send_as(ALICE, sock, [step_datagram("a")]) == ["ok"]
    _settle(tr.store, 3)
    assert tr.store.job_names() == ["a"]
    assert tr.store.dropped["not_allowed"] == 2

    tr, sock = make_agent(report_allow_groups=[GROUP], socket_mode="0666")
    for who in (MALLORY, OUTSIDER, ALICE):
        send_as(who, sock, [step_datagram(who)])
    _settle(tr.store, 3)
    assert tr.store.job_names() == sorted([ALICE, MALLORY])
    assert tr.store.dropped["not_allowed"] == 1


def test_udp_must_stay_on_loopback_unless_allowed(tmp_path):
    for addr in ("0.0.0.0:9999", "10.1.2.3:9999", "[::]:9999", "node7:9999"):
        with pytest.raises(ConfigError, match="udp_allow_remote"):
            make_ctx(tmp_path, udp_address=addr).config.validate()
    for addr in ("127.0.0.1:9999", "[::1]:9999", "localhost:9999"):
        make_ctx(tmp_path, udp_address=addr).config.validate()
    make_ctx(tmp_path, udp_address="0.0.0.0:9999", udp_allow_remote=True).config.validate()


def test_udp_reports_carry_no_credentials_and_cannot_touch_a_unix_job(make_agent, users):
    import socket

    from tests.support.services import free_port

    port = free_port()
    tr, sock = make_agent(udp_address=f"127.0.0.1:{port}", max_jobs_per_uid=2)
    store = tr.store
    send_as(ALICE, sock, [step_datagram("llm", step=10)])
    _settle(store, 1)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
        u.sendto(step_datagram("llm", step=999999, loss=math.nan), ("127.0.0.1", port))
        for i in range(3):
            u.sendto(step_datagram(f"udp-{i}", step=1), ("127.0.0.1", port))
    _settle(store, 5)
    assert [s["step"] for s in store.steps("llm", 0)] == [10]
    # UDP senders are one principal: together they hold at most max_jobs_per_uid slots.
    assert [j for j in store.job_names() if j.startswith("udp-")] == ["udp-0", "udp-1"]
    assert store.dropped["not_owner"] == 1 and store.dropped["over_quota"] == 1
    # And a local user cannot take over a job that arrived over UDP either.
    send_as(ALICE, sock, [step_datagram("udp-0", step=2)])
    _settle(store, 6)
    assert store.dropped["not_owner"] == 2


def test_a_socket_group_without_members_is_named_in_the_log(make_agent, users, caplog):
    """What happens without a populated `sentinel` group: only root's jobs could report."""
    ensure_group("sntl-adv-empty")
    with caplog.at_level("WARNING", logger="sentinel.agent.collectors.training"):
        _tr, sock = make_agent(socket_group="sntl-adv-empty")
    assert "group sntl-adv-empty, which has no members" in caplog.text
    assert "usermod -aG sntl-adv-empty USER" in caplog.text
    assert send_as(ALICE, sock, [step_datagram("x")]) == ["EACCES"]


def test_by_default_the_socket_takes_the_sentinel_group_when_it_exists(make_agent, users,
                                                                        monkeypatch, caplog):
    import sentinel.agent.collectors.training as training_mod

    monkeypatch.setattr(training_mod, "DEFAULT_SOCKET_GROUP", GROUP)  # as if it were called so
    _tr, sock = make_agent(socket_group="")
    assert os.stat(sock).st_gid == users["group"]
    assert send_as(ALICE, sock, [step_datagram("x")]) == ["ok"]
    # Without such a group the socket keeps the agent's own, and the log says who can report.
    monkeypatch.setattr(training_mod, "DEFAULT_SOCKET_GROUP", "sntl-adv-absent")
    with caplog.at_level("WARNING", logger="sentinel.agent.collectors.training"):
        _tr, sock = make_agent(socket_group="")
    assert os.stat(sock).st_gid == os.getegid()
    own_members = grp.getgrgid(os.getegid()).gr_mem
    assert ("which has no members" in caplog.text) == (not own_members)
