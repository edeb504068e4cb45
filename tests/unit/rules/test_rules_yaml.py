import pytest

from sentinel.config import ConfigError
from sentinel.rules.detectors import DETECTORS
from sentinel.rules.rulefile import load_rules, parse_duration, parse_rules
from sentinel.rules.spec import DetectorSpec


def test_default_rules_load_and_cover_every_detector():
    rules = load_rules()
    assert {r.detector for r in rules} == set(DETECTORS)


@pytest.mark.parametrize(
    ("rules", "message"),
    [
        ([{"name": "a", "detector": "nope"}],
         "rules[0] (a).detector: 'nope' is not valid (valid: loss_spike"),
        ([{"name": "a", "detector": "loss_spike", "thresholds": {"z_threshold": "high"}}],
         "rules[0] (a).thresholds.z_threshold: 'high' is not a number"),
        ([{"name": "a", "detector": "loss_spike", "thresholds": {"zz": 1}}],
         "rules[0] (a).thresholds.zz: unknown key (valid keys:"),
        ([{"name": "a", "detector": "loss_spike", "thresholds": {"z_threshold": 0}}],
         "z_threshold: 0.0 is below the minimum 1.0"),
        ([{"name": "a", "detector": "throughput_drop", "series": {"gpu": "up"}}],
         "rules[0] (a).series.gpu: not an input of throughput_drop (valid: tokens_per_sec, "
         "tokens_per_sec_cluster)"),
        ([{"name": "a", "detector": "loss_spike", "window": "10x"}],
         "rules[0] (a).window: '10x' is not a duration (valid:"),
        ([{"name": "a", "detector": "loss_spike", "severity": "bad"}],
         "severity: 'bad' is not valid (valid: info, warning, critical)"),
        ([{"name": "a", "detector": "loss_spike", "action": "reboot"}],
         "action: 'reboot' is not valid (valid: rollback_skip, burnin, spare_swap, notify)"),
        ([{"name": "a", "detector": "loss_spike"}, {"name": "a", "detector": "loss_spike"}],
         "'a' is used twice"),
        ([{"detector": "loss_spike"}], "rules[0].name: None is not valid"),
        ([{"name": "a", "detector": "loss_spike", "colour": 1}], "unknown key 'colour'"),
        ([{"name": "a", "detector": "gpu_throttle", "thresholds": {"reasons": ["gpu_idel"]},
           "series": {"clock_event_reasons": "x"}}],
         "'gpu_idel' is not valid (valid: gpu_idle"),
        # A rule must map the series its detector needs (DetectorSpec.required).
        ([{"name": "a", "detector": "gpu_throttle"}],
         "rules[0] (a).series: gpu_throttle reads Prometheus series and the rule maps none "
         "(valid roles: clock_event_reasons, temperature, slowdown_temperature; needed: "
         "clock_event_reasons)"),
        ([{"name": "a", "detector": "gpu_throttle", "series": {"temperature": "x"}}],
         "rules[0] (a).series: gpu_throttle needs clock_event_reasons, which the rule does "
         "not map (valid roles: clock_event_reasons, temperature, slowdown_temperature)"),
        ([{"name": "a", "detector": "gpu_errors", "series": {}}],
         "rules[0] (a).series: gpu_errors reads Prometheus series and the rule maps none "
         "(valid roles: xid_new, ecc_uncorrected_new, remap_failure, gpu_up; needed: at "
         "least one)"),
        ([{"name": "a", "detector": "disk_latency"}], "needed: disk_read_latency)"),
        ([{"name": "a", "detector": "job_stalled", "series": {"seconds_since_last_report": "x"}}],
         "rules[0] (a).series: job_stalled needs step_duration, which the rule does not map "
         "(valid roles: seconds_since_last_report, step_duration; or no series, to read steps)"),
        ([{"name": "a", "detector": "throughput_drop",
           "series": {"tokens_per_sec_cluster": "x"}}],
         "throughput_drop needs tokens_per_sec, which the rule does not map"),
        ([{"name": "a", "detector": "loss_spike", "series": {"steps": "x"}}],
         "rules[0] (a).series.steps: not an input of loss_spike (valid: none)"),
    ],
)
def test_bad_rules_name_the_key_the_value_and_what_is_valid(rules, message):
    with pytest.raises(ConfigError) as e:
        parse_rules({"rules": rules})
    assert message in str(e.value)


@pytest.mark.parametrize("detector", ["loss_spike", "throughput_drop", "job_stalled",
                                      "diagnosis"])
def test_a_detector_that_reads_steps_or_findings_needs_no_series(detector):
    (r,) = parse_rules({"rules": [{"name": "a", "detector": detector}]})
    assert r.series == {}


def test_a_detector_cannot_require_what_is_not_a_series():
    spec = DETECTORS["loss_spike"]
    with pytest.raises(ValueError, match=r"detector x: required \['steps'\] are not series "
                                         r"inputs \(series inputs: none\)"):
        DetectorSpec(name="x", params=spec.params, detect=spec.detect, inputs=("steps",),
                     required=("steps",), description="")


def test_bad_top_level_and_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="'rules:' list"):
        parse_rules({"rule": []})
    p = tmp_path / "r.yml"
    p.write_text("rules: [\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_rules(p)
    with pytest.raises(ConfigError, match="cannot read .*missing.yml"):
        load_rules(tmp_path / "missing.yml")


def test_thresholds_and_overrides_are_applied():
    (r,) = parse_rules({"rules": [{"name": "t", "detector": "throughput_drop", "window": "15m",
                                   "step": 10, "thresholds": {"drop_ratio": 0.2},
                                   "action": "spare_swap"}]})
    assert r.params.drop_ratio == 0.2 and r.window_s == 900 and r.step_s == 10
    assert r.action == "spare_swap"
    assert parse_duration("x", "1h") == 3600 and parse_duration("x", "250ms") == 0.25
