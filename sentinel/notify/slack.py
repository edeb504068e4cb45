"""Post incidents to Slack through slack-sdk: threads, plots, dedupe, rate limits, retries.

Two transports:

* a bot token (``WebClient``): one thread per incident (``chat.postMessage``, then
  replies with ``thread_ts``), the PNG uploaded into the thread with
  ``files_upload_v2`` (``files.getUploadURLExternal``, an upload to the returned URL,
  ``files.completeUploadExternal``); without the ``files:write`` scope the plot becomes a
  one-line text summary instead.
* an incoming webhook (``WebhookClient``): no threads and no uploads, so follow-ups are
  plain messages naming the incident and plots become text.

Every message goes through the on-disk :class:`~sentinel.notify.queue.Outbox` first.
:meth:`Notifier.flush` sends what is due, oldest first and in order per incident, takes a
token from the channel's bucket for each, retries a 429 inside slack-sdk only while its
``Retry-After`` fits a few seconds' budget (a send never blocks for long), and leaves
anything that still fails in the outbox with a backoff (a longer ``Retry-After``,
capped). Secrets never reach a log line or the outbox: slack-sdk logs through a logger
of ours whose filter masks them, and error texts are masked before they are stored.
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.error import URLError

from sentinel.notify.config import NotifyConfig
from sentinel.notify.message import Notification, Series
from sentinel.notify.queue import Outbox, Row
from sentinel.notify.ratelimit import ChannelLimiter
from sentinel.secretfile import Secret

log = logging.getLogger(__name__)

# Errors that no retry will fix: the message itself or the channel is wrong.
PERMANENT_ERRORS = frozenset(
    {
        "channel_not_found", "not_in_channel", "is_archived", "msg_too_long", "no_text",
        "invalid_blocks", "invalid_attachments", "invalid_arguments", "too_many_attachments",
        "restricted_action", "invalid_metadata_format", "invalid_metadata_schema",
        "invalid_payload", "channel_is_archived", "action_prohibited",
        "posting_to_general_channel_denied",
        "cannot_reply_to_message", "invalid_thread_ts", "thread_not_found",
    }
)
# Errors that mean the credentials are wrong: keep every message (fixing the token
# delivers them) and say loudly what to fix.
AUTH_ERRORS = frozenset(
    {
        "invalid_auth", "not_authed", "token_revoked", "token_expired", "account_inactive",
        "no_service", "invalid_token", "no_team", "team_disabled", "ekm_access_denied",
    }
)
# An upload refused for one of these falls back to a text summary of the plot.
UPLOAD_REFUSED = frozenset({"missing_scope", "not_allowed_token_type", "no_permission"})
# Backoff of a message that failed: doubling from 2 s, at most 5 minutes, so a long Slack
# outage costs one attempt per incident every 5 minutes and recovery is seen quickly.
BACKOFF_BASE_S = 2.0
BACKOFF_MAX_S = 300.0
AUTH_RETRY_S = 300.0
# Retry-After is honoured inside one send only while the waits of that send add up to
# this: Slack's usual answer (1-30 s) mostly exceeds it, so the message goes back to the
# outbox and the caller is not held (main slept 3 x 20 s in one send).
INLINE_RETRY_AFTER_BUDGET_S = 3.0
# A longer Retry-After delays the message in the outbox, but never longer than this: a
# proxy answering "3600" or "1e9" must not silence an incident channel for hours.
MAX_RETRY_AFTER_S = BACKOFF_MAX_S
# An API error we do not know is retried this many times before the message is given up.
MAX_UNKNOWN_ERROR_ATTEMPTS = 10
METADATA_EVENT = "sentinel_notification"


# -- keeping secrets out of logs ------------------------------------------------------


class _Redactor(logging.Filter):
    """Mask every registered secret in log records that pass through a logger."""

    def __init__(self) -> None:
        super().__init__()
        self.secrets: set[str] = set()

    def add(self, secret: Secret) -> None:
        value = secret.reveal()
        if value:
            self.secrets.add(value)

    def redact(self, text: str) -> str:
        for s in self.secrets:
            text = text.replace(s, "***")
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        if self.secrets:
            msg = self.redact(record.getMessage())
            record.msg, record.args = msg, None
        return True


REDACTOR = _Redactor()
log.addFilter(REDACTOR)
# slack-sdk logs request URLs (a webhook URL is a secret) at debug: give it this logger.
SDK_LOGGER = logging.getLogger("sentinel.notify.slack_sdk")
SDK_LOGGER.addFilter(REDACTOR)


# -- errors ---------------------------------------------------------------------------


class SendError(Exception):
    """A send failed. ``kind``: transient, auth, permanent or unreachable."""

    def __init__(self, kind: str, message: str, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.retry_after_s = retry_after_s


def retry_after_s(headers: Any) -> float | None:
    """Return a response's Retry-After in seconds, or None if absent or not a number >= 0."""
    if headers is None:
        return None
    raw = None
    for k in headers:
        if str(k).lower() == "retry-after":
            raw = headers[k]
            break
    if isinstance(raw, list):
        raw = raw[0] if raw else None
    try:
        value = float(raw) if raw is not None else None
    except (TypeError, ValueError):  # an HTTP date, or junk: fall back to our backoff
        return None
    if value is None or not math.isfinite(value) or value < 0:
        return None
    return value


def _classify_api_error(status: int, error: str, headers: Any) -> SendError:
    retry_after = retry_after_s(headers)
    if status == 429 or error == "ratelimited":
        return SendError("transient", f"rate limited by Slack ({error or status})", retry_after)
    if error in AUTH_ERRORS or status in (401, 403):
        return SendError("auth", f"Slack refused the credentials ({error or status})")
    if error in PERMANENT_ERRORS or error in UPLOAD_REFUSED:
        return SendError("permanent", f"Slack refused the message ({error})")
    if status >= 500:
        return SendError("transient", f"Slack server error {status} ({error})")
    return SendError("unknown", f"Slack error {status} ({error or 'no error code'})")


def _translate(exc: BaseException) -> SendError:
    from slack_sdk.errors import SlackApiError, SlackRequestError

    if isinstance(exc, SendError):
        return exc
    if isinstance(exc, SlackApiError):
        resp = exc.response
        data = resp.data if isinstance(resp.data, dict) else {}
        return _classify_api_error(
            int(resp.status_code), str(data.get("error", "")), getattr(resp, "headers", None)
        )
    if isinstance(exc, URLError | ConnectionError | TimeoutError | OSError):
        return SendError("unreachable", f"Slack unreachable ({type(exc).__name__}: {exc})")
    if isinstance(exc, SlackRequestError):
        return SendError("transient", f"Slack request failed ({exc})")
    return SendError("transient", f"{type(exc).__name__}: {exc}")


def _rate_limit_retry(retry_max: int) -> Any:
    """Return a slack-sdk retry handler for 429s that waits at most the inline budget.

    slack-sdk's own RateLimitErrorRetryHandler sleeps whatever Retry-After says, up to
    ``retry_max`` times, and fails on a non-integer value. This one retries only while
    the waits of one request fit INLINE_RETRY_AFTER_BUDGET_S; otherwise the 429 comes
    back to :class:`Notifier`, which keeps the message queued until Retry-After.
    """
    from slack_sdk.http_retry.handler import RetryHandler

    class BoundedRateLimitRetry(RetryHandler):
        def _can_retry(self, *, state: Any, request: Any, response: Any = None,
                       error: Any = None) -> bool:
            if response is None or response.status_code != 429:
                return False
            wait = retry_after_s(response.headers)
            spent = (state.custom_values or {}).get("retry_after_spent_s", 0.0)
            return wait is not None and spent + wait <= INLINE_RETRY_AFTER_BUDGET_S

        def prepare_for_next_attempt(self, *, state: Any, request: Any, response: Any = None,
                                     error: Any = None) -> None:
            wait = retry_after_s(response.headers if response is not None else None) or 0.0
            values = state.custom_values = state.custom_values or {}
            values["retry_after_spent_s"] = values.get("retry_after_spent_s", 0.0) + wait
            state.next_attempt_requested = True
            time.sleep(wait + random.uniform(0, 0.1))  # noqa: S311 - jitter, not a secret
            state.increment_current_attempt()

    return BoundedRateLimitRetry(max_retry_count=retry_max)


def _retry_handlers(retry_max: int) -> list[Any]:
    from slack_sdk.http_retry.builtin_handlers import (
        ConnectionErrorRetryHandler,
        ServerErrorRetryHandler,
    )

    return [
        ConnectionErrorRetryHandler(max_retry_count=1),
        _rate_limit_retry(retry_max),
        ServerErrorRetryHandler(max_retry_count=1),
    ]


# -- transports -----------------------------------------------------------------------


class Transport(Protocol):
    """How messages reach Slack."""

    name: str
    threads: bool
    uploads: bool

    def post(self, text: str, thread: tuple[str, str] | None, key: str) -> tuple[str, str]:
        """Post ``text`` (in ``thread`` = (channel, ts) if given); return (channel, ts)."""

    def upload(self, png: bytes, filename: str, title: str, thread: tuple[str, str]) -> None:
        """Upload a PNG into a thread."""

    def find(self, key: str, since: float, thread: tuple[str, str] | None) -> str | None:
        """Return the ts of a message we posted with idempotency key ``key``, if any."""


class BotTransport:
    """A bot token: threads, uploads and finding a message by its idempotency key."""

    threads = True
    uploads = True

    def __init__(self, token: Secret, channel: str, base_url: str, timeout_s: float,
                 retry_max: int) -> None:
        from slack_sdk import WebClient

        REDACTOR.add(token)
        self.name = channel
        self.channel = channel
        self.client = WebClient(
            token=token.reveal(),
            base_url=base_url,
            timeout=int(timeout_s),
            logger=SDK_LOGGER,
            retry_handlers=_retry_handlers(retry_max),
        )

    def __repr__(self) -> str:
        return f"BotTransport(channel={self.channel!r})"

    def post(self, text: str, thread: tuple[str, str] | None, key: str) -> tuple[str, str]:
        channel = thread[0] if thread else self.channel
        resp = self.client.chat_postMessage(
            channel=channel,
            text=text,
            thread_ts=thread[1] if thread else None,
            unfurl_links=False,
            metadata={"event_type": METADATA_EVENT, "event_payload": {"key": key}},
        )
        return str(resp["channel"]), str(resp["ts"])

    def upload(self, png: bytes, filename: str, title: str, thread: tuple[str, str]) -> None:
        self.client.files_upload_v2(
            content=png, filename=filename, title=title, channel=thread[0], thread_ts=thread[1]
        )

    def find(self, key: str, since: float, thread: tuple[str, str] | None) -> str | None:
        if thread:
            resp = self.client.conversations_replies(
                channel=thread[0], ts=thread[1], oldest=f"{since:.6f}", include_all_metadata=True,
                limit=200,
            )
        else:
            resp = self.client.conversations_history(
                channel=self.channel, oldest=f"{since:.6f}", include_all_metadata=True,
                limit=200,
            )
        messages: list[dict[str, Any]] = resp.get("messages", []) or []
        for m in messages:
            meta = m.get("metadata") or {}
            if (meta.get("event_type") == METADATA_EVENT
                    and (meta.get("event_payload") or {}).get("key") == key):
                return str(m.get("ts"))
        return None


class WebhookTransport:
    """An incoming webhook: plain messages only."""

    threads = False
    uploads = False
    name = "webhook"

    def __init__(self, url: Secret, timeout_s: float, retry_max: int) -> None:
        from slack_sdk.webhook import WebhookClient

        REDACTOR.add(url)
        self.client = WebhookClient(
            url=url.reveal(),
            timeout=int(timeout_s),
            logger=SDK_LOGGER,
            retry_handlers=_retry_handlers(retry_max),
        )

    def __repr__(self) -> str:
        return "WebhookTransport(url=***)"

    def post(self, text: str, thread: tuple[str, str] | None, key: str) -> tuple[str, str]:
        resp = self.client.send(text=text, unfurl_links=False)
        if resp.status_code != 200:
            raise _classify_api_error(resp.status_code, str(resp.body or "").strip(), resp.headers)
        return "webhook", ""

    def upload(self, png: bytes, filename: str, title: str, thread: tuple[str, str]) -> None:
        raise SendError("permanent", "an incoming webhook cannot upload files")

    def find(self, key: str, since: float, thread: tuple[str, str] | None) -> str | None:
        return None  # a webhook cannot read the channel back


def transport_from_config(cfg: NotifyConfig) -> Transport:
    """Build the transport the config names, or raise ConfigError saying what to set."""
    from sentinel.config import ConfigError

    token = cfg.token()
    if token:
        return BotTransport(token, cfg.channel, cfg.base_url, cfg.timeout_s, cfg.retry_max)
    url = cfg.webhook_url()
    if url:
        return WebhookTransport(url, cfg.timeout_s, cfg.retry_max)
    if cfg.record_dir:
        from sentinel.notify.record import RecordTransport

        return RecordTransport(cfg.record_dir)
    raise ConfigError(
        "notify: no Slack credentials; valid: notify.slack_token_file (or "
        "SENTINEL_NOTIFY_SLACK_TOKEN_FILE / SENTINEL_NOTIFY_SLACK_TOKEN) with notify.channel, "
        "or notify.slack_webhook_url_file (or SENTINEL_NOTIFY_SLACK_WEBHOOK_URL_FILE), or "
        "notify.record_dir to write the messages to files instead"
    )


# -- the notifier ---------------------------------------------------------------------


@dataclass
class FlushResult:
    """What one flush did."""

    sent: int = 0
    failed: int = 0
    waiting: int = 0
    rate_limited: bool = False
    next_in_s: float | None = None  # when something is due again, if anything waits


class Notifier:
    """Queue notifications on disk and deliver them to Slack when due."""

    def __init__(
        self,
        cfg: NotifyConfig,
        transport: Transport,
        *,
        outbox: Outbox | None = None,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.cfg = cfg
        self.transport = transport
        self.clock = clock
        self.outbox = outbox or Outbox(cfg.queue_dir, cfg.queue_max_messages, clock=clock)
        self.limiter = ChannelLimiter(cfg.rate_per_minute, cfg.rate_burst, clock=monotonic)
        self._auth_warned = False

    def __repr__(self) -> str:
        return f"Notifier(transport={self.transport!r}, queue={self.outbox.path})"

    @classmethod
    def from_config(cls, cfg: NotifyConfig) -> Notifier:
        """Build the notifier, its transport and its outbox from the config."""
        return cls(cfg, transport_from_config(cfg))

    # -- queueing ---------------------------------------------------------------------

    def notify(self, n: Notification) -> str:
        """Queue one message; return queued, deduplicated or duplicate_key."""
        result = self.outbox.put(
            key=n.key,
            incident=n.incident,
            kind=n.kind,
            title=n.title,
            body=n.to_json(),
            digest=n.digest(),
            dedupe_window_s=self.cfg.dedupe_window_s,
        )
        log.debug("notification %s (%s) for incident %r: %s", n.key, n.kind, n.incident, result)
        return result

    def open_incident(
        self,
        incident: str,
        title: str,
        text: str = "",
        *,
        severity: str = "warning",
        fields: dict[str, str] | None = None,
        series: Series | None = None,
        key: str = "",
    ) -> str:
        """Queue an incident's opening message and, with a series, its plot after it."""
        result = self.notify(
            Notification(incident, "open", title, text, severity, dict(fields or {}), key=key)
        )
        if result == "queued" and series is not None and series.step:
            self.notify(
                Notification(
                    incident, "image", f"{title}: loss and tokens/sec", severity=severity,
                    series=series, key=f"{key}:image" if key else "",
                )
            )
        return result

    # -- delivery ---------------------------------------------------------------------

    def flush(self, max_messages: int = 100) -> FlushResult:
        """Send what is due, oldest first; stop early when Slack is unreachable."""
        res = FlushResult()
        blocked: set[str] = set()
        now = self.clock()
        for row in self.outbox.waiting():
            if res.sent + res.failed >= max_messages:
                break
            if row.incident in blocked:
                continue
            if row.next_attempt > now:
                blocked.add(row.incident)  # keep the incident's messages in order
                continue
            if not self.limiter.try_take(self.transport.name):
                res.rate_limited = True
                break
            try:
                self._deliver(row)
            except SendError as e:
                res.failed += 1
                blocked.add(row.incident)
                if self._handle_failure(row, e):
                    break
            else:
                res.sent += 1
        self._finish(res)
        return res

    def _finish(self, res: FlushResult) -> None:
        waiting = self.outbox.waiting()
        res.waiting = len(waiting)
        if not waiting:
            return
        now = self.clock()
        due = min(max(0.0, r.next_attempt - now) for r in waiting)
        if res.rate_limited:
            due = max(due, self.limiter.wait_s(self.transport.name))
        res.next_in_s = due

    def _handle_failure(self, row: Row, e: SendError) -> bool:
        """Record a failed send; return True if the flush should stop."""
        # Error texts may quote a URL (urllib does): the webhook URL is a secret.
        err = REDACTOR.redact(str(e))
        if e.kind == "permanent" or (
            e.kind == "unknown" and row.attempts + 1 >= MAX_UNKNOWN_ERROR_ATTEMPTS
        ):
            self.outbox.mark_dead(row.id, err)
            log.error(
                "notification %s for incident %r given up: %s", row.key, row.incident, e
            )
            return False
        if e.kind == "auth":
            self.outbox.mark_retry(row.id, AUTH_RETRY_S, err)
            if not self._auth_warned:
                log.error(
                    "%s: messages stay queued in %s until the credentials are fixed "
                    "(notify.slack_token_file / notify.slack_webhook_url_file)",
                    e, self.outbox.path,
                )
                self._auth_warned = True
            return True
        delay = min(BACKOFF_MAX_S, BACKOFF_BASE_S * 2 ** min(row.attempts, 16))
        if e.retry_after_s is not None:
            if e.retry_after_s > MAX_RETRY_AFTER_S:
                log.warning("Slack asked to wait %.0f s before retrying; waiting %.0f s",
                            e.retry_after_s, MAX_RETRY_AFTER_S)
            delay = max(delay, min(e.retry_after_s, MAX_RETRY_AFTER_S))
        self.outbox.mark_retry(row.id, delay, err)
        log.warning(
            "notification %s for incident %r not sent (%s); next try in %.0f s",
            row.key, row.incident, e, delay,
        )
        return e.kind in ("unreachable", "transient")

    def _deliver(self, row: Row) -> None:
        n = Notification.from_json(row.body)
        t = self.transport
        thread = self._thread_for(n) if t.threads else None
        try:
            if row.state == "sending":
                # A previous process died during this send: Slack may have it already.
                try:
                    ts = t.find(n.key, row.created - 60, thread)
                except Exception as e:  # noqa: BLE001 - cannot tell: send (at least once)
                    log.warning("cannot check whether notification %s was delivered before a "
                                "restart (%s); sending it", n.key, _translate(e))
                    ts = None
                if ts is not None:
                    log.info("notification %s was delivered before a restart", n.key)
                    self._sent(row, n, thread, (thread[0] if thread else t.name, ts))
                    return
            self.outbox.mark_sending(row.id)
            if n.kind == "image":
                self._deliver_image(row, n, thread)
                return
            text = n.render_text()
            if not t.threads and n.kind != "open":
                text = f"[{n.incident}] {text}"
            elif n.kind == "open" and thread is not None:
                text = f":repeat: re-opened\n{text}"
            where = t.post(text, thread, n.key)
        except SendError:
            raise
        except Exception as e:  # noqa: BLE001 - any failure keeps the message queued
            raise _translate(e) from None
        self._sent(row, n, thread, where)

    def _thread_for(self, n: Notification) -> tuple[str, str] | None:
        th = self.outbox.thread(n.incident)
        if th is None:
            return None
        channel, ts, opened = th
        if n.kind == "open" and self.clock() - opened >= self.cfg.dedupe_window_s:
            return None  # an old incident re-opening later gets a fresh thread
        return channel, ts

    def _sent(
        self, row: Row, n: Notification, thread: tuple[str, str] | None, where: tuple[str, str]
    ) -> None:
        if self.transport.threads and thread is None and where[1]:
            self.outbox.set_thread(n.incident, where[0], where[1])
        self.outbox.mark_sent(row.id, where[1] or None)

    def _deliver_image(self, row: Row, n: Notification, thread: tuple[str, str] | None) -> None:
        from sentinel.notify.plot import render_png, summarize

        assert n.series is not None
        t = self.transport
        reason = ""
        if not self.cfg.upload_plots:
            reason = "plots are off (notify.upload_plots)"
        elif not t.uploads:
            reason = "a webhook cannot upload files"
        elif thread is None:
            reason = "the incident has no thread"
        if not reason:
            assert thread is not None
            png = render_png(n.series, n.title)
            try:
                t.upload(png, f"{n.incident.replace(':', '_')}.png", n.title, thread)
            except Exception as e:  # noqa: BLE001 - classified below
                err = _translate(e)
                if err.kind in ("transient", "unreachable"):
                    raise err from None
                reason = f"upload refused: {err}"
                log.warning("plot for incident %r not uploaded (%s); sending text", n.incident,
                            err)
            else:
                self.outbox.mark_sent(row.id, None)
                return
        text = f":chart_with_upwards_trend: {summarize(n.series)} (no plot: {reason})"
        if not t.threads:
            text = f"[{n.incident}] {text}"
        where = t.post(text, thread, n.key)
        self.outbox.mark_sent(row.id, where[1] or None)
