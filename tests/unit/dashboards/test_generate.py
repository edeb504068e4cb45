"""The committed dashboards are what the code generates, and they follow the metric contract."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from sentinel.cli import main
from sentinel.dashboards.common import DATASOURCE_VAR, iter_panels
from sentinel.dashboards.generate import DASHBOARDS, build_all, generate, render

ROOT = Path(__file__).resolve().parents[3]
COMMITTED = ROOT / "dashboards"
METRICS_MD = ROOT / "docs" / "METRICS.md"
GRAFANA_BUILTINS = {"__rate_interval", "__interval", "__range"}
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")


def documented_metrics() -> set[str]:
    """Every metric name in docs/METRICS.md's tables, shorthand (`a_b` / `_c`) expanded."""
    names: set[str] = set()
    for line in METRICS_MD.read_text().splitlines():
        if not line.startswith("| `sentinel_"):
            continue
        cell = line.split("|")[1]
        tokens = re.findall(r"`([a-z0-9_]+)`", cell)
        first = tokens[0]
        names.add(first)
        for short in tokens[1:]:
            k = short.strip("_").count("_") + 1
            names.add("_".join(first.split("_")[:-k]) + short)
    return names


def all_exprs(dash: dict[str, Any]) -> list[str]:
    exprs = [t["expr"] for p in iter_panels(dash) for t in p.get("targets", [])]
    exprs += [a["target"]["expr"] for a in dash["annotations"]["list"] if "target" in a]
    exprs += [v["query"] for v in dash["templating"]["list"] if v["type"] == "query"]
    return exprs


def metric_names(expr: str, documented: set[str]) -> set[str]:
    out = set()
    for name in re.findall(r"\bsentinel_[a-z0-9_]+", expr):
        for suffix in HISTOGRAM_SUFFIXES:
            if name.endswith(suffix) and name.removesuffix(suffix) in documented:
                name = name.removesuffix(suffix)
        out.add(name)
    return out


@pytest.fixture(scope="module")
def dashboards() -> dict[str, dict[str, Any]]:
    return {stem: build() for stem, build in DASHBOARDS}


def test_committed_json_matches_a_fresh_generation() -> None:
    fresh = build_all()
    committed = {p.name for p in COMMITTED.glob("*.json")}
    assert committed == set(fresh), "dashboards/ holds other files than the generator writes"
    for name, text in fresh.items():
        assert (COMMITTED / name).read_text() == text, (
            f"dashboards/{name} differs from the code: run `make dashboards` and commit"
        )


def test_generation_is_reproducible(tmp_path: Path) -> None:
    a = build_all()
    b = build_all()
    assert a == b
    written = generate(tmp_path / "out")
    assert sorted(p.name for p in written) == sorted(a)
    for p in written:
        assert p.read_text() == a[p.name]
        json.loads(p.read_text())


def test_check_flag_reports_stale_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "dash"
    assert main(["dashboards", "generate", "--out", str(out), "--check"]) == 1
    assert "out of date" in capsys.readouterr().err
    assert main(["dashboards", "generate", "--out", str(out)]) == 0
    assert main(["dashboards", "generate", "--out", str(out), "--check"]) == 0
    victim = out / f"{DASHBOARDS[0][0]}.json"
    victim.write_text(victim.read_text().replace('"refresh": "30s"', '"refresh": "5s"'))
    assert main(["dashboards", "generate", "--out", str(out), "--check"]) == 1
    assert victim.name in capsys.readouterr().err


def test_every_query_uses_only_documented_metrics(dashboards: dict[str, dict[str, Any]]) -> None:
    documented = documented_metrics()
    assert len(documented) > 50, "could not read the metric tables of docs/METRICS.md"
    for stem, dash in dashboards.items():
        for expr in all_exprs(dash):
            unknown = metric_names(expr, documented) - documented
            assert not unknown, f"{stem}: {sorted(unknown)} not in docs/METRICS.md: {expr}"


def test_every_documented_metric_is_on_a_dashboard(dashboards: dict[str, dict[str, Any]]) -> None:
    documented = documented_metrics()
    used = set()
    for dash in dashboards.values():
        for expr in all_exprs(dash):
            used |= metric_names(expr, documented)
    assert documented - used == set(), "metrics on no dashboard"


def test_layout_ids_and_references(dashboards: dict[str, dict[str, Any]]) -> None:
    uids = [d["uid"] for d in dashboards.values()]
    assert len(set(uids)) == len(uids) == 3
    for stem, dash in dashboards.items():
        panels = iter_panels(dash)
        ids = [p["id"] for p in panels]
        assert len(set(ids)) == len(ids), f"{stem}: duplicate panel ids"
        variables = {v["name"] for v in dash["templating"]["list"]}
        assert DATASOURCE_VAR in variables
        for p in panels:
            g = p["gridPos"]
            assert 0 <= g["x"] and g["x"] + g["w"] <= 24, f"{stem}/{p['title']} off the grid"
            if p["type"] == "row":
                continue
            assert p["datasource"]["uid"] == "${datasource}", f"{stem}/{p['title']}"
            assert p.get("description"), f"{stem}/{p['title']} has no description"
            refs = [t["refId"] for t in p["targets"]]
            assert refs and len(set(refs)) == len(refs), f"{stem}/{p['title']} refIds {refs}"
        for expr in all_exprs(dash):
            for var in re.findall(r"\$(\w+)", expr):
                assert var in variables | GRAFANA_BUILTINS, f"{stem}: ${var} undefined in {expr}"


def test_variables_cover_job_node_and_gpu(dashboards: dict[str, dict[str, Any]]) -> None:
    names = {stem: {v["name"] for v in d["templating"]["list"]} for stem, d in dashboards.items()}
    assert {"job", "node"} <= names["sentinel-training"]
    assert {"node", "gpu"} <= names["sentinel-node"]
    assert {"job", "node"} <= names["sentinel-fleet"]


def test_render_is_stable_json() -> None:
    text = render({"b": 1, "a": {"d": 2, "c": [1]}})
    assert text == '{\n  "a": {\n    "c": [\n      1\n    ],\n    "d": 2\n  },\n  "b": 1\n}\n'
