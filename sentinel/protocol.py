"""The datagram a training process sends to its node's agent, one per step or event.

Binary on purpose: ``Reporter.step`` must cost a few microseconds inside the training
loop, so the process identity is encoded once and each step only packs numbers.

Layout (little-endian), version 1::

    magic  b"SN"            2 bytes
    version                  u8   (PROTOCOL_VERSION)
    type                     u8   (TYPE_STEP or TYPE_EVENT)
    identity length          u16
    identity                 UTF-8 JSON object: job (str), rank (int), pid (int),
                             gpu_uuid (str or null), host (str)
    then, for TYPE_STEP:
      flags                  u8   bit 0: grad_norm present, bit 1: samples present
      step                   i64
      loss                   f64  (NaN and Inf are legal values: they are findings)
      tokens                 i64  tokens processed in this step
      grad_norm              f64
      samples                i64  samples processed in this step
      time                   f64  wall-clock seconds (time.time()) at the report
      extra                  the rest: empty, or a UTF-8 JSON object of extra numbers
    for TYPE_EVENT:
      payload                the rest: UTF-8 JSON object {"kind": str, "time": f64,
                             "fields": {...}}

Anything else is rejected with a :class:`DatagramError` whose ``reason`` is one of
:data:`DROP_REASONS`; the agent counts drops by that reason and never crashes.
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
MAX_EXTRA_KEYS = 32
# Extra key a Reporter adds, after it had to drop reports, with its cumulative count of
# dropped reports, so the agent can export losses that happened on the sending side.
EXTRA_REPORTER_DROPPED = "sentinel_reporter_dropped"
# Extra key carrying the global batch index a step trained on (``Reporter.step(...,
# batch=i)``); steps and batch indices part ways after the first skipped batch, and the
# agent's step stream keeps it so a loss spike's steps map to the batches to skip.
EXTRA_BATCH = "batch"
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


def _decode_identity(raw: bytes) -> Identity:
    try:
        obj = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DatagramError("bad_identity", f"identity is not JSON: {e}") from None
    if not isinstance(obj, dict):
        raise DatagramError("bad_identity", "identity is not a JSON object")
    job, rank, pid = obj.get("job"), obj.get("rank"), obj.get("pid")
    if not isinstance(job, str) or not job or len(job) > MAX_JOB_LEN:
        raise DatagramError("bad_identity", f"job must be a string of 1..{MAX_JOB_LEN} chars")
    if not isinstance(rank, int) or isinstance(rank, bool) or rank < 0:
        raise DatagramError("bad_identity", "rank must be a non-negative integer")
    if not isinstance(pid, int) or isinstance(pid, bool) or pid < 0:
        raise DatagramError("bad_identity", "pid must be a non-negative integer")
    uuid = obj.get("gpu_uuid")
    if uuid is not None and not isinstance(uuid, str):
        raise DatagramError("bad_identity", "gpu_uuid must be a string or null")
    host = obj.get("host", "")
    if not isinstance(host, str):
        raise DatagramError("bad_identity", "host must be a string")
    return Identity(job=job, rank=rank, pid=pid, gpu_uuid=uuid, host=host)


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
            raise DatagramError("bad_payload", "time is not finite")
        extra: dict[str, float] = {}
        if off < len(data):
            try:
                obj = json.loads(data[off:])
            except (UnicodeDecodeError, json.JSONDecodeError) as e:
                raise DatagramError("bad_payload", f"extra is not JSON: {e}") from None
            if not isinstance(obj, dict) or len(obj) > MAX_EXTRA_KEYS:
                raise DatagramError(
                    "bad_payload", f"extra must be an object of at most {MAX_EXTRA_KEYS} keys"
                )
            for k, v in obj.items():
                if not isinstance(v, int | float) or isinstance(v, bool):
                    raise DatagramError("bad_payload", f"extra[{k!r}] is not a number")
                extra[str(k)] = float(v)
        return StepReport(
            identity=identity,
            step=step,
            loss=loss,
            tokens=tokens,
            grad_norm=g if flags & FLAG_GRAD_NORM else None,
            samples=s if flags & FLAG_SAMPLES else None,
            time=t,
            extra=extra,
        )
    try:
        obj = json.loads(data[off:])
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DatagramError("bad_payload", f"event is not JSON: {e}") from None
    if not isinstance(obj, dict):
        raise DatagramError("bad_payload", "event is not a JSON object")
    kind, t, fields = obj.get("kind"), obj.get("time"), obj.get("fields", {})
    if not isinstance(kind, str) or not kind or len(kind) > 64:
        raise DatagramError("bad_payload", "event kind must be a string of 1..64 chars")
    if not isinstance(t, int | float) or isinstance(t, bool) or not math.isfinite(t):
        raise DatagramError("bad_payload", "event time must be a finite number")
    if not isinstance(fields, dict):
        raise DatagramError("bad_payload", "event fields must be an object")
    return EventReport(identity=identity, kind=kind, time=float(t), fields=fields)
