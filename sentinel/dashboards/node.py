"""The Node health dashboard: is anything on this node slowing or breaking the job?"""

from __future__ import annotations

from typing import Any

from grafana_foundation_sdk.builders import dashboard as db
from grafana_foundation_sdk.models import dashboard as dm

from sentinel.dashboards.common import (
    BAD_THROTTLE_RE,
    DISK_READ_LATENCY_CRIT_S,
    DISK_READ_LATENCY_WARN_S,
    RATE_INTERVAL,
    TAGS,
    TEMP_HEADROOM_CRIT_C,
    TEMP_HEADROOM_WARN_C,
    PanelBuilder,
    cell,
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
    with_rows,
)

UID = "sentinel-node"
TITLE = "Sentinel / Node health"

# Label matchers: the selected node, and the selected GPUs of the selected node.
NODE_MATCHER = 'hostname=~"$node"'
NODE_GPU_MATCHER = 'hostname=~"$node", gpu=~"$gpu"'
# Legend of a per-GPU series.
GPU_LEGEND = "GPU {{gpu}}"

UP_MAPPINGS = (("1", "UP", "green"), ("0", "DOWN", "red"))
# The interconnect verdict as one number (the query below), and how the stat shows it.
LINK_VERDICT_CODES = (("OK", 0, "green"), ("SKIPPED", 1, "blue"), ("LOW_BANDWIDTH", 2, "red"),
                      ("WRONG_RESULTS", 3, "red"))
ACTIVE_MAPPINGS = (("0", "inactive", "transparent"), ("1", "ACTIVE", "orange"))


def build() -> dict[str, Any]:
    """Build the Node health dashboard as Grafana JSON data."""
    d = with_rows(_dashboard(), [
        ("Overview", _overview_row()),
        ("GPU temperature", _temperature_row()),
        ("Throttling", _throttling_row()),
        ("Utilization, power and memory", _utilization_row()),
        ("GPU errors", _gpu_errors_row()),
        ("Burn-in", _burnin_row()),
        ("Disk", _disk_row()),
        ("Host", _host_row()),
        ("Agent", _agent_row()),
    ])
    return finish(d)


def _dashboard() -> db.Dashboard:
    """The dashboard itself: title, time range and variables."""
    return (
        db.Dashboard(TITLE)
        .uid(UID)
        .description(
            "One node: per GPU temperature against its slowdown threshold, each throttle "
            "reason, utilization, power, memory, ECC, row remapping and XID; the last "
            "burn-in of its GPUs and of the links between them; disk read latency; host "
            "and agent health."
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
    )


def _overview_row() -> list[PanelBuilder]:
    """Agent, NVML, GPUs up and hard-throttled, temperature headroom, failing collectors."""
    return [
        stat_panel(
            "Agent",
            "Whether Prometheus can scrape this node's agent right now.",
            [
                target(
                    "up * on(instance) group_left(hostname) max by (instance, hostname) "
                    f"(last_over_time(sentinel_agent_info{{{NODE_MATCHER}}}[1d]))"
                )
            ],
            mappings=UP_MAPPINGS,
            steps=[(None, "red"), (1, "green")],
        ),
        stat_panel(
            "NVML",
            "Whether the agent could load NVML (no driver or library: no GPU series).",
            [target(f"max(sentinel_gpu_nvml_available{{{NODE_MATCHER}}})")],
            mappings=(("1", "OK", "green"), ("0", "NO NVML", "red")),
            steps=[(None, "red"), (1, "green")],
        ),
        stat_panel(
            "GPUs up",
            "GPUs whose every NVML query worked in the last collect.",
            [target(f"sum(sentinel_gpu_up{{{NODE_MATCHER}}})")],
            decimals=0,
        ),
        stat_panel(
            "GPUs hard-throttled",
            "GPUs with HW slowdown, HW/SW thermal slowdown or power brake active now.",
            [
                target(
                    "sum(max by (gpu) (sentinel_gpu_clock_event_active"
                    f'{{{NODE_MATCHER}, reason=~"{BAD_THROTTLE_RE}"}}))'
                )
            ],
            steps=[(None, "green"), (1, "red")],
            decimals=0,
        ),
        stat_panel(
            "Least temperature headroom",
            "Degrees between the hottest GPU and its own slowdown temperature.",
            [
                target(
                    f"min(sentinel_gpu_slowdown_temperature_celsius{{{NODE_MATCHER}}} "
                    f"- sentinel_gpu_temperature_celsius{{{NODE_MATCHER}}})"
                )
            ],
            unit="celsius",
            steps=[
                (None, "red"),
                (TEMP_HEADROOM_CRIT_C, "yellow"),
                (TEMP_HEADROOM_WARN_C, "green"),
            ],
        ),
        stat_panel(
            "Collectors failing",
            "Agent collectors whose last collect failed (see the Agent row).",
            [target(f"sum({on_node('1 - sentinel_collector_success', NODE_MATCHER)})")],
            steps=[(None, "green"), (1, "red")],
            decimals=0,
        ),
    ]


def _temperature_row() -> list[PanelBuilder]:
    """Core and HBM temperatures against the GPU's own thresholds, and the clocks."""
    return [
        timeseries_panel(
            "GPU temperature against its slowdown threshold",
            "Core temperature per GPU; dashed: the GPU's own HW slowdown and shutdown "
            "temperatures (from NVML).",
            [
                target(f"sentinel_gpu_temperature_celsius{{{NODE_GPU_MATCHER}}}", GPU_LEGEND),
                target(
                    f"min(sentinel_gpu_slowdown_temperature_celsius{{{NODE_GPU_MATCHER}}})",
                    "slowdown",
                ),
                target(
                    f"min(sentinel_gpu_shutdown_temperature_celsius{{{NODE_GPU_MATCHER}}})",
                    "shutdown",
                ),
            ],
            unit="celsius",
            many_series=True,
        )
        .override_by_name("slowdown", dashed_line("orange"))
        .override_by_name("shutdown", dashed_line("red")),
        timeseries_panel(
            "Headroom to slowdown",
            f"Slowdown temperature minus core temperature. Below {TEMP_HEADROOM_CRIT_C} "
            "C the next load spike throttles the GPU.",
            [
                target(
                    f"sentinel_gpu_slowdown_temperature_celsius{{{NODE_GPU_MATCHER}}} "
                    f"- sentinel_gpu_temperature_celsius{{{NODE_GPU_MATCHER}}}",
                    GPU_LEGEND,
                )
            ],
            unit="celsius",
            steps=[
                (None, "red"),
                (TEMP_HEADROOM_CRIT_C, "yellow"),
                (TEMP_HEADROOM_WARN_C, "transparent"),
            ],
        ),
        timeseries_panel(
            "HBM temperature",
            "Memory temperature per GPU (where NVML reports it).",
            [target(f"sentinel_gpu_memory_temperature_celsius{{{NODE_GPU_MATCHER}}}", GPU_LEGEND)],
            unit="celsius",
        ),
        timeseries_panel(
            "SM and memory clocks",
            "Current SM clock per GPU against the max SM clock; a throttled GPU's SM "
            "clock sits below the others.",
            [
                target(f"sentinel_gpu_sm_clock_hertz{{{NODE_GPU_MATCHER}}}", "GPU {{gpu}} SM"),
                target(
                    f"max(sentinel_gpu_sm_clock_max_hertz{{{NODE_GPU_MATCHER}}})",
                    "max SM clock",
                ),
                target(
                    f"sentinel_gpu_memory_clock_hertz{{{NODE_GPU_MATCHER}}}",
                    "GPU {{gpu}} memory",
                ),
            ],
            unit="hertz",
            many_series=True,
        ).override_by_name("max SM clock", dashed_line("green")),
    ]


def _throttling_row() -> list[PanelBuilder]:
    """Every clock-event reason over time, hard throttling per GPU, violations, GPU up."""
    return [
        timeline_panel(
            "Clock-event (throttle) reasons over time",
            "One row per NVML clock-event reason: active on any selected GPU. "
            "sw_power_cap under full load and gpu_idle at rest are normal; HW slowdown, "
            "thermal slowdown and power brake are not.",
            [
                target(
                    f"max by (reason) (sentinel_gpu_clock_event_active{{{NODE_GPU_MATCHER}}})",
                    "{{reason}}",
                ),
            ],
            mappings=ACTIVE_MAPPINGS,
        ),
        timeline_panel(
            "Hard throttling per GPU",
            "Per GPU: any of HW slowdown, HW/SW thermal slowdown, power brake active.",
            [
                target(
                    "max by (gpu) (sentinel_gpu_clock_event_active"
                    f'{{{NODE_GPU_MATCHER}, reason=~"{BAD_THROTTLE_RE}"}})',
                    GPU_LEGEND,
                )
            ],
            mappings=ACTIVE_MAPPINGS,
        ),
        timeseries_panel(
            "Time throttled, by violation reason (worst GPU)",
            "Share of wall time NVML counted as a clock violation, per reason, for the "
            "worst selected GPU.",
            [
                target(
                    "max by (reason) "
                    f"(rate(sentinel_gpu_violation_seconds_total{{{NODE_GPU_MATCHER}}}"
                    f"[{RATE_INTERVAL}]))",
                    "{{reason}}",
                )
            ],
            unit="percentunit",
            min_val=0,
        ),
        timeline_panel(
            "GPU up",
            "Per GPU: every NVML query worked (UP) or some failed / the GPU vanished.",
            [target(f"sentinel_gpu_up{{{NODE_GPU_MATCHER}}}", GPU_LEGEND)],
            mappings=UP_MAPPINGS,
        ),
        timeseries_panel(
            "Compute processes per GPU",
            "Processes NVML lists on each GPU. More than the job's ranks on a GPU means "
            "another process competes for it (throughput drops on that node).",
            [target(f"sentinel_gpu_compute_processes{{{NODE_GPU_MATCHER}}}", GPU_LEGEND)],
            min_val=0,
            many_series=True,
        ),
    ]


def _utilization_row() -> list[PanelBuilder]:
    """Utilization, power against the limit, and memory used against total."""
    return [
        timeseries_panel(
            "Utilization",
            "GPU busy ratio and memory-controller busy ratio per GPU.",
            [
                target(f"sentinel_gpu_utilization_ratio{{{NODE_GPU_MATCHER}}}", "GPU {{gpu}} SM"),
                target(
                    f"sentinel_gpu_memory_utilization_ratio{{{NODE_GPU_MATCHER}}}",
                    "GPU {{gpu}} memory",
                ),
            ],
            unit="percentunit",
            min_val=0,
            max_val=1,
            many_series=True,
        ),
        timeseries_panel(
            "Power",
            "Power draw per GPU against the enforced power limit; mean power from the "
            "energy counter for comparison.",
            [
                target(f"sentinel_gpu_power_watts{{{NODE_GPU_MATCHER}}}", GPU_LEGEND),
                target(f"max(sentinel_gpu_power_limit_watts{{{NODE_GPU_MATCHER}}})", "power limit"),
                target(
                    f"sum(rate(sentinel_gpu_energy_joules_total{{{NODE_GPU_MATCHER}}}"
                    f"[{RATE_INTERVAL}]))",
                    "all selected GPUs (from energy)",
                ),
            ],
            unit="watt",
            many_series=True,
        ).override_by_name("power limit", dashed_line("red")),
        timeseries_panel(
            "GPU memory used",
            "Framebuffer memory used per GPU; dashed: total.",
            [
                target(f"sentinel_gpu_memory_used_bytes{{{NODE_GPU_MATCHER}}}", GPU_LEGEND),
                target(f"max(sentinel_gpu_memory_total_bytes{{{NODE_GPU_MATCHER}}})", "total"),
            ],
            unit="bytes",
            many_series=True,
        ).override_by_name("total", dashed_line("red")),
    ]


def _gpu_errors_row() -> list[PanelBuilder]:
    """ECC, XID, row remapping and PCIe replays per GPU."""
    return [
        timeseries_panel(
            "ECC errors",
            "ECC error counts per GPU: volatile (since the last reset) and aggregate "
            "(lifetime). Any uncorrected error is worth a burn-in.",
            [
                target(
                    "sum by (gpu, type, counter) "
                    f"(sentinel_gpu_ecc_errors_total{{{NODE_GPU_MATCHER}}})",
                    "GPU {{gpu}} {{type}} {{counter}}",
                )
            ],
            many_series=True,
        ),
        timeseries_panel(
            "XID errors",
            "XID events the agent saw, counted per GPU and XID code since the agent "
            "started (a step up is a new event).",
            [
                target(
                    f"sum by (gpu, xid) (sentinel_gpu_xid_errors_total{{{NODE_GPU_MATCHER}}})",
                    "GPU {{gpu}} XID {{xid}}",
                )
            ],
            many_series=True,
        ),
        timeseries_panel(
            "Row remapping",
            "Rows remapped per cause; pending (needs a GPU reset) and failed remaps "
            "(replace the GPU).",
            [
                target(
                    f"sentinel_gpu_remapped_rows{{{NODE_GPU_MATCHER}}}",
                    "GPU {{gpu}} remapped {{cause}}",
                ),
                target(f"sentinel_gpu_remap_pending{{{NODE_GPU_MATCHER}}}", "GPU {{gpu}} pending"),
                target(f"sentinel_gpu_remap_failure{{{NODE_GPU_MATCHER}}}", "GPU {{gpu}} failed"),
            ],
            many_series=True,
        ),
        timeseries_panel(
            "PCIe replays",
            "PCIe replay rate per GPU; a steady rate points at a bad link or riser.",
            [
                target(
                    f"rate(sentinel_gpu_pcie_replay_total{{{NODE_GPU_MATCHER}}}[{RATE_INTERVAL}])",
                    GPU_LEGEND,
                ),
            ],
            unit="ops",
        ),
    ]


def _burnin_row() -> list[PanelBuilder]:
    """The last burn-in: each GPU's verdict and speed, and the links between the GPUs."""
    link_verdict = " or ".join(
        f'(sentinel_burnin_interconnect_verdict{{{NODE_MATCHER}, verdict="{v}"}} == 1) * {code}'
        for v, code, _ in LINK_VERDICT_CODES)
    return [
        table_panel(
            "Last burn-in per GPU",
            "Verdict of each GPU's last burn-in (LOW_BANDWIDTH: a link it shares was slow or "
            "failed), its median TFLOPS, throttle time and age.",
            [
                cell(f"sentinel_burnin_verdict{{{NODE_GPU_MATCHER}}} == 1"),
                cell(f'max without (stat) (sentinel_burnin_tflops{{{NODE_GPU_MATCHER}, '
                     f'stat="median"}})'),
                cell(f"sentinel_burnin_throttle_seconds{{{NODE_GPU_MATCHER}}}"),
                cell(f"time() - sentinel_burnin_timestamp_seconds{{{NODE_GPU_MATCHER}}}"),
            ],
            rename={"Value #B": "TFLOPS median", "Value #C": "throttled s", "Value #D": "age s"},
            hide=("Time", "__name__", "instance", "job", "hostname", "UUID", "Value #A"),
            w=10,
        ),
        stat_panel(
            "Interconnect check",
            "The last burn-in's check of the links between this node's GPUs: copies between "
            "every pair and an NCCL all-reduce. SKIPPED: one GPU under test (it needs two).",
            [target(f"max({link_verdict})")],
            mappings=tuple((str(code), v, color) for v, code, color in LINK_VERDICT_CODES),
            steps=[(None, "green"), (2, "red")],
            decimals=0,
        ),
        table_panel(
            "Copy bandwidth between GPUs",
            "Last burn-in: device-to-device copy bandwidth of each direction between two "
            "GPUs, in GB/s, with the kind of link (nvlink, or the PCIe level).",
            [cell(f"sentinel_burnin_copy_bandwidth_bytes_per_second{{{NODE_MATCHER}}} / 1e9")],
            rename={"gpu": "from GPU", "peer_gpu": "to GPU", "Value": "GB/s"},
            hide=("Time", "__name__", "instance", "job", "hostname"),
            sort_by="GB/s",
            w=6,
        ),
        stat_panel(
            "All-reduce bus bandwidth",
            "Last burn-in: NCCL all-reduce over every GPU, bus bandwidth as nccl-tests reports "
            "it (busbw).",
            [target(f"max(sentinel_burnin_allreduce_bus_bandwidth_bytes_per_second"
                    f"{{{NODE_MATCHER}}})")],
            unit="Bps",
        ),
    ]


def _disk_row() -> list[PanelBuilder]:
    """Read latency, latency from the counters, throughput and busy time per device."""
    return [
        timeseries_panel(
            "Disk read latency",
            "Mean read latency per device over the agent's collection interval. Spikes "
            "together with throughput drops mean a data stall on storage.",
            [target(on_node("sentinel_disk_read_latency_seconds", NODE_MATCHER), "{{device}}")],
            unit="s",
            steps=[
                (None, "green"),
                (DISK_READ_LATENCY_WARN_S, "yellow"),
                (DISK_READ_LATENCY_CRIT_S, "red"),
            ],
        ),
        timeseries_panel(
            "Disk stalls (worst second)",
            "From the agent's one-second diskstats sampler: the worst second of read "
            "latency and of busy time in each 15 s, and the most I/Os in flight, so a "
            "stall of a few seconds shows at its full height.",
            [
                target(on_node("sentinel_disk_read_latency_max_seconds", NODE_MATCHER),
                       "{{device}} worst second"),
                target(on_node("sentinel_disk_read_latency_recent_seconds", NODE_MATCHER),
                       "{{device}} latest second"),
            ],
            unit="s",
            steps=[
                (None, "green"),
                (DISK_READ_LATENCY_WARN_S, "yellow"),
                (DISK_READ_LATENCY_CRIT_S, "red"),
            ],
        ),
        timeseries_panel(
            "Disk queue (worst second)",
            "Most I/Os in flight at a one-second sample, and the highest share of a second "
            "spent doing I/O, in each 15 s.",
            [
                target(on_node("sentinel_disk_in_flight_ios_max", NODE_MATCHER),
                       "{{device}} in flight"),
                target(on_node("sentinel_disk_busy_ratio_max", NODE_MATCHER),
                       "{{device}} busy"),
            ],
        ),
        timeseries_panel(
            "Disk latency from counters",
            "Read and write time per completed request over the rate interval "
            "(node_exporter's formula).",
            [
                target(
                    on_node(
                        f"rate(sentinel_disk_read_time_seconds_total[{RATE_INTERVAL}]) / "
                        f"rate(sentinel_disk_reads_completed_total[{RATE_INTERVAL}])",
                        NODE_MATCHER,
                    ),
                    "{{device}} read",
                ),
                target(
                    on_node(
                        f"rate(sentinel_disk_write_time_seconds_total[{RATE_INTERVAL}]) / "
                        f"rate(sentinel_disk_writes_completed_total[{RATE_INTERVAL}])",
                        NODE_MATCHER,
                    ),
                    "{{device}} write",
                ),
            ],
            unit="s",
        ),
        timeseries_panel(
            "Disk throughput",
            "Bytes read and written per second per device.",
            [
                target(
                    on_node(f"rate(sentinel_disk_read_bytes_total[{RATE_INTERVAL}])", NODE_MATCHER),
                    "{{device}} read",
                ),
                target(
                    on_node(
                        f"rate(sentinel_disk_written_bytes_total[{RATE_INTERVAL}])", NODE_MATCHER
                    ),
                    "{{device}} written",
                ),
            ],
            unit="Bps",
        ),
        timeseries_panel(
            "Disk busy",
            "Share of time each device was doing I/O.",
            [
                target(
                    on_node(
                        f"rate(sentinel_disk_io_time_seconds_total[{RATE_INTERVAL}])", NODE_MATCHER
                    ),
                    "{{device}}",
                )
            ],
            unit="percentunit",
            min_val=0,
        ),
    ]


def _host_row() -> list[PanelBuilder]:
    """CPU and load, RAM, and free space of the configured filesystems."""
    return [
        timeseries_panel(
            "CPU and load",
            "CPU busy ratio (left axis) and load averages in runnable tasks (right axis).",
            [
                target(on_node("sentinel_host_cpu_utilization_ratio", NODE_MATCHER), "CPU busy"),
                target(on_node("sentinel_host_load_average", NODE_MATCHER), "load {{period}}"),
            ],
            w=8,
        ).override_by_regexp(
            "load .*",
            [
                dm.DynamicConfigValue(id_val="unit", value="short"),
                dm.DynamicConfigValue(id_val="custom.axisPlacement", value="right"),
            ],
        ),
        timeseries_panel(
            "Host memory",
            "RAM used and available; dashed: total.",
            [
                target(on_node("sentinel_host_memory_used_bytes", NODE_MATCHER), "used"),
                target(on_node("sentinel_host_memory_available_bytes", NODE_MATCHER), "available"),
                target(on_node("sentinel_host_memory_total_bytes", NODE_MATCHER), "total"),
            ],
            unit="bytes",
            w=8,
        ).override_by_name("total", dashed_line("red")),
        timeseries_panel(
            "Filesystem free",
            "Free space of the configured paths (checkpoints, dataset cache).",
            [
                target(
                    on_node(
                        "sentinel_host_filesystem_free_bytes / "
                        "sentinel_host_filesystem_size_bytes",
                        NODE_MATCHER,
                    ),
                    "{{path}}",
                )
            ],
            unit="percentunit",
            min_val=0,
            max_val=1,
            w=8,
        ),
    ]


def _agent_row() -> list[PanelBuilder]:
    """Collector success and duration, textfile age, the agent's build."""
    return [
        timeline_panel(
            "Collectors",
            "Whether each collector's last collect worked.",
            [target(on_node("sentinel_collector_success", NODE_MATCHER), "{{collector}}")],
            mappings=(("1", "OK", "green"), ("0", "FAILED", "red")),
            w=6,
        ),
        timeseries_panel(
            "Collector duration",
            "Time each collector took; while one is overdue, how long it has been running.",
            [target(on_node("sentinel_collector_duration_seconds", NODE_MATCHER), "{{collector}}")],
            unit="s",
            w=6,
        ),
        timeseries_panel(
            "Collector timeouts",
            "Scrapes that left a collector out because it had not returned within "
            "agent.collector_timeout_seconds; one that stays here is hung (a wedged "
            "NVML call, a dead NFS mount).",
            [
                target(
                    on_node(f"increase(sentinel_collector_timeouts_total[{RATE_INTERVAL}])",
                            NODE_MATCHER),
                    "{{collector}}",
                ),
            ],
            w=4,
        ),
        timeseries_panel(
            "Textfile age",
            "Seconds since each exported textfile (burn-in results) was written.",
            [
                target(
                    f"time() - {on_node('sentinel_textfile_mtime_seconds', NODE_MATCHER)}",
                    "{{file}}",
                ),
            ],
            unit="s",
            w=4,
        ),
        table_panel(
            "Agent build",
            "The agent's version on this node.",
            [target(f"sentinel_agent_info{{{NODE_MATCHER}}}", instant=True, table=True)],
            rename={"Value": "info"},
            hide=("Time", "__name__", "job", "Value"),
            w=4,
        ),
    ]
