"""The Fleet dashboard: which nodes and GPUs, across jobs, need a look or a swap?"""

from __future__ import annotations

from typing import Any

from grafana_foundation_sdk.builders import dashboard as db
from grafana_foundation_sdk.models import dashboard as dm

from sentinel.dashboards.common import (
    BAD_THROTTLE_RE,
    DISK_READ_LATENCY_CRIT_S,
    DISK_READ_LATENCY_WARN_S,
    RATE_INTERVAL,
    STRAGGLER_SCORE,
    TAGS,
    TEMP_HEADROOM_CRIT_C,
    TEMP_HEADROOM_WARN_C,
    PanelBuilder,
    bargauge_panel,
    cell,
    datasource_variable,
    finish,
    on_node,
    query_variable,
    stat_panel,
    table_panel,
    target,
    timeseries_panel,
    with_rows,
)

UID = "sentinel-fleet"
TITLE = "Sentinel / Fleet"

# Label matchers: the selected nodes, and the selected jobs on the selected nodes.
NODE_MATCHER = 'hostname=~"$node"'
JOB_NODE_MATCHER = 'job=~"$job", hostname=~"$node"'

# Per (job, node): mean step time, and the straggler score NVRx uses: the job's median
# node step time divided by this node's (1 = typical, below STRAGGLER_SCORE = straggler).
NODE_STEP_TIME = (
    "(sum by (job, hostname) (rate(sentinel_train_step_duration_seconds_sum"
    f"{{{JOB_NODE_MATCHER}}}[{RATE_INTERVAL}])) "
    "/ sum by (job, hostname) (rate(sentinel_train_step_duration_seconds_count"
    f"{{{JOB_NODE_MATCHER}}}[{RATE_INTERVAL}])))"
)
STRAGGLER = f"quantile by (job) (0.5, {NODE_STEP_TIME}) / on(job) group_right() {NODE_STEP_TIME}"
NODE_TPS = (
    "sum by (job, hostname) "
    f"(rate(sentinel_train_tokens_total{{{JOB_NODE_MATCHER}}}[{RATE_INTERVAL}]))"
)
TPS_RATIO = f"{NODE_TPS} / on(job) group_left() quantile by (job) (0.5, {NODE_TPS})"

# Per GPU (hostname, gpu): 1 when that problem is present now.
HARD_THROTTLED = (
    "max by (hostname, gpu) (sentinel_gpu_clock_event_active"
    f'{{{NODE_MATCHER}, reason=~"{BAD_THROTTLE_RE}"}})'
)
UNCORRECTED_ECC = (
    "sum by (hostname, gpu) (sentinel_gpu_ecc_errors_total"
    f'{{{NODE_MATCHER}, type="uncorrected", counter="volatile"}})'
)
REMAP_PROBLEM = (
    f"(sentinel_gpu_remap_pending{{{NODE_MATCHER}}} + sentinel_gpu_remap_failure{{{NODE_MATCHER}}})"
)
HEALTHY_GPUS = (
    f"count(sentinel_gpu_up{{{NODE_MATCHER}}} == 1"
    f" unless on(hostname, gpu) ({HARD_THROTTLED} == 1)"
    f" unless on(hostname, gpu) ({UNCORRECTED_ECC} > 0)"
    f" unless on(hostname, gpu) ({REMAP_PROBLEM} > 0)"
    f" unless on(hostname, gpu) (sentinel_burnin_ok{{{NODE_MATCHER}}} == 0))"
)
# Per node: the least headroom between a GPU's temperature and its slowdown temperature.
NODE_TEMP_HEADROOM = (
    f"min by (hostname) (sentinel_gpu_slowdown_temperature_celsius{{{NODE_MATCHER}}} "
    f"- sentinel_gpu_temperature_celsius{{{NODE_MATCHER}}})"
)


def build() -> dict[str, Any]:
    """Build the Fleet dashboard as Grafana JSON data."""
    d = with_rows(_dashboard(), [
        ("Fleet", _fleet_row()),
        ("Stragglers", _stragglers_row()),
        ("GPUs by health", [_gpus_by_problem_panel(), _gpu_health_table(),
                            *_gpu_health_over_time()]),
        ("Burn-in", [_burnin_table(), _burnin_tflops_panel()]),
        ("Storage", [_disk_latency_panel()]),
    ])
    return finish(d)


def _dashboard() -> db.Dashboard:
    """The dashboard itself: title, time range and variables."""
    return (
        db.Dashboard(TITLE)
        .uid(UID)
        .description(
            "Every node: stragglers by step time and throughput, GPUs by health, burn-in "
            "results, agents down, disk latency outliers."
        )
        .tags([*TAGS, "fleet"])
        .editable()
        .refresh("1m")
        .time("now-6h", "now")
        .tooltip(dm.DashboardCursorSync.CROSSHAIR)
        .with_variable(datasource_variable())
        .with_variable(
            query_variable(
                "job",
                "Job",
                "label_values(sentinel_train_job_info, job)",
                multi=True,
                include_all=True,
            )
        )
        .with_variable(
            query_variable(
                "node",
                "Node",
                "label_values(sentinel_agent_info, hostname)",
                multi=True,
                include_all=True,
            )
        )
    )


def _fleet_row() -> list[PanelBuilder]:
    """Nodes, agents down, GPUs, healthy GPUs, burn-in failures and stragglers, as numbers."""
    return [
        stat_panel(
            "Nodes with an agent",
            "Agents Prometheus scraped at least once in the last day.",
            [
                target(
                    "count(max by (hostname) "
                    f"(last_over_time(sentinel_agent_info{{{NODE_MATCHER}}}[1d])))"
                )
            ],
            decimals=0,
        ),
        stat_panel(
            "Agents down",
            "Agents seen in the last day that Prometheus cannot scrape now.",
            [
                target(
                    "sum(1 - (up * on(instance) group_left(hostname) max by (instance, hostname) "
                    f"(last_over_time(sentinel_agent_info{{{NODE_MATCHER}}}[1d]))))"
                )
            ],
            steps=[(None, "green"), (1, "red")],
            decimals=0,
        ),
        stat_panel(
            "GPUs",
            "GPUs the agents see through NVML.",
            [target(f"count(sentinel_gpu_up{{{NODE_MATCHER}}})")],
            decimals=0,
        ),
        stat_panel(
            "GPUs healthy",
            "Up, not hard-throttled, no uncorrected ECC error, no pending or failed "
            "row remap, and not failed at burn-in.",
            [target(HEALTHY_GPUS)],
            decimals=0,
        ),
        stat_panel(
            "GPUs failing burn-in",
            "GPUs whose last burn-in verdict was not OK.",
            [target(f"sum(1 - sentinel_burnin_ok{{{NODE_MATCHER}}})")],
            steps=[(None, "green"), (1, "red")],
            decimals=0,
        ),
        stat_panel(
            "Stragglers",
            f"Nodes whose straggler score is below {STRAGGLER_SCORE} in any job.",
            [target(f"sum(({STRAGGLER}) < bool {STRAGGLER_SCORE})")],
            steps=[(None, "green"), (1, "red")],
            decimals=0,
        ),
    ]


def _stragglers_row() -> list[PanelBuilder]:
    """Straggler score over time and now, tokens/s relative to the job, tokens/s per job."""
    return [
        timeseries_panel(
            "Straggler score per node",
            "Job's median node step time / this node's step time (NVRx's score). 1 is "
            f"typical; below {STRAGGLER_SCORE} (dashed) the node slows the whole job.",
            [target(STRAGGLER, "{{job}} {{hostname}}")],
            unit="none",
            steps=[(None, "red"), (STRAGGLER_SCORE, "transparent")],
            many_series=True,
        ),
        bargauge_panel(
            "Slowest nodes now",
            "The ten lowest straggler scores.",
            [target(f"bottomk(10, {STRAGGLER})", "{{job}} {{hostname}}", instant=True)],
            unit="none",
            steps=[(None, "red"), (STRAGGLER_SCORE, "green")],
            min_val=0,
            max_val=1.2,
        ),
        timeseries_panel(
            "Tokens/s per node relative to the job median",
            "1 is the job's median node. A node alone below is a straggler; every node "
            "dropping together is job-wide (dataloader, storage).",
            [target(TPS_RATIO, "{{job}} {{hostname}}")],
            unit="percentunit",
            many_series=True,
        ),
        timeseries_panel(
            "Tokens/s per job",
            "Each job's throughput as its agents compute it.",
            [
                target(
                    f"sum by (job) (sentinel_train_tokens_per_second{{{JOB_NODE_MATCHER}}})",
                    "{{job}}",
                )
            ],
        ),
    ]


def _gpus_by_problem_panel() -> PanelBuilder:
    """How many GPUs have each problem now."""
    return bargauge_panel(
        "GPUs by problem",
        "How many GPUs have each problem now (a GPU may have several).",
        [
            target(
                f"sum(sentinel_gpu_up{{{NODE_MATCHER}}} == bool 0)",
                "lost or erroring",
                instant=True,
            ),
            target(f"sum({HARD_THROTTLED})", "hard-throttled", instant=True),
            target(f"sum({UNCORRECTED_ECC} > bool 0)", "uncorrected ECC", instant=True),
            target(f"sum({REMAP_PROBLEM} > bool 0)", "row remap pending/failed", instant=True),
            target(
                f"sum(1 - sentinel_burnin_ok{{{NODE_MATCHER}}})", "failed burn-in", instant=True
            ),
        ],
        steps=[(None, "green"), (1, "red")],
        w=8,
    )


def _gpu_health_table() -> PanelBuilder:
    """Per node, now: GPUs, up, hard-throttled, headroom, ECC, XIDs, burn-in failures."""
    return table_panel(
        "GPU health by node",
        "Per node, now: GPUs, GPUs up, hard-throttled, least temperature headroom "
        "(C), uncorrected ECC errors, XID events since the agent started, GPUs "
        "failing burn-in. Sorted by GPUs up, fewest first.",
        [
            cell(f"count by (hostname) (sentinel_gpu_up{{{NODE_MATCHER}}})"),
            cell(f"sum by (hostname) (sentinel_gpu_up{{{NODE_MATCHER}}})"),
            cell(f"sum by (hostname) ({HARD_THROTTLED})"),
            cell(NODE_TEMP_HEADROOM),
            cell(f"sum by (hostname) ({UNCORRECTED_ECC})"),
            cell(f"sum by (hostname) (sentinel_gpu_xid_errors_total{{{NODE_MATCHER}}})"),
            cell(f"sum by (hostname) (1 - sentinel_burnin_ok{{{NODE_MATCHER}}})"),
        ],
        rename={
            "hostname": "node",
            "Value #A": "GPUs",
            "Value #B": "up",
            "Value #C": "hard-throttled",
            "Value #D": "headroom C",
            "Value #E": "uncorrected ECC",
            "Value #F": "XIDs",
            "Value #G": "burn-in failed",
        },
        sort_by="up",
        w=16,
    )


def _gpu_health_over_time() -> list[PanelBuilder]:
    """Hard-throttled GPUs and the least temperature headroom per node, over time."""
    return [
        timeseries_panel(
            "Hard-throttled GPUs per node",
            "GPUs with HW slowdown, thermal slowdown or power brake active, per node.",
            [target(f"sum by (hostname) ({HARD_THROTTLED})", "{{hostname}}")],
            many_series=True,
        ),
        timeseries_panel(
            "Least temperature headroom per node",
            "Per node, degrees between its hottest GPU and that GPU's slowdown temperature.",
            [target(NODE_TEMP_HEADROOM, "{{hostname}}")],
            unit="celsius",
            steps=[
                (None, "red"),
                (TEMP_HEADROOM_CRIT_C, "yellow"),
                (TEMP_HEADROOM_WARN_C, "transparent"),
            ],
            many_series=True,
        ),
    ]


def _burnin_table() -> PanelBuilder:
    """The last burn-in of each GPU: verdict, TFLOPS, temperature, throttle time, age."""
    return table_panel(
        "Burn-in results",
        "Last burn-in of each GPU: verdict, TFLOPS (min / median / max over the "
        "run), hottest reading, throttle time, and how long ago it finished.",
        [
            cell(f"sentinel_burnin_verdict{{{NODE_MATCHER}}} == 1"),
            cell(f'max without (stat) (sentinel_burnin_tflops{{{NODE_MATCHER}, stat="min"}})'),
            cell(f'max without (stat) (sentinel_burnin_tflops{{{NODE_MATCHER}, stat="median"}})'),
            cell(f'max without (stat) (sentinel_burnin_tflops{{{NODE_MATCHER}, stat="max"}})'),
            cell(f"sentinel_burnin_max_temperature_celsius{{{NODE_MATCHER}}}"),
            cell(f"sentinel_burnin_throttle_seconds{{{NODE_MATCHER}}}"),
            cell(f"time() - sentinel_burnin_timestamp_seconds{{{NODE_MATCHER}}}"),
        ],
        rename={
            "hostname": "node",
            "Value #A": "verdict=1",
            "Value #B": "TFLOPS min",
            "Value #C": "TFLOPS median",
            "Value #D": "TFLOPS max",
            "Value #E": "max temp C",
            "Value #F": "throttled s",
            "Value #G": "age s",
        },
        hide=("Time", "__name__", "instance", "job", "Value #A"),
        sort_by="TFLOPS median",
        w=16,
    )


def _burnin_tflops_panel() -> PanelBuilder:
    """Each GPU's burn-in median TFLOPS, as bars."""
    return bargauge_panel(
        "Burn-in median TFLOPS per GPU",
        "A GPU far below its node's peers is a LOW_FLOPS candidate.",
        [
            target(
                f'sentinel_burnin_tflops{{{NODE_MATCHER}, stat="median"}}',
                "{{hostname}} GPU {{gpu}}",
                instant=True,
            )
        ],
        unit="none",
        w=8,
    )


def _disk_latency_panel() -> PanelBuilder:
    """The worst device's read latency per node."""
    return timeseries_panel(
        "Disk read latency, worst device per node",
        "Nodes whose read latency departs from the others point at a data stall "
        f"(dashed: {DISK_READ_LATENCY_CRIT_S} s).",
        [
            target(
                "max by (hostname) "
                f"({on_node('sentinel_disk_read_latency_seconds', NODE_MATCHER)})",
                "{{hostname}}",
            )
        ],
        unit="s",
        steps=[
            (None, "green"),
            (DISK_READ_LATENCY_WARN_S, "yellow"),
            (DISK_READ_LATENCY_CRIT_S, "red"),
        ],
        w=24,
        many_series=True,
    )
