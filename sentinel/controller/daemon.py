"""Build a Controller from the config file, and run it as a daemon (systemd, watchdog).

``build(file_data)`` wires the parts: the journal, the followed jobs' step streams and
Prometheus (the rules engine's sources), Slurm (when ``controller.scheduler`` is slurm),
Slack (when ``notify:`` has a token or webhook), and the actions' context.
``serve(controller, stop)`` runs cycles every ``controller.interval_seconds`` and, in
between, ticks whenever the rules engine has a rule due (step-stream rules: every 2 s),
until ``stop`` is set, feeding the systemd watchdog after each cycle and tick.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from sentinel.config import ConfigError, load_section
from sentinel.controller.actions.base import ActionContext
from sentinel.controller.config import ControllerConfig, JobSpec, PolicyConfig, load_jobs
from sentinel.controller.journal import Journal
from sentinel.controller.loop import Controller
from sentinel.controller.metrics import ControllerMetrics
from sentinel.rules.finding import Finding
from sentinel.rules.window import StepPoint

log = logging.getLogger(__name__)
# The shortest wait between two ticks of the loop.
TICK_FLOOR_S = 0.05


@dataclass
class Parts:
    """Everything ``build`` made, for the CLI, status and tests."""

    controller: Controller
    config: ControllerConfig
    policy: PolicyConfig
    jobs: dict[str, JobSpec]
    journal: Journal
    streams: dict[str, Any] = field(default_factory=dict)
    notifier: Any | None = None
    slurm: Any | None = None
    metrics: Any | None = None  # sentinel.controller.metrics.ControllerMetrics


class StreamWorld:
    """The world without a scheduler: no spares known; a node is in a job if it reports."""

    def __init__(self, streams: dict[str, Any]) -> None:
        self.streams = streams

    def snapshot(self, finding: Finding) -> dict[str, Any]:
        """Return nodes_total 0 (unknown), ready_spares -1 (unknown), node_in_job."""
        in_job = False
        if finding.node:
            for s in self.streams.values():
                if any(p.node == finding.node for p in list(s.steps)[-256:]):
                    in_job = True
                    break
        return {"nodes_total": 0, "ready_spares": -1, "node_in_job": in_job}


def load_configs(file_data: dict[str, Any] | None, env: dict[str, str] | None = None,
                 overrides: dict[str, Any] | None = None
                 ) -> tuple[ControllerConfig, PolicyConfig, dict[str, JobSpec]]:
    """Read the controller:, policy: and jobs: sections (ConfigError names what is wrong)."""
    from sentinel.controller.executor import CRASH_ENV

    # The kill -9 tests' hook shares the SENTINEL_CONTROLLER_ prefix but is no setting.
    env = {k: v for k, v in (os.environ if env is None else env).items() if k != CRASH_ENV}
    cfg = load_section(ControllerConfig, "controller", file_data=file_data, env=env,
                       overrides=overrides)
    policy = load_section(PolicyConfig, "policy", file_data=file_data, env=env)
    jobs = {j.name: j for j in load_jobs(file_data)}
    return cfg, policy, jobs


def _discover_agent(prom: Any, job: str) -> str:
    """Find the agent that serves ``job``'s rank 0 (its scrape address) through Prometheus."""
    try:
        res = prom._prom.custom_query(f'max by (instance) (sentinel_train_rank_info{{job="{job}",'
                                      'rank="0"})')
    except Exception as e:  # noqa: BLE001 - discovery is best effort
        log.warning("job %s: cannot ask Prometheus for its agent: %s", job, e)
        return ""
    for r in res:
        inst = r.get("metric", {}).get("instance")
        if inst:
            return f"http://{inst}"
    return ""


def build(file_data: dict[str, Any] | None, *, env: dict[str, str] | None = None,
          overrides: dict[str, Any] | None = None, slurm: Any | None = None,
          notifier: Any | None = None, detector: Any | None = None,
          world: Any | None = None, clock: Any = time.time,
          sleep: Any | None = None) -> Parts:
    """Wire a Controller from the parsed config file; injected parts replace built ones."""
    from sentinel.rules.sources import PrometheusSource, StepStream

    cfg, policy, jobs = load_configs(file_data, env, overrides)
    journal = Journal(cfg.journal, clock=clock, retention_days=cfg.retention_days)
    prom = PrometheusSource(cfg.prometheus_url) if cfg.prometheus_url else None
    streams: dict[str, Any] = {}
    for name, spec in jobs.items():
        url = spec.agent or (_discover_agent(prom, name) if prom is not None else "")
        if not url:
            log.warning("job %s: no agent URL (jobs[].agent) and none found through "
                        "Prometheus: its loss is not followed", name)
            continue
        streams[name] = StepStream(url, name)
    if detector is None:
        from sentinel.rules.online import OnlineDetector
        from sentinel.rules.rulefile import load_rules

        rules = load_rules(cfg.rules or None)
        detector = OnlineDetector(rules, prometheus=prom, streams=streams,
                                  interval_s=cfg.interval_seconds)
    if slurm is None and cfg.scheduler == "slurm":
        from sentinel.controller.slurm import Slurm

        slurm = Slurm.from_config(cfg)
    if world is None:
        if slurm is not None:
            from sentinel.controller.spares import SlurmWorld

            world = SlurmWorld(slurm, journal, cfg, jobs, clock)
        else:
            world = StreamWorld(streams)
    if notifier is None:
        notifier = _notifier(file_data, env)

    def steps_of(job: str) -> list[StepPoint]:
        s = streams.get(job)
        if s is None:
            raise KeyError(f"job {job!r} has no step stream")
        return list(s.steps)

    teller = None
    if notifier is not None:
        from sentinel.controller.tell import SlackTeller

        teller = SlackTeller(notifier, steps_of)
    ctx = ActionContext(config=cfg, policy=policy, journal=journal, jobs=jobs, clock=clock,
                        sleep=sleep or time.sleep, steps_of=steps_of, slurm=slurm,
                        teller=teller)
    ctl = Controller(cfg, policy, journal, detector, world, ctx, teller, clock=clock)
    if sleep is None:
        # An action waiting (for a job's answer, a verification) wakes when the executor
        # stops, so a stop never waits for an action's own deadline.
        ctx.sleep = ctl.executor.stopping.wait
    metrics = ControllerMetrics(journal, cfg, world=world, clock=clock)
    ctl.observers.append(metrics.observe_cycle)
    return Parts(controller=ctl, config=cfg, policy=policy, jobs=jobs, journal=journal,
                 streams=streams, notifier=notifier, slurm=slurm, metrics=metrics)


def _notifier(file_data: dict[str, Any] | None, env: dict[str, str] | None) -> Any | None:
    """Return a Notifier when the notify: section configures Slack, else None."""
    from sentinel.notify.config import load_notify_config
    from sentinel.notify.slack import Notifier

    ncfg = load_notify_config(file_data, env=env)
    if not (ncfg.token() or ncfg.webhook_url() or ncfg.record_dir):
        log.info("notify: no Slack token or webhook configured: incidents are journaled only")
        return None
    return Notifier.from_config(ncfg)


def serve(parts: Parts, stop: threading.Event, *, once: bool = False) -> int:
    """Run cycles until ``stop`` (or one cycle with ``once``); return an exit code."""
    from sentinel.systemd import Notifier

    ctl = parts.controller
    sd = Notifier.from_env()
    interval = sd.interval(parts.config.interval_seconds, "controller.interval_seconds")
    server = None
    # `once` runs beside the daemon: the port is the daemon's.
    if not once and parts.metrics is not None and parts.config.listen_address:
        server = parts.metrics.serve()
        log.info("serving /metrics and /healthz on %s:%d", *server.address)
    resumed = ctl.resume()
    if resumed:
        log.info("resumed %d unfinished action(s): %s", len(resumed), ", ".join(resumed))
    sd.ready(f"following {len(parts.jobs)} job(s) on {socket.gethostname()}")
    found = False
    next_cycle = time.monotonic()
    try:
        while not stop.is_set():
            t0 = time.monotonic()
            if t0 >= next_cycle:
                stats = ctl.cycle()
                next_cycle = max(next_cycle + interval, t0)
                sd.status(f"cycle {ctl.cycles}: {stats.findings} finding(s), {stats.started} "
                          f"action(s) started, {len(ctl.executor.running())} running")
            else:
                stats = ctl.tick()
            found = found or stats.findings > 0 or stats.started > 0
            if stats.errors:
                log.warning("cycle %d: %s", ctl.cycles, "; ".join(stats.errors))
            sd.watchdog(healthy=True)  # a cycle or tick ended: the loop is alive
            if once:
                _wait_actions(ctl, stop)
                break
            stop.wait(_until_next(ctl, next_cycle))
    finally:
        sd.stopping()
        if server is not None:
            server.stop()
        ctl.stop(wait=not once)
        if parts.notifier is not None:
            try:
                parts.notifier.flush(max_messages=100)
            except Exception as e:  # noqa: BLE001 - best effort on the way out
                log.warning("final notify flush failed: %s", e)
    return 1 if found else 0


def _until_next(ctl: Controller, next_cycle: float) -> float:
    """Return the seconds until the next cycle, or sooner the next rule due (a tick)."""
    wait = next_cycle - time.monotonic()
    due = ctl.next_due()
    if due is not None:
        # Floored: a detector whose rules stay due (its clock behind) must not spin the loop.
        wait = min(wait, max(TICK_FLOOR_S, due - ctl.clock()))
    return max(0.0, wait)


def _wait_actions(ctl: Controller, stop: threading.Event) -> None:
    """With ``once``: let the actions started in the cycle finish (they are journaled)."""
    while not stop.is_set() and not ctl.executor.wait_idle(timeout=0.5):
        pass


def check_writable(cfg: ControllerConfig) -> None:
    """Fail early, with the fix, if the journal cannot be opened."""
    from sentinel.controller.journal import JournalError

    try:
        Journal(cfg.journal).close()
    except JournalError as e:
        raise ConfigError(f"controller.journal: {e}") from None
