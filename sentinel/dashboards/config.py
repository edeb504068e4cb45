"""The ``dashboards:`` config section, without the Grafana client (the CLI imports it)."""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import urlsplit, urlunsplit

from sentinel.config import ConfigError, config_section

TOKEN_ENV = "SENTINEL_GRAFANA_TOKEN"  # noqa: S105 - a variable name, not a secret


@config_section("dashboards")
@dataclass
class DashboardsConfig:
    """The ``dashboards:`` config section (used by ``sentinel dashboards push``)."""

    grafana_url: str = field(
        default="", metadata={"help": "Grafana base URL, e.g. https://grafana.example.com"}
    )
    token_file: str = field(
        default="",
        metadata={"help": f"file holding a Grafana service-account token (else ${TOKEN_ENV})"},
    )
    folder: str = field(default="Sentinel", metadata={"help": "Grafana folder title"})
    folder_uid: str = field(default="sentinel", metadata={"help": "Grafana folder uid"})
    # Grafana answers a dashboard save in well under a second; 10 s leaves room for a
    # loaded server without hanging a deploy script on a dead one.
    timeout_s: float = field(
        default=10.0, metadata={"help": "HTTP timeout per request", "min": 0.1, "max": 300}
    )

    def validate(self) -> None:
        """Check the URL, if one is set, is http(s) with a host."""
        if self.grafana_url:
            parts = urlsplit(self.grafana_url)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ConfigError(
                    f"dashboards.grafana_url: {redact_url(self.grafana_url)!r} is not valid "
                    "(valid: http://HOST[:PORT][/PATH] or https://...)"
                )
        if not self.folder_uid or len(self.folder_uid) > 40:
            raise ConfigError(
                f"dashboards.folder_uid: {self.folder_uid!r} is not valid "
                "(valid: 1 to 40 characters)"
            )



def redact_url(url: str) -> str:
    """Return ``url`` without any user:password part."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment))
