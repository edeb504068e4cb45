"""`sentinel dashboards push` against a local HTTP server speaking Grafana's API."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest
from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

from sentinel.cli import main
from sentinel.dashboards.generate import DASHBOARDS
from sentinel.dashboards.push import DashboardsConfig, PushError, push, read_token, redact_url
from sentinel.secretfile import Secret
from tests.support.services import free_port

TOKEN = "glsa_test_0123456789abcdef"  # noqa: S105 - a fake token the fake Grafana expects


class FakeGrafana:
    """Records requests; checks the bearer token; answers like Grafana 11."""

    def __init__(self, server: HTTPServer, *, folder_exists: bool = False) -> None:
        self.server = server
        self.folder_exists = folder_exists
        self.saved: list[dict[str, Any]] = []
        self.created_folders: list[dict[str, Any]] = []
        server.expect_request("/api/folders/sentinel", method="GET").respond_with_handler(
            self._get_folder
        )
        server.expect_request("/api/folders", method="POST").respond_with_handler(
            self._create_folder
        )
        server.expect_request("/api/dashboards/db", method="POST").respond_with_handler(self._save)

    def _authorized(self, request: Request) -> Response | None:
        if request.headers.get("Authorization") != f"Bearer {TOKEN}":
            return Response(
                json.dumps({"message": "invalid API key"}), 401, content_type="application/json"
            )
        return None

    def _get_folder(self, request: Request) -> Response:
        if (denied := self._authorized(request)) is not None:
            return denied
        if not self.folder_exists:
            return Response(
                json.dumps({"message": "folder not found"}), 404, content_type="application/json"
            )
        return Response(
            json.dumps({"uid": "sentinel", "title": "Sentinel"}),
            200,
            content_type="application/json",
        )

    def _create_folder(self, request: Request) -> Response:
        if (denied := self._authorized(request)) is not None:
            return denied
        body = request.get_json()
        self.created_folders.append(body)
        self.folder_exists = True
        return Response(
            json.dumps({"uid": body["uid"], "title": body["title"]}),
            200,
            content_type="application/json",
        )

    def _save(self, request: Request) -> Response:
        if (denied := self._authorized(request)) is not None:
            return denied
        body = request.get_json()
        self.saved.append(body)
        uid = body["dashboard"]["uid"]
        return Response(
            json.dumps({"status": "success", "uid": uid, "url": f"/d/{uid}/x", "version": 1}),
            200,
            content_type="application/json",
        )


def test_push_creates_folder_and_saves_every_dashboard(
    httpserver: HTTPServer,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    fake = FakeGrafana(httpserver)
    monkeypatch.setenv("SENTINEL_GRAFANA_TOKEN", TOKEN)
    caplog.set_level(logging.DEBUG)
    rc = main(["--log-level", "debug", "dashboards", "push", "--url", httpserver.url_for("/")])
    out = capsys.readouterr()
    assert rc == 0, out.err
    assert fake.created_folders == [{"title": "Sentinel", "uid": "sentinel"}]
    assert [s["dashboard"]["uid"] for s in fake.saved] == [
        build()["uid"] for _stem, build in DASHBOARDS
    ]
    for s in fake.saved:
        assert s["overwrite"] is True
        assert s["folderUid"] == "sentinel"
        assert s["dashboard"]["id"] is None
        assert s["dashboard"]["panels"], "dashboard saved without its panels"
    assert "/d/sentinel-training/" in out.out
    assert TOKEN not in out.out + out.err + caplog.text


def test_push_reuses_existing_folder_and_pushes_files_from_a_directory(
    httpserver: HTTPServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fake = FakeGrafana(httpserver, folder_exists=True)
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    token_file.chmod(0o600)
    d = tmp_path / "dash"
    d.mkdir()
    (d / "one.json").write_text(json.dumps({"uid": "one", "title": "One", "panels": []}))
    rc = main(
        [
            "dashboards",
            "push",
            "--url",
            httpserver.url_for("/"),
            "--token-file",
            str(token_file),
            "--from-dir",
            str(d),
        ]
    )
    assert rc == 0, capsys.readouterr().err
    assert fake.created_folders == []
    assert [s["dashboard"]["uid"] for s in fake.saved] == ["one"]


def test_wrong_token_exits_2_with_a_clear_message(
    httpserver: HTTPServer, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    fake = FakeGrafana(httpserver)
    monkeypatch.setenv("SENTINEL_GRAFANA_TOKEN", "glsa_wrong_secret_value")
    rc = main(["dashboards", "push", "--url", httpserver.url_for("/")])
    err = capsys.readouterr().err
    assert rc == 2
    assert "rejected the credentials (HTTP 401)" in err
    assert "SENTINEL_GRAFANA_TOKEN" in err
    assert "glsa_wrong_secret_value" not in err
    assert fake.saved == []


def test_unreachable_grafana_exits_1(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("SENTINEL_GRAFANA_TOKEN", TOKEN)
    url = f"http://user:hunter2@127.0.0.1:{free_port()}/"
    rc = main(["dashboards", "push", "--url", url])
    err = capsys.readouterr().err
    assert rc == 1
    assert "cannot reach Grafana at http://127.0.0.1:" in err
    assert "hunter2" not in err and TOKEN not in err


def test_grafana_refusing_a_dashboard_exits_1(
    httpserver: HTTPServer, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    httpserver.expect_request("/api/folders/sentinel").respond_with_json({"uid": "sentinel"})
    httpserver.expect_request("/api/dashboards/db", method="POST").respond_with_json(
        {"message": "A dashboard with the same name in the folder already exists"}, status=412
    )
    monkeypatch.setenv("SENTINEL_GRAFANA_TOKEN", TOKEN)
    rc = main(["dashboards", "push", "--url", httpserver.url_for("/")])
    err = capsys.readouterr().err
    assert rc == 1
    assert "HTTP 412" in err and "same name" in err and "sentinel-training.json" in err


def test_forbidden_exits_2(httpserver: HTTPServer) -> None:
    httpserver.expect_request("/api/folders/sentinel").respond_with_json(
        {"message": "Access denied"}, status=403
    )
    with pytest.raises(PushError) as e:
        push(httpserver.url_for("/"), {"x.json": {"uid": "x", "panels": []}},
             token=Secret(TOKEN))
    assert e.value.exit_code == 2
    assert "Editor" in str(e.value)


@pytest.mark.parametrize(
    "content, mode, message",
    [
        (None, 0o600, "cannot read"),
        ("", 0o600, "is empty"),
        ("two words", 0o600, "holds more than one word or line"),
        (TOKEN, 0o644, "run `chmod 600"),
    ],
)
def test_bad_token_file_is_a_usage_error(
    tmp_path: Path, content: str | None, mode: int, message: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The file is read by sentinel.secretfile (its own tests cover every refusal)."""
    f = tmp_path / "token"
    if content is not None:
        f.write_text(content)
        f.chmod(mode)
    rc = main(["dashboards", "push", "--url", "http://127.0.0.1:1/", "--token-file", str(f)])
    assert rc == 2
    err = capsys.readouterr().err
    assert "sentinel dashboards push: dashboards.token_file (--token-file): " in err
    assert str(f) in err and message in err and TOKEN not in err


def test_bad_url_and_missing_url_are_usage_errors(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["dashboards", "push", "--url", "grafana.example.com"]) == 2
    err = capsys.readouterr().err
    assert "dashboards.grafana_url" in err and "valid: http://" in err
    assert main(["dashboards", "push"]) == 2
    assert "no Grafana URL" in capsys.readouterr().err


def test_bad_from_dir_is_a_usage_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "x.json").write_text('{"title": "no uid"}')
    rc = main(["dashboards", "push", "--url", "http://127.0.0.1:1/", "--from-dir", str(tmp_path)])
    assert rc == 2
    assert "not a Grafana dashboard" in capsys.readouterr().err


def test_config_file_section(
    tmp_path: Path, httpserver: HTTPServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = FakeGrafana(httpserver)
    monkeypatch.setenv("SENTINEL_GRAFANA_TOKEN", TOKEN)
    cfg = tmp_path / "sentinel.yml"
    cfg.write_text(f"dashboards:\n  grafana_url: {httpserver.url_for('/')}\n  folder: Runs\n")
    assert main(["dashboards", "push", "--config", str(cfg)]) == 0
    assert fake.created_folders == [{"title": "Runs", "uid": "sentinel"}]
    cfg.write_text("dashboards:\n  timeout_s: 0\n")
    assert main(["dashboards", "push", "--config", str(cfg)]) == 2


def test_token_sources_and_redaction() -> None:
    token = read_token(None, env={"SENTINEL_GRAFANA_TOKEN": " abc \n"})
    assert token is not None and token.reveal() == "abc" and "abc" not in repr(token)
    assert read_token(None, env={}) is None
    assert redact_url("https://admin:pw@grafana:3000/sub?x=1") == "https://grafana:3000/sub?x=1"
    assert redact_url("http://grafana") == "http://grafana"
    DashboardsConfig(grafana_url="https://g.example").validate()
