"""The controller's actions, one file each, registered here in one line each.

Adding an action means adding a file with a class that follows
:class:`~sentinel.controller.actions.base.Action` and one line below; the policy's
``policy.<name>_mode`` setting must exist for it (sentinel/controller/config.py).
"""

from __future__ import annotations

from sentinel.controller.actions.base import Action

ACTIONS: dict[str, Action] = {}


def register(action: Action) -> None:
    """Add an action to the registry (its ``name`` must be unique)."""
    if action.name in ACTIONS:
        raise ValueError(f"action {action.name!r} registered twice")
    ACTIONS[action.name] = action


from sentinel.controller.actions.rollback_skip import RollbackSkip  # noqa: E402

register(RollbackSkip())

__all__ = ["ACTIONS", "Action", "register"]
