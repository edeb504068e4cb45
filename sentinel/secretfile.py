"""Read a secret (an API token, a webhook URL) from a file, and hold it so it never prints.

The one reader of secret files: the Slack token and webhook URL (``notify``) and the
Grafana token (``dashboards push``) go through :func:`read_secret_file`. It refuses a
file every user may read or change (the fix is ``chmod 600``), warns about one its
group may read, refuses what is not a regular file, a missing, empty or oversized one,
and one holding more than one word; it strips the trailing newline an editor adds.
No message, log line or ``repr`` it produces contains any of the file's content.
"""

from __future__ import annotations

import grp
import logging
import os
import stat

from sentinel.config import ConfigError, read_regular_file

log = logging.getLogger(__name__)

# A Slack token is ~60 bytes, a webhook URL ~80, a Grafana token ~50: a file this large
# is not a secret file (a key bundle, a log pointed at by mistake) and is not read whole.
MAX_SECRET_BYTES = 64 * 1024
_VALID = "valid: a regular file, mode 600, holding only the secret"


class Secret:
    """A secret string that never prints itself; call :meth:`reveal` to use it."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        """Return the secret value (only to hand it to the client that sends it)."""
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __bool__(self) -> bool:
        return bool(self._value)


class SecretFileError(ConfigError):
    """A secret file was refused; the message names the file and the fix, never the content."""


def _check_mode(st: os.stat_result, path: str, what: str) -> None:
    """Refuse a file open to every user; warn about one open to its group."""
    perms = stat.S_IMODE(st.st_mode)
    if perms & (stat.S_IROTH | stat.S_IWOTH):
        raise SecretFileError(
            f"{what}: {path} has mode {perms:04o}, so every user on this machine may read or "
            f"change the secret; run `chmod 600 {path}` (owner only; 640 with a group that "
            f"only sentinel's user is in also works)"
        )
    if perms & (stat.S_IRGRP | stat.S_IWGRP):
        try:
            group = grp.getgrgid(st.st_gid).gr_name
        except KeyError:
            group = str(st.st_gid)
        log.warning("%s: %s has mode %04o: members of group %s may read or change the "
                    "secret; fine if only sentinel's user is in it, else run `chmod 600 %s`",
                    what, path, perms, group, path)


def _read(path: str, what: str) -> bytes:
    """Return the file's bytes after checking what it is and who may read it."""
    return read_regular_file(
        path, what, max_bytes=MAX_SECRET_BYTES, valid=_VALID, error=SecretFileError,
        check=lambda st: _check_mode(st, path, what))


def read_secret_file(path: str | os.PathLike[str], what: str) -> Secret:
    """Return the secret held in ``path``; ``what`` names the setting in error messages.

    Raises :class:`SecretFileError` (a ConfigError) naming the file, what is wrong and
    how to fix it, without any of the content.
    """
    p = os.fspath(path)
    data = _read(p, what)
    try:
        text: str | None = data.decode("utf-8").strip()
    except UnicodeDecodeError:
        text = None  # raised below, outside this handler: the error quotes the bad bytes
    if text is None:
        raise SecretFileError(f"{what}: {p} is not UTF-8 text; {_VALID}")
    if not text:
        raise SecretFileError(f"{what}: {p} is empty; {_VALID}")
    if any(c.isspace() for c in text):
        raise SecretFileError(f"{what}: {p} holds more than one word or line; {_VALID}")
    return Secret(text)
