"""Issue 13, item 11: notify under a hostile Slack, a typo'd secret and a damaged outbox."""

from __future__ import annotations

import os
import sqlite3
import stat
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from sentinel.cli import main
from sentinel.config import ConfigError
from sentinel.notify import slack as slack_mod
from sentinel.notify.config import NotifyConfig
from sentinel.notify.queue import Outbox
from sentinel.notify.slack import (
    FlushResult,
    Notifier,
    WebhookTransport,
    transport_from_config,
)
from sentinel.secretfile import Secret
from tests.support.fake_slack import TOKEN, FakeSlack, running_fake_slack

pytestmark = pytest.mark.adversarial

ROOT = Path(__file__).resolve().parents[2]
SECRET_PART = "T0HOOK/B0HOOK/SECRETwebhookPART"


@pytest.fixture
def slack() -> Iterator[FakeSlack]:
    with running_fake_slack() as s:
        yield s


def _cfg(slack: FakeSlack, tmp_path: Path, **kw: object) -> NotifyConfig:
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    token_file.chmod(0o600)
    base = {"slack_token_file": str(token_file), "channel": slack.channel_id,
            "base_url": slack.api_url, "queue_dir": str(tmp_path / "q"), "timeout_s": 5}
    return NotifyConfig(**{**base, **kw})  # type: ignore[arg-type]


@pytest.mark.parametrize("retry_after", [20, 3600, 10**9])
def test_retry_after_never_blocks_a_send(
    slack: FakeSlack, tmp_path: Path, retry_after: int
) -> None:
    """Main slept Retry-After inside slack-sdk, retry_max times: 20 s blocked it 62 s."""
    slack.rate_limit_next = 10
    slack.retry_after_s = retry_after
    n = Notifier.from_config(_cfg(slack, tmp_path))
    n.open_incident("loss_spike:gpt", "Loss spike in gpt")
    out: list[FlushResult] = []
    # In a thread, so that on a regression the test fails in seconds instead of hanging.
    t = threading.Thread(target=lambda: out.append(n.flush()), daemon=True)
    t0 = time.monotonic()
    t.start()
    t.join(10)
    took = time.monotonic() - t0
    assert out and took < 5, f"a flush blocked {took:.1f} s on Retry-After {retry_after}"
    res = out[0]
    assert (res.sent, res.waiting) == (0, 1)  # queued, not lost
    assert res.next_in_s is not None
    cap = slack_mod.MAX_RETRY_AFTER_S
    assert min(retry_after, cap) - 1 <= res.next_in_s <= cap


def test_short_retry_after_is_still_waited_for_inline(slack: FakeSlack, tmp_path: Path) -> None:
    slack.rate_limit_next = 1
    slack.retry_after_s = 1
    n = Notifier.from_config(_cfg(slack, tmp_path))
    n.open_incident("x", "first")
    assert n.flush().sent == 1


def test_outbox_files_are_private(slack: FakeSlack, tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        n = Notifier.from_config(_cfg(slack, tmp_path))
        n.open_incident("x", "first", text="details")
        n.flush()
        files = sorted((tmp_path / "q").iterdir())
        assert files, "no outbox file"
        for f in files:
            assert stat.S_IMODE(f.stat().st_mode) == 0o600, f
        assert stat.S_IMODE((tmp_path / "q").stat().st_mode) == 0o700
        n.outbox.close()
        # An outbox left world-readable by an older version is tightened.
        db = tmp_path / "q" / "outbox.sqlite3"
        db.chmod(0o644)
        Outbox(tmp_path / "q").close()
        assert stat.S_IMODE(db.stat().st_mode) == 0o600
    finally:
        os.umask(old)


@pytest.mark.parametrize("url", [f"htps://hooks.slack.com/services/{SECRET_PART}",
                                 f"hooks.slack.com/services/{SECRET_PART}"])
def test_typod_webhook_url_is_refused_and_never_stored(tmp_path: Path, url: str, capsys,
                                                      monkeypatch) -> None:
    cfg = NotifyConfig(slack_webhook_url=url, queue_dir=str(tmp_path / "q"))
    with pytest.raises(ConfigError) as e:
        transport_from_config(cfg)
    assert "SECRET" not in str(e.value) and "not an http(s) URL" in str(e.value)
    monkeypatch.setenv("SENTINEL_NOTIFY_SLACK_WEBHOOK_URL", url)
    monkeypatch.setenv("SENTINEL_NOTIFY_QUEUE_DIR", str(tmp_path / "q"))
    rc = main(["notify", "send", "--incident", "i", "--title", "t"])
    out = capsys.readouterr()
    assert rc == 2 and "SECRET" not in out.out + out.err
    for f in (tmp_path / "q").glob("*") if (tmp_path / "q").exists() else []:
        assert b"SECRET" not in f.read_bytes(), f


def test_send_errors_stored_in_the_outbox_are_masked(tmp_path: Path) -> None:
    """urllib quotes a bad URL in its error; main stored that text, the secret with it."""
    url = Secret(f"htps://hooks.slack.com/services/{SECRET_PART}")
    cfg = NotifyConfig(queue_dir=str(tmp_path / "q"), timeout_s=2)
    n = Notifier(cfg, WebhookTransport(url, cfg.timeout_s, cfg.retry_max))
    n.open_incident("x", "first")
    res = n.flush()
    assert res.waiting == 1
    n.outbox.close()
    for f in (tmp_path / "q").iterdir():
        assert b"SECRETwebhook" not in f.read_bytes(), f


@pytest.mark.parametrize("damage", ["garbage", "truncated", "foreign"])
def test_damaged_outbox_is_a_clear_error(tmp_path: Path, damage: str, capsys,
                                        monkeypatch) -> None:
    q = tmp_path / "q"
    q.mkdir()
    db = q / "outbox.sqlite3"
    if damage == "garbage":
        db.write_bytes(b"this is not sqlite" * 100)
    elif damage == "truncated":
        o = Outbox(q)
        o.close()
        db.write_bytes(db.read_bytes()[:1000])
    else:
        con = sqlite3.connect(db)
        con.execute("CREATE TABLE outbox (x INTEGER)")
        con.commit()
        con.close()
    db.chmod(0o600)
    monkeypatch.setenv("SENTINEL_NOTIFY_QUEUE_DIR", str(q))
    rc = main(["notify", "status"])  # main: a sqlite3.DatabaseError traceback
    err = capsys.readouterr().err
    assert rc == 2, err
    assert str(db) in err and "move it aside" in err
