"""Metrics flowing, job side: a Reporter datagram reaches the local agent and comes back.

A :class:`sentinel.train.Reporter` (the one the job imports) sends two steps under a job
name of its own (``sentinel-preflight-HOST-PID``) to the agent's report socket; they
must come back from the agent's ``/api/v1/steps`` (read with the rules engine's
StepStream, as the controller reads a job). The test job then reports ``finished``,
so no stalled-job alert follows it.
"""

from __future__ import annotations

import os
from typing import Any

from sentinel.preflight.checks.base import Context, wait_until
from sentinel.preflight.report import Result, ok, problem, skipped

TITLE = "the job's Reporter reaches the agent"
# Two steps with losses no job reports, so the read-back cannot be someone else's.
STEPS = ((1, 1.25), (2, 1.125))


def check(ctx: Context) -> Result:
    """Send steps through the agent's socket and read them back over its HTTP API."""
    from sentinel.rules.sources import SourceError, StepStream
    from sentinel.train.reporter import Reporter

    s = ctx.setup
    sock, url = s.agent_socket(), s.agent_url()
    if not sock:
        return skipped("the agent's report socket is off (agent.socket: '')")
    job = f"sentinel-preflight-{s.hostname}-{os.getpid()}"
    ev: dict[str, Any] = {"socket": sock, "agent": url, "job": job}
    if not os.path.exists(sock):
        return problem(f"no report socket at {sock}: is sentinel-agent running on this host "
                       "(agent.socket, --agent-socket)?", **ev)
    rep = Reporter(job, rank=0, socket_path=sock)
    t = ctx.monotonic()
    for step, loss in STEPS:
        rep.step(step, loss=loss, tokens=1, samples=1)
    ev.update(sent=rep.sent, dropped=rep.dropped)
    if rep.sent < len(STEPS):
        rep.close()
        return problem(f"the reports could not be sent to {sock} (permission? the job's user "
                       "must be in the socket's group, sentinel)", **ev)
    stream = StepStream(url, job, timeout=5.0)
    errors: list[str] = []

    def arrived() -> bool:
        try:
            stream.poll()
        except SourceError as e:
            errors[:] = [str(e)]  # 404 "unknown job" until the first datagram is read
            return False
        return {(p.step, p.loss) for p in stream.steps} >= set(STEPS)

    try:
        got = wait_until(ctx, arrived, s.preflight.report_timeout_seconds, interval=0.2)
    finally:
        rep.finish()
        rep.close()
    ev["seconds"] = round(ctx.monotonic() - t, 3)
    if not got:
        ev["last_error"] = errors[0] if errors else None
        return problem(f"sent {len(STEPS)} step reports but the agent at {url} did not show "
                       f"them within {s.preflight.report_timeout_seconds:g} s (does it accept "
                       "this uid? agent.report_allow_uids/groups; its log says why)", **ev)
    return ok(f"{len(STEPS)} step reports went through {sock} and came back from "
              f"{url}/api/v1/steps in {ev['seconds']:.2f} s", **ev)
