"""Issue 13, agent item 1: no datagram may kill a report socket reader.

A step report whose extra ``sentinel_reporter_dropped`` was ``1e400`` killed the reader
thread (``int(inf)``), turned /healthz 503 and made systemd restart the agent in a loop.
Deep JSON and 400-digit integers logged a traceback per datagram. Here hypothesis builds
hostile datagrams (valid framing around hostile JSON, numbers written as raw tokens) and
every one must be decoded or dropped with a reason, stored without error and exported.
"""

from __future__ import annotations

import json
import logging
import math
import socket
import struct
import time

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from sentinel import protocol
from sentinel.agent.collectors.training import TrainingCollector
from sentinel.agent.exporter import Agent
from sentinel.agent.steps import ALL_DROP_REASONS, StepStore
from tests.support.collectors import make_ctx, render_collector
from tests.support.metrics import value
from tests.support.probe import raw_identity, step_datagram

pytestmark = pytest.mark.adversarial

# Numbers as a hostile sender writes them: out of float range, 400 digits, non-finite
# tokens Python's json accepts, and ordinary ones.
NUMBER_TOKENS = st.one_of(
    st.sampled_from(["1e400", "-1e400", "1e308", "NaN", "Infinity", "-Infinity", "1" * 400,
                     "-" + "9" * 400, "9" * 5000, "0", "-1", "3.5", "1e-400", "2"]),
    st.integers(-(2**70), 2**70).map(str),
    st.floats(allow_nan=False, allow_infinity=False).map(repr),
)


def _deep(n: int, kind: str) -> str:
    return ("[" * n + "]" * n) if kind == "list" else ('{"a":' * n + "0" + "}" * n)


JSON_VALUES = st.one_of(
    NUMBER_TOKENS,
    st.sampled_from(["null", "true", "false", '"x"', '"NaN"', "[]", "{}"]),
    st.tuples(st.integers(1, 4000), st.sampled_from(["list", "dict"])).map(lambda a: _deep(*a)),
    st.text(max_size=30).map(json.dumps),
)
KEYS = st.one_of(st.sampled_from([protocol.EXTRA_REPORTER_DROPPED, protocol.EXTRA_BATCH, "lr"]),
                 st.text(max_size=12))


@st.composite
def extras_json(draw: st.DrawFn) -> bytes:
    items = draw(st.lists(st.tuples(KEYS, JSON_VALUES), max_size=6))
    return ("{" + ",".join(f"{json.dumps(k)}:{v}" for k, v in items) + "}").encode()


@st.composite
def identities(draw: st.DrawFn) -> bytes:
    fields = {
        "job": st.one_of(st.sampled_from(["job", "j2"]), st.text(max_size=200)),
        "rank": NUMBER_TOKENS,
        "pid": NUMBER_TOKENS,
        "gpu_uuid": st.one_of(st.just('"GPU-1"'), st.text(max_size=300).map(json.dumps)),
        "host": st.one_of(st.just('"h"'), st.integers(0, 7000).map(lambda n: json.dumps("h" * n))),
    }
    keep = draw(st.lists(st.sampled_from(sorted(fields)), unique=True, min_size=2))
    parts = []
    for k in keep:
        v = draw(fields[k])
        parts.append(f'"{k}":{v if isinstance(v, str) else json.dumps(v)}')
    return ("{" + ",".join(parts) + "}").encode()


@st.composite
def datagrams(draw: st.DrawFn) -> bytes:
    ident = draw(st.one_of(identities(), st.just(raw_identity(protocol.Identity("job", 0, 1)))))
    typ = draw(st.sampled_from([protocol.TYPE_STEP, protocol.TYPE_EVENT]))
    head = struct.pack("<2sBBH", b"SN", 1, typ, len(ident)) + ident
    if typ == protocol.TYPE_STEP:
        nums = draw(st.tuples(st.integers(0, 3), st.integers(-(2**63), 2**63 - 1),
                              st.floats(), st.integers(-(2**63), 2**63 - 1), st.floats(),
                              st.integers(-(2**63), 2**63 - 1), st.floats()))
        body = struct.pack("<Bqdqdqd", *nums)
        return (head + body + draw(st.one_of(st.just(b""), extras_json())))[:9000]
    ev = {"kind": draw(st.text(min_size=1, max_size=70)), "time": draw(NUMBER_TOKENS),
          "fields": draw(JSON_VALUES)}
    return (head + ("{" + ",".join(f'"{k}":{v if k != "kind" else json.dumps(v)}'
                                  for k, v in ev.items()) + "}").encode())[:9000]


_REPORTER_1E400 = step_datagram("j", extra_json=b'{"sentinel_reporter_dropped":1e400}')


@settings(max_examples=200, deadline=None)
@given(batch=st.lists(datagrams(), min_size=1, max_size=8))
@example(batch=[_REPORTER_1E400])
@example(batch=[step_datagram("j", extra_json=b'{"lr":' + b"1" * 400 + b"}")])
@example(batch=[step_datagram("j", extra_json=b'{"lr":' + b"[" * 3000 + b"]" * 3000 + b"}")])
def test_any_datagram_is_decoded_or_dropped_and_never_breaks_the_store(batch):
    """decode() raises only DatagramError; whatever it accepts the store and collect take."""
    store = StepStore(ring_size=50, max_jobs=4, max_ranks=4)
    for data in batch:
        try:
            report = protocol.decode(data)
        except protocol.DatagramError as e:
            assert e.reason in protocol.DROP_REASONS
            continue
        store.add(report)
    store.steps("j", 0) if "j" in store.jobs else None
    for job in store.job_names():
        for rec in store.steps(job, 0):
            json.dumps(rec)  # what /api/v1/steps serves is plain data


@pytest.fixture
def agent(tmp_path):
    ctx = make_ctx(tmp_path, collectors=["training"], socket_rcvbuf_bytes=1 << 20)
    a = Agent(ctx)
    a.start()
    try:
        yield a, ctx.config.socket
    finally:
        a.close()


def _wait(fn, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not fn():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True


def test_a_non_finite_extra_is_refused_and_counted_and_the_reader_lives(agent, caplog):
    """The issue's datagram: it killed the reader; now it is dropped as non_finite."""
    a, path = agent
    tr = a.training
    assert isinstance(tr, TrainingCollector)
    store = tr.store
    bad = [_REPORTER_1E400,
           step_datagram("j", extra_json=b'{"batch":NaN}'),
           step_datagram("j", extra_json=b'{"lr":-Infinity}'),
           step_datagram("j", t=math.inf)]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        for d in bad:
            s.sendto(d, path)
        s.sendto(step_datagram("j", step=2), path)  # a good one after them
    assert _wait(lambda: store.received >= 1 and sum(store.dropped.values()) >= len(bad))
    assert a.health() == (True, "ok")
    text = render_collector(tr)
    assert value(text, "sentinel_train_datagrams_dropped_total", reason="non_finite") == len(bad)
    assert value(text, "sentinel_train_step", job="j", rank="0") == 2
    assert "non_finite" in ALL_DROP_REASONS


def test_deep_json_and_huge_integers_are_dropped_without_a_traceback_each(agent, caplog):
    """300 hostile datagrams: counted by reason, the log rate-limited and traceback-free."""
    a, path = agent
    store = a.training.store
    hostile = []
    for i in range(100):
        hostile.append(step_datagram("j", extra_json=b'{"lr":' + b"[" * (1000 + i) + b"]"
                                     * (1000 + i) + b"}"))
        hostile.append(step_datagram("j", extra_json=b'{"lr":' + b"7" * (400 + i) + b"}"))
        ident = b'{"job":"j","rank":' + b"1" * 400 + b',"pid":1}'
        hostile.append(struct.pack("<2sBBH", b"SN", 1, 1, len(ident)) + ident
                       + struct.pack("<Bqdqdqd", 0, 1, 1.0, 1, 0.0, 0, 1.0))
    with caplog.at_level(logging.DEBUG, logger="sentinel"), \
            socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        for d in hostile:
            s.sendto(d, path)
        assert _wait(lambda: sum(store.dropped.values()) >= len(hostile))
    assert a.health() == (True, "ok")
    assert store.received == 0
    assert store.dropped["bad_payload"] == 200 and store.dropped["bad_identity"] == 100
    records = [r for r in caplog.records if r.name.startswith("sentinel")]
    assert not any(r.exc_info for r in records), "a traceback was logged for a datagram"
    # One line per drop reason and log interval, not one per datagram.
    assert len(records) <= 4, [r.getMessage() for r in records]
    assert any("bad_payload" in r.getMessage() for r in records)
