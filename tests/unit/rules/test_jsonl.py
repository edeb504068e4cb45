"""The detector-input JSON lines: one parser, the same message from both of its callers."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from sentinel.cli import main
from sentinel.rules.jsonl import MAX_LINE_BYTES, InputError, iter_steps, read_steps

GOOD = b'{"step": 1, "loss": 2.0}\n{"step": 2, "loss": 2.0}\n'


def detect(path: Path) -> list[str]:
    return ["detect", str(path)]


def notify_send(path: Path) -> list[str]:
    return ["notify", "send", "--incident", "i", "--title", "t", "--steps-jsonl", str(path)]


@pytest.fixture(params=[detect, notify_send], ids=["detect", "notify"])
def run(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]):
    """Run one caller of the parser on a file; return (exit code, stderr)."""
    monkeypatch.setenv("SENTINEL_NOTIFY_QUEUE_DIR", str(tmp_path / "q"))
    monkeypatch.setenv("SENTINEL_NOTIFY_SLACK_WEBHOOK_URL", "http://127.0.0.1:1/hook")

    def go(path: Path) -> tuple[int, str]:
        rc = main(request.param(path))
        return rc, capsys.readouterr().err

    return go


@pytest.mark.parametrize(
    ("line", "why"),
    [
        (b'{"step": 3, "loss": "lots"}',
         """:3: 'loss' is 'lots' (valid: a number, or "NaN", "Infinity", "-Infinity")"""),
        (b'{"step": "two", "loss": 1.0}',
         ":3: 'step' is 'two' (valid: an integer >= 0, at most 2^53)"),
        (b'{"step": -1, "loss": 1.0}', ":3: 'step' is -1 (valid: an integer >= 0, at most 2^53)"),
        (b'{"step": 3, "loss": 1.0, "run": 5}', ":3: 'run' is 5 (valid: a non-empty string"),
        (b'{"step": 3, "loss": true}', ":3: 'loss' is True (valid: a number"),
        (b"[1, 2]", ':3: expected a JSON object like {"step": 1, "loss": 2.5}, got list'),
        (b'{"step": 3, "loss": 1.0', ":3: not valid JSON (Expecting ',' delimiter at column 24)"),
        (b'{"step": 3, "loss": 1.0, "tokens_per_sec": -5}',
         ":3: 'tokens_per_sec' is -5 (valid: a number >= 0)"),
        (b'{"step": 3, "loss": 1.0, "grad_norm": "big"}', ":3: 'grad_norm' is 'big' (valid: "),
        (b'{"step": 3, "loss": 1.0, "time": "Infinity"}',
         ":3: 'time' is 'Infinity' (valid: finite unix seconds)"),
        (b'{"step": 3, "loss": 1.0, "node": 7}', ":3: 'node' is 7 (valid: a string)"),
        (b'{"step": 3, "loss": 1.0, "rank": 1.5}', ":3: 'rank' is 1.5 (valid: an integer)"),
        (b'{"step": 3, "loss": ' + b"9" * 5000 + b"}", ":3: not a step record (Exceeds the limit"),
        (b'{"step": 3, "loss": "\xff"}', ":3: not UTF-8 text (valid: JSON lines)"),
        (b'{"step": 3, "loss": 1.0, "x": "' + b"a" * MAX_LINE_BYTES + b'"}',
         f":3: line longer than {MAX_LINE_BYTES} bytes (valid: one step record per line)"),
        (b'{"step": 3, "loss": 1.0, "data_s": -0.5}',
         ":3: 'data_s' is -0.5 (valid: a number >= 0)"),
        (b'{"step": 3, "data_s": "Infinity"}', ":3: 'data_s' is 'Infinity' (valid: the seconds"),
        (b'{"loss": 1.0}', ":3: 'step' is missing (valid: an integer >= 0 on a step record; a "
         "node record has no 'step' but 'time' and at least one of disk_read_latency_s, "
         "disk_in_flight, gpu_processes, gpu_ranks, throttle_reasons)"),
        # Node records: lines without "step".
        (b'{"node": "n0", "disk_in_flight": 3}',
         ":3: 'time' is missing (valid: a node record needs the unix seconds of its sample)"),
        (b'{"time": 5, "disk_read_latency_s": -1}',
         ":3: 'disk_read_latency_s' is -1 (valid: a number >= 0)"),
        (b'{"time": 5, "disk_read_latency_s": "Infinity"}',
         ":3: 'disk_read_latency_s' is 'Infinity' (valid: seconds, a finite number >= 0, or "
         "null for a second without reads)"),
        (b'{"time": 5, "disk_in_flight": 2.5}',
         ":3: 'disk_in_flight' is 2.5 (valid: an integer >= 0, or null)"),
        (b'{"time": 5, "gpu_processes": 3}',
         """:3: 'gpu_processes' is 3 (valid: an object of at most 64 GPUs, GPU index -> value, """
         """e.g. {"0": 2})"""),
        (b'{"time": 5, "gpu_processes": {"0": -1}}',
         ":3: 'gpu_processes[0]' is -1 (valid: an integer >= 0)"),
        (b'{"time": 5, "gpu_ranks": {"": 1}}', ":3: 'gpu_ranks' names GPU '' (valid: a GPU "),
        (b'{"time": 5, "throttle_reasons": {"1": ["too_hot"]}}',
         ":3: 'throttle_reasons[1]' names 'too_hot' (valid: a list of clock-event reasons, "
         "from: gpu_idle, "),
        (b'{"time": 5, "throttle_reasons": {"1": "hw_slowdown"}}',
         ":3: 'throttle_reasons[1]' is 'hw_slowdown' (valid: a list of clock-event reasons"),
        (b'{"step": 3, "loss": 1.0, "disk_in_flight": 3}',
         ":3: 'disk_in_flight' is a node field, and this line has a 'step' (valid: node fields "
         "on a line of their own without 'step'"),
        (b'{"time": 5, "disk_in_flight": 3, "loss": 2.0}',
         ":3: 'step' is missing, and 'loss' belongs to a step record (valid: a step record "
         "with 'step', or a node record with 'time' and node fields only"),
    ],
)
def test_a_bad_line_gets_the_same_message_from_both_callers(run, tmp_path, line, why):
    p = tmp_path / "run.jsonl"
    p.write_bytes(GOOD + line + b"\n" + GOOD)
    rc, err = run(p)
    assert rc == 2
    assert f"{p}{why}" in err, err


def test_a_missing_file_is_named(run, tmp_path):
    rc, err = run(tmp_path / "none.jsonl")
    assert rc == 2
    assert f"{tmp_path / 'none.jsonl'}: cannot read it (No such file or directory)" in err


def test_a_file_with_no_steps_is_refused(run, tmp_path):
    p = tmp_path / "empty.jsonl"
    p.write_text("\n  \n")
    rc, err = run(p)
    assert rc == 2
    assert f"{p}: no step" in err and "valid: one JSON object per line" in err


def test_steps_are_read_lazily_and_non_finite_values_kept(tmp_path):
    p = tmp_path / "run.jsonl"
    p.write_bytes(b'{"step": 0, "loss": "NaN", "grad_norm": "Infinity", "tokens_per_sec": 5,'
                  b' "time": 10.5, "node": "n1", "rank": 2}\r\n\n{"step": 1, "loss": 1}\n'
                  b'{"step": oops}\n')
    it = iter_steps(p)
    first = next(it)
    assert math.isnan(first.loss) and first.grad_norm == math.inf
    assert (first.step, first.tokens_per_sec, first.time, first.node, first.rank) == (
        0, 5.0, 10.5, "n1", 2)
    assert next(it).loss == 1.0  # a blank line is skipped; the bad line is not read yet
    with pytest.raises(InputError, match=r"run\.jsonl:4: not valid JSON"):
        next(it)
    with pytest.raises(InputError, match=r"run\.jsonl:4: not valid JSON"):
        read_steps(p)


def test_the_documented_example_parses_with_no_unknown_key(tmp_path):
    from pathlib import Path

    from sentinel.rules.jsonl import iter_records
    doc = (Path(__file__).resolve().parents[3] / "docs" / "DETECT-INPUT.md").read_text()
    block = doc.split("## Example\n```\n", 1)[1].split("```", 1)[0]
    p = tmp_path / "example.jsonl"
    p.write_text(block)
    unknown: dict[str, str] = {}
    pts = [pt for _w, pt in iter_records(p, unknown)]
    assert unknown == {} and len(pts) == 7
    assert {pt.run for pt in pts} == {"gpt-a", "gpt-b"}
    assert pts[-1].loss_given is False and pts[0].tokens == 8192 and pts[0].data_s == 0.004
    assert pts[5].gpu_processes == {"0": 2} and pts[5].throttle_reasons == {
        "0": ("hw_thermal_slowdown",)} and pts[5].disk_read_latency_s is None


def test_node_lines_parse_and_a_file_of_them_alone_is_valid(tmp_path, capsys):
    from sentinel.rules.jsonl import iter_records
    from sentinel.rules.window import NodePoint, StepPoint

    p = tmp_path / "node.jsonl"
    p.write_text(
        '{"run": "a", "node": "n0", "time": 10.0, "disk_read_latency_s": 0.004, '
        '"disk_in_flight": 7, "gpu_processes": {"0": 2, "1": 1}, "gpu_ranks": {"0": 1}, '
        '"throttle_reasons": {"1": ["hw_slowdown", "sw_power_cap"]}}\n'
        '{"node": "n0", "time": 11.0, "disk_read_latency_s": null, "disk_in_flight": 0}\n'
        '{"step": 4, "time": 11.5, "node": "n0", "tokens": 10, "data_s": 0.25}\n')
    unknown: dict[str, str] = {}
    recs = [r for _w, r in iter_records(p, unknown)]
    assert unknown == {}
    assert recs[0] == NodePoint(time=10.0, node="n0", run="a", disk_read_latency_s=0.004,
                                disk_in_flight=7, gpu_processes={"0": 2, "1": 1},
                                gpu_ranks={"0": 1},
                                throttle_reasons={"1": ("hw_slowdown", "sw_power_cap")})
    assert recs[1] == NodePoint(time=11.0, node="n0", disk_in_flight=0)
    assert isinstance(recs[2], StepPoint) and recs[2].data_s == 0.25
    assert [s.step for s in iter_steps(p)] == [4]  # node lines are checked, not steps
    only = tmp_path / "only.jsonl"
    only.write_text("".join(line + "\n" for line in p.read_text().splitlines()[:2]))
    assert main(["detect", str(only), "--strict"]) == 0
    assert capsys.readouterr().err == ""
