"""Training-job metrics from the step datagrams of ``sentinel.train.Reporter``.

Reports arrive on a Unix datagram socket (and optionally localhost UDP). A reader
thread per socket decodes them into a bounded :class:`~sentinel.agent.steps.StepStore`;
the kernel receive buffer (``SO_RCVBUF``) is the only queue, so a burst the agent
cannot keep up with is dropped by the kernel (the Reporter counts EAGAIN on the Unix
socket; UDP overflows are read back through ``SO_RXQ_OVFL`` as ``queue_full``).

Each Unix datagram comes with its sender's kernel credentials (``SO_PASSCRED``): the
uid must pass ``agent.report_allow_uids/groups`` when set, and the store keeps each
job to the uid that started it. The socket itself is ``agent.socket_mode`` (0660) in
``agent.socket_group``. No datagram can stop a reader: decode errors are drops by
reason, and anything unexpected is counted as ``internal_error`` and logged at most
once a minute.
"""

from __future__ import annotations

import contextlib
import grp
import logging
import math
import os
import socket
import stat
import struct
import threading
from pathlib import Path

from sentinel import protocol
from sentinel.agent.collectors.base import Collector, Context
from sentinel.agent.config import DEFAULT_SOCKET_GROUP, parse_mode
from sentinel.agent.senders import CRED_SPACE, SenderPolicy, credentials, resolve_group
from sentinel.agent.steps import STEP_DURATION_BUCKETS, UDP, RankState, StepStore
from sentinel.exposition import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    LabelSet,
    MetricFamily,
    Sample,
)
from sentinel.ratelog import LogLimiter

log = logging.getLogger(__name__)

# Linux's SO_RXQ_OVFL (asm-generic/socket.h); Python's socket module lacks the name.
SO_RXQ_OVFL = getattr(socket, "SO_RXQ_OVFL", 40)
# How often a reader wakes to check for shutdown.
READ_TIMEOUT_S = 0.2
# An unexpected error (a bug) is logged with its traceback at most this often.
ERROR_LOG_INTERVAL_S = 60.0


class _Reader:
    """Read datagrams from one socket in a thread until stopped."""

    def __init__(self, sock: socket.socket, store: StepStore, name: str, *, creds: bool,
                 ovfl: bool, policy: SenderPolicy | None = None) -> None:
        self.sock = sock
        self.store = store
        self.creds = creds
        self.ovfl = ovfl
        self.policy = policy
        self._last_ovfl = 0
        self._errors = LogLimiter(log, ERROR_LOG_INTERVAL_S)
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name=f"sentinel-{name}", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def _run(self) -> None:
        bufsize = protocol.MAX_DATAGRAM_BYTES + 1  # one byte more reveals "too large"
        ancsize = CRED_SPACE if self.creds else socket.CMSG_SPACE(4)
        while not self._stop.is_set():
            try:
                data, anc, _flags, _addr = self.sock.recvmsg(bufsize, ancsize)
            except TimeoutError:
                continue
            except OSError as e:
                if self._stop.is_set():
                    break
                log.warning("report socket: %s", e)
                self._stop.wait(READ_TIMEOUT_S)
                continue
            try:
                self.handle(data, anc)
            except Exception as e:  # noqa: BLE001 - no datagram may kill the reader
                self.store.drop("internal_error", detail=f"{type(e).__name__}: {e}")
                self._errors.log(logging.ERROR, "internal_error",
                                 "unexpected error handling a report datagram (a bug: "
                                 "please report it)", exc_info=True)

    def handle(self, data: bytes, anc: list[tuple[int, int, bytes]]) -> None:
        """Check the sender, decode and store one datagram, counting a drop by reason."""
        if self.ovfl:
            self._overflow(anc)
        uid = UDP
        if self.creds:
            cred = credentials(anc)
            if cred is None:
                self.store.drop("no_credentials", detail="a datagram came without "
                                "SCM_CREDENTIALS although SO_PASSCRED is set")
                return
            if self.policy is not None and not self.policy.allows(cred):
                self.store.drop("not_allowed", detail=f"uid {cred.uid} (gid {cred.gid}, pid "
                                f"{cred.pid}) is not in agent.report_allow_uids/groups")
                return
            uid = cred.uid
        try:
            report = protocol.decode(data)
        except protocol.DatagramError as e:
            self.store.drop(e.reason, detail=e.detail)
            return
        self.store.add(report, uid)

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


def _bind_unix(path: str, rcvbuf: int, mode: int, group: str) -> socket.socket:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        if not stat.S_ISSOCK(p.lstat().st_mode):
            raise OSError(f"{path} exists and is not a socket; refusing to replace it")
        p.unlink()  # a stale socket from a previous agent
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)  # the sender's uid per datagram
        s.bind(path)
        _set_group(path, group)
        # bind() made it 0777 & ~umask; connecting needs write permission, so until this
        # chmod nobody but the agent's user could send (with the unit's UMask, not even
        # its group).
        os.chmod(path, mode)
    except OSError:
        s.close()
        raise
    _warn_if_nobody_can_report(path, mode)
    s.settimeout(READ_TIMEOUT_S)
    return s


def _set_group(path: str, group: str) -> None:
    """Give the socket ``group``; '' = DEFAULT_SOCKET_GROUP when it exists and may be used."""
    if group:
        try:
            os.chown(path, -1, resolve_group("agent.socket_group", group))
        except PermissionError as e:
            raise OSError(f"agent.socket_group: cannot give {path} the group {group!r} ({e}): "
                          "only root or a member of the group can; under systemd leave it "
                          "'' and set Group= in the unit") from None
        return
    try:
        gid = grp.getgrnam(DEFAULT_SOCKET_GROUP).gr_gid
    except KeyError:
        return  # no such group: the agent's own group (the start-up warning says more)
    if gid == os.stat(path).st_gid:
        return  # the unit's Group= did it already
    try:
        os.chown(path, -1, gid)
    except PermissionError:
        log.warning("report socket %s: cannot give it the group %s (only root or a member "
                    "can); it keeps the agent's own group", path, DEFAULT_SOCKET_GROUP)


def _warn_if_nobody_can_report(path: str, mode: int) -> None:
    """Warn when the socket's group has no members and others may not write to it."""
    if mode & 0o002:
        return
    gid = os.stat(path).st_gid
    try:
        g = grp.getgrgid(gid)
        name, members = g.gr_name, g.gr_mem
    except KeyError:
        name, members = str(gid), []
    if not members:
        log.warning(
            "report socket %s is mode %04o with group %s, which has no members: only root "
            "and users whose primary group it is can report. Add the users who run training "
            "to it (usermod -aG %s USER), or set agent.socket_mode: '0666' (reports are still "
            "checked by uid)", path, mode, name, name)


def _bind_udp(host: str, port: int, rcvbuf: int) -> socket.socket:
    s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    with contextlib.suppress(OSError):
        s.setsockopt(socket.SOL_SOCKET, SO_RXQ_OVFL, 1)
    s.bind((host, port))
    s.settimeout(READ_TIMEOUT_S)
    return s


class _Families:
    """The training families, filled in rank by rank (reset before each collect)."""

    def __init__(self) -> None:
        lab = ["job", "rank", "hostname"]
        self.step = GaugeMetricFamily("sentinel_train_step", "Last reported step.", labels=lab)
        self.loss = GaugeMetricFamily(
            "sentinel_train_loss", "Last reported loss (NaN is exported as NaN).", labels=lab
        )
        # VictoriaMetrics drops NaN samples at ingestion, so a NaN loss never reaches a
        # fleet's global store: this flag does (docs/SCALE.md).
        self.loss_finite = GaugeMetricFamily(
            "sentinel_train_loss_finite",
            "1 if the last reported loss is finite, 0 if it is NaN or infinite.", labels=lab
        )
        self.gnorm = GaugeMetricFamily(
            "sentinel_train_grad_norm", "Last reported gradient norm.", labels=lab
        )
        self.tokens = CounterMetricFamily("sentinel_train_tokens", "Tokens processed.",
                                          labels=lab)
        self.samples = CounterMetricFamily("sentinel_train_samples", "Samples processed.",
                                           labels=lab)
        self.tps = GaugeMetricFamily(
            "sentinel_train_tokens_per_second",
            "Tokens per second over the agent's rate window.",
            labels=lab,
        )
        self.hist = HistogramMetricFamily(
            "sentinel_train_step_duration_seconds",
            "Time between consecutive step reports of a rank.",
            labels=lab,
        )
        self.age = GaugeMetricFamily(
            "sentinel_train_seconds_since_last_report", "Age of the last report.", labels=lab
        )
        self.events = CounterMetricFamily(
            "sentinel_train_events", "Events reported by the job.", labels=[*lab, "kind"]
        )
        self.job_info = GaugeMetricFamily(
            "sentinel_train_job_info", "A training job on this node.",
            labels=["job", "hostname", "ranks"],
        )
        self.rank_info = GaugeMetricFamily(
            "sentinel_train_rank_info",
            "Joins a job's rank to its process and GPU.",
            labels=["job", "rank", "pid", "UUID", "hostname"],
        )
        self.received = CounterMetricFamily(
            "sentinel_train_datagrams_received",
            "Step and event datagrams accepted.",
        )
        self.dropped = CounterMetricFamily(
            "sentinel_train_datagrams_dropped", "Datagrams dropped, by reason.",
            labels=["reason"],
        )
        self.data_wait = CounterMetricFamily(
            "sentinel_train_data_wait_seconds",
            "Seconds the rank's steps waited for their input (Reporter.step(data_s=)).",
            labels=lab,
        )
        self.data_wait_steps = CounterMetricFamily(
            "sentinel_train_data_wait_steps",
            "Steps that reported their input wait (the denominator of the mean wait).",
            labels=lab,
        )
        self.rep_dropped = CounterMetricFamily(
            "sentinel_train_reporter_dropped",
            "Reports the job's Reporter dropped on its side (agent away, socket queue full).",
            labels=lab,
        )

    def all(self) -> list[MetricFamily]:
        """Return the families in exposition order."""
        return [self.job_info, self.rank_info, self.step, self.loss, self.loss_finite,
                self.gnorm, self.tokens,
                self.samples, self.tps, self.hist, self.data_wait, self.data_wait_steps,
                self.age, self.events, self.received, self.dropped, self.rep_dropped]

    def add_rank(self, rl: _RankLabels, st: RankState, now: float, tps: float | None) -> None:
        """Add one rank's series under its label sets, ``tps`` None if finished."""
        job, rank, host = rl.values
        lab = rl.base
        self.rank_info.add_metric([job, rank, str(st.pid), st.gpu_uuid, host], 1.0)
        if st.finished_at is None:  # a finished rank has no age to alert on
            self.age.samples.append(Sample(self.age.name, lab, max(0.0, now - st.last_seen)))
        for kind, n in sorted(st.events.items()):
            self.events.samples.append(Sample(self.events.name, rl.kind(kind), float(n)))
        self.rep_dropped.samples.append(Sample(
            self.rep_dropped.name, lab,
            float(st.reporter_dropped_base + st.reporter_dropped_last)))
        if st.step < 0:
            return  # only events so far
        series: list[tuple[MetricFamily, float]] = [
            (self.step, float(st.step)), (self.loss, st.loss),
            (self.loss_finite, 1.0 if math.isfinite(st.loss) else 0.0)]
        if st.grad_norm is not None:
            series.append((self.gnorm, st.grad_norm))
        series += [(self.tokens, float(st.tokens_total)), (self.samples, float(st.samples_total))]
        if tps is not None:  # nor a throughput that fell to zero
            series.append((self.tps, tps))
        for fam, v in series:
            fam.samples.append(Sample(fam.name, lab, v))
        hist = self.hist.samples
        name = self.hist.name + "_bucket"
        acc = 0
        for le_labels, n in zip(rl.buckets, st.bucket_counts, strict=True):
            acc += n
            hist.append(Sample(name, le_labels, float(acc)))
        hist.append(Sample(self.hist.name + "_count", lab, float(acc)))
        hist.append(Sample(self.hist.name + "_sum", lab, st.duration_sum))
        if st.data_wait_steps:  # only jobs that report it
            self.data_wait.samples.append(Sample(self.data_wait.name, lab, st.data_wait_sum))
            self.data_wait_steps.samples.append(
                Sample(self.data_wait_steps.name, lab, float(st.data_wait_steps)))


# The step-time histogram's ``le`` values, as written (the last bucket is +Inf).
_BUCKET_LES = (*(repr(b) for b in STEP_DURATION_BUCKETS), "+Inf")
# Ranks whose label sets are kept from scrape to scrape (a node runs one rank per GPU);
# past this, a rank's are built for the scrape and dropped (~350 bytes each set).
MAX_CACHED_RANKS = 256


class _RankLabels:
    """One rank's label sets (job, rank, hostname; with ``le``; with ``kind``), built once.

    Their series keep their labels from scrape to scrape, so as
    :class:`~sentinel.exposition.LabelSet` they are built and formatted once, not per
    sample per scrape (a rank has ~30 series, 17 of them its histogram's). Event kinds
    are bounded per rank by the store (``MAX_EVENT_KINDS``).
    """

    __slots__ = ("values", "base", "buckets", "_kinds")

    def __init__(self, job: str, rank: str, host: str) -> None:
        self.values = (job, rank, host)
        self.base = LabelSet([("job", job), ("rank", rank), ("hostname", host)])
        self.buckets = [LabelSet([*self.base.items(), ("le", le)]) for le in _BUCKET_LES]
        self._kinds: dict[str, LabelSet] = {}

    def kind(self, kind: str) -> LabelSet:
        """Return the rank's labels with ``kind``."""
        ls = self._kinds.get(kind)
        if ls is None:
            ls = self._kinds[kind] = LabelSet([*self.base.items(), ("kind", kind)])
        return ls


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
            max_jobs_per_uid=c.max_jobs_per_uid,
            rate_window=c.rate_window_seconds,
            expiry=c.job_expiry_seconds,
            monotonic=ctx.monotonic,
        )
        self.readers: list[_Reader] = []
        self.socket_path = c.socket
        self._rank_labels: dict[tuple[str, str, str], _RankLabels] = {}
        # The families, built once and reset at every collect (one collect at a time).
        self._fams = _Families()

    def start(self) -> None:
        """Bind the report sockets and start their reader threads."""
        c = self.ctx.config
        if c.socket:
            policy = SenderPolicy.from_config(c.report_allow_uids, c.report_allow_groups)
            s = _bind_unix(c.socket, c.socket_rcvbuf_bytes,
                           parse_mode("agent.socket_mode", c.socket_mode), c.socket_group)
            self.readers.append(_Reader(s, self.store, "unix", creds=True, ovfl=False,
                                        policy=policy))
        udp = c.udp()
        if udp:
            s = _bind_udp(udp[0], udp[1], c.socket_rcvbuf_bytes)
            self.readers.append(_Reader(s, self.store, "udp", creds=False, ovfl=True))
        for r in self.readers:
            r.start()

    def healthy(self) -> bool:
        """Return True while every reader thread runs."""
        return all(r.thread.is_alive() for r in self.readers)

    def collect(self) -> list[MetricFamily]:
        """Build the training families from the store."""
        host = self.ctx.hostname
        now = self.ctx.monotonic()
        self.store.expire()
        f = self._fams
        for fam in f.all():
            fam.reset()
        cached = self._rank_labels
        kept: dict[tuple[str, str, str], _RankLabels] = {}
        with self.store.lock:
            for job_name, job in sorted(self.store.jobs.items()):
                f.job_info.add_metric([job_name, host, str(len(job.ranks))], 1.0)
                for r, st in sorted(job.ranks.items()):
                    tps = None if st.finished_at is not None else (
                        self.store.tokens_per_second(st, now))
                    key = (job_name, str(r), host)
                    rl = cached.get(key) or _RankLabels(*key)
                    if len(kept) < MAX_CACHED_RANKS:
                        kept[key] = rl
                    f.add_rank(rl, st, now, tps)
            f.received.add_metric([], float(self.store.received))
            for reason, n in sorted(self.store.dropped.items()):
                f.dropped.add_metric([reason], float(n))
        self._rank_labels = kept  # the ranks gone (expired jobs) are dropped
        return f.all()

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

