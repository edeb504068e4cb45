"""The Node health dashboard: is anything on this node slowing or breaking the job?"""

from __future__ import annotations

from typing import Any

from grafana_foundation_sdk.builders import dashboard as db
from grafana_foundation_sdk.models import dashboard as dm

from sentinel.dashboards.common import (
    BAD_THROTTLE_RE,
    DISK_READ_LATENCY_CRIT_S,
    DISK_READ_LATENCY_WARN_S,
    TAGS,
    TEMP_HEADROOM_CRIT_C,
    TEMP_HEADROOM_WARN_C,
    dashed_line,
    datasource_variable,
    finish,
    on_node,
    query_variable,
    stat_panel,
    table_panel,
    target,
    timeline_panel,
    timeseries_panel,
)

UID = "sentinel-node"
TITLE = "Sentinel / Node health"

N = 'hostname=~"$node"'
NG = 'hostname=~"$node", gpu=~"$gpu"'
RATE = "$__rate_interval"
GPU = "GPU {{gpu}}"

UP_MAPPINGS = (("1", "UP", "green"), ("0", "DOWN", "red"))
ACTIVE_MAPPINGS = (("0", "inactive", "transparent"), ("1", "ACTIVE", "orange"))


def build() -> dict[str, Any]:
    """Build the Node health dashboard as Grafana JSON data."""
    d = (
        db.Dashboard(TITLE)
        .uid(UID)
        .description(
            "One node: per GPU temperature against its slowdown threshold, each throttle "
            "reason, utilization, power, memory, ECC, row remapping and XID; disk read "
            "latency; host and agent health."
        )
        .tags([*TAGS, "node"])
        .editable()
        .refresh("30s")
        .time("now-3h", "now")
        .tooltip(dm.DashboardCursorSync.CROSSHAIR)
        .with_variable(datasource_variable())
        .with_variable(
            query_variable("node", "Node", "label_values(sentinel_agent_info, hostname)")
        )
        .with_variable(
            query_variable(
                "gpu",
                "GPU",
                'label_values(sentinel_gpu_up{hostname=~"$node"}, gpu)',
                multi=True,
                include_all=True,
            )
        )
        .with_row(db.Row("Overview"))
        .with_panel(
            stat_panel(
                "Agent",
                "Whether Prometheus can scrape this node's agent right now.",
                [
                    target(
                        "up * on(instance) group_left(hostname) max by (instance, hostname) "
                        f"(last_over_time(sentinel_agent_info{{{N}}}[1d]))"
                    )
                ],
                mappings=UP_MAPPINGS,
                steps=[(None, "red"), (1, "green")],
            )
        )
        .with_panel(
            stat_panel(
                "NVML",
                "Whether the agent could load NVML (no driver or library: no GPU series).",
                [target(f"max(sentinel_gpu_nvml_available{{{N}}})")],
                mappings=(("1", "OK", "green"), ("0", "NO NVML", "red")),
                steps=[(None, "red"), (1, "green")],
            )
        )
        .with_panel(
            stat_panel(
                "GPUs up",
                "GPUs whose every NVML query worked in the last collect.",
                [target(f"sum(sentinel_gpu_up{{{N}}})")],
                decimals=0,
            )
        )
        .with_panel(
            stat_panel(
                "GPUs hard-throttled",
                "GPUs with HW slowdown, HW/SW thermal slowdown or power brake active now.",
                [
                    target(
                        "sum(max by (gpu) (sentinel_gpu_clock_event_active"
                        f'{{{N}, reason=~"{BAD_THROTTLE_RE}"}}))'
                    )
                ],
                steps=[(None, "green"), (1, "red")],
                decimals=0,
            )
        )
        .with_panel(
            stat_panel(
                "Least temperature headroom",
                "Degrees between the hottest GPU and its own slowdown temperature.",
                [
                    target(
                        f"min(sentinel_gpu_slowdown_temperature_celsius{{{N}}} "
                        f"- sentinel_gpu_temperature_celsius{{{N}}})"
                    )
                ],
                unit="celsius",
                steps=[
                    (None, "red"),
                    (TEMP_HEADROOM_CRIT_C, "yellow"),
                    (TEMP_HEADROOM_WARN_C, "green"),
                ],
            )
        )
        .with_panel(
            stat_panel(
                "Collectors failing",
                "Agent collectors whose last collect failed (see the Agent row).",
                [target(f"sum({on_node('1 - sentinel_collector_success', N)})")],
                steps=[(None, "green"), (1, "red")],
                decimals=0,
            )
        )
        .with_row(db.Row("GPU temperature"))
        .with_panel(
            timeseries_panel(
                "GPU temperature against its slowdown threshold",
                "Core temperature per GPU; dashed: the GPU's own HW slowdown and shutdown "
                "temperatures (from NVML).",
                [
                    target(f"sentinel_gpu_temperature_celsius{{{NG}}}", GPU),
                    target(f"min(sentinel_gpu_slowdown_temperature_celsius{{{NG}}})", "slowdown"),
                    target(f"min(sentinel_gpu_shutdown_temperature_celsius{{{NG}}})", "shutdown"),
                ],
                unit="celsius",
                many_series=True,
            )
            .override_by_name("slowdown", dashed_line("orange"))
            .override_by_name("shutdown", dashed_line("red"))
        )
        .with_panel(
            timeseries_panel(
                "Headroom to slowdown",
                f"Slowdown temperature minus core temperature. Below {TEMP_HEADROOM_CRIT_C} "
                "C the next load spike throttles the GPU.",
                [
                    target(
                        f"sentinel_gpu_slowdown_temperature_celsius{{{NG}}} "
                        f"- sentinel_gpu_temperature_celsius{{{NG}}}",
                        GPU,
                    )
                ],
                unit="celsius",
                steps=[
                    (None, "red"),
                    (TEMP_HEADROOM_CRIT_C, "yellow"),
                    (TEMP_HEADROOM_WARN_C, "transparent"),
                ],
            )
        )
        .with_panel(
            timeseries_panel(
                "HBM temperature",
                "Memory temperature per GPU (where NVML reports it).",
                [target(f"sentinel_gpu_memory_temperature_celsius{{{NG}}}", GPU)],
                unit="celsius",
            )
        )
        .with_panel(
            timeseries_panel(
                "SM and memory clocks",
                "Current SM clock per GPU against the max SM clock; a throttled GPU's SM "
                "clock sits below the others.",
                [
                    target(f"sentinel_gpu_sm_clock_hertz{{{NG}}}", "GPU {{gpu}} SM"),
                    target(f"max(sentinel_gpu_sm_clock_max_hertz{{{NG}}})", "max SM clock"),
                    target(f"sentinel_gpu_memory_clock_hertz{{{NG}}}", "GPU {{gpu}} memory"),
                ],
                unit="hertz",
                many_series=True,
            ).override_by_name("max SM clock", dashed_line("green"))
        )
        .with_row(db.Row("Throttling"))
        .with_panel(
            timeline_panel(
                "Clock-event (throttle) reasons over time",
                "One row per NVML clock-event reason: active on any selected GPU. "
                "sw_power_cap under full load and gpu_idle at rest are normal; HW slowdown, "
                "thermal slowdown and power brake are not.",
                [
                    target(
                        f"max by (reason) (sentinel_gpu_clock_event_active{{{NG}}})", "{{reason}}"
                    )
                ],
                mappings=ACTIVE_MAPPINGS,
            )
        )
        .with_panel(
            timeline_panel(
                "Hard throttling per GPU",
                "Per GPU: any of HW slowdown, HW/SW thermal slowdown, power brake active.",
                [
                    target(
                        "max by (gpu) (sentinel_gpu_clock_event_active"
                        f'{{{NG}, reason=~"{BAD_THROTTLE_RE}"}})',
                        GPU,
                    )
                ],
                mappings=ACTIVE_MAPPINGS,
            )
        )
        .with_panel(
            timeseries_panel(
                "Time throttled, by violation reason (worst GPU)",
                "Share of wall time NVML counted as a clock violation, per reason, for the "
                "worst selected GPU.",
                [
                    target(
                        "max by (reason) "
                        f"(rate(sentinel_gpu_violation_seconds_total{{{NG}}}[{RATE}]))",
                        "{{reason}}",
                    )
                ],
                unit="percentunit",
                min_val=0,
            )
        )
        .with_panel(
            timeline_panel(
                "GPU up",
                "Per GPU: every NVML query worked (UP) or some failed / the GPU vanished.",
                [target(f"sentinel_gpu_up{{{NG}}}", GPU)],
                mappings=UP_MAPPINGS,
            )
        )
        .with_row(db.Row("Utilization, power and memory"))
        .with_panel(
            timeseries_panel(
                "Utilization",
                "GPU busy ratio and memory-controller busy ratio per GPU.",
                [
                    target(f"sentinel_gpu_utilization_ratio{{{NG}}}", "GPU {{gpu}} SM"),
                    target(f"sentinel_gpu_memory_utilization_ratio{{{NG}}}", "GPU {{gpu}} memory"),
                ],
                unit="percentunit",
                min_val=0,
                max_val=1,
                many_series=True,
            )
        )
        .with_panel(
            timeseries_panel(
                "Power",
                "Power draw per GPU against the enforced power limit; mean power from the "
                "energy counter for comparison.",
                [
                    target(f"sentinel_gpu_power_watts{{{NG}}}", GPU),
                    target(f"max(sentinel_gpu_power_limit_watts{{{NG}}})", "power limit"),
                    target(
                        f"sum(rate(sentinel_gpu_energy_joules_total{{{NG}}}[{RATE}]))",
                        "all selected GPUs (from energy)",
                    ),
                ],
                unit="watt",
                many_series=True,
            ).override_by_name("power limit", dashed_line("red"))
        )
        .with_panel(
            timeseries_panel(
                "GPU memory used",
                "Framebuffer memory used per GPU; dashed: total.",
                [
                    target(f"sentinel_gpu_memory_used_bytes{{{NG}}}", GPU),
                    target(f"max(sentinel_gpu_memory_total_bytes{{{NG}}})", "total"),
                ],
                unit="bytes",
                many_series=True,
            ).override_by_name("total", dashed_line("red"))
        )
        .with_row(db.Row("GPU errors"))
        .with_panel(
            timeseries_panel(
                "ECC errors",
                "ECC error counts per GPU: volatile (since the last reset) and aggregate "
                "(lifetime). Any uncorrected error is worth a burn-in.",
                [
                    target(
                        f"sum by (gpu, type, counter) (sentinel_gpu_ecc_errors_total{{{NG}}})",
                        "GPU {{gpu}} {{type}} {{counter}}",
                    )
                ],
                many_series=True,
            )
        )
        .with_panel(
            timeseries_panel(
                "XID errors",
                "XID events the agent saw, counted per GPU and XID code since the agent "
                "started (a step up is a new event).",
                [
                    target(
                        f"sum by (gpu, xid) (sentinel_gpu_xid_errors_total{{{NG}}})",
                        "GPU {{gpu}} XID {{xid}}",
                    )
                ],
                many_series=True,
            )
        )
        .with_panel(
            timeseries_panel(
                "Row remapping",
                "Rows remapped per cause; pending (needs a GPU reset) and failed remaps "
                "(replace the GPU).",
                [
                    target(f"sentinel_gpu_remapped_rows{{{NG}}}", "GPU {{gpu}} remapped {{cause}}"),
                    target(f"sentinel_gpu_remap_pending{{{NG}}}", "GPU {{gpu}} pending"),
                    target(f"sentinel_gpu_remap_failure{{{NG}}}", "GPU {{gpu}} failed"),
                ],
                many_series=True,
            )
        )
        .with_panel(
            timeseries_panel(
                "PCIe replays",
                "PCIe replay rate per GPU; a steady rate points at a bad link or riser.",
                [target(f"rate(sentinel_gpu_pcie_replay_total{{{NG}}}[{RATE}])", GPU)],
                unit="ops",
            )
        )
        .with_row(db.Row("Disk"))
        .with_panel(
            timeseries_panel(
                "Disk read latency",
                "Mean read latency per device over the agent's collection interval. Spikes "
                "together with throughput drops mean a data stall on storage.",
                [target(on_node("sentinel_disk_read_latency_seconds", N), "{{device}}")],
                unit="s",
                steps=[
                    (None, "green"),
                    (DISK_READ_LATENCY_WARN_S, "yellow"),
                    (DISK_READ_LATENCY_CRIT_S, "red"),
                ],
            )
        )
        .with_panel(
            timeseries_panel(
                "Disk latency from counters",
                "Read and write time per completed request over the rate interval "
                "(node_exporter's formula).",
                [
                    target(
                        on_node(
                            f"rate(sentinel_disk_read_time_seconds_total[{RATE}]) / "
                            f"rate(sentinel_disk_reads_completed_total[{RATE}])",
                            N,
                        ),
                        "{{device}} read",
                    ),
                    target(
                        on_node(
                            f"rate(sentinel_disk_write_time_seconds_total[{RATE}]) / "
                            f"rate(sentinel_disk_writes_completed_total[{RATE}])",
                            N,
                        ),
                        "{{device}} write",
                    ),
                ],
                unit="s",
            )
        )
        .with_panel(
            timeseries_panel(
                "Disk throughput",
                "Bytes read and written per second per device.",
                [
                    target(
                        on_node(f"rate(sentinel_disk_read_bytes_total[{RATE}])", N),
                        "{{device}} read",
                    ),
                    target(
                        on_node(f"rate(sentinel_disk_written_bytes_total[{RATE}])", N),
                        "{{device}} written",
                    ),
                ],
                unit="Bps",
            )
        )
        .with_panel(
            timeseries_panel(
                "Disk busy",
                "Share of time each device was doing I/O.",
                [
                    target(
                        on_node(f"rate(sentinel_disk_io_time_seconds_total[{RATE}])", N),
                        "{{device}}",
                    )
                ],
                unit="percentunit",
                min_val=0,
            )
        )
        .with_row(db.Row("Host"))
        .with_panel(
            timeseries_panel(
                "CPU and load",
                "CPU busy ratio (left axis) and load averages in runnable tasks (right axis).",
                [
                    target(on_node("sentinel_host_cpu_utilization_ratio", N), "CPU busy"),
                    target(on_node("sentinel_host_load_average", N), "load {{period}}"),
                ],
                w=8,
            ).override_by_regexp(
                "load .*",
                [
                    dm.DynamicConfigValue(id_val="unit", value="short"),
                    dm.DynamicConfigValue(id_val="custom.axisPlacement", value="right"),
                ],
            )
        )
        .with_panel(
            timeseries_panel(
                "Host memory",
                "RAM used and available; dashed: total.",
                [
                    target(on_node("sentinel_host_memory_used_bytes", N), "used"),
                    target(on_node("sentinel_host_memory_available_bytes", N), "available"),
                    target(on_node("sentinel_host_memory_total_bytes", N), "total"),
                ],
                unit="bytes",
                w=8,
            ).override_by_name("total", dashed_line("red"))
        )
        .with_panel(
            timeseries_panel(
                "Filesystem free",
                "Free space of the configured paths (checkpoints, dataset cache).",
                [
                    target(
                        on_node(
                            "sentinel_host_filesystem_free_bytes / "
                            "sentinel_host_filesystem_size_bytes",
                            N,
                        ),
                        "{{path}}",
                    )
                ],
                unit="percentunit",
                min_val=0,
                max_val=1,
                w=8,
            )
        )
        .with_row(db.Row("Agent"))
        .with_panel(
            timeline_panel(
                "Collectors",
                "Whether each collector's last collect worked.",
                [target(on_node("sentinel_collector_success", N), "{{collector}}")],
                mappings=(("1", "OK", "green"), ("0", "FAILED", "red")),
                w=6,
            )
        )
        .with_panel(
            timeseries_panel(
                "Collector duration",
                "Time each collector took; while one is overdue, how long it has been running.",
                [target(on_node("sentinel_collector_duration_seconds", N), "{{collector}}")],
                unit="s",
                w=6,
            )
        )
        .with_panel(
            timeseries_panel(
                "Collector timeouts",
                "Scrapes that left a collector out because it had not returned within "
                "agent.collector_timeout_seconds; one that stays here is hung (a wedged "
                "NVML call, a dead NFS mount).",
                [
                    target(
                        on_node(f"increase(sentinel_collector_timeouts_total[{RATE}])", N),
                        "{{collector}}",
                    )
                ],
                w=4,
            )
        )
        .with_panel(
            timeseries_panel(
                "Textfile age",
                "Seconds since each exported textfile (burn-in results) was written.",
                [target(f"time() - {on_node('sentinel_textfile_mtime_seconds', N)}", "{{file}}")],
                unit="s",
                w=4,
            )
        )
        .with_panel(
            table_panel(
                "Agent build",
                "The agent's version on this node.",
                [target(f"sentinel_agent_info{{{N}}}", instant=True, table=True)],
                rename={"Value": "info"},
                hide=("Time", "__name__", "job", "Value"),
                w=4,
            )
        )
    )
    return finish(d)
