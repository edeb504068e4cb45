"""A bounded on-disk outbox (SQLite) so Slack messages survive an outage and a restart.

Each message has an idempotency key (UNIQUE): putting the same key twice queues it
once. A message is marked ``sent`` only after Slack accepted it; one being sent is
marked ``sending`` first, so a process killed mid-request finds it on restart and can
check whether Slack already has it before sending again (see ``slack.Notifier``).

Bounded: at most ``max_pending`` messages wait. When the queue is full the OLDEST
waiting message is dropped (its news is the stalest), logged with its incident and
title, and counted in ``dropped_full``. Sent rows are kept only as long as needed for
deduplication and thread bookkeeping (the newest ``max_pending``).

Private: the directory is created 0700 and the database (with its -wal and -shm files,
which SQLite creates with the database's mode) is 0600, whatever the umask; an older,
looser file is tightened. A file that is not a sound outbox raises :class:`OutboxError`
saying to move it aside.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import stat
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from sentinel.config import ConfigError

log = logging.getLogger(__name__)

DB_NAME = "outbox.sqlite3"
# Messages hold incident details; only sentinel's user reads them.
DIR_MODE = 0o700
FILE_MODE = 0o600
COLUMNS = ("id", "key", "incident", "kind", "title", "body", "digest", "created", "state",
           "attempts", "next_attempt", "last_error", "sent_at", "slack_ts")
STATES = ("pending", "sending", "sent", "dead")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    key TEXT NOT NULL UNIQUE,
    incident TEXT NOT NULL,
    kind TEXT NOT NULL,
    title TEXT NOT NULL,
    body TEXT NOT NULL,
    digest TEXT NOT NULL,
    created REAL NOT NULL,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt REAL NOT NULL DEFAULT 0,
    last_error TEXT,
    sent_at REAL,
    slack_ts TEXT
);
CREATE INDEX IF NOT EXISTS outbox_state ON outbox (state, id);
CREATE INDEX IF NOT EXISTS outbox_incident ON outbox (incident, id);
CREATE TABLE IF NOT EXISTS threads (
    incident TEXT PRIMARY KEY,
    channel TEXT NOT NULL,
    ts TEXT NOT NULL,
    opened REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""

COUNTERS = ("queued", "sent", "deduplicated", "duplicate_key", "dropped_full", "dead", "retried")


class OutboxError(ConfigError):
    """The outbox cannot be created or opened; the message says what to do."""


def _private_file(path: Path) -> None:
    """Create ``path`` (and tighten it and its -wal/-shm files) to FILE_MODE."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, FILE_MODE)
    try:
        if stat.S_IMODE(os.fstat(fd).st_mode) != FILE_MODE:
            log.warning("notify outbox %s was readable by others; setting mode 600", path)
            os.fchmod(fd, FILE_MODE)
    finally:
        os.close(fd)
    for suffix in ("-wal", "-shm"):
        side = path.with_name(path.name + suffix)
        with contextlib.suppress(FileNotFoundError):
            if stat.S_IMODE(side.lstat().st_mode) != FILE_MODE:
                os.chmod(side, FILE_MODE)


@dataclass
class Row:
    """One queued message."""

    id: int
    key: str
    incident: str
    kind: str
    title: str
    body: str
    created: float
    state: str
    attempts: int
    next_attempt: float


class Outbox:
    """The on-disk queue of Slack messages. Safe to share between threads."""

    def __init__(
        self,
        directory: str | Path,
        max_pending: int = 1000,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if max_pending < 1:
            raise ValueError(f"max_pending must be >= 1, got {max_pending}")
        self.directory = Path(directory)
        self.path = self.directory / DB_NAME
        self.max_pending = max_pending
        self.clock = clock
        self._lock = threading.Lock()
        try:
            self.directory.mkdir(parents=True, exist_ok=True, mode=DIR_MODE)
            _private_file(self.path)
        except OSError as e:
            raise OutboxError(
                f"notify.queue_dir {self.directory}: cannot create the outbox {self.path} "
                f"({e.strerror or e}); valid: a directory sentinel's user may create and write"
            ) from None
        self._db = self._open()

    def _open(self) -> sqlite3.Connection:
        """Connect and check the database is a sound outbox, or raise OutboxError."""
        db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            # FULL: a message we told the caller is queued must be on disk after power loss.
            db.execute("PRAGMA synchronous=FULL")
            if db.execute("PRAGMA quick_check(1)").fetchone()[0] != "ok":
                raise sqlite3.DatabaseError("quick_check found damage")
            db.executescript(_SCHEMA)
            cols = tuple(r[1] for r in db.execute("PRAGMA table_info(outbox)"))
            if cols != COLUMNS:
                raise sqlite3.DatabaseError(f"table outbox has columns {cols}, not {COLUMNS}")
        except sqlite3.OperationalError as e:
            db.close()
            if "locked" in str(e) or "readonly" in str(e) or "unable to open" in str(e):
                raise OutboxError(f"notify outbox {self.path}: cannot use it ({e}); check "
                                  "that sentinel's user may write it and its directory") from None
            raise self._damaged(e) from None
        except sqlite3.DatabaseError as e:
            db.close()
            raise self._damaged(e) from None
        _private_file(self.path)  # the -wal/-shm files exist now
        return db

    def _damaged(self, e: Exception) -> OutboxError:
        p = self.path
        return OutboxError(
            f"notify outbox {p} is damaged or not a sentinel outbox ({e}); move it aside "
            f"(`mv {p} {p}.damaged`, and its -wal and -shm files if present) and sentinel "
            f"starts an empty one; the messages it held are not sent (`sqlite3 {p} .recover` "
            "may save them)")

    @contextlib.contextmanager
    def _tx(self) -> Iterator[None]:
        """Run a block as one transaction (committed on success, rolled back on error)."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def close(self) -> None:
        """Close the database."""
        with self._lock:
            self._db.close()

    # -- writing ----------------------------------------------------------------------

    def put(
        self,
        *,
        key: str,
        incident: str,
        kind: str,
        title: str,
        body: str,
        digest: str,
        dedupe_window_s: float,
    ) -> str:
        """Queue a message; return ``queued``, ``duplicate_key`` or ``deduplicated``.

        Deduplicated: the incident's previous message (not dead) has the same digest and
        is younger than ``dedupe_window_s``: the reader would see the same news twice.
        """
        now = self.clock()
        with self._tx():
            if self._db.execute("SELECT 1 FROM outbox WHERE key = ?", (key,)).fetchone():
                self._bump("duplicate_key")
                return "duplicate_key"
            prev = self._db.execute(
                "SELECT digest, created FROM outbox WHERE incident = ? AND state != 'dead' "
                "AND kind != 'image' ORDER BY id DESC LIMIT 1",
                (incident,),
            ).fetchone()
            if (
                kind != "image"
                and prev is not None
                and prev[0] == digest
                and now - prev[1] < dedupe_window_s
            ):
                self._bump("deduplicated")
                return "deduplicated"
            self._make_room()
            self._db.execute(
                "INSERT INTO outbox (key, incident, kind, title, body, digest, created, state) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, 'pending')",
                (key, incident, kind, title, body, digest, now),
            )
            self._bump("queued")
            self._prune_sent()
            return "queued"

    def _make_room(self) -> None:
        waiting = self._db.execute(
            "SELECT COUNT(*) FROM outbox WHERE state IN ('pending', 'sending')"
        ).fetchone()[0]
        while waiting >= self.max_pending:
            oldest = self._db.execute(
                "SELECT id, key, incident, title FROM outbox WHERE state = 'pending' "
                "ORDER BY id LIMIT 1"
            ).fetchone()
            if oldest is None:
                break
            self._db.execute("DELETE FROM outbox WHERE id = ?", (oldest[0],))
            self._bump("dropped_full")
            log.warning(
                "notify queue full (%d waiting): dropped the oldest message, incident %r "
                "%r (key %s)",
                waiting,
                oldest[2],
                oldest[3],
                oldest[1],
            )
            waiting -= 1

    def _prune_sent(self) -> None:
        self._db.execute(
            "DELETE FROM outbox WHERE state IN ('sent', 'dead') AND id NOT IN "
            "(SELECT id FROM outbox WHERE state IN ('sent', 'dead') ORDER BY id DESC LIMIT ?)",
            (self.max_pending,),
        )
        self._db.execute(
            "DELETE FROM threads WHERE incident NOT IN (SELECT incident FROM outbox) "
            "AND incident NOT IN (SELECT incident FROM threads ORDER BY opened DESC LIMIT ?)",
            (self.max_pending,),
        )

    def _bump(self, name: str, n: int = 1) -> None:
        self._db.execute(
            "INSERT INTO counters (name, value) VALUES (?, ?) "
            "ON CONFLICT(name) DO UPDATE SET value = value + excluded.value",
            (name, n),
        )

    def mark_sending(self, row_id: int) -> None:
        """Record that a send is about to start (so a crash leaves a trace)."""
        with self._tx():
            self._db.execute(
                "UPDATE outbox SET state = 'sending', attempts = attempts + 1 WHERE id = ?",
                (row_id,),
            )

    def mark_sent(self, row_id: int, slack_ts: str | None) -> None:
        """Record that Slack accepted the message."""
        with self._tx():
            self._db.execute(
                "UPDATE outbox SET state = 'sent', sent_at = ?, slack_ts = ?, last_error = NULL "
                "WHERE id = ?",
                (self.clock(), slack_ts, row_id),
            )
            self._bump("sent")

    def mark_retry(self, row_id: int, delay_s: float, error: str) -> None:
        """Keep the message for a later attempt, not before ``delay_s`` from now."""
        with self._tx():
            self._db.execute(
                "UPDATE outbox SET state = 'pending', next_attempt = ?, last_error = ? "
                "WHERE id = ?",
                (self.clock() + delay_s, error[:500], row_id),
            )
            self._bump("retried")

    def mark_dead(self, row_id: int, error: str) -> None:
        """Give up on a message Slack will never accept (it is kept, and counted)."""
        with self._tx():
            self._db.execute(
                "UPDATE outbox SET state = 'dead', last_error = ? WHERE id = ?",
                (error[:500], row_id),
            )
            self._bump("dead")

    def set_thread(self, incident: str, channel: str, ts: str) -> None:
        """Remember the Slack thread of an incident."""
        with self._tx():
            self._db.execute(
                "INSERT INTO threads (incident, channel, ts, opened) VALUES (?, ?, ?, ?) "
                "ON CONFLICT(incident) DO UPDATE SET channel = excluded.channel, "
                "ts = excluded.ts, opened = excluded.opened",
                (incident, channel, ts, self.clock()),
            )

    # -- reading ----------------------------------------------------------------------

    def thread(self, incident: str) -> tuple[str, str, float] | None:
        """Return (channel, ts, opened) of the incident's thread, if it has one."""
        with self._lock:
            r = self._db.execute(
                "SELECT channel, ts, opened FROM threads WHERE incident = ?", (incident,)
            ).fetchone()
        return (str(r[0]), str(r[1]), float(r[2])) if r else None

    def waiting(self, limit: int = 1000) -> list[Row]:
        """Return pending and sending messages, oldest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT id, key, incident, kind, title, body, created, state, attempts, "
                "next_attempt FROM outbox WHERE state IN ('pending', 'sending') "
                "ORDER BY id LIMIT ?",
                (limit,),
            ).fetchall()
        return [Row(*r) for r in rows]

    def messages(self, limit: int = 1000) -> list[Row]:
        """Return the newest ``limit`` messages in any state (sent ones too), oldest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT id, key, incident, kind, title, body, created, state, attempts, "
                "next_attempt FROM outbox ORDER BY id DESC LIMIT ?",
                (limit,),
            ).fetchall()
        return [Row(*r) for r in reversed(rows)]

    def state_of(self, key: str) -> str | None:
        """Return the state of the message with this idempotency key."""
        with self._lock:
            r = self._db.execute("SELECT state FROM outbox WHERE key = ?", (key,)).fetchone()
        return str(r[0]) if r else None

    def counts(self) -> dict[str, int]:
        """Return messages per state plus the lifetime counters."""
        with self._lock:
            out = {s: 0 for s in STATES}
            for state, n in self._db.execute(
                "SELECT state, COUNT(*) FROM outbox GROUP BY state"
            ).fetchall():
                out[str(state)] = int(n)
            totals = {c: 0 for c in COUNTERS}
            for name, v in self._db.execute("SELECT name, value FROM counters").fetchall():
                totals[str(name)] = int(v)
        out.update({f"total_{k}": v for k, v in totals.items()})
        return out
