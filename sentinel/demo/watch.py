"""What the demo watches: the job's own log, the controller's journal, Prometheus.

Each reader is incremental and cheap enough to poll twice a second: the job's rank-0 log
is read from where the last read stopped, the journal from the last row seen.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sentinel.controller.journal import Journal
from sentinel.localstack.prometheus import Prometheus, QueryError


class LogTail:
    """Read the JSON lines appended to a file since the last read."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self.records: list[dict[str, Any]] = []

    def read(self) -> list[dict[str, Any]]:
        """Return the complete new records (a line still being written waits)."""
        try:
            with open(self.path, "rb") as fh:
                fh.seek(self.offset)
                data = fh.read()
        except FileNotFoundError:
            return []
        end = data.rfind(b"\n") + 1
        self.offset += end
        new = []
        for line in data[:end].splitlines():
            try:
                new.append(json.loads(line))
            except ValueError:
                continue  # the example writes Python's NaN, which json reads; others skip
        self.records.extend(new)
        return new


@dataclass
class JobView:
    """The job as its rank-0 log shows it."""

    tail: LogTail
    step: int = -1
    batch: int = -1
    loss: float = math.nan
    done: bool = False
    starts: int = 0
    last_start_time: float | None = None
    steps_since_start: int = 0
    rollbacks: list[dict[str, Any]] = field(default_factory=list)
    inject_time: float | None = None
    eval_loss: float | None = None

    def update(self) -> list[dict[str, Any]]:
        """Read the new records and return them."""
        new = self.tail.read()
        for r in new:
            ev = r.get("event")
            if ev == "step":
                self.step, self.batch, self.loss = r["step"], r["batch"], r["loss"]
                self.steps_since_start += 1
            elif ev == "start":
                self.starts += 1
                self.last_start_time = r["time"]
                self.steps_since_start = 0
            elif ev == "rollback":
                self.rollbacks.append(r)
            elif ev == "inject" and self.inject_time is None:
                self.inject_time = r["time"]
            elif ev == "eval":
                self.eval_loss = r["eval_loss"]
            elif ev == "done":
                self.done = True
                self.step = r["step"]  # steps done: the last step's number plus one
        return new


class JournalWatch:
    """The controller's journal: new findings, decisions and action events since last look."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.journal: Journal | None = None
        self._decision_id = 0
        self._finding_time = 0.0
        self._event_time = 0.0
        self._seen_events: set[tuple[float, str, str]] = set()

    def open(self) -> Journal | None:
        """Return the journal once the controller has created it."""
        if self.journal is None and self.path.exists():
            self.journal = Journal(self.path)
        return self.journal

    def news(self) -> list[tuple[float, str, dict[str, Any]]]:
        """Return (time, kind, data) of what the controller did since the last call, in order."""
        j = self.open()
        if j is None:
            return []
        out: list[tuple[float, str, dict[str, Any]]] = []
        for f in j.findings(since=self._finding_time):
            if f["time"] > self._finding_time or not self._finding_time:
                out.append((f["time"], "finding", f))
        if out:
            self._finding_time = max(t for t, _, _ in out) + 1e-6
        for row_id, d in j.decisions_after(self._decision_id):
            self._decision_id = row_id
            out.append((d["time"], "decision", d))
        for e in j.events(since=self._event_time):
            key = (e["time"], e["kind"], e["message"])
            if key in self._seen_events:
                continue
            self._seen_events.add(key)
            out.append((e["time"], "event", e))
            self._event_time = max(self._event_time, e["time"])
        out.sort(key=lambda x: x[0])
        return out

    def close(self) -> None:
        """Close the journal."""
        if self.journal is not None:
            self.journal.close()
            self.journal = None


def scalar(prom: Prometheus | None, promql: str) -> float | None:
    """Return the first value of an instant query, or None (no data, or no answer)."""
    if prom is None:
        return None
    try:
        res = prom.query(promql)
    except QueryError:
        return None
    if not res:
        return None
    v = float(res[0]["value"][1])
    return v if math.isfinite(v) else None
