"""Shared pieces of the generated dashboards: datasource, variables, panels, thresholds.

Every dashboard is built with Grafana's ``grafana-foundation-sdk`` (11.6 flavour) and
queries only metrics named in docs/METRICS.md. Panels use the ``$datasource`` variable
so one JSON works with any Prometheus datasource.

Label conventions the queries rely on (see docs/DESIGN.md, "Dashboards"):

- Training series carry the training job in ``job``: the Prometheus scrape config for
  agents sets ``honor_labels: true`` so the exposed label wins over the scrape job's
  name (deploy/prometheus). GPU/disk/host series keep the scrape job's name there.
- GPU and training series carry ``hostname``. Disk, host and collector series do not;
  they are joined to ``sentinel_agent_info`` on ``instance`` to get it (:func:`on_node`).
"""

from __future__ import annotations

import json
import string
from collections.abc import Sequence
from typing import Any

from grafana_foundation_sdk.builders import bargauge, stat, statetimeline, table, timeseries
from grafana_foundation_sdk.builders import common as cb
from grafana_foundation_sdk.builders import dashboard as db
from grafana_foundation_sdk.builders import prometheus as pb
from grafana_foundation_sdk.cog import builder as cogbuilder
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common as cm
from grafana_foundation_sdk.models import dashboard as dm
from grafana_foundation_sdk.models.prometheus import PromQueryFormat

from sentinel.gpu.reasons import BAD_REASONS, promql_regex

DATASOURCE_VAR = "datasource"
DS = dm.DataSourceRef(type_val="prometheus", uid="${" + DATASOURCE_VAR + "}")
# uid of the datasource deploy/grafana provisions; dashboards still pick via $datasource.
PROVISIONED_DATASOURCE_UID = "sentinel-prometheus"
TAGS = ["sentinel"]

# Clock-event reasons the "hard-throttled" panels count: the shared bad set (slowed by
# heat or hardware protection; sw_power_cap and gpu_idle are normal and not counted).
BAD_THROTTLE_RE = promql_regex(BAD_REASONS)

# Degrees below the GPU's own slowdown temperature at which panels turn yellow / red.
# H100s under sustained load run 10-20 C below slowdown; within 5 C the next load
# spike or a failed fan throttles the GPU.
TEMP_HEADROOM_WARN_C = 10
TEMP_HEADROOM_CRIT_C = 5

# Mean disk read latency that turns panels red: the threshold of the common
# node_exporter alert (ANCHORS.md, "above 0.1 s for 5 minutes").
DISK_READ_LATENCY_CRIT_S = 0.1
DISK_READ_LATENCY_WARN_S = 0.02

# NVRx straggler score: reference median step time / node median step time; NVRx
# calls a rank a straggler below 0.75.
STRAGGLER_SCORE = 0.75

# Age of a job's last step report that turns yellow / red. Steps of large runs take
# seconds; a minute without a report is worth a look, five minutes is a hang.
REPORT_AGE_WARN_S = 60
REPORT_AGE_CRIT_S = 300

# Window over which the job's expected tokens/sec is averaged (long enough that one bad
# hour barely moves it), and the band's default half-width. A healthy node stays within
# a few percent of its peers; 10% is gpu-fryer's margin for a bad GPU, and a sustained
# departure beyond it is a red flag.
BAND_WINDOWS = ("1h", "6h", "24h")
BAND_WINDOW_DEFAULT = "6h"
BAND_TOLERANCES = ("0.05", "0.1", "0.2")
BAND_TOLERANCE_DEFAULT = "0.1"


# What a row function returns: its panels, in order.
PanelBuilder = cogbuilder.Builder[dm.Panel]

# Grafana's rate window variable: at least four scrape intervals, so rate() always has
# two samples however far the panel is zoomed out.
RATE_INTERVAL = "$__rate_interval"


def with_rows(
    d: db.Dashboard, rows: Sequence[tuple[str, Sequence[PanelBuilder]]]
) -> db.Dashboard:
    """Add each (title, panels) row to ``d``: the row, then its panels, in order."""
    for title, panels in rows:
        d = d.with_row(db.Row(title))
        for p in panels:
            d = d.with_panel(p)
    return d


def on_node(expr: str, node_matcher: str = 'hostname=~"$node"') -> str:
    """Attach ``hostname`` to a series without it by joining ``sentinel_agent_info``."""
    return (
        f"({expr}) * on(instance) group_left(hostname) "
        f"max by (instance, hostname) (sentinel_agent_info{{{node_matcher}}})"
    )


def target(
    expr: str, legend: str = "", *, instant: bool = False, table: bool = False
) -> pb.Dataquery:
    """Build one Prometheus query (refIds are assigned when the panel is finished)."""
    q = pb.Dataquery().expr(expr).datasource(DS)
    if legend:
        q = q.legend_format(legend)
    if instant:
        q = q.instant()
    else:
        q = q.range()
    if table:
        q = q.format(PromQueryFormat.TABLE)
    return q


def cell(expr: str) -> pb.Dataquery:
    """An instant query in table format: one column of a table panel."""
    return target(expr, instant=True, table=True)


def thresholds(steps: Sequence[tuple[float | None, str]]) -> db.ThresholdsConfig:
    """Build absolute thresholds from (value, colour) pairs; the first value is None (base)."""
    return (
        db.ThresholdsConfig()
        .mode(dm.ThresholdsMode.ABSOLUTE)
        .steps([dm.Threshold(value=v, color=c) for v, c in steps])
    )


def legend_table() -> cb.VizLegendOptions:
    """A legend as a table with last and max values, for panels with many series."""
    return (
        cb.VizLegendOptions()
        .display_mode(cm.LegendDisplayMode.TABLE)
        .placement(cm.LegendPlacement.BOTTOM)
        .show_legend(True)
        .calcs(["lastNotNull", "max"])
    )


def legend_list() -> cb.VizLegendOptions:
    """A compact legend below the graph."""
    return (
        cb.VizLegendOptions()
        .display_mode(cm.LegendDisplayMode.LIST)
        .placement(cm.LegendPlacement.BOTTOM)
        .show_legend(True)
    )


def reduce_last() -> cb.ReduceDataOptions:
    """Reduce a series to its last non-null value (stat, gauge, bar gauge panels)."""
    return cb.ReduceDataOptions().calcs(["lastNotNull"]).values(False)


def datasource_variable() -> db.DatasourceVariable:
    """The ``$datasource`` variable: any Prometheus datasource."""
    return db.DatasourceVariable(DATASOURCE_VAR).label("Data source").type("prometheus")


def query_variable(
    name: str,
    label: str,
    query: str,
    *,
    multi: bool = False,
    include_all: bool = False,
) -> db.QueryVariable:
    """A variable filled from Prometheus with ``label_values(...)``, refreshed on time change."""
    v = (
        db.QueryVariable(name)
        .label(label)
        .query(query)
        .datasource(DS)
        .refresh(dm.VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(dm.VariableSort.NATURAL_ASC)
        .multi(multi)
        .include_all(include_all)
    )
    if include_all:
        v = v.all_value(".*")
    return v


def custom_variable(
    name: str, label: str, values: Sequence[str], default: str
) -> db.CustomVariable:
    """A variable with fixed choices (comma separated in Grafana)."""
    return (
        db.CustomVariable(name)
        .label(label)
        .values(",".join(values))
        .current(dm.VariableOption(selected=True, text=default, value=default))
        .options([dm.VariableOption(selected=v == default, text=v, value=v) for v in values])
    )


def prometheus_annotation(
    name: str, expr: str, color: str, title: str, text: str, tag_keys: str
) -> dict[str, object]:
    """A Prometheus annotation query in the shape Grafana 11's Prometheus plugin saves.

    The SDK's AnnotationQuery puts ``expr`` at the top level (pre-10 shape) and has no
    ``titleFormat``/``textFormat``; Grafana 11 keeps the query in ``target`` and the
    display fields at the top level, so the annotation is written out by hand.
    """
    return {
        "datasource": {"type": "prometheus", "uid": "${" + DATASOURCE_VAR + "}"},
        "enable": True,
        "hide": False,
        "iconColor": color,
        "name": name,
        "target": {"expr": expr, "refId": "Anno", "interval": "", "range": True},
        "titleFormat": title,
        "textFormat": text,
        "tagKeys": tag_keys,
        "useValueForTime": False,
    }


# Fields the SDK's QueryVariable/CustomVariable builders emit that belong to interval
# variables only; @grafana/schema rejects them on other variable types.
_INTERVAL_ONLY_KEYS = ("auto", "auto_count", "auto_min")

GRAFANA_BUILTIN_ANNOTATION: dict[str, object] = {
    "builtIn": 1,
    "datasource": {"type": "grafana", "uid": "-- Grafana --"},
    "enable": True,
    "hide": True,
    "iconColor": "rgba(0, 211, 255, 1)",
    "name": "Annotations & Alerts",
    "type": "dashboard",
}


def finish(builder: db.Dashboard, annotations: Sequence[dict[str, object]] = ()) -> dict[str, Any]:
    """Build the dashboard into plain JSON data with stable panel ids and refIds."""
    data: dict[str, Any] = json.loads(json.dumps(builder.build(), cls=JSONEncoder))
    for i, panel in enumerate(iter_panels(data), start=1):
        panel["id"] = i
        for j, t in enumerate(panel.get("targets", [])):
            t["refId"] = string.ascii_uppercase[j]
    for var in data.get("templating", {}).get("list", []):
        if var.get("type") != "interval":
            for k in _INTERVAL_ONLY_KEYS:
                var.pop(k, None)
    data["annotations"] = {"list": [GRAFANA_BUILTIN_ANNOTATION, *annotations]}
    return data


def iter_panels(data: dict[str, Any]) -> list[dict[str, Any]]:
    """Return every panel of a dashboard, rows and the panels inside collapsed rows included."""
    out: list[dict[str, Any]] = []
    for p in data.get("panels", []):
        out.append(p)
        out.extend(p.get("panels", []))
    return out


# ---- panel factories -------------------------------------------------------------
# Sizes are in Grafana grid units (24 columns wide).


def timeseries_panel(
    title: str,
    description: str,
    targets: Sequence[pb.Dataquery],
    *,
    unit: str = "short",
    w: int = 12,
    h: int = 8,
    steps: Sequence[tuple[float | None, str]] | None = None,
    min_val: float | None = None,
    max_val: float | None = None,
    bars: bool = False,
    many_series: bool = False,
) -> timeseries.Panel:
    """A time series panel; ``steps`` draws thresholds as dashed lines."""
    p = (
        timeseries.Panel()
        .title(title)
        .description(description)
        .datasource(DS)
        .unit(unit)
        .span(w)
        .height(h)
        .legend(legend_table() if many_series else legend_list())
        .tooltip(
            cb.VizTooltipOptions().mode(cm.TooltipDisplayMode.MULTI).sort(cm.SortOrder.DESCENDING)
        )
        .line_width(1)
        .fill_opacity(10)
    )
    if bars:
        p = p.draw_style(cm.GraphDrawStyle.BARS).fill_opacity(80)
    if steps:
        p = p.thresholds(thresholds(steps)).thresholds_style(
            cb.GraphThresholdsStyleConfig().mode(cm.GraphThresholdsStyleMode.DASHED)
        )
    if min_val is not None:
        p = p.min(min_val)
    if max_val is not None:
        p = p.max(max_val)
    for t in targets:
        p = p.with_target(t)
    return p


def stat_panel(
    title: str,
    description: str,
    targets: Sequence[pb.Dataquery],
    *,
    unit: str = "short",
    w: int = 4,
    h: int = 4,
    steps: Sequence[tuple[float | None, str]] = ((None, "green"),),
    mappings: Sequence[tuple[str, str, str]] = (),
    decimals: float | None = None,
) -> stat.Panel:
    """A single-value panel coloured by ``steps``; ``mappings`` are (value, text, colour)."""
    p = (
        stat.Panel()
        .title(title)
        .description(description)
        .datasource(DS)
        .unit(unit)
        .span(w)
        .height(h)
        .reduce_options(reduce_last())
        .color_mode(cm.BigValueColorMode.BACKGROUND)
        .graph_mode(cm.BigValueGraphMode.NONE)
        .thresholds(thresholds(steps))
    )
    if decimals is not None:
        p = p.decimals(decimals)
    if mappings:
        p = p.mappings(value_mappings(mappings))
    for t in targets:
        p = p.with_target(t)
    return p


def value_mappings(mappings: Sequence[tuple[str, str, str]]) -> list[dm.ValueMapping]:
    """Map exact values to text and colour, e.g. ("0", "DOWN", "red")."""
    return [
        dm.ValueMap(
            options={
                v: dm.ValueMappingResult(text=text, color=color, index=i)
                for i, (v, text, color) in enumerate(mappings)
            }
        )
    ]


def timeline_panel(
    title: str,
    description: str,
    targets: Sequence[pb.Dataquery],
    *,
    mappings: Sequence[tuple[str, str, str]],
    w: int = 12,
    h: int = 8,
) -> statetimeline.Panel:
    """A state timeline: one row per series, coloured by ``mappings``."""
    p = (
        statetimeline.Panel()
        .title(title)
        .description(description)
        .datasource(DS)
        .span(w)
        .height(h)
        .show_value(cm.VisibilityMode.NEVER)
        .merge_values(True)
        .row_height(0.8)
        .legend(legend_list())
        .mappings(value_mappings(mappings))
        .thresholds(thresholds([(None, "green")]))
    )
    for t in targets:
        p = p.with_target(t)
    return p


def table_panel(
    title: str,
    description: str,
    targets: Sequence[pb.Dataquery],
    *,
    rename: dict[str, str],
    hide: Sequence[str] = ("Time", "__name__", "instance", "job"),
    w: int = 24,
    h: int = 8,
    sort_by: str | None = None,
    sort_desc: bool = False,
) -> table.Panel:
    """A table of instant queries merged into one row per series (``rename`` names columns)."""
    p = (
        table.Panel()
        .title(title)
        .description(description)
        .datasource(DS)
        .span(w)
        .height(h)
        .show_header(True)
        .with_transformation(dm.DataTransformerConfig(id_val="merge", options={}))
        .with_transformation(
            dm.DataTransformerConfig(
                id_val="organize",
                options={
                    "excludeByName": {k: True for k in hide},
                    "renameByName": rename,
                    "indexByName": {},
                },
            )
        )
    )
    if sort_by is not None:
        p = p.sort_by([cb.TableSortByFieldState().display_name(sort_by).desc(sort_desc)])
    for t in targets:
        p = p.with_target(t)
    return p


def bargauge_panel(
    title: str,
    description: str,
    targets: Sequence[pb.Dataquery],
    *,
    unit: str = "short",
    w: int = 12,
    h: int = 8,
    steps: Sequence[tuple[float | None, str]] = ((None, "green"),),
    min_val: float | None = None,
    max_val: float | None = None,
) -> bargauge.Panel:
    """Horizontal bars, one per series (rankings such as the slowest nodes)."""
    p = (
        bargauge.Panel()
        .title(title)
        .description(description)
        .datasource(DS)
        .unit(unit)
        .span(w)
        .height(h)
        .orientation(cm.VizOrientation.HORIZONTAL)
        .display_mode(cm.BarGaugeDisplayMode.BASIC)
        .reduce_options(reduce_last())
        .thresholds(thresholds(steps))
    )
    if min_val is not None:
        p = p.min(min_val)
    if max_val is not None:
        p = p.max(max_val)
    for t in targets:
        p = p.with_target(t)
    return p


def dashed_line(color: str) -> list[dm.DynamicConfigValue]:
    """Override properties that draw a reference series as a dashed line without fill."""
    return [
        dm.DynamicConfigValue(id_val="custom.lineStyle", value={"fill": "dash", "dash": [10, 10]}),
        dm.DynamicConfigValue(id_val="custom.fillOpacity", value=0),
        dm.DynamicConfigValue(id_val="color", value={"mode": "fixed", "fixedColor": color}),
    ]
