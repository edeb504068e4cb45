import math
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sentinel import protocol as p


def _prefix(msg_type=p.TYPE_STEP, job="run1", rank=3):
    ident = p.Identity(job=job, rank=rank, pid=1234, gpu_uuid="GPU-abc", host="node1")
    return p.header(msg_type, p.encode_identity(ident))


def test_step_round_trip():
    data = p.encode_step(_prefix(), 42, 2.5, 4096, 1.25, 8, 1700000000.5, {"lr": 3e-4})
    r = p.decode(data)
    assert isinstance(r, p.StepReport)
    assert (r.identity.job, r.identity.rank, r.identity.gpu_uuid) == ("run1", 3, "GPU-abc")
    assert (r.step, r.loss, r.tokens, r.grad_norm, r.samples) == (42, 2.5, 4096, 1.25, 8)
    assert r.extra == {"lr": 3e-4}


def test_absent_optional_fields_and_nan_loss():
    r = p.decode(p.encode_step(_prefix(), 1, float("nan"), 10, None, None, 1.0))
    assert math.isnan(r.loss)
    assert r.grad_norm is None and r.samples is None


def test_event_round_trip():
    data = p.encode_event(_prefix(p.TYPE_EVENT), "rollback_done", 5.0, {"to_step": 100})
    r = p.decode(data)
    assert isinstance(r, p.EventReport)
    assert r.kind == "rollback_done" and r.fields == {"to_step": 100}


@pytest.mark.parametrize(
    "data,reason",
    [
        (b"", "truncated"),
        (b"XX\x01\x01\x00\x00", "bad_magic"),
        (b"SN\x09\x01\x00\x00", "unknown_version"),
        (b"SN\x01\x07\x00\x00", "unknown_type"),
        (b"SN\x01\x01\x05\x00abc", "truncated"),
        (b"SN\x01\x01\x03\x00abc", "bad_identity"),
        (b"x" * (p.MAX_DATAGRAM_BYTES + 1), "too_large"),
    ],
)
def test_bad_datagrams_name_their_reason(data, reason):
    with pytest.raises(p.DatagramError) as e:
        p.decode(data)
    assert e.value.reason == reason


def test_negative_step_is_bad_payload():
    pre = _prefix()
    data = pre + struct.pack("<Bqdqdqd", 0, -1, 1.0, 1, 0.0, 0, 1.0)
    with pytest.raises(p.DatagramError) as e:
        p.decode(data)
    assert e.value.reason == "bad_payload"


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600))
def test_random_bytes_never_crash(data):
    try:
        p.decode(data)
    except p.DatagramError as e:
        assert e.reason in p.DROP_REASONS


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_random_payload_after_valid_header_never_crash(tail):
    for t in (p.TYPE_STEP, p.TYPE_EVENT):
        try:
            p.decode(_prefix(t) + tail)
        except p.DatagramError as e:
            assert e.reason in p.DROP_REASONS


def _raw(obj) -> bytes:
    import json

    ident = json.dumps(obj).encode()
    return struct.pack("<2sBBH", b"SN", 1, 1, len(ident)) + ident + struct.pack(
        "<Bqdqdqd", 0, 1, 1.0, 1, 0.0, 0, 1.0)


@pytest.mark.parametrize(("ident", "what"), [
    ({"job": "j", "rank": 0, "pid": 1, "host": "h" * (p.MAX_HOST_LEN + 1)}, "host"),
    ({"job": "j", "rank": 0, "pid": 1, "gpu_uuid": "G" * (p.MAX_UUID_LEN + 1)}, "gpu_uuid"),
    ({"job": "j", "rank": p.MAX_RANK + 1, "pid": 1}, "rank"),
    ({"job": "j", "rank": 0, "pid": p.MAX_PID + 1}, "pid"),
    ({"job": "j", "rank": 10**25, "pid": 1}, "integer of more than 20 digits"),
    ({"job": "j" * (p.MAX_JOB_LEN + 1), "rank": 0, "pid": 1}, "job"),
])
def test_identity_fields_are_bounded(ident, what):
    with pytest.raises(p.DatagramError) as e:
        p.decode(_raw(ident))
    assert e.value.reason == "bad_identity" and what in str(e.value)


def test_the_longest_identity_accepted_round_trips_and_the_encoder_refuses_longer():
    ident = p.Identity("j" * p.MAX_JOB_LEN, p.MAX_RANK, p.MAX_PID, "G" * p.MAX_UUID_LEN,
                       "h" * p.MAX_HOST_LEN)
    assert p.decode(p.encode_step(p.header(p.TYPE_STEP, p.encode_identity(ident)), 1, 1.0, 1,
                                  None, None, 1.0)).identity == ident
    with pytest.raises(ValueError, match="host must be at most 253"):
        p.encode_identity(p.Identity("j", 0, 1, None, "h" * 254))


@pytest.mark.parametrize("extra", [b'{"a":NaN}', b'{"a":Infinity}', b'{"a":-1e400}',
                                   b'{"a":1' + b"0" * 400 + b'.5}'])
def test_non_finite_extras_are_their_own_reason(extra):
    with pytest.raises(p.DatagramError) as e:
        p.decode(p.encode_step(_prefix(), 1, 1.0, 1, None, None, 1.0) + extra)
    assert e.value.reason == "non_finite"
