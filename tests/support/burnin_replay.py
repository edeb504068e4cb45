"""The recorded H200 burn-ins (package data: sentinel/burnin/replays) for the tests.

The replay itself is :mod:`sentinel.burnin.replay` (``python -m sentinel.burnin.replay
pass|fail``), which ``sentinel demo`` runs on its Slurm nodes too; here are the names the
tests use.
"""

from __future__ import annotations

from sentinel.burnin.replay import RECORDINGS, recorded, replay_lines

FIXTURES = RECORDINGS

__all__ = ["FIXTURES", "recorded", "replay_lines"]
