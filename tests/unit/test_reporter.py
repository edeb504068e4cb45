import socket

from sentinel import protocol
from sentinel.train.reporter import Reporter


def test_reports_reach_a_unix_socket(tmp_path):
    path = str(tmp_path / "agent.sock")
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    srv.bind(path)
    srv.settimeout(2)
    rep = Reporter(job="j1", rank=2, socket_path=path, gpu_uuid="GPU-1")
    rep.step(7, loss=1.5, tokens=100, grad_norm=0.5, lr=1e-3)
    rep.event("checkpoint_saved", step=7, seconds=float("nan"))
    r = protocol.decode(srv.recv(65536))
    assert isinstance(r, protocol.StepReport)
    assert (r.identity.job, r.identity.rank, r.step, r.loss, r.extra) == (
        "j1",
        2,
        7,
        1.5,
        {"lr": 1e-3},
    )
    e = protocol.decode(srv.recv(65536))
    assert isinstance(e, protocol.EventReport)
    assert e.kind == "checkpoint_saved" and e.fields == {"step": 7, "seconds": None}
    assert rep.sent == 2 and rep.dropped == 0


def test_absent_agent_drops_and_counts(tmp_path):
    rep = Reporter(job="j", socket_path=str(tmp_path / "nope.sock"))
    for i in range(5):
        rep.step(i, loss=1.0, tokens=1)
    assert rep.dropped == 5 and rep.sent == 0


def test_full_queue_never_blocks(tmp_path):
    path = str(tmp_path / "agent.sock")
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    srv.bind(path)  # nobody reads: the kernel queue fills up
    rep = Reporter(job="j", socket_path=path)
    for i in range(5000):
        rep.step(i, loss=1.0, tokens=1)
    assert rep.sent > 0 and rep.dropped > 0
    assert rep.sent + rep.dropped == 5000


def test_bad_values_do_not_raise(tmp_path):
    rep = Reporter(job="j", socket_path=str(tmp_path / "x.sock"))
    rep.step("not-a-step", loss="x", tokens=None)  # type: ignore[arg-type]
    rep.event("k", obj=object())
    assert rep.dropped == 2


def test_udp_fallback():
    srv = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    srv.bind(("127.0.0.1", 0))
    srv.settimeout(2)
    port = srv.getsockname()[1]
    rep = Reporter(job="j", socket_path="/nonexistent/agent.sock", udp=f"127.0.0.1:{port}")
    rep.step(1, loss=2.0, tokens=3)
    r = protocol.decode(srv.recv(65536))
    assert r.step == 1


def test_a_bad_extra_does_not_lose_the_step(tmp_path):
    path = str(tmp_path / "agent.sock")
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    srv.bind(path)
    srv.settimeout(2)
    rep = Reporter(job="j", socket_path=path)
    # get_last_lr() returns a list; the agent would drop the whole datagram for it.
    rep.step(3, loss=1.0, tokens=5, lr=[1e-3], note="warmup", mom=0.9,
             **{f"k{i}": i for i in range(40)})
    r = protocol.decode(srv.recv(65536))
    assert isinstance(r, protocol.StepReport) and r.step == 3
    assert r.extra["mom"] == 0.9 and "lr" not in r.extra and "note" not in r.extra
    assert len(r.extra) == protocol.MAX_EXTRA_KEYS


def test_finish_sends_the_finished_event(tmp_path):
    path = str(tmp_path / "agent.sock")
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    srv.bind(path)
    srv.settimeout(2)
    Reporter(job="j", socket_path=path).finish(step=99)
    e = protocol.decode(srv.recv(65536))
    assert isinstance(e, protocol.EventReport)
    assert e.kind == protocol.EVENT_FINISHED and e.fields == {"step": 99}


def test_non_finite_extras_are_left_out_so_the_agent_keeps_the_step():
    """The agent drops a datagram with a NaN extra (non_finite); the Reporter sends the step."""
    from sentinel.train.reporter import _numbers

    assert _numbers({"nan": float("nan"), "inf": float("inf"), "big": 10**400, "ok": 2}) == {
        "ok": 2.0}
