"""deploy/grafana provisions the datasource and dashboards the generator and push expect."""

from __future__ import annotations

from pathlib import Path

import yaml

from sentinel.dashboards.common import PROVISIONED_DATASOURCE_UID
from sentinel.dashboards.push import DashboardsConfig

PROV = Path(__file__).resolve().parents[3] / "deploy" / "grafana" / "provisioning"


def test_datasource_is_the_default_prometheus() -> None:
    data = yaml.safe_load((PROV / "datasources" / "sentinel.yml").read_text())
    assert data["apiVersion"] == 1
    (ds,) = data["datasources"]
    assert ds["type"] == "prometheus"
    assert ds["uid"] == PROVISIONED_DATASOURCE_UID
    assert ds["isDefault"] is True
    assert ds["url"].startswith("http")


def test_dashboard_provider_uses_the_push_folder() -> None:
    data = yaml.safe_load((PROV / "dashboards" / "sentinel.yml").read_text())
    assert data["apiVersion"] == 1
    (p,) = data["providers"]
    defaults = DashboardsConfig()
    assert p["type"] == "file"
    assert (p["folder"], p["folderUid"]) == (defaults.folder, defaults.folder_uid)
    assert Path(p["options"]["path"]).is_absolute()
