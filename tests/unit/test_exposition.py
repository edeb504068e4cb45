"""sentinel.exposition writes what prometheus_client writes, and parses what Prometheus reads."""

from __future__ import annotations

import math

import prometheus_client.core as pc
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from sentinel import exposition as ex
from tests.support.metrics import check_promtool

LABELS = ["gpu", "UUID", "modelName"]


def _prom(families: list) -> bytes:
    class One:
        def collect(self):
            return families

    reg = CollectorRegistry(auto_describe=False)
    reg.register(One())  # type: ignore[arg-type]
    return generate_latest(reg)


def _both(build) -> tuple[bytes, bytes]:
    """Build the same families with each library; return (ours, prometheus_client's)."""
    return ex.render(build(ex)), _prom(build(pc))


def _families(m):
    g = m.GaugeMetricFamily("sentinel_gpu_temperature_celsius", "GPU core temperature.",
                            labels=LABELS)
    g.add_metric(["0", "GPU-1", "NVIDIA H100 80GB HBM3"], 31.0)
    g.add_metric(["1", "GPU-2", 'odd "name"\\ with\nnewline'], -0.5)
    c = m.CounterMetricFamily("sentinel_gpu_energy_joules", "Energy\\used\nsince load.",
                              labels=LABELS)
    c.add_metric(["0", "GPU-1", "x"], 123456789012345678.0)
    c2 = m.CounterMetricFamily("sentinel_train_tokens_total", "Tokens.", labels=["job"])
    c2.add_metric(["j"], 1e22)
    one = m.GaugeMetricFamily("sentinel_host_load1", "Load.", value=0.1)
    h = m.HistogramMetricFamily("sentinel_train_step_duration_seconds", "Step time.",
                                labels=["job", "rank"])
    h.add_metric(["j", "0"], [("0.1", 2.0), ("1.0", 5.0), ("+Inf", 7.0)], 3.25)
    empty = m.GaugeMetricFamily("sentinel_gpu_xid_errors", "None yet.", labels=LABELS)
    odd = m.GaugeMetricFamily("sentinel_values", "Odd values.", labels=["v"])
    for i, v in enumerate([math.inf, -math.inf, math.nan, 0.0, -0.0, 1e-7, 1.5e16, 2**53,
                           1e21, 123.456e5, 5e-324, 1.7976931348623157e308,
                           # Around the writer's short-repr fast path (8 characters).
                           999999.0, 1e6, 1234567.5, -1234567.0, 99999999.9, 7, True]):
        odd.add_metric([str(i)], v)
    return [g, c, c2, one, h, empty, odd]


def test_render_is_byte_for_byte_prometheus_client():
    ours, theirs = _both(_families)
    assert ours == theirs
    check_promtool(ours.decode())


@settings(max_examples=150, deadline=None)
@given(st.lists(st.floats(allow_nan=False) | st.integers(-2**63, 2**63).map(float),
                min_size=1, max_size=20),
       st.text(max_size=12))
def test_any_value_and_label_renders_as_prometheus_client(values, label):
    def build(m):
        g = m.GaugeMetricFamily("sentinel_x", "X.", labels=["v", "i"])
        for i, v in enumerate(values):
            g.add_metric([label, str(i)], v)
        return [g]

    ours, theirs = _both(build)
    assert ours == theirs


def test_labels_must_match_their_names():
    g = ex.GaugeMetricFamily("sentinel_x", "X.", labels=["a", "b"])
    with pytest.raises(ValueError):
        g.add_metric(["only one"], 1.0)
    with pytest.raises(ValueError, match="invalid metric name '1x'"):
        ex.GaugeMetricFamily("1x", "X.")
    with pytest.raises(ValueError, match="invalid label name 'a-b' in sentinel_x"):
        ex.GaugeMetricFamily("sentinel_x", "X.", labels=["a-b"])


TEXT = """# HELP sentinel_burnin_tflops Measured bf16 TFLOPS.
# TYPE sentinel_burnin_tflops gauge
sentinel_burnin_tflops{gpu="0",stat="median"} 702.5
sentinel_burnin_tflops{gpu="1",stat="median",note="a \\"b\\" \\\\ c\\nd"} 699
# a plain comment
# TYPE sentinel_burnin_runs_total counter
sentinel_burnin_runs_total 3
# TYPE sentinel_burnin_seconds histogram
sentinel_burnin_seconds_bucket{le="1"} 1
sentinel_burnin_seconds_bucket{le="+Inf"} 2
sentinel_burnin_seconds_count 2
sentinel_burnin_seconds_sum 2.5
# TYPE sentinel_q summary
sentinel_q{quantile="0.5"} 1
sentinel_q_count 4
sentinel_q_sum 9
untyped_thing{ a = "1" , } NaN
other -Inf
"""


def _as_tuples(fams) -> list:
    # prometheus_client spells untyped "unknown" and keeps integers as int.
    return [(f.name, f.type.replace("unknown", "untyped"), f.documentation,
             [(s.name, dict(s.labels), str(float(s.value))) for s in f.samples]) for f in fams]


def test_parse_agrees_with_prometheus_client():
    ours = ex.parse(TEXT)
    theirs = list(text_string_to_metric_families(TEXT))
    # prometheus_client names a counter family without _total; the samples agree.
    for f in theirs:
        if f.type == "counter":
            f.name += "_total"
    assert _as_tuples(ours) == _as_tuples(theirs)
    assert ex.render(ex.parse(ex.render(ours).decode())) == ex.render(ours)


def test_a_counter_typed_without_total_keeps_its_samples():
    """`# TYPE x counter` then `x_total 3`: one counter x_total (prometheus_client's parser
    made an empty counter and an untyped x_total, which it then rendered twice)."""
    [f] = ex.parse("# HELP x Runs.\n# TYPE x counter\nx_total 3\n")
    assert (f.name, f.type, f.samples) == ("x_total", "counter", [ex.Sample("x_total", {}, 3.0)])
    assert ex.render([f]) == b"# HELP x_total Runs.\n# TYPE x_total counter\nx_total 3.0\n"


@pytest.mark.parametrize(("text", "message"), [
    ("this is { not prometheus\n", r"line 1: unexpected '\{' after this|line 1: expected"),
    ("x 1 1700000000\n", "line 1: x has a timestamp; textfiles may not have timestamps"),
    ("x abc\n", r"line 1: value 'abc' is not a number \(e\.g\. 1, 2\.5e3, NaN, \+Inf\)"),
    ("x 1_0\n", "is not a number"),
    ("x 1 2 3\n", "line 1: expected one value after x, found 3 fields"),
    ('x{a="1",a="2"} 1\n', "line 1: label a given twice"),
    ('x{a="\\q"} 1\n', r"invalid escape \\q in a label value"),
    ('x{a="1" b="2"} 1\n', r"line 1: expected , or \} after label a"),
    ("# TYPE x gauge\n# TYPE x gauge\n", "line 2: second TYPE line for x"),
    ("# TYPE x rainbow\n", r"unknown type 'rainbow' for x \(valid: counter, gauge"),
    ("x 1\n# TYPE x gauge\n", "line 2: TYPE line for x after its samples"),
    ("# HELP x a\n# HELP x b\n", "line 2: second HELP line for x"),
    ("# TYPE h histogram\nh_bucket 1\n", "line 2: bucket h_bucket has no le label"),
    ("# TYPE h histogram\nh 1\n", "histogram h has a sample without _bucket, _count or _sum"),
    ("# TYPE s summary\ns 1\n", "line 2: summary s has no quantile label"),
    ("# TYPE c counter\nc 1\n# TYPE c_total gauge\nc_total 2\n",
     "counter c and a family c_total both"),
    ("# TYPE c counter\nc 1\nc_total 2\n", "counter c has samples named both c and c_total"),
])
def test_parse_names_the_line_and_what_is_wrong(text, message):
    with pytest.raises(ex.ExpositionError, match=message):
        ex.parse(text)



def test_the_label_cache_stays_bounded_and_right():
    """Label sets are formatted once and kept across renders, up to a bound."""
    def build(m, n, offset):
        g = m.GaugeMetricFamily("sentinel_x", "X.", labels=["b", "a"])
        for i in range(n):
            g.add_metric([str(i + offset), "v"], float(i))
        return [g]

    for offset in (0, 3000, 6000):
        ours = ex.render(build(ex, 3000, offset))
        assert ours == _prom(build(pc, 3000, offset))
        assert len(ex._LABELSTRS) <= ex._LABELSTRS_MAX + 3000


def test_help_lines_are_cached_by_name_type_and_text_and_bounded(monkeypatch):
    """A family's text is kept by name, type and help, yet a changed help is written."""
    monkeypatch.setattr(ex, "_FAMILIES_MAX", 10)
    for i in range(25):
        for doc in (f"Doc {i}.", f"Other\\doc\n{i}."):
            fams = [m.GaugeMetricFamily("sentinel_x", doc, value=1.0) for m in (ex, pc)]
            assert ex.render(fams[:1]) == _prom(fams[1:])
            assert len(ex._FAMILIES) <= ex._FAMILIES_MAX + 1
    ours = ex.render([ex.CounterMetricFamily("sentinel_x", "Doc 3.", value=1.0)])
    assert ours.startswith(b"# HELP sentinel_x_total Doc 3.\n# TYPE sentinel_x_total counter\n")


def test_names_are_checked_every_time_not_just_the_first():
    ex.GaugeMetricFamily("sentinel_ok", "X.", labels=["a"])
    with pytest.raises(ValueError, match="invalid label name 'a b'"):
        ex.GaugeMetricFamily("sentinel_ok", "X.", labels=["a b"])
    with pytest.raises(ValueError, match="invalid metric type 'gague'"):
        ex.MetricFamily("sentinel_ok", "X.", "gague", ["a"])


def test_a_label_set_renders_as_the_same_plain_labels():
    """A LabelSet is written from its own text; it must be the text a dict gets."""
    pairs = [("b", 'quote" back\\ nl\n'), ("a", "x"), ("UUID", "GPU-1")]
    shared = ex.LabelSet(pairs)
    assert shared == dict(pairs)
    g = ex.GaugeMetricFamily("sentinel_x", "X.", labels=["b", "a", "UUID"])
    g.add_sample("sentinel_x", shared, 1.0)
    g.add_sample("sentinel_x", shared, 2.0)
    plain = pc.GaugeMetricFamily("sentinel_x", "X.", labels=["b", "a", "UUID"])
    for v in (1.0, 2.0):
        plain.add_metric([v for _, v in pairs], v)
    assert ex.render([g]) == _prom([plain])
    empty = ex.GaugeMetricFamily("sentinel_y", "Y.")
    empty.add_sample("sentinel_y", ex.LabelSet([]), 3.0)
    assert ex.render([empty]).endswith(b"\nsentinel_y 3.0\n")


def _gpu_like(m, values: list[float], extra: list[float] | None = None):
    g = m.GaugeMetricFamily("sentinel_cached", "A family rendered again.", labels=["gpu"])
    for i, v in enumerate(values):
        g.add_metric([str(i)], v)
    for v in extra or []:
        g.add_metric(["x"], v)
    return g


def test_an_unchanged_family_is_written_from_its_last_text_and_a_changed_one_afresh():
    """The family cache: same samples give the same text, any change is written."""
    seqs = [[1.0, 2.0], [1.0, 2.0], [1.0, 2.5], [1, 2.5], [0.0, 2.5], [-0.0, 2.5],
            [-0.0, 2.5], [0.0, 2.5], [2.5, 0.0], [2.5, -0.0], [2.5, 0.0], [1234567.5, 0.0],
            [12345678.0, 0.0], [math.nan, 1.0], [math.nan, 1.0], [1.0, 2.0, 3.0]]
    for values in seqs:
        assert ex.render([_gpu_like(ex, values)]) == _prom([_gpu_like(pc, values)]), values
    assert b'sentinel_cached{gpu="0"} -0.0' in ex.render([_gpu_like(ex, [-0.0, 2.5])])
    ex.render([_gpu_like(ex, [1.0, 2.0, 3.0])])
    kept = ex._FAMILIES[("sentinel_cached", "gauge", "A family rendered again.")][1]
    assert kept.count("\n") == 2 + 3  # HELP, TYPE and the three series


def test_a_family_changed_after_it_was_rendered_is_not_served_stale():
    """The cache keeps a copy of the samples: appending to the rendered list shows."""
    g = _gpu_like(ex, [1.0])
    first = ex.render([g])
    g.add_metric(["9"], 4.0)
    second = ex.render([g])
    assert second != first
    assert second == _prom([_gpu_like(pc, [1.0], extra=[])]).replace(
        b'sentinel_cached{gpu="0"} 1.0\n', b'sentinel_cached{gpu="0"} 1.0\n'
        b'sentinel_cached{gpu="9"} 4.0\n')


def test_a_reset_family_refilled_is_written_from_its_new_samples_only():
    """reset() empties a kept family in place; the render cache follows every refill."""
    g = _gpu_like(ex, [1.0, 2.0])
    for values in ([1.0, 2.0], [1.0, 2.5], [1.0, 2.5], [7.0], [], [1.0, 2.0]):
        g.reset()
        for i, v in enumerate(values):
            g.add_metric([str(i)], v)
        assert ex.render([g]) == _prom([_gpu_like(pc, values)]), values
