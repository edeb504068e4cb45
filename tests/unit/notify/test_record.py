"""notify.record_dir: without Slack, every message is written to a file, in its thread."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sentinel.config import ConfigError
from sentinel.notify.config import NotifyConfig
from sentinel.notify.message import Notification, Series
from sentinel.notify.record import RecordTransport
from sentinel.notify.slack import Notifier, transport_from_config


def _cfg(tmp_path: Path, **kw: object) -> NotifyConfig:
    return NotifyConfig(queue_dir=str(tmp_path / "queue"), record_dir=str(tmp_path / "rec"),
                        **kw)  # type: ignore[arg-type]


def test_messages_go_to_the_file_in_one_thread_per_incident(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path)
    n = Notifier.from_config(cfg)
    assert isinstance(n.transport, RecordTransport)
    loss = [3.0 - 0.01 * i for i in range(40)]
    loss[20] = 8.0
    series = Series(list(range(100, 140)), loss, mark_step=120)
    n.open_incident("inc-a", "[inc-a] loss spike at step 120", "Decision: rollback_skip",
                    fields={"job": "gpt"}, series=series, key="inc-a:open")
    n.open_incident("inc-b", "[inc-b] XID 79 on node3", "Decision: spare_swap", key="inc-b:open")
    n.notify(Notification("inc-a", "update", "[inc-a] rollback_skip: verified", "back on trend"))
    res = n.flush()
    assert (res.sent, res.failed, res.waiting) == (4, 0, 0)
    recs = [json.loads(line) for line in (tmp_path / "rec" / "messages.jsonl").read_text()
            .splitlines()]
    opens = [r for r in recs if r["thread_ts"] is None]
    assert [r["text"].splitlines()[0] for r in opens] == [
        ":rotating_light: *[inc-a] loss spike at step 120*",
        ":rotating_light: *[inc-b] XID 79 on node3*"]
    a_thread = [r for r in recs if r["thread_ts"] == opens[0]["ts"]]
    assert [r.get("file", "")[-9:] for r in a_thread] == ["inc-a.png", ""]
    assert a_thread[1]["text"].endswith("back on trend")
    png = (tmp_path / "rec" / a_thread[0]["file"]).read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    # The outbox keeps what was sent, in order, for a summary of what Slack got.
    rows = n.outbox.messages()
    assert [(r.incident, r.kind, r.state) for r in rows] == [
        ("inc-a", "open", "sent"), ("inc-a", "image", "sent"), ("inc-b", "open", "sent"),
        ("inc-a", "update", "sent")]


def test_a_restart_mid_send_finds_the_recorded_message(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path)
    n = Notifier.from_config(cfg)
    n.open_incident("inc", "opening", key="inc:open")
    (row,) = n.outbox.waiting()
    n.outbox.mark_sending(row.id)
    n.transport.post(Notification.from_json(row.body).render_text(), None, row.key)
    n.outbox.close()
    again = Notifier.from_config(cfg)
    assert again.flush().sent == 1
    recs = RecordTransport(tmp_path / "rec").read()
    assert len(recs) == 1 and again.outbox.state_of("inc:open") == "sent"
    again.notify(Notification("inc", "resolved", "done"))
    again.flush()
    assert RecordTransport(tmp_path / "rec").read()[-1]["thread_ts"] == recs[0]["ts"]


def test_credentials_win_over_the_record_dir_and_nothing_at_all_is_refused(
        tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, slack_webhook_url="https://hooks.example/x")
    assert type(transport_from_config(cfg)).__name__ == "WebhookTransport"
    with pytest.raises(ConfigError, match="or notify.record_dir to write the messages"):
        transport_from_config(NotifyConfig(queue_dir=str(tmp_path / "q")))
