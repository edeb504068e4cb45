"""The journal: every incident, decision, action and step, in SQLite (WAL), before and after.

One file (``controller.journal``, default ``/var/lib/sentinel/controller.db``). The
controller writes an action's intent before it starts it, each step before it runs and
after it ends, and the outcome; a controller killed at any moment finds on restart
exactly which step was in flight and reconciles it with the world (see
``executor.py``). ``sentinel controller approve`` and ``reset-breaker`` write here too:
the file and its directory are root's and the ``sentinel`` group's only (mode 0660), so
only they can approve or reset.

Writes are serialised by one lock (the controller's loop and its action threads share
one connection); ``synchronous=FULL`` so a committed row survives a crash of the machine,
not only of the process. Old closed incidents, their rows and old events are pruned
after ``retention_days``.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sentinel.controller.model import (
    ACTION_FINAL,
    ACTION_UNFINISHED,
    INCIDENT_CLOSED_STATES,
    STEP_DONE,
    STEP_FAILED,
    STEP_STARTED,
    ActionRecord,
    BreakerState,
    Incident,
    StepRecord,
)
from sentinel.jsonnum import decode, dumps

SCHEMA_VERSION = 1
# Rows of a closed incident and events are kept this long (the audit trail people read).
DEFAULT_RETENTION_DAYS = 90.0
# A second writer (the CLI approving while the loop writes) waits this long for the lock.
BUSY_TIMEOUT_MS = 10_000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS incidents (
    id TEXT PRIMARY KEY, grp TEXT NOT NULL, kind TEXT NOT NULL, job TEXT, node TEXT,
    state TEXT NOT NULL, severity TEXT NOT NULL, summary TEXT NOT NULL,
    opened_at REAL NOT NULL, updated_at REAL NOT NULL, detected_at REAL, decided_at REAL,
    recovered_at REAL, closed_at REAL, finding TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS incidents_grp ON incidents (grp, state);
CREATE TABLE IF NOT EXISTS findings (
    id INTEGER PRIMARY KEY AUTOINCREMENT, incident_id TEXT NOT NULL, time REAL NOT NULL,
    key TEXT NOT NULL, finding TEXT NOT NULL, world TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS findings_incident ON findings (incident_id);
CREATE TABLE IF NOT EXISTS decisions (
    id INTEGER PRIMARY KEY AUTOINCREMENT, incident_id TEXT NOT NULL, time REAL NOT NULL,
    finding_key TEXT NOT NULL, action TEXT, mode TEXT, refusal TEXT, reason TEXT NOT NULL,
    escalate INTEGER NOT NULL, data TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS actions (
    id TEXT PRIMARY KEY, incident_id TEXT NOT NULL, action TEXT NOT NULL, mode TEXT NOT NULL,
    attempt INTEGER NOT NULL, state TEXT NOT NULL, node TEXT, job TEXT, plan TEXT NOT NULL,
    created_at REAL NOT NULL, updated_at REAL NOT NULL, started_at REAL, ended_at REAL,
    outcome TEXT NOT NULL, outcome_class TEXT, error TEXT NOT NULL, reason TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS actions_state ON actions (state);
CREATE INDEX IF NOT EXISTS actions_incident ON actions (incident_id);
CREATE TABLE IF NOT EXISTS steps (
    action_id TEXT NOT NULL, seq INTEGER NOT NULL, name TEXT NOT NULL, state TEXT NOT NULL,
    inputs TEXT NOT NULL, outcome TEXT NOT NULL, started_at REAL NOT NULL, ended_at REAL,
    error TEXT NOT NULL, PRIMARY KEY (action_id, name));
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT, time REAL NOT NULL, incident_id TEXT,
    action_id TEXT, kind TEXT NOT NULL, message TEXT NOT NULL, data TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS events_time ON events (time);
CREATE TABLE IF NOT EXISTS breaker (
    id INTEGER PRIMARY KEY CHECK (id = 1), open INTEGER NOT NULL, reason TEXT NOT NULL,
    since REAL, reset_by TEXT NOT NULL, reset_at REAL);
CREATE TABLE IF NOT EXISTS approvals (
    action_id TEXT PRIMARY KEY, by TEXT NOT NULL, time REAL NOT NULL);
CREATE TABLE IF NOT EXISTS badput (
    id INTEGER PRIMARY KEY AUTOINCREMENT, time REAL NOT NULL, job TEXT NOT NULL,
    cause TEXT NOT NULL, seconds REAL NOT NULL, incident_id TEXT, action_id TEXT,
    note TEXT NOT NULL, key TEXT UNIQUE);
CREATE TABLE IF NOT EXISTS goodput (
    job TEXT PRIMARY KEY, updated_at REAL NOT NULL, start REAL, last REAL,
    productive REAL NOT NULL, pending REAL NOT NULL, badput TEXT NOT NULL, state TEXT NOT NULL);
"""


class JournalError(RuntimeError):
    """The journal cannot be opened or read; the message says which file and why."""


def _dumps(obj: Any) -> str:
    return dumps(obj, sort_keys=True)


def _loads(text: str | None) -> Any:
    return decode(json.loads(text)) if text else {}


def new_id(prefix: str) -> str:
    """Return a short random id such as ``i-3f2a9c1b`` (incident) or ``a-...`` (action)."""
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


class Journal:
    """The controller's SQLite journal."""

    def __init__(self, path: str | os.PathLike[str], *, clock: Callable[[], float] = time.time,
                 retention_days: float = DEFAULT_RETENTION_DAYS) -> None:
        self.path = Path(path)
        self.clock = clock
        self.retention_days = retention_days
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            new = not self.path.exists()
            if new:
                # Created 0660: root and the sentinel group approve and reset, nobody else.
                # (SQLite gives its -wal and -shm files the same mode.)
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o660)
                try:
                    os.fchmod(fd, 0o660)  # the umask must not take the group's write away
                finally:
                    os.close(fd)
            self._db = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_MS / 1000,
                                       check_same_thread=False, isolation_level=None)
            self._db.row_factory = sqlite3.Row
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
            self._db.executescript(_SCHEMA)
            self._db.execute("INSERT OR IGNORE INTO meta VALUES ('schema', ?)",
                             (str(SCHEMA_VERSION),))
            self._db.execute("INSERT OR IGNORE INTO breaker VALUES (1, 0, '', NULL, '', NULL)")
        except sqlite3.Error as e:
            raise JournalError(f"journal {self.path}: cannot open it ({e})") from e
        except OSError as e:
            raise JournalError(f"journal {self.path}: cannot create it ({e.strerror or e})") from e
        row = self._db.execute("SELECT value FROM meta WHERE key='schema'").fetchone()
        if row is None or int(row["value"]) != SCHEMA_VERSION:
            raise JournalError(f"journal {self.path}: schema version {row and row['value']} "
                               f"is not {SCHEMA_VERSION} (this sentinel's); keep the file for "
                               "the record and point controller.journal at a new one")
        self._lock = threading.RLock()

    def close(self) -> None:
        """Close the database."""
        with self._lock:
            self._db.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _query(self, sql: str, args: Sequence[Any] = ()) -> list[sqlite3.Row]:
        with self._lock:
            return list(self._db.execute(sql, args).fetchall())

    # -- incidents -------------------------------------------------------------------

    @staticmethod
    def _incident(r: sqlite3.Row) -> Incident:
        return Incident(
            id=r["id"], group=r["grp"], kind=r["kind"], job=r["job"], node=r["node"],
            state=r["state"], severity=r["severity"], summary=r["summary"],
            opened_at=r["opened_at"], updated_at=r["updated_at"], detected_at=r["detected_at"],
            decided_at=r["decided_at"], recovered_at=r["recovered_at"],
            closed_at=r["closed_at"], finding=_loads(r["finding"]),
        )

    def open_incident_for(self, group: str) -> Incident | None:
        """Return the open incident of ``group``, if there is one."""
        marks = ",".join("?" * len(INCIDENT_CLOSED_STATES))
        rows = self._query(f"SELECT * FROM incidents WHERE grp=? AND state NOT IN ({marks}) "
                           "ORDER BY opened_at DESC LIMIT 1", (group, *INCIDENT_CLOSED_STATES))
        return self._incident(rows[0]) if rows else None

    def open_incident(self, group: str, finding: dict[str, Any], now: float | None = None
                      ) -> Incident:
        """Open a new incident for ``group`` from a finding (as ``Finding.to_dict``)."""
        now = self.clock() if now is None else now
        inc = Incident(
            id=new_id("i"), group=group, kind=str(finding.get("kind", "")),
            job=finding.get("job"), node=finding.get("node"), state="open",
            severity=str(finding.get("severity", "warning")),
            summary=str(finding.get("summary", "")), opened_at=now, updated_at=now,
            detected_at=finding.get("time_start"), finding=dict(finding),
        )
        with self._tx() as db:
            db.execute(
                "INSERT INTO incidents (id, grp, kind, job, node, state, severity, summary, "
                "opened_at, updated_at, detected_at, finding) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                (inc.id, group, inc.kind, inc.job, inc.node, inc.state, inc.severity,
                 inc.summary, now, now, inc.detected_at, _dumps(finding)))
        return inc

    def incident(self, incident_id: str) -> Incident | None:
        """Return one incident by id."""
        rows = self._query("SELECT * FROM incidents WHERE id=?", (incident_id,))
        return self._incident(rows[0]) if rows else None

    def incidents(self, *, open_only: bool = False, since: float | None = None,
                  limit: int = 1000, job: str | None = None) -> list[Incident]:
        """Return incidents, newest first."""
        sql, args = "SELECT * FROM incidents WHERE 1=1", list[Any]()
        if job is not None:
            sql += " AND job=?"
            args.append(job)
        if open_only:
            sql += f" AND state NOT IN ({','.join('?' * len(INCIDENT_CLOSED_STATES))})"
            args += list(INCIDENT_CLOSED_STATES)
        if since is not None:
            sql += " AND updated_at >= ?"
            args.append(since)
        sql += " ORDER BY opened_at DESC LIMIT ?"
        args.append(limit)
        return [self._incident(r) for r in self._query(sql, args)]

    _INCIDENT_FIELDS = ("state", "severity", "summary", "detected_at", "decided_at",
                        "recovered_at", "closed_at", "finding")

    def update_incident(self, incident_id: str, now: float | None = None, **fields: Any) -> None:
        """Set fields of an incident (``state``, ``summary``, ``finding``, timestamps...)."""
        now = self.clock() if now is None else now
        for k in fields:
            if k not in self._INCIDENT_FIELDS:
                valid = ", ".join(self._INCIDENT_FIELDS)
                raise ValueError(f"incident field {k!r} (valid: {valid})")
        if fields.get("state") in INCIDENT_CLOSED_STATES and "closed_at" not in fields:
            fields["closed_at"] = now
        cols = ", ".join(f"{k}=?" for k in fields)
        vals = [_dumps(v) if k == "finding" else v for k, v in fields.items()]
        with self._tx() as db:
            db.execute(f"UPDATE incidents SET {cols}, updated_at=? WHERE id=?",
                       (*vals, now, incident_id))

    def record_finding(self, incident_id: str, finding: dict[str, Any], world: dict[str, Any],
                       now: float | None = None) -> None:
        """Keep a finding as it reached the policy, with the world it was judged in (replay)."""
        now = self.clock() if now is None else now
        with self._tx() as db:
            db.execute("INSERT INTO findings (incident_id, time, key, finding, world) "
                       "VALUES (?,?,?,?,?)", (incident_id, now, str(finding.get("key", "")),
                                              _dumps(finding), _dumps(world)))

    def findings(self, since: float | None = None) -> list[dict[str, Any]]:
        """Return recorded findings, oldest first: {time, incident, finding, world}."""
        rows = self._query("SELECT * FROM findings WHERE time >= ? ORDER BY id",
                           (since if since is not None else 0.0,))
        return [{"time": r["time"], "incident": r["incident_id"],
                 "finding": _loads(r["finding"]), "world": _loads(r["world"])} for r in rows]

    def last_finding(self, key: str) -> tuple[str, dict[str, Any]] | None:
        """Return (incident id, finding) of the newest recorded finding with this key."""
        rows = self._query("SELECT incident_id, finding FROM findings WHERE key=? "
                           "ORDER BY id DESC LIMIT 1", (key,))
        return (rows[0]["incident_id"], _loads(rows[0]["finding"])) if rows else None

    def firing_keys(self, incident_id: str) -> set[str]:
        """Return the keys of an incident's findings whose newest record is firing."""
        rows = self._query("SELECT key, finding FROM findings WHERE id IN (SELECT MAX(id) "
                           "FROM findings WHERE incident_id=? GROUP BY key)", (incident_id,))
        return {r["key"] for r in rows if _loads(r["finding"]).get("state") == "firing"}

    def latest_world(self) -> tuple[float, dict[str, Any]] | None:
        """Return (time, world) of the newest recorded finding: what the world said last."""
        rows = self._query("SELECT time, world FROM findings ORDER BY id DESC LIMIT 1")
        return (float(rows[0]["time"]), dict(_loads(rows[0]["world"]))) if rows else None

    def record_decision(self, incident_id: str, finding_key: str, decision: dict[str, Any],
                        now: float | None = None) -> None:
        """Keep a policy decision (what, mode, refusal, why)."""
        now = self.clock() if now is None else now
        with self._tx() as db:
            db.execute(
                "INSERT INTO decisions (incident_id, time, finding_key, action, mode, refusal, "
                "reason, escalate, data) VALUES (?,?,?,?,?,?,?,?,?)",
                (incident_id, now, finding_key, decision.get("action"), decision.get("mode"),
                 decision.get("refusal"), str(decision.get("reason", "")),
                 int(bool(decision.get("escalate"))), _dumps(decision)))

    def decisions(self, incident_id: str | None = None) -> list[dict[str, Any]]:
        """Return decisions, oldest first."""
        sql = "SELECT * FROM decisions" + (" WHERE incident_id=?" if incident_id else "")
        rows = self._query(sql + " ORDER BY id", (incident_id,) if incident_id else ())
        return [dict(_loads(r["data"]), time=r["time"], incident=r["incident_id"])
                for r in rows]

    def decisions_after(self, after_id: int, limit: int = 10_000
                        ) -> list[tuple[int, dict[str, Any]]]:
        """Return (row id, decision) of the decisions journaled after row ``after_id``."""
        rows = self._query("SELECT id, incident_id, time, data FROM decisions WHERE id > ? "
                           "ORDER BY id LIMIT ?", (after_id, limit))
        return [(int(r["id"]), dict(_loads(r["data"]), time=r["time"],
                                    incident=r["incident_id"])) for r in rows]

    def last_decision_id(self) -> int:
        """Return the row id of the newest decision (0 if none)."""
        return int(self._query("SELECT COALESCE(MAX(id), 0) AS n FROM decisions")[0]["n"])

    def incident_counts(self, *, open_only: bool = True) -> dict[tuple[str, str], int]:
        """Return the number of incidents by (kind, state)."""
        sql, args = "SELECT kind, state, COUNT(*) AS n FROM incidents", list[Any]()
        if open_only:
            sql += f" WHERE state NOT IN ({','.join('?' * len(INCIDENT_CLOSED_STATES))})"
            args += list(INCIDENT_CLOSED_STATES)
        rows = self._query(sql + " GROUP BY kind, state", args)
        return {(r["kind"], r["state"]): int(r["n"]) for r in rows}

    def action_counts(self) -> dict[tuple[str, str, str], int]:
        """Return the number of journaled actions by (action, mode, state)."""
        rows = self._query("SELECT action, mode, state, COUNT(*) AS n FROM actions "
                           "GROUP BY action, mode, state")
        return {(r["action"], r["mode"], r["state"]): int(r["n"]) for r in rows}

    # -- actions ---------------------------------------------------------------------

    @staticmethod
    def _action(r: sqlite3.Row) -> ActionRecord:
        return ActionRecord(
            id=r["id"], incident_id=r["incident_id"], action=r["action"], mode=r["mode"],
            attempt=r["attempt"], state=r["state"], node=r["node"], job=r["job"],
            plan=_loads(r["plan"]), created_at=r["created_at"], updated_at=r["updated_at"],
            started_at=r["started_at"], ended_at=r["ended_at"], outcome=_loads(r["outcome"]),
            outcome_class=r["outcome_class"], error=r["error"], reason=r["reason"],
        )

    def add_action(self, incident_id: str, action: str, mode: str, state: str, *,
                   plan: dict[str, Any], node: str | None, job: str | None, reason: str = "",
                   attempt: int | None = None, now: float | None = None) -> ActionRecord:
        """Journal an action (its intent, or its observed/awaiting plan) before anything runs."""
        now = self.clock() if now is None else now
        with self._tx() as db:
            if attempt is None:
                row = db.execute("SELECT COUNT(*) AS n FROM actions WHERE incident_id=? AND "
                                 "action=? AND mode='act'", (incident_id, action)).fetchone()
                attempt = int(row["n"]) + 1
            rec = ActionRecord(id=new_id("a"), incident_id=incident_id, action=action,
                               mode=mode, attempt=attempt, state=state, node=node, job=job,
                               plan=dict(plan), created_at=now, updated_at=now, reason=reason)
            db.execute(
                "INSERT INTO actions (id, incident_id, action, mode, attempt, state, node, job, "
                "plan, created_at, updated_at, outcome, error, reason) "
                "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (rec.id, incident_id, action, mode, attempt, state, node, job, _dumps(plan),
                 now, now, "{}", "", reason))
        return rec

    def action(self, action_id: str) -> ActionRecord | None:
        """Return one action by id."""
        rows = self._query("SELECT * FROM actions WHERE id=?", (action_id,))
        return self._action(rows[0]) if rows else None

    def find_action(self, prefix: str) -> list[ActionRecord]:
        """Return the actions whose id starts with ``prefix`` (people type short ids)."""
        esc = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        rows = self._query("SELECT * FROM actions WHERE id LIKE ? ESCAPE '\\'", (esc + "%",))
        return [self._action(r) for r in rows]

    def actions(self, *, incident_id: str | None = None, states: Sequence[str] | None = None,
                since: float | None = None, action: str | None = None,
                job: str | None = None) -> list[ActionRecord]:
        """Return actions, oldest first, filtered."""
        sql, args = "SELECT * FROM actions WHERE 1=1", list[Any]()
        if job is not None:
            sql += " AND job=?"
            args.append(job)
        if incident_id is not None:
            sql += " AND incident_id=?"
            args.append(incident_id)
        if states is not None:
            sql += f" AND state IN ({','.join('?' * len(states))})"
            args += list(states)
        if since is not None:
            sql += " AND updated_at >= ?"
            args.append(since)
        if action is not None:
            sql += " AND action=?"
            args.append(action)
        return [self._action(r) for r in self._query(sql + " ORDER BY created_at, id", args)]

    def unfinished_actions(self) -> list[ActionRecord]:
        """Return actions the controller still owes the world (to resume after a restart)."""
        return self.actions(states=ACTION_UNFINISHED)

    def set_action(self, action_id: str, state: str, *, outcome: dict[str, Any] | None = None,
                   outcome_class: str | None = None, error: str | None = None,
                   plan: dict[str, Any] | None = None, now: float | None = None) -> None:
        """Move an action to ``state``, with its outcome."""
        now = self.clock() if now is None else now
        sets, args = ["state=?", "updated_at=?"], [state, now]
        if state == "started":
            sets.append("started_at=COALESCE(started_at, ?)")
            args.append(now)
        if state in ACTION_FINAL:
            sets.append("ended_at=?")
            args.append(now)
        if outcome is not None:
            sets.append("outcome=?")
            args.append(_dumps(outcome))
        if outcome_class is not None:
            sets.append("outcome_class=?")
            args.append(outcome_class)
        if error is not None:
            sets.append("error=?")
            args.append(error)
        if plan is not None:
            sets.append("plan=?")
            args.append(_dumps(plan))
        with self._tx() as db:
            db.execute(f"UPDATE actions SET {', '.join(sets)} WHERE id=?", (*args, action_id))

    # -- steps -----------------------------------------------------------------------

    @staticmethod
    def _step(r: sqlite3.Row) -> StepRecord:
        return StepRecord(action_id=r["action_id"], seq=r["seq"], name=r["name"],
                          state=r["state"], inputs=_loads(r["inputs"]),
                          outcome=_loads(r["outcome"]), started_at=r["started_at"],
                          ended_at=r["ended_at"], error=r["error"])

    def steps(self, action_id: str) -> list[StepRecord]:
        """Return an action's steps in the order they started."""
        rows = self._query("SELECT * FROM steps WHERE action_id=? ORDER BY seq", (action_id,))
        return [self._step(r) for r in rows]

    def step(self, action_id: str, name: str) -> StepRecord | None:
        """Return one step of an action, if it was journaled."""
        rows = self._query("SELECT * FROM steps WHERE action_id=? AND name=?", (action_id, name))
        return self._step(rows[0]) if rows else None

    def step_started(self, action_id: str, seq: int, name: str, inputs: dict[str, Any],
                     now: float | None = None) -> None:
        """Journal that a step is about to run (again, after a crash: the row is reused)."""
        now = self.clock() if now is None else now
        with self._tx() as db:
            db.execute(
                "INSERT INTO steps (action_id, seq, name, state, inputs, outcome, started_at, "
                "error) VALUES (?,?,?,?,?,'{}',?,'') ON CONFLICT (action_id, name) DO UPDATE "
                "SET state=excluded.state, inputs=excluded.inputs, started_at=excluded.started_at",
                (action_id, seq, name, STEP_STARTED, _dumps(inputs), now))

    def step_ended(self, action_id: str, name: str, *, ok: bool,
                   outcome: dict[str, Any] | None = None, error: str = "",
                   now: float | None = None) -> None:
        """Journal a step's end: done with its outcome, or failed with the error."""
        now = self.clock() if now is None else now
        with self._tx() as db:
            db.execute("UPDATE steps SET state=?, outcome=?, ended_at=?, error=? "
                       "WHERE action_id=? AND name=?",
                       (STEP_DONE if ok else STEP_FAILED, _dumps(outcome or {}), now, error,
                        action_id, name))

    # -- events, approvals, breaker --------------------------------------------------

    def event(self, kind: str, message: str, *, incident_id: str | None = None,
              action_id: str | None = None, data: dict[str, Any] | None = None,
              now: float | None = None) -> None:
        """Append one line to the audit trail."""
        now = self.clock() if now is None else now
        with self._tx() as db:
            db.execute("INSERT INTO events (time, incident_id, action_id, kind, message, data) "
                       "VALUES (?,?,?,?,?,?)",
                       (now, incident_id, action_id, kind, message, _dumps(data or {})))

    def events(self, *, incident_id: str | None = None, since: float | None = None,
               limit: int = 1000) -> list[dict[str, Any]]:
        """Return audit events, oldest first."""
        sql, args = "SELECT * FROM events WHERE 1=1", list[Any]()
        if incident_id is not None:
            sql += " AND incident_id=?"
            args.append(incident_id)
        if since is not None:
            sql += " AND time >= ?"
            args.append(since)
        rows = self._query(sql + " ORDER BY id DESC LIMIT ?", (*args, limit))
        return [{"time": r["time"], "incident": r["incident_id"], "action": r["action_id"],
                 "kind": r["kind"], "message": r["message"], "data": _loads(r["data"])}
                for r in reversed(rows)]

    def approve(self, action_id: str, by: str, now: float | None = None) -> None:
        """Record an approval of an action waiting in ask mode."""
        now = self.clock() if now is None else now
        with self._tx() as db:
            db.execute("INSERT OR IGNORE INTO approvals VALUES (?,?,?)", (action_id, by, now))
            db.execute("INSERT INTO events (time, incident_id, action_id, kind, message, data) "
                       "SELECT ?, incident_id, id, 'approved', ?, '{}' FROM actions WHERE id=?",
                       (now, f"approved by {by}", action_id))

    def approval(self, action_id: str) -> dict[str, Any] | None:
        """Return who approved an action and when, if anyone did."""
        rows = self._query("SELECT * FROM approvals WHERE action_id=?", (action_id,))
        return {"by": rows[0]["by"], "time": rows[0]["time"]} if rows else None

    def breaker(self) -> BreakerState:
        """Return the circuit breaker's state."""
        r = self._query("SELECT * FROM breaker WHERE id=1")[0]
        return BreakerState(open=bool(r["open"]), reason=r["reason"], since=r["since"],
                            reset_by=r["reset_by"], reset_at=r["reset_at"])

    def trip_breaker(self, reason: str, now: float | None = None) -> bool:
        """Open the breaker; return False if it was open already."""
        now = self.clock() if now is None else now
        with self._tx() as db:
            cur = db.execute("UPDATE breaker SET open=1, reason=?, since=? WHERE id=1 AND open=0",
                             (reason, now))
            if cur.rowcount:
                db.execute("INSERT INTO events (time, kind, message, data) VALUES "
                           "(?, 'breaker_tripped', ?, '{}')", (now, reason))
            return bool(cur.rowcount)

    def reset_breaker(self, by: str, now: float | None = None) -> bool:
        """Close the breaker (``sentinel controller reset-breaker``); False if it was closed."""
        now = self.clock() if now is None else now
        with self._tx() as db:
            cur = db.execute("UPDATE breaker SET open=0, reset_by=?, reset_at=? "
                             "WHERE id=1 AND open=1", (by, now))
            if cur.rowcount:
                db.execute("INSERT INTO events (time, kind, message, data) VALUES "
                           "(?, 'breaker_reset', ?, '{}')", (now, f"reset by {by}"))
            return bool(cur.rowcount)

    # -- goodput ---------------------------------------------------------------------

    def charge(self, job: str, cause: str, seconds: float, *, key: str,
               incident_id: str | None = None, action_id: str | None = None, note: str = "",
               now: float | None = None) -> bool:
        """Charge ``seconds`` of lost time of ``job`` to a cause (once per ``key``)."""
        now = self.clock() if now is None else now
        with self._tx() as db:
            cur = db.execute("INSERT OR IGNORE INTO badput (time, job, cause, seconds, "
                             "incident_id, action_id, note, key) VALUES (?,?,?,?,?,?,?,?)",
                             (now, job, cause, float(seconds), incident_id, action_id, note, key))
            return bool(cur.rowcount)

    def badput(self, job: str | None = None) -> list[dict[str, Any]]:
        """Return the badput ledger (every charge), oldest first."""
        sql = "SELECT * FROM badput" + (" WHERE job=?" if job else "") + " ORDER BY id"
        rows = self._query(sql, (job,) if job else ())
        return [{k: r[k] for k in r.keys()} for r in rows]

    def save_goodput(self, job: str, summary: dict[str, Any], state: dict[str, Any],
                     charges: Sequence[dict[str, Any]], now: float | None = None) -> int:
        """Keep a job's goodput accounting and its new charges in one transaction.

        ``summary`` has ``start``, ``last``, ``productive``, ``pending`` and ``badput``
        (seconds by cause); ``state`` is the accountant's state to resume from; each charge
        has ``cause``, ``seconds``, ``key`` and optionally ``incident_id``, ``action_id``,
        ``note``. A charge whose key is in the ledger already is skipped (as ``charge``).
        Return how many charges were new.
        """
        now = self.clock() if now is None else now
        new = 0
        with self._tx() as db:
            for c in charges:
                cur = db.execute(
                    "INSERT OR IGNORE INTO badput (time, job, cause, seconds, incident_id, "
                    "action_id, note, key) VALUES (?,?,?,?,?,?,?,?)",
                    (now, job, c["cause"], float(c["seconds"]), c.get("incident_id"),
                     c.get("action_id"), str(c.get("note", "")), c["key"]))
                new += cur.rowcount
            db.execute(
                "INSERT INTO goodput (job, updated_at, start, last, productive, pending, badput, "
                "state) VALUES (?,?,?,?,?,?,?,?) ON CONFLICT (job) DO UPDATE SET "
                "updated_at=excluded.updated_at, start=excluded.start, last=excluded.last, "
                "productive=excluded.productive, pending=excluded.pending, "
                "badput=excluded.badput, state=excluded.state",
                (job, now, summary.get("start"), summary.get("last"),
                 float(summary.get("productive", 0.0)), float(summary.get("pending", 0.0)),
                 _dumps(summary.get("badput", {})), _dumps(state)))
        return new

    def goodput_state(self, job: str) -> dict[str, Any] | None:
        """Return the accountant's saved state of ``job``, if any."""
        rows = self._query("SELECT state FROM goodput WHERE job=?", (job,))
        return dict(_loads(rows[0]["state"])) if rows else None

    def goodput(self) -> list[dict[str, Any]]:
        """Return every job's goodput summary: job, start, last, productive, pending, badput."""
        rows = self._query("SELECT job, updated_at, start, last, productive, pending, badput "
                           "FROM goodput ORDER BY job")
        return [{"job": r["job"], "updated_at": r["updated_at"], "start": r["start"],
                 "last": r["last"], "productive": r["productive"], "pending": r["pending"],
                 "badput": _loads(r["badput"])} for r in rows]

    # -- housekeeping ----------------------------------------------------------------

    def prune(self, now: float | None = None) -> int:
        """Delete closed incidents (and their rows) and events older than the retention."""
        now = self.clock() if now is None else now
        cutoff = now - self.retention_days * 86400.0
        with self._tx() as db:
            old = [r["id"] for r in db.execute(
                "SELECT id FROM incidents WHERE closed_at IS NOT NULL AND closed_at < ?",
                (cutoff,))]
            for iid in old:
                acts = [r["id"] for r in db.execute("SELECT id FROM actions WHERE incident_id=?",
                                                     (iid,))]
                for aid in acts:
                    db.execute("DELETE FROM steps WHERE action_id=?", (aid,))
                    db.execute("DELETE FROM approvals WHERE action_id=?", (aid,))
                for table in ("actions", "findings", "decisions"):
                    db.execute(f"DELETE FROM {table} WHERE incident_id=?", (iid,))
                db.execute("DELETE FROM incidents WHERE id=?", (iid,))
            db.execute("DELETE FROM events WHERE time < ?", (cutoff,))
            db.execute("DELETE FROM badput WHERE time < ?", (cutoff,))
            db.execute("DELETE FROM goodput WHERE updated_at < ?", (cutoff,))
        return len(old)
