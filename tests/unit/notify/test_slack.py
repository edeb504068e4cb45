"""Notifier against a local server speaking Slack's API: threads, uploads, 429s, outages."""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from pathlib import Path

import pytest

from sentinel.notify.config import NotifyConfig
from sentinel.notify.message import Notification, Series
from sentinel.notify.queue import Outbox, OutboxError
from sentinel.notify.slack import BotTransport, Notifier, WebhookTransport
from sentinel.secretfile import Secret
from tests.support.fake_slack import TOKEN, WEBHOOK_PATH, FakeSlack


class Clock:
    """A clock the test moves by hand."""

    def __init__(self, t: float = 1_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def _series(n: int = 50, spike_at: int = 30) -> Series:
    steps = list(range(1000, 1000 + n))
    loss = [3.0 - 0.001 * i for i in range(n)]
    loss[spike_at] = 9.0
    loss[spike_at + 1] = math.nan
    return Series(steps, loss, [50_000.0 - (20_000 if i > spike_at else 0) for i in range(n)],
                  mark_step=steps[spike_at])


def _bot(cfg: NotifyConfig, clock: Clock | None = None, mono: Clock | None = None) -> Notifier:
    transport = BotTransport(Secret(TOKEN), cfg.channel, cfg.base_url, cfg.timeout_s,
                             cfg.retry_max)
    return Notifier(cfg, transport, clock=clock or time.time, monotonic=mono or time.monotonic)


def test_one_thread_per_incident_with_follow_ups(slack: FakeSlack, bot_cfg: NotifyConfig) -> None:
    n = _bot(bot_cfg)
    fields = {"job": "gpt", "node": "node7", "GPU": "3", "value": "loss=9.0"}
    assert n.open_incident("loss_spike:gpt", "Loss spike in gpt", "at step 1030",
                           fields=fields) == "queued"
    n.open_incident("throttle:node3", "GPU 1 throttled on node3", severity="critical")
    n.notify(Notification("loss_spike:gpt", "update", "Loss back to trend", "back in 40 steps"))
    n.notify(Notification("loss_spike:gpt", "resolved", "Loss spike resolved"))
    res = n.flush()
    assert (res.sent, res.waiting) == (4, 0)

    top = slack.top_level()
    assert [m.text.splitlines()[0] for m in top] == [
        ":rotating_light: *Loss spike in gpt*",
        ":rotating_light: *GPU 1 throttled on node3*",
    ]
    assert "job: `gpt` · node: `node7` · GPU: `3` · value: `loss=9.0`" in top[0].text
    replies = slack.thread_of(top[0].ts)
    assert [r.text.splitlines()[0] for r in replies] == [
        ":information_source: *Loss back to trend*",
        ":white_check_mark: *Loss spike resolved*",
    ]
    assert slack.thread_of(top[1].ts) == []
    # Every message carries its idempotency key, so a restart can find it again.
    assert all(m.metadata and m.metadata["event_payload"]["key"] for m in slack.messages)


def test_plot_uploaded_into_the_thread(slack: FakeSlack, bot_cfg: NotifyConfig) -> None:
    n = _bot(bot_cfg)
    n.open_incident("loss_spike:gpt", "Loss spike in gpt", series=_series())
    assert n.flush().sent == 2
    (opening,) = slack.top_level()
    (done,) = slack.completed
    assert done["thread_ts"] == opening.ts and done["channel_id"] == slack.channel_id
    (file_id,) = [f["id"] for f in done["files"]]
    assert slack.uploads[file_id][:8] == b"\x89PNG\r\n\x1a\n"
    assert len(slack.uploads[file_id]) > 5000  # a real picture, not an empty canvas


def test_plot_without_upload_scope_falls_back_to_text(
    slack: FakeSlack, bot_cfg: NotifyConfig
) -> None:
    slack.allow_uploads = False
    n = _bot(bot_cfg)
    n.open_incident("loss_spike:gpt", "Loss spike in gpt", series=_series())
    assert n.flush().sent == 2
    (opening,) = slack.top_level()
    (reply,) = slack.thread_of(opening.ts)
    assert "missing_scope" in reply.text
    assert "loss min 2.951 max 9" in reply.text and "1 non-finite loss values" in reply.text
    assert slack.uploads == {}


def test_429_waits_for_retry_after(slack: FakeSlack, bot_cfg: NotifyConfig) -> None:
    slack.rate_limit_next = 1
    slack.retry_after_s = 1
    n = _bot(bot_cfg)
    n.open_incident("x", "first")
    res = n.flush()
    assert res.sent == 1 and len(slack.messages) == 1
    (t0, _), (t1, _) = slack.requests
    assert t1 - t0 >= 1.0, "the retry came before Retry-After"


def test_429_beyond_the_retries_stays_queued(slack: FakeSlack, bot_cfg: NotifyConfig) -> None:
    cfg = dataclasses.replace(bot_cfg, retry_max=0)
    slack.rate_limit_next = 1
    slack.retry_after_s = 7
    clock = Clock()
    n = _bot(cfg, clock)
    n.open_incident("x", "first")
    res = n.flush()
    assert (res.sent, res.waiting) == (0, 1)
    assert res.next_in_s is not None and res.next_in_s >= 7  # Retry-After, not the 2 s backoff
    clock.t += 7
    assert n.flush().sent == 1
    assert len(slack.messages) == 1


def test_outage_then_recovery_sends_everything_once(
    slack: FakeSlack, bot_cfg: NotifyConfig
) -> None:
    clock = Clock()
    n = _bot(bot_cfg, clock)
    slack.outage = True
    for i in range(5):
        n.open_incident(f"inc{i}", f"incident {i}")
    n.notify(Notification("inc0", "resolved", "incident 0 resolved"))
    res = n.flush()
    assert res.sent == 0 and res.waiting == 6
    # The flush stopped at the first failure instead of hammering a Slack that is down.
    assert len([p for _, p in slack.requests if p == "/api/chat.postMessage"]) <= 2
    slack.outage = False
    clock.t += 3600
    res = n.flush()
    assert (res.sent, res.waiting) == (6, 0)
    assert sorted(m.text.splitlines()[0] for m in slack.top_level()) == [
        f":rotating_light: *incident {i}*" for i in range(5)
    ]
    assert len(slack.thread_of(slack.top_level()[0].ts)) == 1
    assert n.flush().sent == 0 and len(slack.messages) == 6  # nothing twice


def test_restart_reads_the_same_queue(slack: FakeSlack, bot_cfg: NotifyConfig) -> None:
    first = _bot(bot_cfg)
    first.open_incident("inc", "opened before the restart")
    first.flush()
    first.notify(Notification("inc", "update", "queued before the restart"))
    first.outbox.close()
    del first

    second = _bot(bot_cfg)  # a new process: same queue_dir, nothing in memory
    second.notify(Notification("inc", "resolved", "after the restart"))
    assert second.flush().sent == 2
    (opening,) = slack.top_level()
    assert [m.text.splitlines()[0] for m in slack.thread_of(opening.ts)] == [
        ":information_source: *queued before the restart*",
        ":white_check_mark: *after the restart*",
    ]


def test_crash_after_slack_accepted_is_not_sent_twice(
    slack: FakeSlack, bot_cfg: NotifyConfig
) -> None:
    n = _bot(bot_cfg)
    n.open_incident("inc", "opening", key="alert-123:firing")
    # Simulate a process killed after Slack accepted the message but before it was
    # marked sent: post it by hand and leave the row in state "sending".
    (row,) = n.outbox.waiting()
    n.outbox.mark_sending(row.id)
    n.transport.post(Notification.from_json(row.body).render_text(), None, row.key)
    n.outbox.close()

    again = _bot(bot_cfg)
    assert again.flush().sent == 1
    assert len(slack.messages) == 1
    assert again.outbox.state_of("alert-123:firing") == "sent"
    # And the incident's thread was recovered, so a follow-up lands in it.
    again.notify(Notification("inc", "resolved", "done"))
    again.flush()
    assert len(slack.thread_of(slack.messages[0].ts)) == 1


def test_same_idempotency_key_is_queued_once(slack: FakeSlack, bot_cfg: NotifyConfig) -> None:
    n = _bot(bot_cfg)
    assert n.open_incident("inc", "opening", key="k1") == "queued"
    assert n.open_incident("inc", "opening, different text", key="k1") == "duplicate_key"
    n.flush()
    assert n.open_incident("inc", "opening", key="k1") == "duplicate_key"
    assert len(slack.messages) == 1


def test_flapping_is_deduplicated_within_the_window(
    slack: FakeSlack, bot_cfg: NotifyConfig
) -> None:
    clock = Clock()
    n = _bot(dataclasses.replace(bot_cfg, dedupe_window_s=600), clock)
    results = []
    for _ in range(20):  # the same alert re-sent every 10 s
        results.append(n.open_incident("gpu_hot:node1:0", "GPU 0 hot on node1"))
        clock.t += 10
    assert results.count("queued") == 1 and results.count("deduplicated") == 19
    n.flush()
    assert len(slack.messages) == 1
    # A state change is news: it goes through, in the thread.
    assert n.notify(Notification("gpu_hot:node1:0", "resolved", "GPU 0 cooled")) == "queued"
    # Long after the window the same condition is news again, in a new thread.
    clock.t += 700
    assert n.open_incident("gpu_hot:node1:0", "GPU 0 hot on node1") == "queued"
    n.flush()
    assert len(slack.top_level()) == 2 and len(slack.messages) == 3


def test_reopened_within_the_window_stays_in_its_thread(
    slack: FakeSlack, bot_cfg: NotifyConfig
) -> None:
    clock = Clock()
    n = _bot(bot_cfg, clock)
    for state in ("open", "resolved", "open", "resolved", "open"):
        if state == "open":
            n.open_incident("flappy", "disk slow on node2")
        else:
            n.notify(Notification("flappy", "resolved", "disk fine on node2"))
        clock.t += 30
    n.flush()
    (opening,) = slack.top_level()
    replies = slack.thread_of(opening.ts)
    assert len(replies) == 4 and replies[1].text.startswith(":repeat: re-opened")


def test_rate_limit_per_channel(slack: FakeSlack, bot_cfg: NotifyConfig) -> None:
    mono = Clock(0.0)
    n = _bot(dataclasses.replace(bot_cfg, rate_burst=3, rate_per_minute=6), mono=mono)
    for i in range(10):
        n.open_incident(f"inc{i}", f"incident {i}")
    res = n.flush()
    assert res.sent == 3 and res.rate_limited and res.waiting == 7
    assert res.next_in_s == pytest.approx(10.0)  # 6 a minute: one token every 10 s
    mono.t += 10
    assert n.flush().sent == 1
    mono.t += 60
    assert n.flush().sent == 3  # the bucket holds at most its burst
    assert [m.text for m in slack.messages] == [
        f":rotating_light: *incident {i}*" for i in range(7)
    ]  # in order


def test_bad_token_keeps_messages_and_says_what_to_fix(
    slack: FakeSlack, bot_cfg: NotifyConfig, caplog: pytest.LogCaptureFixture
) -> None:
    transport = BotTransport(Secret("xoxb-wrong"), bot_cfg.channel, bot_cfg.base_url, 5, 0)
    n = Notifier(bot_cfg, transport)
    n.open_incident("inc", "opening")
    with caplog.at_level(logging.ERROR):
        res = n.flush()
    assert res.sent == 0 and res.waiting == 1
    assert "invalid_auth" in caplog.text and "slack_token_file" in caplog.text
    good = _bot(bot_cfg, Clock(time.time() + 400))
    assert good.flush().sent == 1


def test_message_slack_refuses_is_given_up_and_counted(
    slack: FakeSlack, bot_cfg: NotifyConfig
) -> None:
    n = _bot(dataclasses.replace(bot_cfg, channel="C0NOSUCH"))
    n.open_incident("a", "to a channel that does not exist")
    res = n.flush()
    assert res.waiting == 0
    assert n.outbox.counts()["dead"] == 1


def test_webhook_transport(slack: FakeSlack, tmp_path: Path) -> None:
    cfg = NotifyConfig(slack_webhook_url=slack.webhook_url, queue_dir=str(tmp_path / "q"))
    n = Notifier.from_config(cfg)
    assert isinstance(n.transport, WebhookTransport)
    n.open_incident("loss_spike:gpt", "Loss spike in gpt", series=_series())
    n.notify(Notification("loss_spike:gpt", "resolved", "Loss back"))
    assert n.flush().sent == 3
    texts = [m["text"] for m in slack.webhook_messages]
    assert texts[0].startswith(":rotating_light: *Loss spike in gpt*")
    assert texts[1].startswith("[loss_spike:gpt] :chart_with_upwards_trend: steps 1000..1049")
    assert "a webhook cannot upload files" in texts[1]
    assert texts[2].startswith("[loss_spike:gpt] :white_check_mark:")


def test_secrets_never_logged(
    slack: FakeSlack, bot_cfg: NotifyConfig, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    n = Notifier.from_config(bot_cfg)
    n.open_incident("inc", "opening", series=_series())
    slack.rate_limit_next = 1
    n.flush()
    hook = Notifier.from_config(
        NotifyConfig(slack_webhook_url=slack.webhook_url, queue_dir=str(tmp_path / "w"))
    )
    hook.open_incident("inc", "opening")
    hook.flush()
    slack.outage = True
    hook.notify(Notification("inc", "update", "during an outage"))
    hook.flush()
    assert len(slack.messages) == 1 and len(slack.completed) == 1
    assert len(slack.webhook_messages) == 1
    # Everything sentinel and slack-sdk logged (werkzeug is the fake Slack's own log).
    ours = [r for r in caplog.records if not r.name.startswith("werkzeug")]
    logged = "\n".join(r.getMessage() for r in ours)
    assert "Sending a request" in logged  # slack-sdk's debug lines were captured...
    assert TOKEN not in logged and "SECRETwebhookPART" not in logged  # ...without secrets
    for obj in (n, n.transport, bot_cfg, hook.transport, bot_cfg.token()):
        assert TOKEN not in repr(obj) and "SECRETwebhookPART" not in repr(obj)
    assert WEBHOOK_PATH in slack.webhook_url  # the test did use a secret-bearing URL


def test_queue_is_bounded(slack: FakeSlack, bot_cfg: NotifyConfig,
                          caplog: pytest.LogCaptureFixture) -> None:
    n = _bot(dataclasses.replace(bot_cfg, queue_max_messages=10))
    slack.outage = True
    with caplog.at_level(logging.WARNING):
        for i in range(15):
            n.open_incident(f"inc{i}", f"incident {i}")
    counts = n.outbox.counts()
    assert counts["pending"] == 10 and counts["total_dropped_full"] == 5
    assert "dropped the oldest message, incident 'inc4'" in caplog.text
    slack.outage = False
    n.flush()
    assert [m.text for m in slack.messages] == [
        f":rotating_light: *incident {i}*" for i in range(5, 15)
    ]


def test_outbox_directory_error_is_clear(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(OutboxError, match="notify.queue_dir .*Not a directory"):
        Outbox(blocker / "queue")


def test_inline_429_retries_stay_within_the_budget() -> None:
    """Retry-After is slept inside one send only while the sleeps fit the budget."""
    from slack_sdk.http_retry.request import HttpRequest
    from slack_sdk.http_retry.response import HttpResponse
    from slack_sdk.http_retry.state import RetryState

    from sentinel.notify import slack as slack_mod

    handler = slack_mod._rate_limit_retry(retry_max=5)
    req = HttpRequest(method="POST", url="https://slack.invalid/api/chat.postMessage",
                      headers={}, body_params=None, data=None)

    def answer(retry_after: str, status: int = 429) -> HttpResponse:
        return HttpResponse(status_code=status, headers={"Retry-After": [retry_after]}, body={},
                            data=b"")

    state = RetryState()
    assert handler._can_retry(state=state, request=req, response=answer("0.5"))
    t0 = time.monotonic()
    handler.prepare_for_next_attempt(state=state, request=req, response=answer("0.5"))
    assert time.monotonic() - t0 >= 0.5 and state.next_attempt_requested
    assert state.current_attempt == 1
    # 0.5 s spent: 2.4 more fits the 3 s budget, 2.6 does not.
    assert handler._can_retry(state=state, request=req, response=answer("2.4"))
    assert not handler._can_retry(state=state, request=req, response=answer("2.6"))
    fresh = RetryState()
    for junk in ("soon", "-1", "inf", "Wed, 21 Oct 2015 07:28:00 GMT"):
        assert not handler._can_retry(state=fresh, request=req, response=answer(junk))
    assert not handler._can_retry(state=fresh, request=req, response=answer("1", status=500))
    assert slack_mod.retry_after_s({"retry-after": ["7"]}) == 7.0
