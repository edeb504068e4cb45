"""The Training run dashboard: is this job making progress at the speed it should?"""

from __future__ import annotations

from typing import Any

from grafana_foundation_sdk.builders import dashboard as db
from grafana_foundation_sdk.models import dashboard as dm

from sentinel.dashboards.common import (
    BAND_TOLERANCE_DEFAULT,
    BAND_TOLERANCES,
    BAND_WINDOW_DEFAULT,
    BAND_WINDOWS,
    REPORT_AGE_CRIT_S,
    REPORT_AGE_WARN_S,
    TAGS,
    custom_variable,
    dashed_line,
    datasource_variable,
    finish,
    prometheus_annotation,
    query_variable,
    stat_panel,
    target,
    timeseries_panel,
)

UID = "sentinel-training"
TITLE = "Sentinel / Training run"

J = 'job="$job"'
JN = 'job="$job", hostname=~"$node"'
RATE = "$__rate_interval"

# The job's expected per-node throughput: the median node's mean tokens/sec over the
# band window. rate() over the whole window reads each counter once per point, where a
# median-over-time subquery would evaluate the inner query hundreds of times per point.
EXPECTED_TPS = (
    f"quantile(0.5, sum by (hostname) (rate(sentinel_train_tokens_total{{{J}}}[$band_window])))"
)
# Attach hostname to agent-level series (datagram counters) of the nodes running the job.
JOB_NODES = f"max by (instance, hostname) (sentinel_train_job_info{{{JN}}})"


def build() -> dict[str, Any]:
    """Build the Training run dashboard as Grafana JSON data."""
    d = (
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
        .with_row(db.Row("Overview"))
        .with_panel(
            stat_panel(
                "Step",
                "Highest step any rank of the job reported.",
                [target(f"max(sentinel_train_step{{{J}}})")],
                decimals=0,
            )
        )
        .with_panel(
            stat_panel(
                "Tokens/s (job)",
                "Sum over ranks of the agent's tokens/sec (agent rate window).",
                [target(f"sum(sentinel_train_tokens_per_second{{{J}}})")],
                unit="short",
            )
        )
        .with_panel(
            stat_panel(
                "Ranks reporting",
                f"Ranks whose last step report is younger than {REPORT_AGE_CRIT_S} s.",
                [
                    target(
                        f"sum(sentinel_train_seconds_since_last_report{{{J}}} "
                        f"< bool {REPORT_AGE_CRIT_S})"
                    )
                ],
                decimals=0,
            )
        )
        .with_panel(
            stat_panel(
                "Last report age",
                "Age of the oldest rank's last step report: a hang shows here first.",
                [target(f"max(sentinel_train_seconds_since_last_report{{{J}}})")],
                unit="s",
                steps=[(None, "green"), (REPORT_AGE_WARN_S, "yellow"), (REPORT_AGE_CRIT_S, "red")],
            )
        )
        .with_panel(
            stat_panel(
                "Ranks with NaN/Inf loss",
                "Ranks whose last reported loss is not finite (the agents' flag: a store "
                "that drops NaN samples, such as VictoriaMetrics, still holds it).",
                [target(f"sum(sentinel_train_loss_finite{{{J}}} == bool 0)")],
                steps=[(None, "green"), (1, "red")],
                decimals=0,
            )
        )
        .with_panel(
            stat_panel(
                "Ranks",
                "Ranks known to the agents for this job (rank info series).",
                [target(f"count(sentinel_train_rank_info{{{J}}})")],
                decimals=0,
            )
        )
        .with_row(db.Row("Throughput"))
        .with_panel(
            timeseries_panel(
                "Tokens/s per node against the expected band",
                "Per-node tokens/sec. The band is the median node's mean tokens/sec over "
                "the last $band_window, plus or minus $band_tolerance; a node that stays below it "
                "is a straggler, the whole job below it is a job-wide slowdown (dataloader, "
                "storage).",
                [
                    target(
                        f"sum by (hostname) (rate(sentinel_train_tokens_total{{{JN}}}[{RATE}]))",
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
        .with_panel(
            timeseries_panel(
                "Samples/s per node",
                "Samples per second from the samples counter (ranks that report samples).",
                [
                    target(
                        f"sum by (hostname) (rate(sentinel_train_samples_total{{{JN}}}[{RATE}]))",
                        "{{hostname}}",
                    )
                ],
            )
        )
        .with_panel(
            timeseries_panel(
                "Step reports received / dropped per node",
                "Datagrams the agents on this job's nodes accepted and dropped (by reason), and "
                "reports the job's Reporters dropped before sending (agent away, socket queue "
                "full). Drops mean gaps in the step stream, not a training problem.",
                [
                    target(
                        f"sum by (hostname) (rate(sentinel_train_datagrams_received_total[{RATE}]) "
                        f"* on(instance) group_left(hostname) {JOB_NODES})",
                        "{{hostname}} received",
                    ),
                    target(
                        f"sum by (hostname, reason) (rate(sentinel_train_datagrams_dropped_total"
                        f"[{RATE}]) * on(instance) group_left(hostname) {JOB_NODES})",
                        "{{hostname}} dropped: {{reason}}",
                    ),
                    target(
                        f"sum by (hostname) (rate(sentinel_train_reporter_dropped_total{{{J}}}"
                        f"[{RATE}]))",
                        "{{hostname}} dropped by the Reporter",
                    ),
                ],
                unit="reqps",
            )
        )
        .with_row(db.Row("Loss and gradients"))
        .with_panel(
            timeseries_panel(
                "Loss",
                "Last reported loss of each rank at each scrape: mean, lowest and highest "
                "rank. Step-exact values are in the agent's step stream (/api/v1/steps).",
                [
                    target(f"avg(sentinel_train_loss{{{J}}})", "mean over ranks"),
                    target(f"min(sentinel_train_loss{{{J}}})", "lowest rank"),
                    target(f"max(sentinel_train_loss{{{J}}})", "highest rank"),
                ],
            )
        )
        .with_panel(
            timeseries_panel(
                "Grad norm",
                "Gradient norm reported by the ranks; grad-norm spikes often come before "
                "loss spikes.",
                [
                    target(f"max(sentinel_train_grad_norm{{{J}}})", "highest rank"),
                    target(f"avg(sentinel_train_grad_norm{{{J}}})", "mean over ranks"),
                ],
            )
        )
        .with_row(db.Row("Step time"))
        .with_panel(
            timeseries_panel(
                "Step time per node (median) and job p99",
                "From the agents' histogram of time between consecutive step reports.",
                [
                    target(
                        "histogram_quantile(0.5, sum by (le, hostname) "
                        f"(rate(sentinel_train_step_duration_seconds_bucket{{{JN}}}[{RATE}])))",
                        "{{hostname}} p50",
                    ),
                    target(
                        "histogram_quantile(0.99, sum by (le) "
                        f"(rate(sentinel_train_step_duration_seconds_bucket{{{J}}}[{RATE}])))",
                        "job p99",
                    ),
                    target(
                        f"sum(rate(sentinel_train_step_duration_seconds_sum{{{J}}}[{RATE}])) / "
                        f"sum(rate(sentinel_train_step_duration_seconds_count{{{J}}}[{RATE}]))",
                        "job mean",
                    ),
                ],
                unit="s",
                many_series=True,
            )
        )
        .with_panel(
            timeseries_panel(
                "Seconds since last step report",
                "Per node, the oldest rank's report age. Lines: warn and hang thresholds.",
                [
                    target(
                        f"max by (hostname) (sentinel_train_seconds_since_last_report{{{JN}}})",
                        "{{hostname}}",
                    )
                ],
                unit="s",
                steps=[(None, "green"), (REPORT_AGE_WARN_S, "yellow"), (REPORT_AGE_CRIT_S, "red")],
            )
        )
        .with_row(db.Row("Events"))
        .with_panel(
            timeseries_panel(
                "Job events",
                "Events the job reported (checkpoint_saved, rollback_done, ...) per "
                "interval, by kind. The same events are annotations on every panel.",
                [
                    target(
                        f"sum by (kind) (increase(sentinel_train_events_total{{{J}}}[{RATE}]))",
                        "{{kind}}",
                    )
                ],
                bars=True,
                w=24,
                h=6,
            )
        )
    )
    annotations = [
        prometheus_annotation(
            "Job events",
            "sum by (kind, hostname) "
            f"(increase(sentinel_train_events_total{{{J}}}[$__interval])) > 0",
            "blue",
            "{{kind}}",
            "reported by the job on {{hostname}}",
            "kind,hostname",
        ),
        prometheus_annotation(
            "Alerts",
            f'ALERTS{{alertstate="firing", {J}}} or (ALERTS{{alertstate="firing"}} '
            f"and on(hostname) sentinel_train_job_info{{{J}}})",
            "red",
            "{{alertname}}",
            "{{severity}} {{hostname}} {{gpu}}",
            "alertname,severity",
        ),
    ]
    return finish(d, annotations)
