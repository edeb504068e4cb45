"""Every panel and annotation query of every dashboard returns data from a real stack.

A real agent serves GPU series replayed from the captured H100 dump (plus one XID event),
burn-in results from a textfile and the steps a real Reporter process sends; a real
controller follows the job's step stream from that agent (goodput), rolls back a loss
spike with the test's toy action and opens an incident for a stalled-job finding every few
cycles (ControllerFindings); a real Prometheus scrapes both every second and evaluates
one always-firing alert for the job (so the ALERTS annotation has something to show).
The dashboards' template variables are resolved the way Grafana does (label_values
through Prometheus, first value), then each target runs as Grafana would run it (range or
instant) and must return a series.

The same runs against the fleet's global store (docs/SCALE.md): vmagent scrapes the agent
and the controller into VictoriaMetrics and vmalert evaluates the alert, with the configs
of deploy/fleet/, and Grafana's queries go to VictoriaMetrics' Prometheus API.
"""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from sentinel.controller.actions import ACTIONS
from sentinel.dashboards.common import iter_panels
from sentinel.dashboards.generate import DASHBOARDS
from sentinel.gpu.nvml_replay import H100_LOAD
from sentinel.rules.finding import Finding
from sentinel.rules.sources import StepStream
from tests.support.agent import run_agent
from tests.support.controller import ToyAction, live_controller
from tests.support.diskload import disk_reads
from tests.support.services import Prometheus, free_port, run_alertmanager, run_prometheus, stop
from tests.support.victoria import run_victoria_metrics, run_vmagent, run_vmalert

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
FIXTURE = H100_LOAD
JOB = "dash-test-job"
HOST = "dash-test-node"
# Stand-ins for Grafana's built-in interval variables at a 1 s scrape interval:
# $__rate_interval is at least four scrapes; $__interval a few; $__range the view.
BUILTINS = {
    "$__rate_interval": "10s",
    "$__interval": "5s",
    "$__range": "60s",
}

REPORTER = textwrap.dedent(
    """
    import sys, time
    from sentinel.train import Reporter
    sock, job, host = sys.argv[1:4]
    reps = [Reporter(job=job, rank=r, socket_path=sock, host=host) for r in (0, 1)]
    step = 0
    while True:
        for r in reps:
            r.step(step, loss=2.5 - step * 1e-3 + r.rank * 0.01, tokens=4096,
                   grad_norm=1.0 + r.rank * 0.1, samples=2, data_s=0.002)
            if step % 10 == 0:
                r.event("checkpoint_saved", step=step)
        step += 1
        time.sleep(0.05)
    """
)


class ControllerFindings:
    """The controller's rules engine here: polls the job's stream; a spike, then drops."""

    def __init__(self, stream: StepStream) -> None:
        self.stream = stream
        self.cycles = 0

    def cycle(self, now: float | None = None) -> list[Finding]:
        self.stream.poll()
        self.cycles += 1
        t = time.time()
        if self.cycles == 1:
            return [Finding(kind="loss_spike", severity="critical", summary="spike",
                            suggested_action="rollback_skip", detector="loss_spike",
                            rule="loss-spike", job=JOB, step_start=5, step_end=6, episode="5",
                            time_start=t - 20, evidence={"classification": "plateau"})]
        if self.cycles % 4 == 0:  # decisions and new incidents keep the annotations busy
            # Each a new incident: a job's throughput findings while one is open would all
            # join its throughput incident (policy.incident_group).
            return [Finding(kind="job_stalled", severity="warning", summary="no step",
                            suggested_action="notify", job=JOB, rule="job-stalled",
                            time_start=t - 30, episode=str(self.cycles))]
        return []


def burnin_textfile(uuid: str, model: str) -> str:
    """A burn-in result in the exposition format docs/METRICS.md describes."""
    labels = f'gpu="0",UUID="{uuid}",modelName="{model}",hostname="{HOST}"'
    lines = [
        "# HELP sentinel_burnin_tflops Achieved TFLOPS over the burn-in run.",
        "# TYPE sentinel_burnin_tflops gauge",
        *(
            f'sentinel_burnin_tflops{{{labels},stat="{s}"}} {v}'
            for s, v in (("min", 688.1), ("median", 702.4), ("max", 711.9))
        ),
        "# HELP sentinel_burnin_verdict Burn-in verdict (1 for the verdict given).",
        "# TYPE sentinel_burnin_verdict gauge",
        f'sentinel_burnin_verdict{{{labels},verdict="OK"}} 1',
        "# HELP sentinel_burnin_ok 1 if the burn-in verdict is OK.",
        "# TYPE sentinel_burnin_ok gauge",
        f"sentinel_burnin_ok{{{labels}}} 1",
        "# HELP sentinel_burnin_max_temperature_celsius Hottest reading during the run.",
        "# TYPE sentinel_burnin_max_temperature_celsius gauge",
        f"sentinel_burnin_max_temperature_celsius{{{labels}}} 71",
        "# HELP sentinel_burnin_throttle_seconds Throttle-violation time during the run.",
        "# TYPE sentinel_burnin_throttle_seconds gauge",
        f"sentinel_burnin_throttle_seconds{{{labels}}} 0",
        "# HELP sentinel_burnin_timestamp_seconds When the run finished.",
        "# TYPE sentinel_burnin_timestamp_seconds gauge",
        f"sentinel_burnin_timestamp_seconds{{{labels}}} {time.time() - 3600:.0f}",
        "# HELP sentinel_burnin_interconnect_verdict The check of the links between GPUs.",
        "# TYPE sentinel_burnin_interconnect_verdict gauge",
        f'sentinel_burnin_interconnect_verdict{{hostname="{HOST}",verdict="OK"}} 1',
        "# HELP sentinel_burnin_copy_bandwidth_bytes_per_second Copy bandwidth between GPUs.",
        "# TYPE sentinel_burnin_copy_bandwidth_bytes_per_second gauge",
        *(f'sentinel_burnin_copy_bandwidth_bytes_per_second{{hostname="{HOST}",gpu="{a}",'
          f'peer_gpu="{b}",topology="nvlink"}} {bw}'
          for a, b, bw in ((0, 1, 3.891e11), (1, 0, 3.887e11))),
        "# HELP sentinel_burnin_allreduce_bus_bandwidth_bytes_per_second All-reduce busbw.",
        "# TYPE sentinel_burnin_allreduce_bus_bandwidth_bytes_per_second gauge",
        f'sentinel_burnin_allreduce_bus_bandwidth_bytes_per_second{{hostname="{HOST}",'
        f'gpu_count="2",topology="nvlink"}} 3.61e11',
    ]
    return "\n".join(lines) + "\n"


_LABEL_VALUES = re.compile(r"^label_values\((?:(?P<sel>.+),\s*)?(?P<label>\w+)\)$")


def resolve_variable(prom: Prometheus, var: dict[str, Any], values: dict[str, str]) -> str:
    """Resolve one template variable to its first value, as Grafana would offer it."""
    if var["type"] == "custom":
        return str(var["current"]["value"])
    assert var["type"] == "query", var
    m = _LABEL_VALUES.match(substitute(var["query"], values))
    assert m, f"variable {var['name']}: unsupported query {var['query']!r}"
    res = prom.query(m["sel"])
    found = sorted({s["metric"][m["label"]] for s in res if m["label"] in s["metric"]})
    assert found, f"variable {var['name']}: {var['query']!r} offers no values"
    return found[0]


def substitute(expr: str, values: dict[str, str]) -> str:
    """Replace $var and ${var} (longest names first, so $node does not eat $node_x)."""
    for name in sorted(values, key=len, reverse=True):
        expr = expr.replace("${" + name.lstrip("$") + "}", values[name])
        expr = expr.replace(name, values[name])
    assert "$" not in expr, f"unresolved variable in {expr!r}"
    return expr


def run_query(prom: Prometheus, expr: str, instant: bool) -> str | None:
    """Run a query as Grafana would (instant, or range over the last 30 s).

    Returns None if it returned at least one series, else what went wrong.
    """
    now = time.time()
    if instant:
        path, params = "query", {"query": expr, "time": now}
    else:
        path, params = "query_range", {"query": expr, "start": now - 30, "end": now, "step": 1}
    body = requests.get(f"{prom.url}/api/v1/{path}", params=params, timeout=10).json()
    if body.get("status") != "success":
        return f"error {body.get('error')}"
    if not body["data"]["result"]:
        return "no data"
    return None


@contextlib.contextmanager
def metrics_store(backend: str, tmp: Path, agent: str, controller: str,
                  rules: Path) -> Iterator[Prometheus]:
    """Yield the Prometheus API that Grafana would query, holding both targets' series.

    ``prometheus``: Prometheus scrapes the agent and the controller (as
    deploy/prometheus/prometheus.yml does) and evaluates ``rules``.
    ``victoria-metrics``: vmagent scrapes both into VictoriaMetrics, vmalert evaluates
    ``rules`` against VictoriaMetrics and writes ALERTS there.
    """
    if backend == "prometheus":
        scrape = {
            "scrape_configs": [
                {
                    "job_name": "sentinel-agent",
                    # The training job's `job` label must win (docs/DESIGN.md).
                    "honor_labels": True,
                    "static_configs": [{"targets": [agent]}],
                },
                {
                    # As deploy/prometheus/prometheus.yml: per-job goodput series.
                    "job_name": "sentinel-controller",
                    "honor_labels": True,
                    "static_configs": [{"targets": [controller]}],
                },
            ]
        }
        with run_prometheus(tmp / "prom", rule_files=[str(rules)], extra_config=scrape) as prom:
            yield prom
        return
    am_cfg = tmp / "alertmanager.yml"
    am_cfg.write_text("route: {receiver: none}\nreceivers: [{name: none}]\n")
    with (
        run_victoria_metrics(tmp / "vm") as vm,
        run_alertmanager(tmp / "am", am_cfg) as am,
        run_vmagent(tmp / "vmagent", [agent, controller], vm.write_url()),
        run_vmalert(tmp / "vmalert", [rules], vm.url, am.url),
    ):
        yield vm


@pytest.mark.parametrize("backend", ["prometheus", "victoria-metrics"])
def test_every_dashboard_query_returns_data(tmp_path: Path, backend: str, monkeypatch) -> None:
    dump = json.loads(FIXTURE.read_text())
    dev = dump["devices"][0]
    dump["xid_events"] = [{"uuid": dev["uuid"], "xid": 79}]
    # The H100 capture predates NVML's process list: the job's rank, as it ran there.
    dev["compute_processes"] = [{"pid": 4242, "used_memory": 1 << 30}]
    replay = tmp_path / "nvml_replay.json"
    replay.write_text(json.dumps(dump))
    textfiles = tmp_path / "textfiles"
    textfiles.mkdir()
    (textfiles / "burnin.prom").write_text(burnin_textfile(dev["uuid"], dev["name"]))
    rules = tmp_path / "test_alert.rules.yml"
    rules.write_text(
        "groups:\n- name: dashboard-test\n  rules:\n  - alert: DashboardTestAlert\n"
        f'    expr: sentinel_train_step{{job="{JOB}"}} >= 0\n'
        "    labels: {severity: info}\n"
    )

    # The disk panels divide by the rate of reads: the disk must serve some meanwhile.
    with disk_reads(tmp_path), run_agent(
        tmp_path / "agent",
        ["--gpu-replay", str(replay), "--textfile-dir", str(textfiles)],
        env={"SENTINEL_AGENT_HOSTNAME": HOST},
    ) as agent:
        reporter = subprocess.Popen(
            [sys.executable, "-c", REPORTER, agent.socket_path, JOB, HOST], cwd=ROOT
        )
        monkeypatch.setitem(ACTIONS, "rollback_skip", ToyAction())
        stream = StepStream(agent.url, JOB)
        (tmp_path / "ctl").mkdir()
        try:
            with live_controller(tmp_path / "ctl", ControllerFindings(stream), port=free_port(),
                                 steps={JOB: lambda: list(stream.steps)}) as ctl, \
                    metrics_store(backend, tmp_path, agent.hostport, ctl.hostport,
                                  rules) as prom:
                # Wait until every rate window has samples and the alert fires.
                prom.wait_for(f'sentinel_train_tokens_total{{job="{JOB}"}}', timeout=30)
                prom.wait_for("sentinel_disk_read_latency_seconds", timeout=30)
                prom.wait_for('ALERTS{alertname="DashboardTestAlert",alertstate="firing"}')
                prom.wait_for(f'sentinel_controller_job_goodput_ratio{{job="{JOB}"}}')
                prom.wait_for('sentinel_controller_incidents_total{outcome="recovered"}')
                # The MTTR histogram gets its one observation late.
                prom.wait_for("sentinel_controller_incident_recover_seconds_bucket", timeout=45)
                time.sleep(8)
                assert reporter.poll() is None, "the Reporter process died"
                check_all_dashboards(prom)
                # The controller accounted the real job's steps it followed.
                [g] = ctl.controller.journal.goodput()
                assert g["job"] == JOB and g["last"] - g["start"] > 5
        finally:
            stop(reporter)


def check_all_dashboards(prom: Prometheus) -> None:
    failures = []
    checked = 0
    for stem, build in DASHBOARDS:
        dash = build()
        values = dict(BUILTINS)
        for var in dash["templating"]["list"]:
            if var["type"] == "datasource":
                continue
            values["$" + var["name"]] = resolve_variable(prom, var, values)
        for p in iter_panels(dash):
            for t in p.get("targets", []):
                expr = substitute(t["expr"], values)
                problem = run_query(prom, expr, bool(t.get("instant")))
                checked += 1
                if problem:
                    failures.append(f"{stem} / {p['title']} / {t['refId']}: {problem}: {expr}")
        for a in dash["annotations"]["list"]:
            if "target" not in a:
                continue  # Grafana's built-in annotations
            expr = substitute(a["target"]["expr"], values)
            checked += 1
            problem = run_query(prom, expr, instant=False)
            if problem:
                failures.append(f"{stem} / annotation {a['name']}: {problem}: {expr}")
    assert checked > 50
    assert not failures, "queries that failed or had no data:\n" + "\n".join(failures)
