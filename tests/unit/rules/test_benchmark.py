"""Guard against regressions: on a tiny corpus sentinel must beat every peer detector."""

from bench.detectors.corpus import EVENT_FAMILIES, Curve, Event, load_real, synthetic
from bench.detectors.evaluate import run_benchmark, score_curve


def test_sentinel_beats_every_peer_on_a_tiny_corpus():
    res = run_benchmark(synthetic(per_family=2, n=900, seed=7))
    ours = res["overall"]["sentinel"]
    assert ours["f1"] >= 0.95
    assert ours["false_alarms"] == 0
    for name, m in res["overall"].items():
        if name != "sentinel":
            assert ours["f1"] > m["f1"], f"{name} F1 {m['f1']} >= sentinel {ours['f1']}"
    for fam in EVENT_FAMILIES:
        per = res["families"][fam]
        assert per["sentinel"]["f1"] >= max(m["f1"] for m in per.values()), fam


def test_event_matching_rules():
    c = Curve("c", "x", list(range(100)), [1.0] * 100, [None] * 100, [Event(50, 52, "spike")])
    t = score_curve(c, [10, 51, 62, 63], tolerance=10)
    assert (t.detected, t.true_alarms, t.false_alarms) == (1, 2, 2)
    assert t.delays == [1]
    assert t.healthy_steps == 100 - 13


def test_real_curves_load_with_their_labels(tmp_path):
    (tmp_path / "r.jsonl").write_text('{"step": 0, "loss": 3.0}\n{"step": 1, "loss": "NaN"}\n')
    (tmp_path / "r.labels.json").write_text('{"healthy": false, "events": '
                                            '[{"start": 1, "end": 1, "kind": "nan"}]}')
    (c,) = load_real(tmp_path)
    assert c.family == "real_events" and c.events[0].start == 1
    assert c.loss[1] != c.loss[1]


def _split_corpus(d, split):
    """Write two labelled curves of one part: a healthy one and one with a spike at 60."""
    import json
    import math
    for name, spike in (("h", None), ("s", 60)):
        lines = []
        for i in range(120):
            loss = 2.0 + 3.0 * math.exp(-i / 30) + 0.01 * math.sin(i)
            lines.append(json.dumps({"step": i, "loss": loss * (3 if i == spike else 1),
                                     "grad_norm": 1.0}))
        (d / f"{name}.jsonl").write_text("\n".join(lines) + "\n")
        events = [] if spike is None else [{"start": spike, "end": spike + 20}]
        (d / f"{name}.labels.json").write_text(json.dumps(
            {"healthy": spike is None, "family": f"f_{name}", "events": events,
             "split": split}))


def test_the_runner_scores_each_set_and_writes_its_block(tmp_path, monkeypatch, capsys):
    import json

    from bench.detectors import run
    (tmp_path / "c").mkdir()
    _split_corpus(tmp_path / "c", "held_out")
    doc = tmp_path / "BENCHMARKS.md"
    doc.write_text(f"# x\n\n{run.BEGIN}\nold\n{run.END}\n\nafter\n")
    monkeypatch.setattr(run, "ROOT", tmp_path)
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "BENCHMARKS.md").write_text(doc.read_text())
    assert run.main(["--real-dir", str(tmp_path / "c"), "--no-h100", "--out",
                     str(tmp_path / "out"), "--write-docs"]) == 0
    out = capsys.readouterr().out
    assert "c held_out: sentinel F1 1.000, 1/1 events, false alarms none, missed none" in out
    text = (tmp_path / "docs" / "BENCHMARKS.md").read_text()
    assert "old" not in text and text.endswith("\n\nafter\n")
    assert "| f_s | 1 | 1.00 (1/1, d 0) |" in text and "| f_h | 1 | 0 FA |" in text
    saved = json.loads((tmp_path / "out" / "detectors.json").read_text())
    assert list(saved["sets"]) == ["c held_out"] and saved["meta"]["split"] == "held_out"


def test_the_runner_tunes_on_tune_only_and_reports_held_out_only(tmp_path, capsys):
    import pytest

    from bench.detectors import run
    _split_corpus(tmp_path, "tune")
    # A part without events (the held-out one here) is scored, not a crash.
    assert run.main(["--real-dir", str(tmp_path), "--no-h100", "--out",
                     str(tmp_path / "o")]) == 0
    assert "sentinel F1 —, 0/0 events" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        run.main(["--real-dir", str(tmp_path), "--split", "tune", "--write-docs"])
    assert "--write-docs reports the held_out split only" in capsys.readouterr().err
