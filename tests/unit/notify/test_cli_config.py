"""`sentinel notify` and the notify config: bad input gets a clear error and exit code 2."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from sentinel.cli import main
from sentinel.config import ConfigError
from sentinel.notify.config import NotifyConfig, load_notify_config
from tests.support.fake_slack import TOKEN, FakeSlack


def _env(slack: FakeSlack, token_file: Path, tmp_path: Path) -> dict[str, str]:
    return {
        "SENTINEL_NOTIFY_SLACK_TOKEN_FILE": str(token_file),
        "SENTINEL_NOTIFY_CHANNEL": slack.channel_id,
        "SENTINEL_NOTIFY_BASE_URL": slack.api_url,
        "SENTINEL_NOTIFY_QUEUE_DIR": str(tmp_path / "q"),
    }


def test_config_from_environment_hides_the_token(tmp_path: Path) -> None:
    cfg = load_notify_config(env={"SENTINEL_NOTIFY_SLACK_TOKEN": TOKEN,
                                  "SENTINEL_NOTIFY_CHANNEL": "C1"})
    assert cfg.token() is not None and cfg.token().reveal() == TOKEN
    assert TOKEN not in repr(cfg) and TOKEN not in str(cfg.token())


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"SENTINEL_NOTIFY_SLACK_TOKEN": "x", "SENTINEL_NOTIFY_SLACK_WEBHOOK_URL": "http://h/"},
         "both a bot token and a webhook URL"),
        ({"SENTINEL_NOTIFY_SLACK_TOKEN": "x"}, "notify.channel: required with a bot token"),
        ({"SENTINEL_NOTIFY_RATE_BURST": "0"}, "rate_burst: 0 is below the minimum 1"),
        ({"SENTINEL_NOTIFY_BASE_URL": "http://h/api"}, "must end with '/'"),
    ],
)
def test_bad_config_is_refused_with_what_is_valid(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_notify_config(env=env)


def test_misspelled_environment_key_warns(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        cfg = load_notify_config(env={"SENTINEL_NOTIFY_SLACK_TOKN": "x"})
    assert cfg.token() is None
    assert "did you mean SENTINEL_NOTIFY_SLACK_TOKEN?" in caplog.text
    assert "'x'" not in caplog.text  # the value is not logged: it may be a secret


def test_unreadable_token_file_names_the_key(tmp_path: Path) -> None:
    cfg = NotifyConfig(slack_token_file=str(tmp_path / "missing"), channel="C1")
    with pytest.raises(ConfigError, match="notify.slack_token_file: cannot read"):
        cfg.token()


def test_cli_send_with_plot(
    slack: FakeSlack, token_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture,
) -> None:
    for k, v in _env(slack, token_file, tmp_path).items():
        monkeypatch.setenv(k, v)
    steps = tmp_path / "run.jsonl"
    steps.write_text("".join(
        json.dumps({"step": s, "loss": "NaN" if s == 120 else 3.0, "tokens_per_sec": 1000.0})
        + "\n" for s in range(0, 400)))
    caplog.set_level(logging.DEBUG)
    rc = main(["--log-level", "debug", "notify", "send", "--incident", "loss_spike:gpt",
               "--title", "NaN loss in gpt", "--field", "job=gpt", "--field", "step=120",
               "--steps-jsonl", str(steps), "--around-step", "120", "--key", "k-1"])
    assert rc == 0
    assert json.loads(capsys.readouterr().out) == {"queued": "queued", "sent": 2, "waiting": 0}
    (opening,) = slack.top_level()
    assert "job: `gpt` · step: `120`" in opening.text
    assert slack.completed and slack.completed[0]["thread_ts"] == opening.ts
    # The same key again is not sent twice.
    assert main(["notify", "send", "--incident", "loss_spike:gpt", "--title", "NaN loss in gpt",
                 "--key", "k-1"]) == 0
    assert len(slack.messages) == 1
    assert TOKEN not in caplog.text
    assert main(["notify", "status"]) == 0
    status = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert status["sent"] == 2 and status["total_duplicate_key"] == 1


def test_cli_test_reports_failure_and_keeps_the_message(
    slack: FakeSlack, token_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    for k, v in _env(slack, token_file, tmp_path).items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("SENTINEL_NOTIFY_RETRY_MAX", "0")
    slack.rate_limit_next = 1
    slack.retry_after_s = 0
    assert main(["notify", "test"]) == 1
    assert "stays queued" in capsys.readouterr().out
    assert main(["notify", "flush", "--wait", "10"]) == 0
    assert len(slack.messages) == 1 and "sentinel test message" in slack.messages[0].text


def test_cli_bad_input_exits_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("SENTINEL_NOTIFY_QUEUE_DIR", str(tmp_path / "q"))
    assert main(["notify", "test"]) == 2
    assert "no Slack credentials" in capsys.readouterr().err
    monkeypatch.setenv("SENTINEL_NOTIFY_SLACK_WEBHOOK_URL", "http://127.0.0.1:1/hook")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"step": 1, "loss": 2.0}\n{"step": "two", "loss": 2.0}\n')
    assert main(["notify", "send", "--incident", "i", "--title", "t",
                 "--steps-jsonl", str(bad)]) == 2
    err = capsys.readouterr().err
    assert f"--steps-jsonl {bad}:2: 'step' is 'two' (valid: an integer >= 0, at most 2^53)" in err
    assert main(["notify", "send", "--incident", "i", "--title", "t", "--field", "oops"]) == 2
    assert "NAME=VALUE" in capsys.readouterr().err


def test_steps_jsonl_keeps_only_the_window_in_memory(tmp_path: Path) -> None:
    """A whole run's log is read line by line; only the plotted window is held."""
    import tracemalloc

    from sentinel.notify.cli import load_steps_jsonl

    steps = tmp_path / "run.jsonl"
    line = '{"step": %d, "loss": 2.5, "tokens_per_sec": 50000.0, "grad_norm": 1.0}\n'
    with steps.open("w") as fh:
        fh.writelines(line % s for s in range(200_000))  # ~14 MB
    tracemalloc.start()
    try:
        series = load_steps_jsonl(str(steps), around=150_000, window=200)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert series.step == list(range(149_800, 150_201)) and series.mark_step == 150_000
    assert peak < 2_000_000, f"reading the log peaked at {peak} bytes"


def test_steps_jsonl_that_is_not_utf8_exits_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("SENTINEL_NOTIFY_QUEUE_DIR", str(tmp_path / "q"))
    monkeypatch.setenv("SENTINEL_NOTIFY_SLACK_WEBHOOK_URL", "http://127.0.0.1:1/hook")
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(b'{"step": 1, "loss": 2.0}\n\xff\xfe\n')
    assert main(["notify", "send", "--incident", "i", "--title", "t",
                 "--steps-jsonl", str(bad)]) == 2
    assert f"--steps-jsonl {bad}:2: not UTF-8 text (valid: JSON lines)" in capsys.readouterr().err
