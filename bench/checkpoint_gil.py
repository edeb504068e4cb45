#!/usr/bin/env python3
"""Measure how much a background checkpoint write holds the GIL from the training thread.

A launch-bound training loop is a Python thread that needs the GIL every few
microseconds; a writer thread that holds it (pickling, Python callbacks, the load
check) delays the loop. This runs one ``CheckpointStore.save`` of a ~1 GB state shaped
like gpt100m's (weights plus two AdamW moments, ~450 tensors) and meanwhile a probe
thread that sleeps 1 ms again and again and records how late it wakes: with the writer
in a thread of this process the lateness is GIL waits plus CPU contention; with the same
save in a forked process it is CPU contention only; a thread that only ``os.write``s
the same bytes (which holds no GIL) shows the machine's own noise. A cProfile of one
save splits its time into calls that release the GIL (file writes, sha256, fsync) and
the rest. CPU only; ``python bench/checkpoint_gil.py --out DIR`` (~2 min on 2 cores).
"""

from __future__ import annotations

import argparse
import cProfile
import json
import multiprocessing as mp
import os
import pstats
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from sentinel.train.checkpoint import CheckpointStore  # noqa: E402

# Calls that release the GIL for large buffers (CPython's file write and hashlib above
# 2 KiB, fsync): their time in the profile is time the loop could run.
RELEASING = ("method 'write' of '_io.BufferedWriter'", "method 'update' of '_hashlib",
             "posix.fsync", "posix.write")
PROBE_SLEEP_S = 0.001


def make_state(gb: float, tensors: int = 150) -> dict[str, Any]:
    """Return a state of ``gb`` GiB: ``tensors`` weights and two AdamW moments for each."""
    per = int(gb * (1 << 30)) // 4 // (3 * tensors)
    return {"model": {f"w{i}": torch.ones(per) for i in range(tensors)},
            "optimizer": {"state": {i: {"step": torch.tensor(1.0), "exp_avg": torch.ones(per),
                                        "exp_avg_sq": torch.ones(per)}
                                    for i in range(tensors)}},
            "extra": {"step": 1}}


def probe(done: Callable[[], bool]) -> list[float]:
    """Sleep PROBE_SLEEP_S until ``done()``; return how late each wake-up was (s)."""
    late = []
    while not done():
        t0 = time.perf_counter()
        time.sleep(PROBE_SLEEP_S)
        late.append(time.perf_counter() - t0 - PROBE_SLEEP_S)
    return late


def _save(directory: str, state: dict[str, Any], load_check: str) -> None:
    CheckpointStore(directory, keep=1, load_check=load_check).save(1, state)


def _raw_write(directory: str, state: dict[str, Any], _: str) -> None:
    fd = os.open(os.path.join(directory, "raw"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    try:
        for t in [*state["model"].values()] + [
                x for s in state["optimizer"]["state"].values() for x in s.values()]:
            os.write(fd, t.numpy().tobytes() if t.dim() == 0 else memoryview(t.numpy()))
        os.fsync(fd)
    finally:
        os.close(fd)


def one(kind: str, state: dict[str, Any], work: Path) -> dict[str, Any]:
    """Run one writer of ``kind`` beside the probe; return its lateness figures."""
    d = tempfile.mkdtemp(dir=work)
    try:
        target, how, arg = {
            "save in a thread": (_save, "thread", "auto"),
            "save in a thread, load check always": (_save, "thread", "always"),
            "save in a process": (_save, "process", "auto"),
            "os.write in a thread (no GIL)": (_raw_write, "thread", ""),
            "idle": (None, "", ""),
        }[kind]
        t0 = time.perf_counter()
        if target is None:
            late = probe(lambda: time.perf_counter() > t0 + 2.0)
        elif how == "thread":
            t = threading.Thread(target=target, args=(d, state, arg))
            t.start()
            late = probe(lambda: not t.is_alive())
            t.join()
        else:
            p = mp.get_context("fork").Process(target=target, args=(d, state, arg))
            p.start()
            late = probe(lambda: not p.is_alive())
            p.join()
        dt = time.perf_counter() - t0
    finally:
        shutil.rmtree(d, ignore_errors=True)
    over = [x for x in late if x > 1e-3]
    return {"seconds": dt, "late_total_s": sum(late), "late_over_1ms_s": sum(over),
            "late_over_1ms_n": len(over), "late_max_ms": max(late) * 1e3}


def profile(state: dict[str, Any], work: Path, load_check: str) -> dict[str, float]:
    """Return one save's seconds: total, in GIL-releasing calls, and the rest."""
    d = tempfile.mkdtemp(dir=work)
    try:
        pr = cProfile.Profile()
        pr.enable()
        _save(d, state, load_check)
        pr.disable()
    finally:
        shutil.rmtree(d, ignore_errors=True)
    st = pstats.Stats(pr)
    total = st.total_tt  # type: ignore[attr-defined]
    releasing = sum(v[2] for k, v in st.stats.items()  # type: ignore[attr-defined]
                    if any(r in pstats.func_std_string(k) for r in RELEASING))
    callbacks = sum(v[1] for k, v in st.stats.items()  # type: ignore[attr-defined]
                    if "'_io.BufferedWriter'" in pstats.func_std_string(k))
    return {"total_s": total, "gil_released_s": releasing, "gil_held_s": total - releasing,
            "file_write_calls": callbacks}


KINDS = ("idle", "save in a thread", "save in a thread, load check always",
         "save in a process", "os.write in a thread (no GIL)")


def main() -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--gb", type=float, default=1.0, help="state size, GiB")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path, default=Path("out/checkpoint_gil"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    args.out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="ckgil-"))
    state = make_state(args.gb)
    res: dict[str, Any] = {"cpus": os.cpu_count(), "torch": torch.__version__,
                           "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                           "gb": args.gb, "runs": {k: [] for k in KINDS}}
    try:
        _save(str(work), state, "auto")  # warm the page cache and torch's code paths
        for _ in range(args.repeats):  # interleaved so the machine's drift hits all alike
            for k in KINDS:
                res["runs"][k].append(one(k, state, work))
        res["profile"] = {lc: profile(state, work, lc) for lc in ("auto", "always")}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    lines = [f"checkpoint_gil: {args.gb} GiB state, {os.cpu_count()} CPUs, torch "
             f"{torch.__version__}, {res['date']}; probe lateness (s), median of "
             f"{args.repeats}"]
    for k, runs in res["runs"].items():
        med = {f: statistics.median(r[f] for r in runs)
               for f in ("seconds", "late_total_s", "late_over_1ms_s", "late_max_ms")}
        res.setdefault("median", {})[k] = med
        lines.append(f"  {k:38s} {med['seconds']:5.2f} s  late {med['late_total_s']:5.2f} s,"
                     f" over 1 ms {med['late_over_1ms_s']:5.2f} s, max "
                     f"{med['late_max_ms']:6.1f} ms  (all: "
                     f"{[round(r['late_over_1ms_s'], 2) for r in runs]})")
    for lc, p in res["profile"].items():
        lines.append(f"  profile, load_check={lc}: {p['total_s']:.2f} s, GIL released "
                     f"{p['gil_released_s']:.2f} s, held {p['gil_held_s']:.3f} s, "
                     f"{p['file_write_calls']} file-write callbacks")
    (args.out / "checkpoint_gil.json").write_text(json.dumps(res, indent=1))
    (args.out / "checkpoint_gil.txt").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
