"""The ``notify:`` config section and the Slack secrets it points at.

Secrets (a bot token or an incoming-webhook URL) come from a file
(``notify.slack_token_file``, ``SENTINEL_NOTIFY_SLACK_TOKEN_FILE``) or from the
environment (``SENTINEL_NOTIFY_SLACK_TOKEN``). Files are read by
:func:`sentinel.secretfile.read_secret_file` (mode 600, one word); secrets are held in
:class:`sentinel.secretfile.Secret`, whose ``repr`` and ``str`` never show the value,
and the config fields that may carry one are left out of the dataclass ``repr``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from sentinel.config import ConfigError, config_section, load_section
from sentinel.secretfile import Secret, read_secret_file

SECTION = "notify"


@config_section(SECTION)
@dataclass
class NotifyConfig:
    """Where and how sentinel posts to Slack."""

    slack_token_file: str = field(
        default="",
        metadata={"help": "file holding a Slack bot token (xoxb-...); enables threads and plots"},
    )
    slack_token: str = field(
        default="",
        repr=False,
        metadata={"help": "bot token itself; set it through SENTINEL_NOTIFY_SLACK_TOKEN only",
                  "secret": True},
    )
    slack_webhook_url_file: str = field(
        default="", metadata={"help": "file holding a Slack incoming-webhook URL (no threads)"}
    )
    slack_webhook_url: str = field(
        default="",
        repr=False,
        metadata={"help": "webhook URL itself; set it through SENTINEL_NOTIFY_SLACK_WEBHOOK_URL",
                  "secret": True},
    )
    channel: str = field(
        default="", metadata={"help": "channel ID or #name to post to (bot token only)"}
    )
    base_url: str = field(
        default="https://slack.com/api/",
        metadata={"help": "Slack Web API base URL (tests point it at a local server)"},
    )
    record_dir: str = field(
        default="",
        metadata={"help": "without Slack credentials: write every message Slack would get "
                  "(and its plots) to files in this directory instead ('' = off; "
                  "`sentinel demo` sets it)"},
    )
    queue_dir: str = field(
        default="/var/lib/sentinel/notify",
        metadata={"help": "directory of the on-disk outbox (survives restarts)"},
    )
    # 1000 messages is days of a busy incident channel, and a few MB on disk at most.
    queue_max_messages: int = field(
        default=1000,
        metadata={"help": "pending messages kept; when full the oldest is dropped", "min": 10,
                  "max": 1_000_000},
    )
    # 15 minutes: an alert that re-fires identically within one Alertmanager
    # group_interval-to-repeat cycle is the same news.
    dedupe_window_s: float = field(
        default=900.0,
        metadata={"help": "identical messages of one incident within this window are sent once",
                  "min": 0, "max": 7 * 86400},
    )
    # Slack allows about one message a second per channel; people read far fewer.
    # Six a minute with a burst of ten lets one incident's opening, plot and first
    # follow-ups through at once and holds a flapping condition to a readable pace.
    rate_per_minute: float = field(
        default=6.0, metadata={"help": "messages per minute per channel (token bucket)", "min": 0.1,
                               "max": 6000}
    )
    rate_burst: int = field(
        default=10, metadata={"help": "token bucket size: messages sent at once", "min": 1,
                              "max": 10_000}
    )
    retry_max: int = field(
        default=3,
        metadata={"help": "retries of one request on 429 while the Retry-After waits add up "
                  "to 3 s at most (a longer one leaves the message queued)", "min": 0,
                  "max": 20},
    )
    upload_plots: bool = field(
        default=True, metadata={"help": "attach a PNG of loss and tokens/sec where allowed"}
    )
    timeout_s: float = field(
        default=10.0, metadata={"help": "HTTP timeout of one Slack request", "min": 1, "max": 120}
    )

    def validate(self) -> None:
        """Refuse a config that names two Slack transports or lacks a channel."""
        token = bool(self.slack_token or self.slack_token_file)
        hook = bool(self.slack_webhook_url or self.slack_webhook_url_file)
        if token and hook:
            raise ConfigError(
                "notify: both a bot token and a webhook URL are set; valid: one of "
                "slack_token_file / SENTINEL_NOTIFY_SLACK_TOKEN or slack_webhook_url_file / "
                "SENTINEL_NOTIFY_SLACK_WEBHOOK_URL"
            )
        if token and not self.channel:
            raise ConfigError(
                "notify.channel: required with a bot token (valid: a channel ID such as "
                "C0123456789 or a #name the bot is a member of)"
            )
        if not self.base_url.endswith("/"):
            raise ConfigError(f"notify.base_url: {self.base_url!r} must end with '/'")
        if not (self.base_url.startswith("https://") or self.base_url.startswith("http://")):
            raise ConfigError(f"notify.base_url: {self.base_url!r} is not an http(s) URL")

    def token(self) -> Secret | None:
        """Return the bot token (file first, then environment), or None."""
        return _secret(self.slack_token_file, self.slack_token, "notify.slack_token_file")

    def webhook_url(self) -> Secret | None:
        """Return the incoming-webhook URL (file first, then environment), or None.

        A URL that is not http(s) with a host is refused without showing it: urllib
        would quote it whole in an error, and the path is the secret.
        """
        key = ("notify.slack_webhook_url_file" if self.slack_webhook_url_file
               else "SENTINEL_NOTIFY_SLACK_WEBHOOK_URL")
        url = _secret(self.slack_webhook_url_file, self.slack_webhook_url, key)
        if url is not None:
            try:
                parts = urlsplit(url.reveal())
                ok = parts.scheme in ("https", "http") and bool(parts.hostname)
            except ValueError:  # e.g. a bad [IPv6] host; its message quotes the URL
                ok = False
            if not ok:
                raise ConfigError(
                    f"{key}: the webhook URL is not an http(s) URL (it is a secret and is not "
                    "shown); valid: https://hooks.slack.com/services/...")
        return url


def _secret(path: str, value: str, key: str) -> Secret | None:
    if path:
        return read_secret_file(path, key)
    if value:
        return Secret(value.strip())
    return None


def load_notify_config(
    file_data: dict[str, Any] | None = None,
    env: dict[str, str] | None = None,
    overrides: dict[str, Any] | None = None,
) -> NotifyConfig:
    """Load the ``notify`` section (defaults, file, ``SENTINEL_NOTIFY_*``, flags)."""
    return load_section(
        NotifyConfig,
        SECTION,
        file_data=file_data,
        env=dict(os.environ) if env is None else env,
        overrides=overrides,
    )
