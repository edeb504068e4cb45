"""Issue 13, item 10: ``sentinel detect FILE`` on hostile and unlucky input.

Main missed a real spike in shuffled, reversed or concatenated lines (taken as resumes,
exit 0), turned negative losses into "2e10x the baseline 1e-12", hung on a FIFO and
read /dev/zero until memory ran out, and held every line in memory (4.4 GB for 6M).
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from sentinel.cli import main

pytestmark = pytest.mark.adversarial

ROOT = Path(__file__).resolve().parents[2]
REAL = ROOT / "bench" / "detectors" / "curves" / "real"


def _detect(path: Path | str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run ``sentinel detect`` in a child: what might hang is bounded by the timeout."""
    return subprocess.run([sys.executable, "-m", "sentinel", "detect", str(path)],
                          capture_output=True, text=True, timeout=timeout, check=False,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})


@dataclass
class Run:
    """What one in-process ``sentinel detect`` printed."""

    returncode: int
    stdout: str
    stderr: str


@pytest.fixture
def detect(capsys: pytest.CaptureFixture[str]) -> Callable[[Path], Run]:
    """Run ``sentinel detect FILE`` in this process (for input that cannot hang it)."""

    def run(path: Path) -> Run:
        rc = main(["detect", str(path)])
        out = capsys.readouterr()
        return Run(rc, out.out, out.err)

    return run


def _lines(name: str) -> list[str]:
    return (REAL / f"{name}.jsonl").read_text().splitlines()


def _spikes(stdout: str) -> list[int]:
    return [json.loads(x)["step_start"] for x in stdout.splitlines()
            if json.loads(x)["kind"] == "loss_spike"]


def test_the_real_spikes_are_found_in_order(detect: Callable[[Path], Run]) -> None:
    r = detect(REAL / "bad_batch.jsonl")
    assert r.returncode == 1 and _spikes(r.stdout) == [350, 600, 850]


@pytest.mark.parametrize("how", ["shuffled", "reversed", "halves swapped", "run twice",
                                 "shuffled without time", "reversed without time"])
def test_disordered_input_is_reported_not_taken_for_resumes(
    detect: Callable[[Path], Run], tmp_path: Path, how: str
) -> None:
    lines = _lines("bad_batch")
    if "without time" in how:
        lines = [json.dumps({k: v for k, v in json.loads(x).items() if k != "time"})
                 for x in lines]
    if how.startswith("shuffled"):
        random.Random(7).shuffle(lines)
    elif how.startswith("reversed"):
        lines.reverse()
    elif how == "halves swapped":
        lines = lines[len(lines) // 2:] + lines[: len(lines) // 2]
    else:
        lines = lines + lines
    f = tmp_path / "run.jsonl"
    f.write_text("\n".join(lines) + "\n")
    r = detect(f)
    assert r.returncode == 2, (r.returncode, r.stdout[:300], r.stderr)
    assert "out of order" in r.stderr and f"{f}:" in r.stderr


def test_a_real_resume_is_accepted_and_said(detect: Callable[[Path], Run]) -> None:
    r = detect(REAL / "resumed.jsonl")
    assert r.returncode in (0, 1), r.stderr
    assert "step goes back from 599 to 450: taken as a resume" in r.stderr


def test_negative_losses_are_refused(detect: Callable[[Path], Run], tmp_path: Path) -> None:
    f = tmp_path / "neg.jsonl"
    f.write_text("".join(json.dumps({"step": s, "loss": -2.0 + 0.001 * s}) + "\n"
                         for s in range(200)))
    r = detect(f)
    assert r.returncode == 2
    assert f"{f}:1: 'loss' is -2.0" in r.stderr and "baseline" not in r.stdout


@pytest.mark.parametrize("line", [
    '{"step": 1, "loss": ' + "9" * 5000 + "}",
    '{"step": ' + "9" * 400 + ', "loss": 1.0}',
    '{"step": 1, "loss": 1e400}',
])
def test_huge_numbers_are_bad_input_not_a_traceback(
    detect: Callable[[Path], Run], tmp_path: Path, line: str
) -> None:
    f = tmp_path / "x.jsonl"
    f.write_text(line + "\n")
    r = detect(f)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert f"{f}:1:" in r.stderr and len(r.stderr) < 600


def test_devices_and_fifos_are_refused_at_once(tmp_path: Path) -> None:
    fifo = tmp_path / "steps.jsonl"
    os.mkfifo(fifo)
    for path, kind in ((fifo, "a named pipe"), ("/dev/zero", "a character device")):
        r = _detect(path, timeout=20)  # main hung on both
        assert r.returncode == 2 and f"{path} is {kind}" in r.stderr


MEASURE = """
import contextlib, io, resource, sys
from sentinel.cli import main
with contextlib.redirect_stdout(io.StringIO()):
    rc = main(["detect", sys.argv[1]])
print(rc, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def _write_run(path: Path, n: int) -> None:
    rng = random.Random(1)
    with open(path, "w") as f:
        for s in range(n):
            f.write(json.dumps({"step": s, "loss": round(3 + rng.gauss(0, 0.01), 4),
                                "grad_norm": 1.0, "tokens_per_sec": 1000 + rng.randint(-30, 30),
                                "time": 1.7e9 + 0.5 * s, "node": f"n{s % 4}"}) + "\n")


def test_memory_does_not_grow_with_the_file(tmp_path: Path) -> None:
    """Peak RSS on 10k and 50k lines: main grew ~850 bytes a line (709 MB at 800k)."""
    peaks = []
    for n in (10_000, 50_000):
        f = tmp_path / f"run{n}.jsonl"
        _write_run(f, n)
        r = subprocess.run([sys.executable, "-c", MEASURE, str(f)], capture_output=True,
                           text=True, timeout=120, check=False,
                           env={**os.environ, "PYTHONPATH": str(ROOT)})
        rc, kib = r.stdout.split()
        assert rc in ("0", "1"), r.stderr
        peaks.append(int(kib) / 1024)
    assert peaks[1] - peaks[0] < 12, f"peak RSS grew from {peaks[0]:.0f} to {peaks[1]:.0f} MiB"
