"""sentinel.secretfile: every refusal, the group warning, and the content never shown."""

from __future__ import annotations

import grp
import logging
import os
import socket
import traceback
from pathlib import Path

import pytest

from sentinel.config import ConfigError
from sentinel.notify.config import NotifyConfig
from sentinel.secretfile import MAX_SECRET_BYTES, Secret, SecretFileError, read_secret_file

SECRET = "xoxb-1234-very-SECRET-token"  # noqa: S105 - a fake token
WHAT = "notify.slack_token_file"


def secret_file(tmp_path: Path, content: bytes | str = SECRET + "\n", mode: int = 0o600) -> Path:
    p = tmp_path / "token"
    p.write_bytes(content.encode() if isinstance(content, str) else content)
    p.chmod(mode)
    return p


def shown(e: BaseException) -> str:
    """Everything an operator could see of an error: message, repr, whole traceback."""
    return str(e) + repr(e) + "".join(traceback.format_exception(e))


def test_reads_the_secret_and_strips_the_newline(tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    s = read_secret_file(secret_file(tmp_path), WHAT)
    assert s.reveal() == SECRET
    assert SECRET not in repr(s) + str(s) + f"{s}" and repr(s) == "Secret('***')"
    assert caplog.text == ""


def test_a_symlink_to_a_good_file_is_followed(tmp_path):
    """Kubernetes and Vault agents mount secrets as symlinks into a data directory."""
    link = tmp_path / "link"
    link.symlink_to(secret_file(tmp_path))
    assert read_secret_file(link, WHAT).reveal() == SECRET


@pytest.mark.parametrize(
    ("content", "mode", "message"),
    [
        (SECRET, 0o644, r"has mode 0644, so every user on this machine may read or change the "
                        r"secret; run `chmod 600 .*token` \(owner only"),
        (SECRET, 0o606, r"has mode 0606"),
        (SECRET, 0o602, r"has mode 0602"),  # writable by all: anyone can swap the webhook URL
        ("", 0o600, r"is empty; valid: a regular file, mode 600, holding only the secret"),
        (" \n\n", 0o600, r"is empty"),
        (SECRET + "\n# bot token for #alerts\n", 0o600, r"holds more than one word or line"),
        ("Bearer " + SECRET, 0o600, r"holds more than one word or line"),
        (b"\xff\xfe" + SECRET.encode(), 0o600, r"is not UTF-8 text"),
        (SECRET * (MAX_SECRET_BYTES // len(SECRET) + 1), 0o600,
         rf"is larger than {MAX_SECRET_BYTES} bytes"),
    ],
)
def test_bad_files_are_refused_without_showing_the_content(tmp_path, caplog, content, mode,
                                                           message):
    caplog.set_level(logging.DEBUG)
    p = secret_file(tmp_path, content, mode)
    with pytest.raises(SecretFileError, match=rf"^{WHAT}: {p}.*{message}") as e:
        read_secret_file(p, WHAT)
    assert isinstance(e.value, ConfigError)  # exit code 2 from every CLI
    assert SECRET not in shown(e.value) and "xff" not in shown(e.value)
    assert SECRET not in caplog.text


def test_group_access_is_allowed_with_a_warning(tmp_path, caplog):
    """root:sentinel 0640 is how a service is commonly given a secret it cannot own."""
    p = secret_file(tmp_path, mode=0o640)
    with caplog.at_level(logging.WARNING, logger="sentinel.secretfile"):
        assert read_secret_file(p, WHAT).reveal() == SECRET
    (rec,) = caplog.records
    assert rec.levelno == logging.WARNING
    group = grp.getgrgid(p.stat().st_gid).gr_name
    assert f"{WHAT}: {p} has mode 0640: members of group {group} may read" in rec.getMessage()
    assert f"chmod 600 {p}" in rec.getMessage() and SECRET not in caplog.text


def test_missing_file_and_directory_are_refused(tmp_path):
    with pytest.raises(SecretFileError, match=rf"{WHAT}: cannot read {tmp_path}/none "
                                              r"\(No such file or directory\)"):
        read_secret_file(tmp_path / "none", WHAT)
    d = tmp_path / "dir"
    d.mkdir(mode=0o700)
    with pytest.raises(SecretFileError, match=rf"{d} is a directory; valid: a regular file"):
        read_secret_file(d, WHAT)


def test_a_named_pipe_is_refused_without_blocking(tmp_path):
    """Opening a FIFO for reading waits for a writer: it must be refused before that."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo, 0o600)
    with pytest.raises(SecretFileError, match=r"is a named pipe"):
        read_secret_file(fifo, WHAT)


def test_a_socket_and_a_device_are_refused(tmp_path):
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(tmp_path / "sock"))
        with pytest.raises(SecretFileError, match=r"is a socket"):
            read_secret_file(tmp_path / "sock", WHAT)
    with pytest.raises(SecretFileError, match=r"/dev/null is a character device"):
        read_secret_file("/dev/null", WHAT)


def test_notify_config_reads_its_files_through_it(tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    p = secret_file(tmp_path, mode=0o644)
    cfg = NotifyConfig(slack_token_file=str(p), channel="C1")
    with pytest.raises(SecretFileError, match=r"notify\.slack_token_file: .* run `chmod 600"):
        cfg.token()
    hook = secret_file(tmp_path, "https://hooks.slack.com/services/T0/B0/SECRETpart\n")
    cfg = NotifyConfig(slack_webhook_url_file=str(hook))
    url = cfg.webhook_url()
    assert isinstance(url, Secret)
    assert url.reveal() == "https://hooks.slack.com/services/T0/B0/SECRETpart"
    assert "SECRETpart" not in repr(cfg) + repr(url) and SECRET not in caplog.text
