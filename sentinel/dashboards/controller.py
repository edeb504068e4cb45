"""The controller's panels (goodput, lost time, incidents, actions, breaker), one function each.

The Training run dashboard shows them as its "Controller" row: :func:`add_row` adds the
row and its panels, :func:`annotation_queries` the controller's decisions and incidents. Series
of one job carry its name in ``job`` (the controller's scrape keeps it, honor_labels);
the others are the controller's own (every job it follows). docs/METRICS.md, "Controller".
"""

from __future__ import annotations

from grafana_foundation_sdk.builders import dashboard as db
from grafana_foundation_sdk.builders import stat, statetimeline, table, timeseries

from sentinel.dashboards.common import (
    cell,
    prometheus_annotation,
    stat_panel,
    table_panel,
    target,
    timeline_panel,
    timeseries_panel,
)

J = 'job="$job"'
RATE = "$__rate_interval"
# Goodput thresholds: Meta kept over 90% effective training time on Llama 3 405B (16k
# GPUs, 54 days); under 80% a fifth of the run goes to failures, saves and restarts.
GOODPUT_WARN = 0.9
GOODPUT_CRIT = 0.8
# The loop's last good cycle: older than 3 cycles of 15 s fails /healthz; older than the
# unit's WatchdogSec (300 s) systemd has restarted it.
LOOP_AGE_WARN_S = 45
LOOP_AGE_CRIT_S = 300
BREAKER_MAPPINGS = (("0", "closed", "green"), ("1", "OPEN", "red"))
# Eight stats of 3 columns fill one line of Grafana's 24-column grid.
STAT_W = 3


def goodput_stat() -> stat.Panel:
    """Productive step time over wall time since the job's first step."""
    return stat_panel(
        "Goodput",
        "Productive step time over wall time since the job's first step record (the "
        "controller charges the rest to rollbacks, requeues, restarts, checkpoint saves, "
        "stalls and throughput drops).",
        [target(f"max(sentinel_controller_job_goodput_ratio{{{J}}})")],
        unit="percentunit",
        steps=[(None, "red"), (GOODPUT_CRIT, "yellow"), (GOODPUT_WARN, "green")],
        decimals=1,
        w=STAT_W,
    )


def accounted_stat() -> stat.Panel:
    """How far behind the goodput accounting is (it needs the job's step stream)."""
    return stat_panel(
        "Goodput accounted to",
        "Age of the newest step record the controller has accounted: grows while the job "
        "is stopped (the gap is charged when it steps again) or its step stream is away.",
        [target(f"time() - max(sentinel_controller_job_last_step_timestamp_seconds{{{J}}})")],
        unit="s",
        steps=[(None, "green"), (LOOP_AGE_WARN_S, "yellow"), (LOOP_AGE_CRIT_S, "red")],
        w=STAT_W,
    )


def breaker_stat() -> stat.Panel:
    """The circuit breaker: open pauses every action."""
    return stat_panel(
        "Breaker",
        "The controller's circuit breaker. OPEN: too many drains in its window; every "
        "action is paused until `sentinel controller reset-breaker`.",
        [target("max(sentinel_controller_breaker_open)")],
        steps=[(None, "green"), (1, "red")],
        mappings=BREAKER_MAPPINGS,
        w=STAT_W,
    )


def incidents_stat() -> stat.Panel:
    """Incidents the controller is handling (every job it follows)."""
    return stat_panel(
        "Incidents open",
        "Incidents the controller is handling, every job and node it follows "
        "(`sentinel status` lists them).",
        [target("sum(sentinel_controller_incidents_open) or vector(0)")],
        steps=[(None, "green"), (1, "yellow")],
        decimals=0,
        w=STAT_W,
    )


def approvals_stat() -> stat.Panel:
    """Actions waiting for `sentinel controller approve` (ask mode)."""
    return stat_panel(
        "Awaiting approval",
        "Actions in ask mode waiting for `sentinel controller approve ID`; they expire after "
        "controller.approval_timeout_seconds.",
        [target('sum(sentinel_controller_actions{state="awaiting_approval"}) or vector(0)')],
        steps=[(None, "green"), (1, "orange")],
        decimals=0,
        w=STAT_W,
    )


def spares_stat() -> stat.Panel:
    """Spares ready to swap in (-1: the controller has no scheduler to ask)."""
    return stat_panel(
        "Ready spares",
        "Idle, staged spare nodes burned in recently, as the scheduler reports them; "
        "'unknown' without a scheduler.",
        [target("max(sentinel_controller_ready_spares) or vector(-1)")],
        steps=[(None, "red"), (1, "green")],
        mappings=(("-1", "unknown", "text"),),
        decimals=0,
        w=STAT_W,
    )


def loop_stat() -> stat.Panel:
    """Age of the controller's last cycle without an error."""
    return stat_panel(
        "Controller last good cycle",
        f"Seconds since a cycle ended without an error. Past {LOOP_AGE_WARN_S} s /healthz "
        f"fails; past {LOOP_AGE_CRIT_S} s systemd's watchdog has restarted the controller.",
        [target("time() - max(sentinel_controller_last_successful_cycle_timestamp_seconds)")],
        unit="s",
        steps=[(None, "green"), (LOOP_AGE_WARN_S, "yellow"), (LOOP_AGE_CRIT_S, "red")],
        w=STAT_W,
    )


def escalated_stat() -> stat.Panel:
    """Incidents handed to a person in the last day."""
    return stat_panel(
        "Escalated (24 h)",
        "Incidents the controller handed to a person in the last 24 hours (budget spent, "
        "no ready spare, an action that cannot be planned).",
        [target('sum(increase(sentinel_controller_incidents_total{outcome="escalated"}[24h])) '
                "or vector(0)")],
        steps=[(None, "green"), (1, "orange")],
        decimals=0,
        w=STAT_W,
    )


def goodput_panel() -> timeseries.Panel:
    """Goodput since the start and over the band window, and pauses not yet classified."""
    win = "$band_window"
    return timeseries_panel(
        "Goodput over time",
        "Productive time over wall time: since the job's first step, and over the last "
        "$band_window. 'Unclassified' are pauses waiting to be told apart (checkpoint "
        "saves once they recur, else stalls), as a share of the wall time.",
        [
            target(f"max(sentinel_controller_job_goodput_ratio{{{J}}})", "since start"),
            target(f"max(delta(sentinel_controller_job_productive_seconds{{{J}}}[{win}]) / "
                   f"delta(sentinel_controller_job_wall_seconds{{{J}}}[{win}]))",
                   "last $band_window"),
            target(f"max(sentinel_controller_job_unclassified_seconds{{{J}}} / "
                   f"sentinel_controller_job_wall_seconds{{{J}}})", "unclassified"),
        ],
        unit="percentunit",
        min_val=0,
        max_val=1,
    )


def badput_panel() -> timeseries.Panel:
    """Share of the wall time lost, by cause."""
    return timeseries_panel(
        "Lost time by cause",
        "Seconds lost per second of wall time, by cause: rollback (steps run again and the "
        "restore), requeue (queue wait, restart), restart (a rerun no action of the "
        "controller explains), checkpoint (saves), stall, throughput_drop (time beyond the "
        "job's own baseline while a drop incident is open). Charged when the job steps "
        "again after a gap.",
        [target(f"sum by (cause) (rate(sentinel_controller_job_badput_seconds_total{{{J}}}"
                f"[{RATE}]))", "{{cause}}")],
        unit="percentunit",
        bars=True,
    )


def incidents_panel() -> timeseries.Panel:
    """Incidents open by kind, and how the ended ones ended."""
    return timeseries_panel(
        "Incidents",
        "Incidents open by kind (lines), and incidents ended per interval by kind and "
        "outcome (recovered, escalated to a person, resolved by itself).",
        [
            target("sum by (kind) (sentinel_controller_incidents_open)", "{{kind}} open"),
            target("sum by (kind, outcome) (increase(sentinel_controller_incidents_total"
                   f"[{RATE}]))", "{{kind}} {{outcome}}"),
        ],
        many_series=True,
    )


def decisions_panel() -> timeseries.Panel:
    """Policy decisions per interval by action and refusal."""
    return timeseries_panel(
        "Decisions",
        "Policy decisions per interval: the action chosen ('none': only tell) and why it "
        "was refused (breaker_open, cooldown, no_ready_spare, drain_rate, ...; 'none': "
        "not refused).",
        [target("sum by (action, refusal) (increase(sentinel_controller_decisions_total"
                f"[{RATE}]))", "{{action}} / {{refusal}}")],
        bars=True,
        many_series=True,
    )


def times_panel() -> timeseries.Panel:
    """Median time to detect, decide and recover by incident kind."""
    win = "$band_window"
    return timeseries_panel(
        "Time to detect, decide, recover (median)",
        "Over incidents of the last $band_window, by kind: detect = the problem's start to "
        "its incident opening; decide = opening to the first decision; recover = the "
        "problem's start to the verified fix (MTTR).",
        # increase(), not rate(): a quantile does not care about the scale, and over hours
        # VictoriaMetrics rounds the rate of a few incidents to 0, so the panel went blank
        # on the fleet's store (rate and increase are the same on Prometheus here).
        [
            target("histogram_quantile(0.5, sum by (le, kind) (increase("
                   f"sentinel_controller_incident_{what}_seconds_bucket[{win}])))",
                   f"{{{{kind}}}} {what}")
            for what in ("detect", "decide", "recover")
        ],
        unit="s",
        many_series=True,
    )


def breaker_timeline() -> statetimeline.Panel:
    """The breaker over time, with why it opened."""
    return timeline_panel(
        "Breaker over time",
        "Closed or OPEN over time; the row is named by the reason it opened.",
        [target("max by (reason) (sentinel_controller_breaker_open * on(instance) "
                "group_left(reason) sentinel_controller_breaker_info)", "breaker {{reason}}")],
        mappings=BREAKER_MAPPINGS,
    )


def loop_panel() -> timeseries.Panel:
    """The controller's loop: cycle rate and time, errors, journal."""
    return timeseries_panel(
        "Controller loop",
        "Cycles per second, the p99 cycle time (seconds), errors per second by stage "
        "(rules engine, one finding, goodput) and whether scrapes could read the journal.",
        [
            target(f"sum(rate(sentinel_controller_cycles_total[{RATE}]))", "cycles/s"),
            target("histogram_quantile(0.99, sum by (le) (rate("
                   f"sentinel_controller_cycle_duration_seconds_bucket[{RATE}])))",
                   "cycle p99 (s)"),
            target(f"sum by (stage) (rate(sentinel_controller_cycle_errors_total[{RATE}]))",
                   "errors/s {{stage}}"),
            target("min(sentinel_controller_journal_readable)", "journal readable"),
        ],
        many_series=True,
    )


def actions_table() -> table.Panel:
    """Actions in the journal by action, mode and state."""
    return table_panel(
        "Actions",
        "Actions in the controller's journal (90 days) by action, mode (observe, ask, act) "
        "and state. `sentinel status` shows each with its steps.",
        [cell("sum by (action, mode, state) (sentinel_controller_actions)")],
        rename={"action": "Action", "mode": "Mode", "state": "State", "Value": "Count"},
        w=12,
    )


PANELS = (goodput_stat, accounted_stat, breaker_stat, incidents_stat, approvals_stat,
          spares_stat, escalated_stat, loop_stat, goodput_panel, badput_panel,
          incidents_panel, decisions_panel, times_panel, loop_panel, breaker_timeline,
          actions_table)


def add_row(d: db.Dashboard) -> db.Dashboard:
    """Add the "Controller" row and its panels to a dashboard builder."""
    d = d.with_row(db.Row("Controller"))
    for panel in PANELS:
        d = d.with_panel(panel())
    return d


def annotation_queries() -> list[dict[str, object]]:
    """The controller's decisions and new incidents, as annotations."""
    return [
        prometheus_annotation(
            "Controller decisions",
            "sum by (action, refusal) "
            "(increase(sentinel_controller_decisions_total[$__interval])) > 0",
            "purple",
            "{{action}}",
            "controller decision: {{action}}, refused: {{refusal}}",
            "action,refusal",
        ),
        prometheus_annotation(
            "Controller incidents",
            "sum by (kind) (increase(sentinel_controller_incidents_opened_total[$__interval])) > 0",
            "orange",
            "{{kind}}",
            "incident opened: {{kind}}",
            "kind",
        ),
    ]
