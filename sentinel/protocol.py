"""The datagram a training process sends to its node's agent, one per step or event.

Binary on purpose: ``Reporter.step`` must cost a few microseconds inside the training
loop, so the process identity is encoded once and each step only packs numbers.

Layout (little-endian), version 1::

    magic  b"SN"            2 bytes
    version                  u8   (PROTOCOL_VERSION)
    type                     u8   (TYPE_STEP or TYPE_EVENT)
    identity length          u16
    identity                 UTF-8 JSON object: job (str, 1..MAX_JOB_LEN chars),
                             rank (int, 0..MAX_RANK), pid (int, 0..MAX_PID),
                             gpu_uuid (str of at most MAX_UUID_LEN chars, or null),
                             host (str of at most MAX_HOST_LEN chars)
    then, for TYPE_STEP:
      flags                  u8   bit 0: grad_norm present, bit 1: samples present
      step                   i64
      loss                   f64  (NaN and Inf are legal values: they are findings)
      tokens                 i64  tokens processed in this step
      grad_norm              f64
      samples                i64  samples processed in this step
      time                   f64  wall-clock seconds (time.time()) at the report; finite
      extra                  the rest: empty, or a UTF-8 JSON object of extra numbers,
                             each finite (NaN, Infinity and 1e400 are refused)
    for TYPE_EVENT:
      payload                the rest: UTF-8 JSON object {"kind": str, "time": f64
                             (finite), "fields": {...}}

Anything else is rejected with a :class:`DatagramError` whose ``reason`` is one of
:data:`DROP_REASONS`; the agent counts drops by that reason and never crashes. That
includes JSON nested deeper than the parser's recursion limit and integers longer than
MAX_INT_DIGITS digits (no field carries more than an i64): :func:`decode` raises
nothing but DatagramError, whatever the bytes.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass, field
from typing import Any

MAGIC = b"SN"
PROTOCOL_VERSION = 1
TYPE_STEP = 1
TYPE_EVENT = 2
# Largest datagram the agent accepts. Small enough for one UDP packet on loopback
# and for the kernel's default Unix datagram queue; a step report is ~150 bytes.
MAX_DATAGRAM_BYTES = 8192
MAX_JOB_LEN = 128
# Bounds on the other identity fields, so a sender cannot make the agent keep kilobytes
# per rank: a host name is at most 253 characters in DNS; an NVML UUID is "GPU-" plus
# 36, a MIG one at most ~60; PID_MAX_LIMIT is 2**22 on 64-bit Linux; 2**24 ranks is
# more than any job has.
MAX_HOST_LEN = 253
MAX_UUID_LEN = 96
MAX_PID = 2**22
MAX_RANK = 2**24
# An i64 has 19 digits; a longer JSON integer is refused before Python converts it.
MAX_INT_DIGITS = 20
MAX_EXTRA_KEYS = 32
# Extra key a Reporter adds, after it had to drop reports, with its cumulative count of
# dropped reports, so the agent can export losses that happened on the sending side.
EXTRA_REPORTER_DROPPED = "sentinel_reporter_dropped"
# Extra key carrying the global batch index a step trained on (``Reporter.step(...,
# batch=i)``); steps and batch indices part ways after the first skipped batch, and the
# agent's step stream keeps it so a loss spike's steps map to the batches to skip.
EXTRA_BATCH = "batch"
# Extra key of the seconds the step waited for its input (Reporter.step(data_s=...)).
EXTRA_DATA_S = "data_s"
# Event a rank sends when it ends on purpose (Reporter.finish): the agent stops exporting
# its live series (age, tokens/sec), so a finished job raises no "stopped reporting" or
# "throughput drop" alert, and forgets the job soon after every rank has finished.
EVENT_FINISHED = "finished"

_HEADER = struct.Struct("<2sBBH")
_STEP = struct.Struct("<Bqdqdqd")
FLAG_GRAD_NORM = 1
FLAG_SAMPLES = 2

DROP_REASONS = (
    "too_large",
    "truncated",
    "bad_magic",
    "unknown_version",
    "unknown_type",
    "bad_identity",
    "bad_payload",
    "non_finite",
)


class DatagramError(ValueError):
    """A datagram that cannot be accepted; ``reason`` is one of DROP_REASONS."""

    def __init__(self, reason: str, detail: str) -> None:
        assert reason in DROP_REASONS
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class Identity:
    """Who sent a report: the job, the rank, the process and the GPU it trains on."""

    job: str
    rank: int
    pid: int
    gpu_uuid: str | None = None
    host: str = ""


@dataclass
class StepReport:
    """One training step as the job reported it."""

    identity: Identity
    step: int
    loss: float
    tokens: int
    grad_norm: float | None
    samples: int | None
    time: float
    extra: dict[str, float] = field(default_factory=dict)


@dataclass
class EventReport:
    """A job event (``rollback_done``, ``checkpoint_saved``, ...) with its fields."""

    identity: Identity
    kind: str
    time: float
    fields: dict[str, Any] = field(default_factory=dict)


def encode_identity(identity: Identity) -> bytes:
    """Encode the identity block once; the Reporter reuses it for every datagram."""
    if not identity.job or len(identity.job) > MAX_JOB_LEN:
        raise ValueError(f"job must be 1..{MAX_JOB_LEN} characters, got {identity.job!r}")
    if len(identity.host) > MAX_HOST_LEN:
        raise ValueError(f"host must be at most {MAX_HOST_LEN} characters, "
                         f"got {len(identity.host)}")
    if identity.gpu_uuid is not None and len(identity.gpu_uuid) > MAX_UUID_LEN:
        raise ValueError(f"gpu_uuid must be at most {MAX_UUID_LEN} characters, "
                         f"got {identity.gpu_uuid!r}")
    if not 0 <= int(identity.rank) <= MAX_RANK or not 0 <= int(identity.pid) <= MAX_PID:
        raise ValueError(f"rank must be 0..{MAX_RANK} and pid 0..{MAX_PID}, "
                         f"got {identity.rank} and {identity.pid}")
    body = json.dumps(
        {
            "job": identity.job,
            "rank": int(identity.rank),
            "pid": int(identity.pid),
            "gpu_uuid": identity.gpu_uuid,
            "host": identity.host,
        },
        separators=(",", ":"),
    ).encode()
    return body


def header(msg_type: int, identity_bytes: bytes) -> bytes:
    """Build the fixed header plus identity that starts every datagram."""
    return _HEADER.pack(MAGIC, PROTOCOL_VERSION, msg_type, len(identity_bytes)) + identity_bytes


def encode_step(
    prefix: bytes,
    step: int,
    loss: float,
    tokens: int,
    grad_norm: float | None,
    samples: int | None,
    time: float,
    extra: dict[str, Any] | None = None,
) -> bytes:
    """Encode a step report behind a prefix made by :func:`header`."""
    flags = 0
    g = 0.0
    s = 0
    if grad_norm is not None:
        flags |= FLAG_GRAD_NORM
        g = float(grad_norm)
    if samples is not None:
        flags |= FLAG_SAMPLES
        s = int(samples)
    out = prefix + _STEP.pack(flags, int(step), float(loss), int(tokens), g, s, float(time))
    if extra:
        out += json.dumps(extra, separators=(",", ":"), default=float).encode()
    return out


def encode_event(prefix: bytes, kind: str, time: float, fields: dict[str, Any]) -> bytes:
    """Encode an event behind a prefix made by :func:`header` for TYPE_EVENT."""
    return prefix + json.dumps(
        {"kind": kind, "time": time, "fields": fields}, separators=(",", ":"), default=str
    ).encode()


class _LongInt(ValueError):
    """A JSON integer longer than MAX_INT_DIGITS digits."""


def _parse_int(text: str) -> int:
    if len(text) > MAX_INT_DIGITS + 1 and len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise _LongInt(len(text))
    return int(text)


# One decoder for every datagram: json.loads(..., parse_int=...) would build one per call.
_JSON = json.JSONDecoder(parse_int=_parse_int)


def _loads(raw: bytes, reason: str, what: str) -> Any:
    """Parse JSON from a datagram; anything that goes wrong is a DatagramError."""
    try:
        return _JSON.decode(raw.decode())
    except _LongInt:
        raise DatagramError(reason, f"{what} has an integer of more than {MAX_INT_DIGITS} "
                                    "digits") from None
    except RecursionError:
        raise DatagramError(reason, f"{what} is nested too deeply") from None
    except ValueError as e:  # not UTF-8, not JSON
        raise DatagramError(reason, f"{what} is not JSON: {e}") from None


def _int_field(obj: dict[str, Any], key: str, top: int) -> int:
    v = obj.get(key)
    if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v <= top:
        raise DatagramError("bad_identity", f"{key} must be an integer 0..{top}")
    return v


# Identities already decoded, by their bytes: a Reporter sends the same ones with every
# step, and decoding JSON is most of a datagram's cost. Cleared when full; only short
# ones are kept (a Reporter's is under 600 bytes), so the cache stays under ~5 MiB.
_IDENTITIES: dict[bytes, Identity] = {}
MAX_CACHED_IDENTITIES = 4096
MAX_CACHED_IDENTITY_BYTES = 1024


def _decode_identity(raw: bytes) -> Identity:
    ident = _IDENTITIES.get(raw)
    if ident is None:
        ident = _parse_identity(raw)
        if len(raw) <= MAX_CACHED_IDENTITY_BYTES:
            if len(_IDENTITIES) >= MAX_CACHED_IDENTITIES:
                _IDENTITIES.clear()
            _IDENTITIES[raw] = ident
    return ident


def _parse_identity(raw: bytes) -> Identity:
    obj = _loads(raw, "bad_identity", "identity")
    if not isinstance(obj, dict):
        raise DatagramError("bad_identity", "identity is not a JSON object")
    job = obj.get("job")
    if not isinstance(job, str) or not job or len(job) > MAX_JOB_LEN:
        raise DatagramError("bad_identity", f"job must be a string of 1..{MAX_JOB_LEN} chars")
    rank = _int_field(obj, "rank", MAX_RANK)
    pid = _int_field(obj, "pid", MAX_PID)
    uuid = obj.get("gpu_uuid")
    if uuid is not None and (not isinstance(uuid, str) or len(uuid) > MAX_UUID_LEN):
        raise DatagramError("bad_identity",
                            f"gpu_uuid must be null or a string of at most {MAX_UUID_LEN} chars")
    host = obj.get("host", "")
    if not isinstance(host, str) or len(host) > MAX_HOST_LEN:
        raise DatagramError("bad_identity",
                            f"host must be a string of at most {MAX_HOST_LEN} chars")
    return Identity(job=job, rank=rank, pid=pid, gpu_uuid=uuid, host=host)


def _decode_extra(raw: bytes) -> dict[str, float]:
    obj = _loads(raw, "bad_payload", "extra")
    if not isinstance(obj, dict) or len(obj) > MAX_EXTRA_KEYS:
        raise DatagramError(
            "bad_payload", f"extra must be an object of at most {MAX_EXTRA_KEYS} keys"
        )
    extra: dict[str, float] = {}
    for k, v in obj.items():
        if not isinstance(v, int | float) or isinstance(v, bool):
            raise DatagramError("bad_payload", f"extra[{k!r}] is not a number")
        if not math.isfinite(v):
            raise DatagramError("non_finite", f"extra[{k!r}] is {v}")
        extra[str(k)] = float(v)
    return extra


def decode(data: bytes) -> StepReport | EventReport:
    """Decode one datagram or raise DatagramError with the reason it was dropped."""
    if len(data) > MAX_DATAGRAM_BYTES:
        raise DatagramError("too_large", f"{len(data)} bytes > {MAX_DATAGRAM_BYTES}")
    if len(data) < _HEADER.size:
        raise DatagramError("truncated", f"{len(data)} bytes is shorter than the header")
    magic, version, msg_type, id_len = _HEADER.unpack_from(data)
    if magic != MAGIC:
        raise DatagramError("bad_magic", f"starts with {magic!r}, expected {MAGIC!r}")
    if version != PROTOCOL_VERSION:
        raise DatagramError(
            "unknown_version", f"version {version}, this agent speaks {PROTOCOL_VERSION}"
        )
    if msg_type not in (TYPE_STEP, TYPE_EVENT):
        raise DatagramError("unknown_type", f"type {msg_type}")
    off = _HEADER.size
    if len(data) < off + id_len:
        raise DatagramError("truncated", "identity runs past the end of the datagram")
    identity = _decode_identity(data[off : off + id_len])
    off += id_len
    if msg_type == TYPE_STEP:
        if len(data) < off + _STEP.size:
            raise DatagramError("truncated", "step payload runs past the end")
        flags, step, loss, tokens, g, s, t = _STEP.unpack_from(data, off)
        off += _STEP.size
        if step < 0:
            raise DatagramError("bad_payload", f"step {step} is negative")
        if tokens < 0:
            raise DatagramError("bad_payload", f"tokens {tokens} is negative")
        if not math.isfinite(t):
            raise DatagramError("non_finite", f"time is {t}")
        return StepReport(
            identity=identity,
            step=step,
            loss=loss,
            tokens=tokens,
            grad_norm=g if flags & FLAG_GRAD_NORM else None,
            samples=s if flags & FLAG_SAMPLES else None,
            time=t,
            extra=_decode_extra(data[off:]) if off < len(data) else {},
        )
    obj = _loads(data[off:], "bad_payload", "event")
    if not isinstance(obj, dict):
        raise DatagramError("bad_payload", "event is not a JSON object")
    kind, t, fields = obj.get("kind"), obj.get("time"), obj.get("fields", {})
    if not isinstance(kind, str) or not kind or len(kind) > 64:
        raise DatagramError("bad_payload", "event kind must be a string of 1..64 chars")
    if not isinstance(t, int | float) or isinstance(t, bool):
        raise DatagramError("bad_payload", "event time must be a number")
    if not math.isfinite(t):
        raise DatagramError("non_finite", f"event time is {t}")
    if not isinstance(fields, dict):
        raise DatagramError("bad_payload", "event fields must be an object")
    return EventReport(identity=identity, kind=kind, time=float(t), fields=fields)
