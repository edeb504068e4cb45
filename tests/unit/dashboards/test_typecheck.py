"""The generated dashboards type-check against Grafana's published TypeScript schema.

Each dashboard becomes a .ts file in tests/typescript (where `npm ci` installed
@grafana/schema and typescript) that asserts, with `satisfies`:

- the whole dashboard is a `Dashboard` from '@grafana/schema' (as JSON spells it:
  `JsonOf` turns the schema's string enums into their values, see json-types.ts);
- every panel's `options` and `fieldConfig.defaults.custom` are the `Options` and
  `FieldConfig` of its panel type (from @grafana/schema's panelcfg types);
- every panel target and annotation is a Prometheus query / annotation
  (tests/typescript/json-types.ts: @grafana/schema does not publish these; the
  annotation list is therefore checked as `PromAnnotation[]` and then passed into
  the dashboard, not as a literal inside it).
"""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
import uuid
from pathlib import Path
from typing import Any

import pytest

from sentinel.dashboards.common import iter_panels
from sentinel.dashboards.generate import DASHBOARDS
from tests.support.services import IN_CI

TS_DIR = Path(__file__).resolve().parents[2] / "typescript"
PANELCFG = "@grafana/schema/dist/esm/raw/composable"
# panel type -> (directory, type-name prefix, has a FieldConfig type)
PANEL_TYPES = {
    "timeseries": ("timeseries", "TimeSeriesPanelCfg", True),
    "stat": ("stat", "StatPanelCfg", False),
    "table": ("table", "TablePanelCfg", True),
    "state-timeline": ("statetimeline", "StateTimelinePanelCfg", True),
    "bargauge": ("bargauge", "BarGaugePanelCfg", False),
}
ANNOTATIONS_PLACEHOLDER = "__SENTINEL_ANNOTATIONS__"


def _tsc() -> Path:
    tsc = TS_DIR / "node_modules" / ".bin" / "tsc"
    if tsc.exists() and shutil.which("node"):
        return tsc
    msg = (
        "TypeScript checker not installed: install nodejs/npm (apt-get install nodejs npm) "
        "and run `npm ci` in tests/typescript (scripts/install-deps.sh does both)"
    )
    if IN_CI:
        pytest.fail(msg)
    pytest.skip(msg)


def to_typescript(dash: dict[str, Any]) -> str:
    """Render one dashboard as a TypeScript module of `satisfies` assertions."""
    dash = copy.deepcopy(dash)
    lines = ["import type { Dashboard } from '@grafana/schema';"]
    lines.append("import type { JsonOf, PromAnnotation, PromQuery } from './json-types';")
    for ptype, (folder, prefix, _) in PANEL_TYPES.items():
        alias = ptype.replace("-", "_")
        lines.append(
            f"import type * as {alias} from '{PANELCFG}/{folder}/panelcfg/x/{prefix}_types.gen';"
        )
    annotations = dash.get("annotations", {}).get("list", [])
    lines.append(
        f"export const annotations = {json.dumps(annotations)} satisfies JsonOf<PromAnnotation>[];"
    )
    for p in iter_panels(dash):
        ptype = p["type"]
        if ptype == "row":
            continue
        assert ptype in PANEL_TYPES, f"no schema type known for panel type {ptype!r}"
        alias = ptype.replace("-", "_")
        pid = p["id"]
        lines.append(
            f"export const p{pid}_options = {json.dumps(p.get('options', {}))} "
            f"satisfies JsonOf<{alias}.Options>;"
        )
        custom = p.get("fieldConfig", {}).get("defaults", {}).get("custom")
        if custom is not None:
            assert PANEL_TYPES[ptype][2], f"panel {pid} ({ptype}) has custom field config"
            lines.append(
                f"export const p{pid}_custom = {json.dumps(custom)} "
                f"satisfies JsonOf<{alias}.FieldConfig>;"
            )
        lines.append(
            f"export const p{pid}_targets = {json.dumps(p.get('targets', []))} "
            "satisfies JsonOf<PromQuery>[];"
        )
    dash["annotations"] = {"list": ANNOTATIONS_PLACEHOLDER}
    body = json.dumps(dash, indent=1).replace(f'"{ANNOTATIONS_PLACEHOLDER}"', "annotations")
    # `satisfies` must be on the line that closes the literal (automatic semicolons).
    lines.append(f"export const d = {body} satisfies JsonOf<Dashboard>;")
    return "\n".join(lines) + "\n"


def run_tsc(sources: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Write the sources into tests/typescript, run tsc --strict on them, clean up."""
    tsc = _tsc()
    tag = uuid.uuid4().hex[:8]
    paths = []
    try:
        for name, text in sources.items():
            path = TS_DIR / f"_check_{tag}_{name}.ts"
            path.write_text(text, encoding="utf-8")
            paths.append(path)
        return subprocess.run(
            [
                str(tsc),
                "--noEmit",
                "--strict",
                "--skipLibCheck",
                "--target",
                "es2022",
                "--moduleResolution",
                "node10",
                *[p.name for p in paths],
            ],
            cwd=TS_DIR,
            capture_output=True,
            text=True,
            timeout=120,
        )
    finally:
        for p in paths:
            p.unlink(missing_ok=True)


def test_generated_dashboards_satisfy_grafana_schema() -> None:
    sources = {stem.replace("-", "_"): to_typescript(build()) for stem, build in DASHBOARDS}
    res = run_tsc(sources)
    assert res.returncode == 0, f"tsc found type errors:\n{res.stdout}{res.stderr}"


def _first(dash: dict[str, Any], ptype: str) -> dict[str, Any]:
    return next(p for p in iter_panels(dash) if p["type"] == ptype)


# (name, how to break the Training run dashboard, text tsc's error must contain)
BREAKAGES: list[tuple[str, Any, str]] = [
    ("misspelt_field", lambda d: d.update(refersh="30s"), "'\"refersh\"' does not exist"),
    (
        "width_as_string",
        lambda d: d["panels"][1]["gridPos"].update(w="4"),
        "Type 'string' is not assignable to type 'number'",
    ),
    (
        "unknown_colour_mode",
        lambda d: _first(d, "stat")["options"].update(colorMode="rainbow"),
        '"rainbow"',
    ),
    (
        "line_width_as_string",
        lambda d: _first(d, "timeseries")["fieldConfig"]["defaults"].update(
            custom={"lineWidth": "thick"}
        ),
        "Type 'string' is not assignable to type 'number'",
    ),
    (
        "target_without_expr",
        lambda d: _first(d, "timeseries")["targets"][0].pop("expr"),
        "'expr' is missing",
    ),
    (
        "annotation_without_colour",
        lambda d: d["annotations"]["list"][1].pop("iconColor"),
        "'iconColor' is missing",
    ),
]


def test_type_check_catches_broken_dashboards() -> None:
    _stem, build = DASHBOARDS[0]
    sources = {}
    for name, breakage, _ in BREAKAGES:
        dash = build()
        breakage(dash)
        sources[name] = to_typescript(dash)
    res = run_tsc(sources)
    assert res.returncode != 0, "tsc accepted broken dashboards"
    for name, _, expected in BREAKAGES:
        errors = [line for line in res.stdout.splitlines() if f"_{name}.ts(" in line]
        assert errors, f"tsc found nothing wrong in {name}:\n{res.stdout}"
        assert any(expected in e for e in errors), f"{name}: {errors}"
