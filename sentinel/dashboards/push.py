"""Upload the dashboards to a Grafana server through its HTTP API (grafana-client).

The token comes from a file (read by :mod:`sentinel.secretfile`) or from
``$SENTINEL_GRAFANA_TOKEN``, is held as a :class:`~sentinel.secretfile.Secret` and is only
ever placed in the Authorization header: it is never logged or printed, and URLs are
shown without their user-info part.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any

from grafana_client.api import GrafanaApi
from grafana_client.client import (
    GrafanaClientError,
    GrafanaException,
    GrafanaServerError,
    GrafanaTimeoutError,
    GrafanaUnauthorizedError,
)

from sentinel.dashboards.config import TOKEN_ENV, DashboardsConfig, redact_url
from sentinel.secretfile import Secret, SecretFileError, read_secret_file

log = logging.getLogger(__name__)

EXIT_PROBLEM = 1
EXIT_USAGE = 2


class PushError(Exception):
    """Pushing failed; ``exit_code`` is 2 for bad usage/credentials, 1 otherwise."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def read_token(token_file: str | None, env: dict[str, str] | None = None) -> Secret | None:
    """Return the token from ``token_file`` or ``$SENTINEL_GRAFANA_TOKEN`` (None: no token)."""
    if token_file:
        try:
            return read_secret_file(token_file, "dashboards.token_file (--token-file)")
        except SecretFileError as e:
            raise PushError(str(e), EXIT_USAGE) from None
    env = dict(os.environ) if env is None else env
    token = env.get(TOKEN_ENV, "").strip()
    return Secret(token) if token else None


def _explain(e: GrafanaException, url: str, what: str) -> PushError:
    """Turn a grafana-client error into a message that says what to do next."""
    where = redact_url(url)
    if isinstance(e, GrafanaUnauthorizedError) or e.status_code == 401:
        return PushError(
            f"Grafana at {where} rejected the credentials (HTTP 401) while {what}: give a "
            f"valid service-account token with --token-file or ${TOKEN_ENV}",
            EXIT_USAGE,
        )
    if e.status_code == 403:
        return PushError(
            f"Grafana at {where} refused {what} (HTTP 403): the token needs the Editor role "
            "(or write access to the folder)",
            EXIT_USAGE,
        )
    if isinstance(e, GrafanaTimeoutError):
        return PushError(f"Grafana at {where} did not answer in time while {what}", EXIT_PROBLEM)
    if isinstance(e, GrafanaServerError | GrafanaClientError):
        return PushError(
            f"Grafana at {where} failed {what} (HTTP {e.status_code}): {e.message}",
            EXIT_PROBLEM,
        )
    return PushError(f"cannot reach Grafana at {where} while {what}: {e.message}", EXIT_PROBLEM)


def push(
    url: str,
    dashboards: dict[str, dict[str, Any]],
    *,
    token: Secret | None,
    config: DashboardsConfig | None = None,
    api: GrafanaApi | None = None,
) -> list[str]:
    """Create the folder if needed and save every dashboard into it, overwriting.

    Returns the Grafana URL of each saved dashboard. Raises :class:`PushError`.
    """
    cfg = config or DashboardsConfig()
    cfg = dataclasses.replace(cfg, grafana_url=url)
    cfg.validate()
    credential = token.reveal() if token else None
    grafana = api or GrafanaApi.from_url(url, credential=credential, timeout=cfg.timeout_s)
    what = f"looking up folder {cfg.folder_uid!r}"
    try:
        try:
            grafana.folder.get_folder(cfg.folder_uid)
        except GrafanaClientError as e:
            if e.status_code != 404:
                raise
            what = f"creating folder {cfg.folder!r}"
            grafana.folder.create_folder(cfg.folder, uid=cfg.folder_uid)
            log.info("created Grafana folder %r (uid %s)", cfg.folder, cfg.folder_uid)
        saved = []
        for name, dash in dashboards.items():
            what = f"saving dashboard {name}"
            body = {
                "dashboard": {**dash, "id": None},
                "folderUid": cfg.folder_uid,
                "overwrite": True,
                "message": "sentinel dashboards push",
            }
            res = grafana.dashboard.update_dashboard(body)
            status = res.get("status") if isinstance(res, dict) else None
            if status not in ("success", None):
                raise PushError(
                    f"Grafana at {redact_url(url)} did not save {name}: {res}", EXIT_PROBLEM
                )
            saved.append(str(res.get("url", "")) if isinstance(res, dict) else "")
            log.info("saved dashboard %s", name)
        return saved
    except GrafanaException as e:
        raise _explain(e, url, what) from e
    except OSError as e:  # niquests' connection errors are OSErrors
        raise PushError(
            f"cannot reach Grafana at {redact_url(url)} while {what}: {e} "
            "(check the URL and that Grafana is running)",
            EXIT_PROBLEM,
        ) from e
