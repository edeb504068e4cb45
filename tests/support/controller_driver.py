"""Run a controller with the toy action until its actions end (the kill -9 tests' subject).

``python -m tests.support.controller_driver DIR`` builds a Controller over ``DIR`` (journal,
toy world file), gives it one loss-spike finding (as a restarted rules engine would again),
resumes unfinished actions, and cycles until no action is unfinished. The crash hook
(SENTINEL_CONTROLLER_TESTING_CRASH_AT) in the environment kills it at that boundary.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from sentinel.controller.actions import ACTIONS
from sentinel.rules.finding import Finding
from tests.support.controller import ScriptedDetector, ToyAction, make_controller


def main(tmp: Path) -> int:
    ACTIONS["rollback_skip"] = ToyAction()  # type: ignore[assignment]
    spike = Finding(kind="loss_spike", severity="critical", summary="spike at 120",
                    suggested_action="rollback_skip", detector="loss_spike", rule="loss-spike",
                    job="gpt", step_start=120, step_end=122, episode="120",
                    evidence={"classification": "plateau"})
    ctl = make_controller(tmp, ScriptedDetector([[spike]]))
    ctl.resume()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        ctl.cycle()
        ctl.executor.wait_idle(timeout=5)
        if not ctl.journal.unfinished_actions():
            break
    ctl.stop()
    for a in ctl.journal.actions():
        print(a.id, a.state)
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1])))
