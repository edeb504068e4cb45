"""Who may report: kernel credentials of Unix datagrams, and the configured allow-list.

The report socket is a datagram socket, so ``SO_PEERCRED`` has no peer to describe;
instead the agent sets ``SO_PASSCRED`` and the kernel attaches the sender's pid, uid
and gid (``SCM_CREDENTIALS``) to every datagram. A process cannot claim another uid
than its own (only root or CAP_SETUID can), so the uid is the sender's.
"""

from __future__ import annotations

import grp
import os
import pwd
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from sentinel.config import ConfigError

_UCRED = struct.Struct("=iII")  # struct ucred: pid, uid, gid
CRED_SPACE = socket.CMSG_SPACE(_UCRED.size)
# How long a uid's group list (from the group database) is trusted before it is read
# again, and how many uids are remembered: enough for every user of a node.
GROUPS_TTL_S = 60.0
MAX_CACHED_UIDS = 1024


@dataclass(frozen=True)
class Credentials:
    """The sender of one datagram as the kernel names it."""

    pid: int
    uid: int
    gid: int


def credentials(ancillary: list[tuple[int, int, bytes]]) -> Credentials | None:
    """Return the SCM_CREDENTIALS of a datagram's ancillary data, if any."""
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS \
                and len(data) >= _UCRED.size:
            return Credentials(*_UCRED.unpack_from(data))
    return None


def resolve_group(key: str, name: str) -> int:
    """Return the gid of group ``name`` (a name or a number), or raise ConfigError."""
    if name.isdigit():
        return int(name)
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        raise ConfigError(f"{key}: no group {name!r} on this machine (valid: an existing "
                          f"group name or a gid; create it with: groupadd --system {name})"
                          ) from None


class SenderPolicy:
    """The uids and groups allowed to report; everyone when both lists are empty."""

    def __init__(self, uids: Iterable[int], gids: Iterable[int],
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.uids = frozenset(uids)
        self.gids = frozenset(gids)
        self.monotonic = monotonic
        self._groups: dict[int, tuple[float, frozenset[int]]] = {}
        self._lock = threading.Lock()

    @classmethod
    def from_config(cls, uids: list[int], groups: list[str]) -> SenderPolicy | None:
        """Build the policy of ``agent.report_allow_uids/groups``; None when both are empty."""
        if not uids and not groups:
            return None
        return cls(uids, [resolve_group("agent.report_allow_groups", g) for g in groups])

    def allows(self, cred: Credentials) -> bool:
        """Whether ``cred``'s uid is listed, or its user belongs to a listed group."""
        if cred.uid in self.uids or cred.gid in self.gids:
            return True
        return bool(self.gids and self._groups_of(cred.uid, cred.gid) & self.gids)

    def _groups_of(self, uid: int, gid: int) -> frozenset[int]:
        """Return the groups of ``uid``'s user per the group database (cached)."""
        now = self.monotonic()
        with self._lock:
            hit = self._groups.get(uid)
            if hit is not None and now - hit[0] < GROUPS_TTL_S:
                return hit[1]
        try:
            gids = frozenset(os.getgrouplist(pwd.getpwuid(uid).pw_name, gid))
        except (KeyError, OSError):
            gids = frozenset({gid})  # a uid with no user entry: its own gid only
        with self._lock:
            if len(self._groups) >= MAX_CACHED_UIDS:
                self._groups.clear()
            self._groups[uid] = (now, gids)
        return gids
