from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from sentinel.notify.config import NotifyConfig
from tests.support.fake_slack import TOKEN, FakeSlack, running_fake_slack


@pytest.fixture
def slack() -> Iterator[FakeSlack]:
    with running_fake_slack() as s:
        yield s


@pytest.fixture
def token_file(tmp_path: Path) -> Path:
    p = tmp_path / "slack-token"
    p.write_text(TOKEN + "\n")
    p.chmod(0o600)
    return p


@pytest.fixture
def bot_cfg(slack: FakeSlack, token_file: Path, tmp_path: Path) -> NotifyConfig:
    cfg = NotifyConfig(
        slack_token_file=str(token_file),
        channel=slack.channel_id,
        base_url=slack.api_url,
        queue_dir=str(tmp_path / "queue"),
        timeout_s=5,
    )
    cfg.validate()
    return cfg
