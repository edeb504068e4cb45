"""The Training run dashboard: is this job making progress at the speed it should?"""

from __future__ import annotations

from typing import Any

from grafana_foundation_sdk.builders import dashboard as db
from grafana_foundation_sdk.models import dashboard as dm

from sentinel.dashboards import controller
from sentinel.dashboards.common import (
    BAND_TOLERANCE_DEFAULT,
    BAND_TOLERANCES,
    BAND_WINDOW_DEFAULT,
    BAND_WINDOWS,
    RATE_INTERVAL,
    REPORT_AGE_CRIT_S,
    REPORT_AGE_WARN_S,
    TAGS,
    PanelBuilder,
    custom_variable,
    dashed_line,
    datasource_variable,
    finish,
    prometheus_annotation,
    query_variable,
    stat_panel,
    target,
    timeseries_panel,
    with_rows,
)

UID = "sentinel-training"
TITLE = "Sentinel / Training run"

# Label matchers: the selected job, and the selected job on the selected nodes.
JOB_MATCHER = 'job="$job"'
JOB_NODE_MATCHER = 'job="$job", hostname=~"$node"'

# The job's expected per-node throughput: the median node's mean tokens/sec over the
# band window. rate() over the whole window reads each counter once per point, where a
# median-over-time subquery would evaluate the inner query hundreds of times per point.
EXPECTED_TPS = (
    "quantile(0.5, sum by (hostname) "
    f"(rate(sentinel_train_tokens_total{{{JOB_MATCHER}}}[$band_window])))"
)
# Attach hostname to agent-level series (datagram counters) of the nodes running the job.
JOB_NODES = f"max by (instance, hostname) (sentinel_train_job_info{{{JOB_NODE_MATCHER}}})"


def build() -> dict[str, Any]:
    """Build the Training run dashboard as Grafana JSON data."""
    d = with_rows(_dashboard(), [
        ("Overview", _overview_row()),
        ("Throughput", [_tokens_per_node_panel(), _samples_per_node_panel(),
                        _step_reports_panel()]),
        ("Loss and gradients", _loss_row()),
        ("Step time", _step_time_row()),
        ("Events", [_job_events_panel()]),
    ])
    d = controller.add_row(d)
    return finish(d, _annotations())


def _dashboard() -> db.Dashboard:
    """The dashboard itself: title, time range and variables."""
    return (
        db.Dashboard(TITLE)
        .uid(UID)
        .description(
            "One training job: throughput per node against the job's expected band, loss, "
            "grad norm, step time; job events and firing alerts as annotations."
        )
        .tags([*TAGS, "training"])
        .editable()
        .refresh("30s")
        .time("now-6h", "now")
        .tooltip(dm.DashboardCursorSync.CROSSHAIR)
        .with_variable(datasource_variable())
        .with_variable(query_variable("job", "Job", "label_values(sentinel_train_job_info, job)"))
        .with_variable(
            query_variable(
                "node",
                "Node",
                'label_values(sentinel_train_job_info{job="$job"}, hostname)',
                multi=True,
                include_all=True,
            )
        )
        .with_variable(
            custom_variable("band_window", "Band window", BAND_WINDOWS, BAND_WINDOW_DEFAULT)
        )
        .with_variable(
            custom_variable(
                "band_tolerance", "Band half-width", BAND_TOLERANCES, BAND_TOLERANCE_DEFAULT
            )
        )
    )


def _overview_row() -> list[PanelBuilder]:
    """Step, throughput, ranks reporting and non-finite losses, as single numbers."""
    return [
        stat_panel(
            "Step",
            "Highest step any rank of the job reported.",
            [target(f"max(sentinel_train_step{{{JOB_MATCHER}}})")],
            decimals=0,
        ),
        stat_panel(
            "Tokens/s (job)",
            "Sum over ranks of the agent's tokens/sec (agent rate window).",
            [target(f"sum(sentinel_train_tokens_per_second{{{JOB_MATCHER}}})")],
            unit="short",
        ),
        stat_panel(
            "Ranks reporting",
            f"Ranks whose last step report is younger than {REPORT_AGE_CRIT_S} s.",
            [
                target(
                    f"sum(sentinel_train_seconds_since_last_report{{{JOB_MATCHER}}} "
                    f"< bool {REPORT_AGE_CRIT_S})"
                )
            ],
            decimals=0,
        ),
        stat_panel(
            "Last report age",
            "Age of the oldest rank's last step report: a hang shows here first.",
            [target(f"max(sentinel_train_seconds_since_last_report{{{JOB_MATCHER}}})")],
            unit="s",
            steps=[(None, "green"), (REPORT_AGE_WARN_S, "yellow"), (REPORT_AGE_CRIT_S, "red")],
        ),
        stat_panel(
            "Ranks with NaN/Inf loss",
            "Ranks whose last reported loss is not finite (the agents' flag: a store "
            "that drops NaN samples, such as VictoriaMetrics, still holds it).",
            [target(f"sum(sentinel_train_loss_finite{{{JOB_MATCHER}}} == bool 0)")],
            steps=[(None, "green"), (1, "red")],
            decimals=0,
        ),
        stat_panel(
            "Ranks",
            "Ranks known to the agents for this job (rank info series).",
            [target(f"count(sentinel_train_rank_info{{{JOB_MATCHER}}})")],
            decimals=0,
        ),
    ]


def _tokens_per_node_panel() -> PanelBuilder:
    """Tokens/s per node with the expected band drawn around the median node."""
    return (
        timeseries_panel(
            "Tokens/s per node against the expected band",
            "Per-node tokens/sec. The band is the median node's mean tokens/sec over "
            "the last $band_window, plus or minus $band_tolerance; a node that stays below it "
            "is a straggler, the whole job below it is a job-wide slowdown (dataloader, "
            "storage).",
            [
                target(
                    "sum by (hostname) "
                    f"(rate(sentinel_train_tokens_total{{{JOB_NODE_MATCHER}}}[{RATE_INTERVAL}]))",
                    "{{hostname}}",
                ),
                target(EXPECTED_TPS, "expected"),
                target(f"(1 - $band_tolerance) * {EXPECTED_TPS}", "band low"),
                target(f"(1 + $band_tolerance) * {EXPECTED_TPS}", "band high"),
            ],
            w=24,
            h=9,
            many_series=True,
        )
        .override_by_name("expected", dashed_line("blue"))
        .override_by_name("band low", dashed_line("orange"))
        .override_by_name(
            "band high",
            [
                *dashed_line("orange"),
                dm.DynamicConfigValue(id_val="custom.fillBelowTo", value="band low"),
                dm.DynamicConfigValue(id_val="custom.fillOpacity", value=8),
            ],
        )
    )


def _samples_per_node_panel() -> PanelBuilder:
    """Samples/s per node from the samples counter."""
    return timeseries_panel(
        "Samples/s per node",
        "Samples per second from the samples counter (ranks that report samples).",
        [
            target(
                "sum by (hostname) "
                f"(rate(sentinel_train_samples_total{{{JOB_NODE_MATCHER}}}[{RATE_INTERVAL}]))",
                "{{hostname}}",
            )
        ],
    )


def _step_reports_panel() -> PanelBuilder:
    """Step reports the agents received and dropped, and the Reporters' own drops."""
    return timeseries_panel(
        "Step reports received / dropped per node",
        "Datagrams the agents on this job's nodes accepted and dropped (by reason), and "
        "reports the job's Reporters dropped before sending (agent away, socket queue "
        "full). Drops mean gaps in the step stream, not a training problem.",
        [
            target(
                "sum by (hostname) "
                f"(rate(sentinel_train_datagrams_received_total[{RATE_INTERVAL}]) "
                f"* on(instance) group_left(hostname) {JOB_NODES})",
                "{{hostname}} received",
            ),
            target(
                f"sum by (hostname, reason) (rate(sentinel_train_datagrams_dropped_total"
                f"[{RATE_INTERVAL}]) * on(instance) group_left(hostname) {JOB_NODES})",
                "{{hostname}} dropped: {{reason}}",
            ),
            target(
                "sum by (hostname) "
                f"(rate(sentinel_train_reporter_dropped_total{{{JOB_MATCHER}}}"
                f"[{RATE_INTERVAL}]))",
                "{{hostname}} dropped by the Reporter",
            ),
        ],
        unit="reqps",
    )


def _loss_row() -> list[PanelBuilder]:
    """Loss and grad norm over the job's ranks."""
    return [
        timeseries_panel(
            "Loss",
            "Last reported loss of each rank at each scrape: mean, lowest and highest "
            "rank. Step-exact values are in the agent's step stream (/api/v1/steps).",
            [
                target(f"avg(sentinel_train_loss{{{JOB_MATCHER}}})", "mean over ranks"),
                target(f"min(sentinel_train_loss{{{JOB_MATCHER}}})", "lowest rank"),
                target(f"max(sentinel_train_loss{{{JOB_MATCHER}}})", "highest rank"),
            ],
        ),
        timeseries_panel(
            "Grad norm",
            "Gradient norm reported by the ranks; grad-norm spikes often come before "
            "loss spikes.",
            [
                target(f"max(sentinel_train_grad_norm{{{JOB_MATCHER}}})", "highest rank"),
                target(f"avg(sentinel_train_grad_norm{{{JOB_MATCHER}}})", "mean over ranks"),
            ],
        ),
    ]


def _step_time_row() -> list[PanelBuilder]:
    """Step time per node and for the job, and the age of each node's last report."""
    return [
        timeseries_panel(
            "Step time per node (median) and job p99",
            "From the agents' histogram of time between consecutive step reports.",
            [
                target(
                    "histogram_quantile(0.5, sum by (le, hostname) "
                    f"(rate(sentinel_train_step_duration_seconds_bucket{{{JOB_NODE_MATCHER}}}"
                    f"[{RATE_INTERVAL}])))",
                    "{{hostname}} p50",
                ),
                target(
                    "histogram_quantile(0.99, sum by (le) "
                    f"(rate(sentinel_train_step_duration_seconds_bucket{{{JOB_MATCHER}}}"
                    f"[{RATE_INTERVAL}])))",
                    "job p99",
                ),
                target(
                    f"sum(rate(sentinel_train_step_duration_seconds_sum{{{JOB_MATCHER}}}"
                    f"[{RATE_INTERVAL}])) / "
                    f"sum(rate(sentinel_train_step_duration_seconds_count{{{JOB_MATCHER}}}"
                    f"[{RATE_INTERVAL}]))",
                    "job mean",
                ),
            ],
            unit="s",
            many_series=True,
        ),
        timeseries_panel(
            "Input wait per step (node mean)",
            "Seconds each step waited for its input (the job's Reporter.step(data_s=)); a "
            "rise together with a throughput drop is an input-pipeline or storage stall.",
            [
                target(
                    "sum by (hostname) "
                    f"(rate(sentinel_train_data_wait_seconds_total{{{JOB_NODE_MATCHER}}}"
                    f"[{RATE_INTERVAL}])) / sum by (hostname) "
                    f"(rate(sentinel_train_data_wait_steps_total{{{JOB_NODE_MATCHER}}}"
                    f"[{RATE_INTERVAL}]))",
                    "{{hostname}}",
                ),
            ],
            unit="s",
            many_series=True,
        ),
        timeseries_panel(
            "Seconds since last step report",
            "Per node, the oldest rank's report age. Lines: warn and hang thresholds.",
            [
                target(
                    "max by (hostname) "
                    f"(sentinel_train_seconds_since_last_report{{{JOB_NODE_MATCHER}}})",
                    "{{hostname}}",
                )
            ],
            unit="s",
            steps=[(None, "green"), (REPORT_AGE_WARN_S, "yellow"), (REPORT_AGE_CRIT_S, "red")],
        ),
    ]


def _job_events_panel() -> PanelBuilder:
    """The job's reported events per interval, by kind."""
    return timeseries_panel(
        "Job events",
        "Events the job reported (checkpoint_saved, rollback_done, ...) per "
        "interval, by kind. The same events are annotations on every panel.",
        [
            target(
                "sum by (kind) "
                f"(increase(sentinel_train_events_total{{{JOB_MATCHER}}}[{RATE_INTERVAL}]))",
                "{{kind}}",
            )
        ],
        bars=True,
        w=24,
        h=6,
    )


def _annotations() -> list[dict[str, object]]:
    """Job events and firing alerts of the job or its nodes, on every panel."""
    return [
        prometheus_annotation(
            "Job events",
            "sum by (kind, hostname) "
            f"(increase(sentinel_train_events_total{{{JOB_MATCHER}}}[$__interval])) > 0",
            "blue",
            "{{kind}}",
            "reported by the job on {{hostname}}",
            "kind,hostname",
        ),
        prometheus_annotation(
            "Alerts",
            f'ALERTS{{alertstate="firing", {JOB_MATCHER}}} or (ALERTS{{alertstate="firing"}} '
            f"and on(hostname) sentinel_train_job_info{{{JOB_MATCHER}}})",
            "red",
            "{{alertname}}",
            "{{severity}} {{hostname}} {{gpu}}",
            "alertname,severity",
        ),
        *controller.annotation_queries(),
    ]
