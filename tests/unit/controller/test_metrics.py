"""The controller's /metrics and /healthz: what a real loop did, promtool-clean, served."""

from __future__ import annotations

import dataclasses

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from sentinel.config import ConfigError
from sentinel.controller.actions import ACTIONS
from sentinel.controller.config import ControllerConfig
from sentinel.controller.metrics import ControllerMetrics
from sentinel.rules.finding import Finding
from sentinel.rules.window import StepPoint
from tests.support.controller import ScriptedDetector, SpareWorld, ToyAction, make_controller
from tests.support.metrics import check_promtool
from tests.support.services import free_port

T0 = 1_700_000_000.0


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(text: str, name: str, **labels: str) -> float | None:
    return samples(text).get((name, frozenset(labels.items())))


def spike(t):
    return Finding(kind="loss_spike", severity="critical", summary="spike at 120",
                   suggested_action="rollback_skip", detector="loss_spike", rule="loss-spike",
                   job="gpt", step_start=120, step_end=122, episode="120", time_start=t,
                   evidence={"classification": "plateau"})


def drop(t):
    return Finding(kind="throughput_drop", severity="warning", summary="storage stall",
                   suggested_action="notify", job="gpt", rule="throughput", time_start=t)


@pytest.fixture
def loop(tmp_path, monkeypatch):
    """A real loop with the toy action: a spike rolled back, a drop told, a job's steps."""
    monkeypatch.setitem(ACTIONS, "rollback_skip", ToyAction())
    now = [T0]
    det = ScriptedDetector([[spike(T0 - 40)], [drop(T0 - 10)]])
    steps = [StepPoint(step=s, loss=2.0, time=T0 - 200 + s, rank=0) for s in range(150)]
    ctl = make_controller(tmp_path, det, clock=lambda: now[0],
                          world=SpareWorld(ready_spares=3), steps={"gpt": lambda: steps})
    m = ControllerMetrics(ctl.journal, ctl.config, world=ctl.world, clock=lambda: now[0])
    ctl.observers.append(m.observe_cycle)
    return ctl, m, now


def test_a_real_loop_shows_in_the_metrics(loop):
    ctl, m, now = loop
    ctl.cycle()
    assert ctl.executor.wait_idle(30)
    now[0] += 15
    ctl.cycle()  # the drop, and the rollback's verification counted
    text = m.render().decode()
    check_promtool(text)
    assert value(text, "sentinel_controller_cycles_total") == 2
    assert value(text, "sentinel_controller_last_successful_cycle_timestamp_seconds") == T0 + 15
    assert value(text, "sentinel_controller_cycle_duration_seconds_count") == 2
    assert value(text, "sentinel_controller_decisions_total", action="rollback_skip",
                 refusal="none") == 1
    assert value(text, "sentinel_controller_decisions_total", action="none",
                 refusal="none") == 1
    assert value(text, "sentinel_controller_incidents_opened_total", kind="loss_spike") == 1
    assert value(text, "sentinel_controller_incidents_total", kind="loss_spike",
                 outcome="recovered") == 1
    assert value(text, "sentinel_controller_incidents_open", kind="throughput_drop") == 1
    assert value(text, "sentinel_controller_actions", action="rollback_skip", mode="act",
                 state="verified") == 1
    # Detected 40 s after the spike began, decided in the same cycle.
    assert value(text, "sentinel_controller_incident_detect_seconds_sum", kind="loss_spike") \
        == 40
    assert value(text, "sentinel_controller_incident_detect_seconds_bucket", kind="loss_spike",
                 le="30.0") == 0
    assert value(text, "sentinel_controller_incident_detect_seconds_bucket", kind="loss_spike",
                 le="60.0") == 1
    assert value(text, "sentinel_controller_incident_decide_seconds_sum", kind="loss_spike") == 0
    assert value(text, "sentinel_controller_incident_recover_seconds_count",
                 kind="loss_spike") == 1
    assert value(text, "sentinel_controller_breaker_open") == 0
    assert value(text, "sentinel_controller_breaker_info", reason="") == 1
    assert value(text, "sentinel_controller_journal_readable") == 1
    assert value(text, "sentinel_controller_cycle_errors_total", stage="rules") == 0
    assert value(text, "sentinel_controller_ready_spares") == 3
    assert value(text, "sentinel_controller_job_goodput_ratio", job="gpt") == pytest.approx(1.0)
    assert value(text, "sentinel_controller_job_wall_seconds", job="gpt") == 149
    assert value(text, "sentinel_controller_job_badput_seconds_total", job="gpt",
                 cause="stall") == 0


def test_breaker_and_errors(loop):
    ctl, m, _now = loop
    ctl.journal.trip_breaker("5 drains in an hour")

    def broken(now=None):
        raise RuntimeError("Prometheus is down")

    ctl.detector.cycle = broken
    ctl.cycle()
    text = m.render().decode()
    check_promtool(text)
    assert value(text, "sentinel_controller_breaker_open") == 1
    assert value(text, "sentinel_controller_breaker_info", reason="5 drains in an hour") == 1
    assert value(text, "sentinel_controller_cycle_errors_total", stage="rules") == 1
    assert value(text, "sentinel_controller_last_successful_cycle_timestamp_seconds") is None


def test_a_restarted_controller_counts_only_what_happens_after_it(loop, tmp_path):
    ctl, m, now = loop
    ctl.cycle()
    assert ctl.executor.wait_idle(30)
    m2 = ControllerMetrics(ctl.journal, ctl.config, clock=lambda: now[0] + 100)
    m2.sync()
    text = m2.render().decode()
    assert value(text, "sentinel_controller_decisions_total", action="rollback_skip",
                 refusal="none") is None
    assert value(text, "sentinel_controller_incidents_opened_total", kind="loss_spike") is None
    # The journal's state is there at once.
    assert value(text, "sentinel_controller_actions", action="rollback_skip", mode="act",
                 state="verified") == 1


def test_served_with_healthz_that_fails_when_the_loop_stops(loop):
    ctl, m, _now = loop
    mono = [0.0]
    m.monotonic = lambda: mono[0]
    m._started_mono = 0.0
    server = m.serve(f"127.0.0.1:{free_port()}")
    host, port = server.address
    base = f"http://{host}:{port}"
    try:
        assert requests.get(base + "/healthz", timeout=5).status_code == 200
        mono[0] = 3 * ctl.config.interval_seconds + 1  # no cycle in 3 intervals
        r = requests.get(base + "/healthz", timeout=5)
        assert r.status_code == 503 and "no cycle completed" in r.text
        ctl.cycle()
        assert requests.get(base + "/healthz", timeout=5).status_code == 200
        r = requests.get(base + "/metrics", timeout=5)
        assert r.status_code == 200 and "sentinel_controller_cycles_total 1.0" in r.text
        r = requests.get(base + "/nope", timeout=5)
        assert r.status_code == 404 and "/healthz" in r.text
        mono[0] += 3 * ctl.config.interval_seconds + 1
        r = requests.get(base + "/healthz", timeout=5)
        assert r.status_code == 503 and "the last cycle completed" in r.text
        with pytest.raises(ConfigError, match="controller.listen_address: cannot listen"):
            m.serve(f"{host}:{port}")
    finally:
        server.stop()


@pytest.mark.parametrize("addr", ["9465", "host:", "host:99999", "127.0.0.1:x"])
def test_bad_listen_address_is_a_config_error(addr):
    with pytest.raises(ConfigError, match="controller.listen_address: .* is not HOST:PORT"):
        dataclasses.replace(ControllerConfig(), listen_address=addr).validate()
    ControllerConfig(listen_address="").validate()
    ControllerConfig(listen_address="[::1]:9465").validate()


def test_an_unreadable_journal_does_not_break_the_scrape(loop):
    ctl, m, _now = loop
    ctl.cycle()
    assert ctl.executor.wait_idle(30)
    ctl.stop()
    ctl.journal.close()
    text = m.render().decode()
    check_promtool(text)
    assert value(text, "sentinel_controller_journal_readable") == 0
    assert value(text, "sentinel_controller_cycles_total") == 1
    assert "sentinel_controller_breaker_open" not in text
