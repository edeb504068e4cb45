"""The controller's actions, one file each, registered in :data:`ACTIONS` one line each.

Adding an action means adding a file with a class that follows
:class:`~sentinel.controller.actions.base.Action` and one line in ``_ALL`` below; the
policy's ``policy.<name>_mode`` setting must exist for it (sentinel/controller/config.py).
"""

from __future__ import annotations

from sentinel.controller.actions.base import Action
from sentinel.controller.actions.burnin import Burnin
from sentinel.controller.actions.rollback_skip import RollbackSkip
from sentinel.controller.actions.spare_swap import SpareSwap

_ALL: list[Action] = [
    Burnin(),
    RollbackSkip(),
    SpareSwap(),
]

ACTIONS: dict[str, Action] = {a.name: a for a in _ALL}
if len(ACTIONS) != len(_ALL):
    raise ValueError(f"two actions share a name: {[a.name for a in _ALL]}")

__all__ = ["ACTIONS", "Action"]
