"""Training-job metrics from the step datagrams of ``sentinel.train.Reporter``.

Reports arrive on a Unix datagram socket (and optionally localhost UDP). A reader
thread per socket decodes them into a bounded :class:`~sentinel.agent.steps.StepStore`;
the kernel receive buffer (``SO_RCVBUF``) is the only queue, so a burst the agent
cannot keep up with is dropped by the kernel (the Reporter counts EAGAIN on the Unix
socket; UDP overflows are read back through ``SO_RXQ_OVFL`` as ``queue_full``).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import socket
import stat
import struct
import threading
from pathlib import Path

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from sentinel import protocol
from sentinel.agent.collectors.base import Collector, Context
from sentinel.agent.steps import STEP_DURATION_BUCKETS, StepStore

log = logging.getLogger(__name__)

# Linux's SO_RXQ_OVFL (asm-generic/socket.h); Python's socket module lacks the name.
SO_RXQ_OVFL = getattr(socket, "SO_RXQ_OVFL", 40)
# How often a reader wakes to check for shutdown.
READ_TIMEOUT_S = 0.2


class _Reader:
    """Read datagrams from one socket in a thread until stopped."""

    def __init__(self, sock: socket.socket, store: StepStore, name: str, ovfl: bool) -> None:
        self.sock = sock
        self.store = store
        self.ovfl = ovfl
        self._last_ovfl = 0
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name=f"sentinel-{name}", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def _run(self) -> None:
        bufsize = protocol.MAX_DATAGRAM_BYTES + 1  # one byte more reveals "too large"
        ancsize = socket.CMSG_SPACE(4)
        while not self._stop.is_set():
            try:
                if self.ovfl:
                    data, anc, _flags, _addr = self.sock.recvmsg(bufsize, ancsize)
                    self._overflow(anc)
                else:
                    data = self.sock.recv(bufsize)
            except TimeoutError:
                continue
            except OSError as e:
                if self._stop.is_set():
                    break
                log.warning("report socket: %s", e)
                self._stop.wait(READ_TIMEOUT_S)
                continue
            self.handle(data)

    def handle(self, data: bytes) -> None:
        """Decode and store one datagram, counting a drop by reason."""
        try:
            report = protocol.decode(data)
        except protocol.DatagramError as e:
            self.store.drop(e.reason)
            return
        except Exception:  # noqa: BLE001 - no datagram may kill the reader
            log.exception("unexpected error decoding a datagram")
            self.store.drop("bad_payload")
            return
        self.store.add(report)

    def _overflow(self, anc: list[tuple[int, int, bytes]]) -> None:
        for level, typ, payload in anc:
            if level == socket.SOL_SOCKET and typ == SO_RXQ_OVFL and len(payload) >= 4:
                total = struct.unpack("=I", payload[:4])[0]
                if total > self._last_ovfl:
                    self.store.drop("queue_full", total - self._last_ovfl)
                self._last_ovfl = total

    def request_stop(self) -> None:
        self._stop.set()

    def stop(self) -> None:
        self._stop.set()
        self.thread.join(2 * READ_TIMEOUT_S + 1)


def _bind_unix(path: str, rcvbuf: int) -> socket.socket:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        mode = p.lstat().st_mode
        if not stat.S_ISSOCK(mode):
            raise OSError(f"{path} exists and is not a socket; refusing to replace it")
        p.unlink()  # a stale socket from a previous agent
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.bind(path)
    # Training jobs run as other users than the agent; reports are metrics only.
    os.chmod(path, 0o666)  # noqa: S103
    s.settimeout(READ_TIMEOUT_S)
    return s


def _bind_udp(host: str, port: int, rcvbuf: int) -> socket.socket:
    s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    with contextlib.suppress(OSError):
        s.setsockopt(socket.SOL_SOCKET, SO_RXQ_OVFL, 1)
    s.bind((host, port))
    s.settimeout(READ_TIMEOUT_S)
    return s


class TrainingCollector(Collector):
    """Per job and rank: step, loss, grad norm, tokens, rates, step-time histogram."""

    name = "training"

    def __init__(self, ctx: Context) -> None:
        super().__init__(ctx)
        c = ctx.config
        self.store = StepStore(
            ring_size=c.step_ring_size,
            max_jobs=c.max_jobs,
            max_ranks=c.max_ranks_per_job,
            rate_window=c.rate_window_seconds,
            expiry=c.job_expiry_seconds,
            monotonic=ctx.monotonic,
        )
        self.readers: list[_Reader] = []
        self.socket_path = c.socket
        self.udp_bound: tuple[str, int] | None = None

    def start(self) -> None:
        """Bind the report sockets and start their reader threads."""
        c = self.ctx.config
        if c.socket:
            s = _bind_unix(c.socket, c.socket_rcvbuf_bytes)
            self.readers.append(_Reader(s, self.store, "unix", ovfl=False))
        udp = c.udp()
        if udp:
            s = _bind_udp(udp[0], udp[1], c.socket_rcvbuf_bytes)
            self.udp_bound = s.getsockname()[:2]
            self.readers.append(_Reader(s, self.store, "udp", ovfl=True))
        for r in self.readers:
            r.start()

    def healthy(self) -> bool:
        """Return True while every reader thread runs."""
        return all(r.thread.is_alive() for r in self.readers)

    def collect(self) -> list[Metric]:  # noqa: C901 - one family after another
        """Build the training families from the store."""
        host = self.ctx.hostname
        now = self.ctx.monotonic()
        self.store.expire()
        lab = ["job", "rank", "hostname"]
        step = GaugeMetricFamily("sentinel_train_step", "Last reported step.", labels=lab)
        loss = GaugeMetricFamily(
            "sentinel_train_loss", "Last reported loss (NaN is exported as NaN).", labels=lab
        )
        # VictoriaMetrics drops NaN samples at ingestion, so a NaN loss never reaches a
        # fleet's global store: this flag does (docs/SCALE.md).
        loss_finite = GaugeMetricFamily(
            "sentinel_train_loss_finite",
            "1 if the last reported loss is finite, 0 if it is NaN or infinite.", labels=lab
        )
        gnorm = GaugeMetricFamily(
            "sentinel_train_grad_norm", "Last reported gradient norm.", labels=lab
        )
        tokens = CounterMetricFamily("sentinel_train_tokens", "Tokens processed.", labels=lab)
        samples = CounterMetricFamily("sentinel_train_samples", "Samples processed.", labels=lab)
        tps = GaugeMetricFamily(
            "sentinel_train_tokens_per_second",
            "Tokens per second over the agent's rate window.",
            labels=lab,
        )
        hist = HistogramMetricFamily(
            "sentinel_train_step_duration_seconds",
            "Time between consecutive step reports of a rank.",
            labels=lab,
        )
        age = GaugeMetricFamily(
            "sentinel_train_seconds_since_last_report", "Age of the last report.", labels=lab
        )
        events = CounterMetricFamily(
            "sentinel_train_events", "Events reported by the job.", labels=[*lab, "kind"]
        )
        job_info = GaugeMetricFamily(
            "sentinel_train_job_info", "A training job on this node.",
            labels=["job", "hostname", "ranks"],
        )
        rank_info = GaugeMetricFamily(
            "sentinel_train_rank_info",
            "Joins a job's rank to its process and GPU.",
            labels=["job", "rank", "pid", "UUID", "hostname"],
        )
        received = CounterMetricFamily(
            "sentinel_train_datagrams_received",
            "Step and event datagrams accepted.",
        )
        dropped = CounterMetricFamily(
            "sentinel_train_datagrams_dropped", "Datagrams dropped, by reason.", labels=["reason"]
        )
        rep_dropped = CounterMetricFamily(
            "sentinel_train_reporter_dropped",
            "Reports the job's Reporter dropped on its side (agent away, socket queue full).",
            labels=lab,
        )
        with self.store.lock:
            for job_name, job in sorted(self.store.jobs.items()):
                job_info.add_metric([job_name, host, str(len(job.ranks))], 1.0)
                for r, st in sorted(job.ranks.items()):
                    lv = [job_name, str(r), host]
                    rank_info.add_metric([job_name, str(r), str(st.pid), st.gpu_uuid, host], 1.0)
                    if st.finished_at is None:  # a finished rank has no age to alert on
                        age.add_metric(lv, max(0.0, now - st.last_seen))
                    for kind, n in sorted(st.events.items()):
                        events.add_metric([*lv, kind], float(n))
                    rep_dropped.add_metric(
                        lv, float(st.reporter_dropped_base + st.reporter_dropped_last)
                    )
                    if st.step < 0:
                        continue  # only events so far
                    step.add_metric(lv, float(st.step))
                    loss.add_metric(lv, st.loss)
                    loss_finite.add_metric(lv, 1.0 if math.isfinite(st.loss) else 0.0)
                    if st.grad_norm is not None:
                        gnorm.add_metric(lv, st.grad_norm)
                    tokens.add_metric(lv, float(st.tokens_total))
                    samples.add_metric(lv, float(st.samples_total))
                    if st.finished_at is None:  # nor a throughput that fell to zero
                        tps.add_metric(lv, self.store.tokens_per_second(st, now))
                    buckets: list[tuple[str, float]] = []
                    acc = 0
                    for bound, n in zip(STEP_DURATION_BUCKETS, st.bucket_counts, strict=False):
                        acc += n
                        buckets.append((repr(bound), float(acc)))
                    buckets.append(("+Inf", float(acc + st.bucket_counts[-1])))
                    hist.add_metric(lv, buckets, st.duration_sum)
            received.add_metric([], float(self.store.received))
            for reason, n in sorted(self.store.dropped.items()):
                dropped.add_metric([reason], float(n))
        return [job_info, rank_info, step, loss, loss_finite, gnorm, tokens, samples, tps,
                hist, age, events, received, dropped, rep_dropped]

    def close(self) -> None:
        """Stop the readers, close the sockets and remove the Unix socket file."""
        for r in self.readers:
            r.request_stop()  # all at once, so shutdown waits one timeout, not one each
        for r in self.readers:
            r.stop()
            r.sock.close()
        self.readers = []
        if self.socket_path:
            with contextlib.suppress(OSError):
                if stat.S_ISSOCK(os.lstat(self.socket_path).st_mode):
                    os.unlink(self.socket_path)


def finite_or_text(v: float | None) -> float | str | None:
    """Return v, or "NaN"/"Infinity"/"-Infinity" for the JSON step stream."""
    if v is None or math.isfinite(v):
        return v
    if math.isnan(v):
        return "NaN"
    return "Infinity" if v > 0 else "-Infinity"
