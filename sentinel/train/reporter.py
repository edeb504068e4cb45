"""Report each training step to the node's agent, without ever blocking or raising.

Usage in a training loop::

    from sentinel.train import Reporter

    rep = Reporter(job="gpt-7b-run3")          # rank from $RANK, GPU from torch
    for step, batch in enumerate(loader):
        loss = train_step(batch)
        rep.step(step, loss=loss_value, tokens=tokens_in_batch, grad_norm=gn)
    rep.finish()                               # ended on purpose: no stalled-job alert

The datagram goes to the agent's Unix datagram socket (``$SENTINEL_AGENT_SOCKET``,
default :data:`DEFAULT_SOCKET`), or to UDP on localhost if ``udp`` or
``$SENTINEL_AGENT_UDP`` (``host:port``) is set and the socket is absent. If the agent
is not there, or its queue is full, the report is dropped and counted in
``Reporter.dropped``; the training loop never waits and never sees an exception.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import sys
import time
from typing import Any

from sentinel import protocol
from sentinel.config import REPORTER_SOCKET_ENV, REPORTER_UDP_ENV

log = logging.getLogger(__name__)

DEFAULT_SOCKET = "/run/sentinel/agent.sock"
# How long to wait before trying to reach an absent agent again; keeps the cost of
# reporting into the void at one failed syscall a second.
RECONNECT_INTERVAL_S = 1.0


def _detect_gpu_uuid() -> str | None:
    """Return the NVML-style UUID of the CUDA device this process uses, if torch knows it."""
    torch = sys.modules.get("torch")
    if torch is None:
        return None
    try:
        if not torch.cuda.is_available() or not torch.cuda.is_initialized():
            return None
        props = torch.cuda.get_device_properties(torch.cuda.current_device())
        uuid = str(getattr(props, "uuid", "") or "")
    except Exception:  # noqa: BLE001 - identity is best effort, never a crash
        return None
    if not uuid:
        return None
    return uuid if uuid.startswith(("GPU-", "MIG-")) else f"GPU-{uuid}"


def _numbers(extra: dict[str, Any]) -> dict[str, float]:
    """Keep the extras the agent accepts: finite numbers (tensors and numpy scalars too)."""
    out: dict[str, float] = {}
    for k, v in extra.items():
        if len(out) >= protocol.MAX_EXTRA_KEYS:
            break
        if isinstance(v, str | bytes):
            continue  # float("1e-3") would work, but a string is not a metric
        try:
            f = float(v)
        except (TypeError, ValueError, OverflowError):
            continue
        if math.isfinite(f):  # the agent drops a datagram with a NaN extra: lose the extra
            out[k] = f
    return out


class Reporter:
    """Send one small datagram per step (and per event) to the local agent."""

    def __init__(
        self,
        job: str,
        rank: int | None = None,
        *,
        socket_path: str | None = None,
        udp: str | None = None,
        gpu_uuid: str | None = None,
        host: str | None = None,
        enabled: bool = True,
    ) -> None:
        if rank is None:
            rank = int(os.environ.get("RANK", "0") or 0)
        self.job = job
        self.rank = rank
        self.enabled = enabled
        self.socket_path = socket_path or os.environ.get(REPORTER_SOCKET_ENV, DEFAULT_SOCKET)
        udp = udp or os.environ.get(REPORTER_UDP_ENV)
        self._udp: tuple[str, int] | None = None
        if udp:
            h, _, p = udp.rpartition(":")
            self._udp = (h or "127.0.0.1", int(p))
        self.gpu_uuid = gpu_uuid
        self.host = host if host is not None else socket.gethostname()
        self.sent = 0
        self.dropped = 0
        self._dropped_told = 0  # the dropped count the agent has last been sent
        self._sock: socket.socket | None = None
        self._next_try = 0.0
        self._build_prefixes()

    def _build_prefixes(self) -> None:
        ident = protocol.Identity(
            job=self.job, rank=self.rank, pid=os.getpid(), gpu_uuid=self.gpu_uuid, host=self.host
        )
        raw = protocol.encode_identity(ident)
        self._step_prefix = protocol.header(protocol.TYPE_STEP, raw)
        self._event_prefix = protocol.header(protocol.TYPE_EVENT, raw)

    def _connect(self) -> socket.socket | None:
        now = time.monotonic()
        if now < self._next_try:
            return None
        self._next_try = now + RECONNECT_INTERVAL_S
        if self.gpu_uuid is None:
            uuid = _detect_gpu_uuid()
            if uuid is not None:
                self.gpu_uuid = uuid
                self._build_prefixes()
        try:
            if os.path.exists(self.socket_path) or self._udp is None:
                s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                s.setblocking(False)
                s.connect(self.socket_path)
            else:
                s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                s.setblocking(False)
                s.connect(self._udp)
        except OSError:
            return None
        self._sock = s
        return s

    def _send(self, data: bytes) -> None:
        s = self._sock or self._connect()
        if s is None:
            self.dropped += 1
            return
        try:
            s.send(data)
            self.sent += 1
        except OSError:
            # Agent gone (ECONNREFUSED/ENOENT) or its queue full (EAGAIN): drop, and
            # reconnect later so a restarted agent is found again.
            self.dropped += 1
            if not isinstance(sys.exc_info()[1], BlockingIOError):
                self._close_socket()

    def _close_socket(self) -> None:
        if self._sock is not None:
            try:
                self._sock.close()
            except OSError:
                pass
            self._sock = None

    def step(
        self,
        step: int,
        loss: float,
        tokens: int,
        grad_norm: float | None = None,
        samples: int | None = None,
        data_s: float | None = None,
        **extra: float,
    ) -> None:
        """Report one finished step. Never blocks, never raises.

        ``data_s`` is how long the step waited for its input (the dataloader's next
        batch): the agent exports it per rank, and a rise names an input-pipeline stall.

        ``extra`` values that are not numbers (``lr=sched.get_last_lr()`` is a list) are
        left out, and at most ``protocol.MAX_EXTRA_KEYS`` are sent: the agent drops a
        whole datagram with a bad extra, which would lose the step itself.
        """
        if not self.enabled:
            return
        if self._sock is None and time.monotonic() < self._next_try:
            self.dropped += 1  # agent away and not due for a retry: skip the encoding
            return
        try:
            if data_s is not None:
                extra = {**extra, protocol.EXTRA_DATA_S: data_s}
            if extra:
                extra = _numbers(extra)
            told = None
            if self.dropped != self._dropped_told:
                # Tell the agent about reports lost on this side (agent away, queue full).
                told = self.dropped
                extra = {**extra, protocol.EXTRA_REPORTER_DROPPED: float(told)}
            data = protocol.encode_step(
                self._step_prefix,
                step,
                loss,
                tokens,
                grad_norm,
                samples,
                time.time(),
                extra or None,
            )
        except Exception:  # noqa: BLE001 - a bad value must not reach the training loop
            self.dropped += 1
            return
        if len(data) > protocol.MAX_DATAGRAM_BYTES:
            self.dropped += 1
            return
        sent_before = self.sent
        self._send(data)
        if told is not None and self.sent > sent_before:
            self._dropped_told = told

    def event(self, kind: str, **fields: Any) -> None:
        """Report an event (``rollback_done``, ``checkpoint_saved``, ...). Never raises."""
        if not self.enabled:
            return
        try:
            clean = {
                k: (None if isinstance(v, float) and not math.isfinite(v) else v)
                for k, v in fields.items()
            }
            data = protocol.encode_event(self._event_prefix, kind, time.time(), clean)
        except Exception:  # noqa: BLE001
            self.dropped += 1
            return
        if len(data) > protocol.MAX_DATAGRAM_BYTES:
            self.dropped += 1
            return
        self._send(data)

    def finish(self, **fields: Any) -> None:
        """Tell the agent this rank ended on purpose (no stalled-job or drop alerts)."""
        self.event(protocol.EVENT_FINISHED, **fields)

    def close(self) -> None:
        """Close the socket (the Reporter may be used again; it reconnects)."""
        self._close_socket()

    def __enter__(self) -> Reporter:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()
