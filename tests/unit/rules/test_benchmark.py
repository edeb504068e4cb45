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
