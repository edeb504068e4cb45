"""Read detector-input JSON lines: one record per line. The one parser of the format.

Step records: ``step``, optional ``loss``, ``grad_norm``, ``tokens_per_sec``, ``tokens``,
``data_s``, ``time``, ``node``, ``rank``, ``run`` (or ``job``). Node records (lines
without ``step``): ``time``, optional ``node``, ``run``, and what the node saw that
second: ``disk_read_latency_s``, ``disk_in_flight``, ``gpu_processes``, ``gpu_ranks``,
``throttle_reasons``. NaN and infinities spelled as :mod:`sentinel.jsonnum` writes them.
The format: docs/DETECT-INPUT.md.
``sentinel detect FILE`` and ``sentinel notify send --steps-jsonl`` both read through
it, so a bad line gets the same message (file, line, why, what is valid) from each.
"""

from __future__ import annotations

import json
import math
import os
import stat
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sentinel.config import file_kind
from sentinel.gpu.reasons import CLOCK_EVENT_REASONS
from sentinel.jsonnum import VALID as _NUM_VALID
from sentinel.jsonnum import decode_number
from sentinel.rules.window import NodePoint, StepPoint

# A step record is about 150 bytes; a longer "line" is not this format (a binary file,
# a log with no newlines) and is refused before it is held in memory whole.
MAX_LINE_BYTES = 64 * 1024
# Largest step, batch or rank: a float still names every integer up to here.
MAX_INDEX = 2**53
# How far a record's time may lie before the newest time already seen: ranks' clocks
# and the order in which their lines were merged differ by seconds, a shuffled,
# reversed or concatenated file by more (a resumed run's time keeps going forward).
TIME_BACK_TOLERANCE_S = 60.0
# A resume goes back in steps but forward in time (the job restarted, or rolled back
# in-process, later): a step going back with its time earlier than the newest by more
# than the ranks' clocks differ is another file's line (a concatenation).
REWIND_TIME_TOLERANCE_S = 1.0
# Step changes looked at, and how many of them may go backwards: a resume goes back
# once and then forward; two rollbacks queued back to back go back twice in a row.
ORDER_WINDOW = 8
MAX_BACKWARDS = 2


# Keys of step records only, of node records only, and of both.
STEP_KEYS = ("step", "loss", "grad_norm", "tokens_per_sec", "tokens", "data_s", "rank")
NODE_KEYS = ("disk_read_latency_s", "disk_in_flight", "gpu_processes", "gpu_ranks",
             "throttle_reasons")
COMMON_KEYS = ("time", "node", "run", "job")
# Every key a record may carry; others are reported (``unknown``), never silently dropped.
KNOWN_KEYS = STEP_KEYS + COMMON_KEYS + NODE_KEYS
# GPUs one node record may name: more than any node has, few enough to bound a line.
MAX_GPUS = 64
MAX_GPU_CHARS = 64
# Unknown key names remembered per file: enough to name every typo, bounded.
MAX_UNKNOWN_KEYS = 100
MAX_RUN_CHARS = 200


class InputError(ValueError):
    """A line of the input is not valid; the message names the line and why."""


def _short(v: Any) -> str:
    """Return ``repr(v)``, cut to a readable length (a line may hold a 4000-digit number)."""
    text = repr(v)
    return text if len(text) <= 60 else f"{text[:40]}... ({len(text)} characters)"


def _number(where: str, key: str, v: Any, *, optional: bool, nonneg: bool = False) -> float | None:
    if v is None and optional:
        return None
    try:
        x = decode_number(v)
    except ValueError:
        raise InputError(f"{where}: {key!r} is {_short(v)} (valid: {_NUM_VALID}"
                         f"{', or null' if optional else ''})") from None
    if nonneg and x < 0:
        raise InputError(f"{where}: {key!r} is {_short(v)} (valid: a number >= 0)")
    return x


def _float(text: str) -> float:
    x = float(text)
    if not math.isfinite(x):  # 1e400: JSON has no infinity; "Infinity" spells it
        raise ValueError(f"{text[:40]} is too large for a float")
    return x


def parse_line(where: str, line: str, unknown: dict[str, str] | None = None
               ) -> StepPoint | NodePoint:
    """Parse one JSON line into a StepPoint (or a NodePoint: a line without ``step``).

    Raises InputError naming ``where`` and what is valid. Keys not in KNOWN_KEYS go
    into ``unknown`` (key -> first line with it), if given.
    """
    try:
        obj = json.loads(line, parse_float=_float)
    except json.JSONDecodeError as e:
        raise InputError(f"{where}: not valid JSON ({e.msg} at column {e.colno})") from None
    except (ValueError, RecursionError) as e:  # a 5000-digit number, arrays nested deeply
        raise InputError(f"{where}: not a step record ({e})") from None
    if not isinstance(obj, dict):
        raise InputError(f"{where}: expected a JSON object like "
                         f'{{"step": 1, "loss": 2.5}}, got {type(obj).__name__}')
    if unknown is not None:
        for k in obj:
            if k not in KNOWN_KEYS and k not in unknown and len(unknown) < MAX_UNKNOWN_KEYS:
                unknown[k] = where
    node_keys = [k for k in NODE_KEYS if k in obj]
    if "step" not in obj and node_keys:
        return _node_record(where, obj)
    if node_keys:
        raise InputError(f"{where}: {node_keys[0]!r} is a node field, and this line has a "
                         "'step' (valid: node fields on a line of their own without 'step': "
                         'a node record, e.g. {"node": "n0", "time": 1764400000.0, '
                         '"disk_read_latency_s": 0.002})')
    return _step_record(where, obj)


def _step_record(where: str, obj: dict[str, Any]) -> StepPoint:
    """Return the StepPoint of a parsed step line, checked."""
    step = obj.get("step")
    if step is None:
        raise InputError(f"{where}: 'step' is missing (valid: an integer >= 0 on a step "
                         "record; a node record has no 'step' but 'time' and at least one "
                         f"of {', '.join(NODE_KEYS)})")
    if isinstance(step, bool) or not isinstance(step, int) or not 0 <= step <= MAX_INDEX:
        raise InputError(
            f"{where}: 'step' is {_short(step)} (valid: an integer >= 0, at most 2^53)")
    given = obj.get("loss") is not None
    loss = _number(where, "loss", obj["loss"], optional=False) if given else math.nan
    assert loss is not None
    gn = _number(where, "grad_norm", obj.get("grad_norm"), optional=True)
    tps = _number(where, "tokens_per_sec", obj.get("tokens_per_sec"), optional=True, nonneg=True)
    tokens = _number(where, "tokens", obj.get("tokens"), optional=True, nonneg=True)
    if tokens is not None and not math.isfinite(tokens):
        raise InputError(f"{where}: 'tokens' is {obj.get('tokens')!r} (valid: a finite "
                         "number >= 0)")
    data_s = _number(where, "data_s", obj.get("data_s"), optional=True, nonneg=True)
    if data_s is not None and not math.isfinite(data_s):
        raise InputError(f"{where}: 'data_s' is {obj.get('data_s')!r} (valid: the seconds the "
                         "step waited for its input, a finite number >= 0, or null)")
    run = _run(where, obj)
    t = _time(where, obj, optional=True)
    node = _node(where, obj)
    rank = obj.get("rank")
    if rank is not None and (isinstance(rank, bool) or not isinstance(rank, int)
                             or abs(rank) > MAX_INDEX):
        raise InputError(f"{where}: 'rank' is {_short(rank)} (valid: an integer)")
    return StepPoint(step=step, loss=loss, grad_norm=gn, tokens_per_sec=tps, time=t,
                     node=node, rank=rank, tokens=tokens, run=run, loss_given=given,
                     data_s=data_s)


def _time(where: str, obj: dict[str, Any], *, optional: bool) -> float | None:
    t = _number(where, "time", obj.get("time"), optional=optional)
    if t is not None and not math.isfinite(t):
        raise InputError(f"{where}: 'time' is {obj.get('time')!r} (valid: finite unix seconds)")
    return t


def _node(where: str, obj: dict[str, Any]) -> str | None:
    node = obj.get("node")
    if node is not None and not isinstance(node, str):
        raise InputError(f"{where}: 'node' is {_short(node)} (valid: a string)")
    return node


def node_record(where: str, obj: Any) -> NodePoint:
    """Return the NodePoint of a decoded node record (a JSON object without ``step``).

    The agent's ``/api/v1/node`` answers records of this format: the step stream reads
    them through here, as ``sentinel detect FILE`` reads node lines.
    """
    if not isinstance(obj, dict) or "step" in obj:
        raise InputError(f"{where}: expected a node record like "
                         f'{{"node": "n0", "time": 1764400000.0, "disk_in_flight": 2}}, got '
                         f"{_short(obj)}")
    return _node_record(where, obj)


def _node_record(where: str, obj: dict[str, Any]) -> NodePoint:
    """Return the NodePoint of a parsed line without ``step``, checked."""
    steps_only = [k for k in STEP_KEYS if k in obj]
    if steps_only:
        raise InputError(f"{where}: 'step' is missing, and {steps_only[0]!r} belongs to a step "
                         "record (valid: a step record with 'step', or a node record with "
                         f"'time' and node fields only: {', '.join(NODE_KEYS)})")
    if obj.get("time") is None:
        raise InputError(f"{where}: 'time' is missing (valid: a node record needs the unix "
                         "seconds of its sample)")
    t = _time(where, obj, optional=False)
    assert t is not None
    lat = _number(where, "disk_read_latency_s", obj.get("disk_read_latency_s"),
                  optional=True, nonneg=True)
    if lat is not None and not math.isfinite(lat):
        raise InputError(f"{where}: 'disk_read_latency_s' is {_short(obj['disk_read_latency_s'])}"
                         " (valid: seconds, a finite number >= 0, or null for a second "
                         "without reads)")
    return NodePoint(
        time=t, node=_node(where, obj), run=_run(where, obj), disk_read_latency_s=lat,
        disk_in_flight=_count(where, "disk_in_flight", obj.get("disk_in_flight")),
        gpu_processes=_per_gpu(where, obj, "gpu_processes", _gpu_count),
        gpu_ranks=_per_gpu(where, obj, "gpu_ranks", _gpu_count),
        throttle_reasons=_per_gpu(where, obj, "throttle_reasons", _reason_names))


def _count(where: str, key: str, v: Any, *, nullable: bool = True) -> int | None:
    """Return a count: an integer from 0 to MAX_INDEX, or None (null or absent)."""
    if v is None and nullable:
        return None
    if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= MAX_INDEX:
        raise InputError(f"{where}: {key!r} is {_short(v)} (valid: an integer >= 0"
                         f"{', or null' if nullable else ''})")
    return v


def _gpu_count(where: str, key: str, v: Any) -> int:
    n = _count(where, key, v, nullable=False)
    assert n is not None
    return n


def _reason_names(where: str, key: str, v: Any) -> tuple[str, ...]:
    valid = f"a list of clock-event reasons, from: {', '.join(CLOCK_EVENT_REASONS)}"
    if not isinstance(v, list):
        raise InputError(f"{where}: {key!r} is {_short(v)} (valid: {valid})")
    for name in v:
        if name not in CLOCK_EVENT_REASONS:
            raise InputError(f"{where}: {key!r} names {_short(name)} (valid: {valid})")
    return tuple(v)


def _per_gpu(where: str, obj: dict[str, Any], key: str, value: Any) -> dict[str, Any]:
    """Return a per-GPU object (GPU index or name -> value), each value checked."""
    raw = obj.get(key)
    if raw is None:
        return {}
    if not isinstance(raw, dict) or len(raw) > MAX_GPUS:
        raise InputError(f"{where}: {key!r} is {_short(raw)} (valid: an object of at most "
                         f'{MAX_GPUS} GPUs, GPU index -> value, e.g. {{"0": 2}})')
    out: dict[str, Any] = {}
    for gpu, v in raw.items():
        if not gpu or len(gpu) > MAX_GPU_CHARS:
            raise InputError(f"{where}: {key!r} names GPU {_short(gpu)} (valid: a GPU index "
                             f"or name of 1 to {MAX_GPU_CHARS} characters)")
        out[gpu] = value(where, f"{key}[{gpu}]", v)
    return out


def _run(where: str, obj: dict[str, Any]) -> str | None:
    """Return the record's run name (``run``, else ``job``), checked."""
    if "run" in obj and "job" in obj and obj["run"] != obj["job"]:
        raise InputError(f"{where}: 'run' is {_short(obj['run'])} and 'job' is "
                         f"{_short(obj['job'])} (valid: one of them, or both the same)")
    run = obj.get("run", obj.get("job"))
    if run is not None and (not isinstance(run, str) or not run
                            or len(run) > MAX_RUN_CHARS):
        raise InputError(f"{where}: 'run' is {_short(run)} (valid: a non-empty string of at "
                         f"most {MAX_RUN_CHARS} characters naming the run)")
    return run


def _open_regular(p: Path) -> Any:
    """Open a regular file for reading; a FIFO, a device or a directory is an InputError.

    Checked before opening (opening a FIFO blocks; /dev/zero never ends) and again on
    what was opened, which is opened non-blocking in case the path changed between.
    """
    valid = "valid: a regular file of JSON lines (decompress or save a stream first)"
    try:
        st = os.stat(p)
        if not stat.S_ISREG(st.st_mode):
            raise InputError(f"{p} is {file_kind(st.st_mode)}; {valid}")
        fd = os.open(p, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    except OSError as e:
        raise InputError(f"{p}: cannot read it ({e.strerror or e})") from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise InputError(f"{p} is {file_kind(st.st_mode)}; {valid}")
    return os.fdopen(fd, "rb")


def iter_records(path: str | Path, unknown: dict[str, str] | None = None
                 ) -> Iterator[tuple[str, StepPoint | NodePoint]]:
    """Yield ``("FILE:LINE", record)`` for each step or node record, one line at a time.

    A bad line raises InputError naming it. Lines are read one by one, so a caller that
    keeps only some steps (a plot around one step of a run of millions) holds only those.
    Unknown keys go into ``unknown`` (see parse_line).
    """
    p = Path(path)
    fh = _open_regular(p)
    try:
        with fh:
            for i, raw in enumerate(iter(lambda: fh.readline(MAX_LINE_BYTES + 1), b""), 1):
                where = f"{p}:{i}"
                if len(raw) > MAX_LINE_BYTES:
                    raise InputError(f"{where}: line longer than {MAX_LINE_BYTES} bytes "
                                     "(valid: one step record per line)")
                try:
                    line = raw.decode("utf-8").rstrip("\r\n")  # columns count within the line
                except UnicodeDecodeError:
                    raise InputError(f"{where}: not UTF-8 text (valid: JSON lines)") from None
                if line.strip():
                    yield where, parse_line(where, line, unknown)
    except OSError as e:
        raise InputError(f"{p}: cannot read it ({e.strerror or e})") from None


def iter_steps(path: str | Path) -> Iterator[StepPoint]:
    """Yield the steps of a JSON-lines file one line at a time (node records are checked,
    not yielded); a bad line raises InputError.
    """
    for _where, pt in iter_records(path):
        if isinstance(pt, StepPoint):
            yield pt


def read_steps(path: str | Path) -> list[StepPoint]:
    """Read a JSON-lines file of steps; a file with none raises InputError."""
    out = list(iter_steps(path))
    if not out:
        raise InputError(f"{path}: no step records (valid: one JSON object per line)")
    return out


class DetectorInput:
    """What ``sentinel detect`` needs of a run's records beyond the format, checked as fed.

    * Time order: a record whose time lies more than TIME_BACK_TOLERANCE_S before the
      newest seen means shuffled, reversed or concatenated files; so does a step going
      back with a time more than REWIND_TIME_TOLERANCE_S before the newest (a resume
      goes back in steps, never in time).
    * Step order: steps go forward; a resume from a checkpoint goes back once, then
      forward again. More than MAX_BACKWARDS of the last ORDER_WINDOW step changes
      going backwards is shuffled or reversed input, not resumes (with or without time).
    * Losses > 0 (or NaN/infinite, which are findings): the loss detector judges
      log-loss, so a loss that may be negative or zero gives nonsense ratios.

    Each breach raises InputError naming the line and what to do; ``feed`` returns a
    note for each backward step (a resume), so none passes silently.
    """

    def __init__(self) -> None:
        self.latest: tuple[float, str] | None = None  # newest time and its line
        self.step: int | None = None
        self.changes: deque[bool] = deque(maxlen=ORDER_WINDOW)  # True: went backwards

    def feed(self, where: str, pt: StepPoint | NodePoint) -> str | None:
        """Check the next record; return a note if its step goes back (a resume)."""
        if isinstance(pt, NodePoint):
            self._in_time(where, pt.time)
            return None
        if pt.loss_given and math.isfinite(pt.loss) and pt.loss <= 0:
            raise InputError(f"{where}: 'loss' is {pt.loss!r} (valid for sentinel detect: a "
                             "loss > 0, or NaN/Infinity: spikes are judged on log-loss; a "
                             "loss that can be zero or negative must be shifted first)")
        if pt.time is not None:
            self._in_time(where, pt.time)
        note = None
        if self.step is not None and pt.step != self.step:
            back = pt.step < self.step
            if (back and pt.time is not None and self.latest is not None
                    and self.latest[0] - pt.time > REWIND_TIME_TOLERANCE_S):
                raise InputError(
                    f"{where}: step {pt.step} after step {self.step}, and its time is "
                    f"{self.latest[0] - pt.time:.1f} s before that of {self.latest[1]}: the "
                    "lines are out of order (several files concatenated?); a resume from a "
                    "checkpoint goes back in steps, not in time. Give one run's lines, sorted "
                    "by time")
            self.changes.append(back)
            if back and sum(self.changes) > MAX_BACKWARDS:
                raise InputError(
                    f"{where}: step {pt.step} after step {self.step}: {sum(self.changes)} of "
                    f"the last {len(self.changes)} step changes go backwards, so the lines "
                    "are out of order (shuffled or reversed?), not resumes from a checkpoint "
                    "(those go back once, then forward). Sort them by time or step")
            if back:
                note = (f"{where}: step goes back from {self.step} to {pt.step}: taken as a "
                        "resume from a checkpoint (the loss baseline restarts there)")
        self.step = pt.step
        return note

    def _in_time(self, where: str, t: float) -> None:
        """Refuse a time far before the newest seen; remember the newest."""
        if self.latest is not None and self.latest[0] - t > TIME_BACK_TOLERANCE_S:
            raise InputError(
                f"{where}: time {t:.3f} is {self.latest[0] - t:.0f} s before "
                f"that of {self.latest[1]}: the lines are out of order (shuffled, reversed "
                "or several files concatenated?); a resumed run's time keeps going "
                "forward. Sort them by time, e.g. jq -c -s 'sort_by(.time)[]' FILE")
        if self.latest is None or t > self.latest[0]:
            self.latest = (t, where)
