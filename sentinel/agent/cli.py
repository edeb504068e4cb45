"""``sentinel agent``: serve this node's metrics until stopped (or print them once)."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import signal
import sys
import threading
from typing import TYPE_CHECKING, Any

from sentinel.agent.collectors import COLLECTORS
from sentinel.agent.collectors.base import Context
from sentinel.agent.config import AgentConfig
from sentinel.config import ConfigError, describe, load_section, read_yaml_file
from sentinel.systemd import Notifier

if TYPE_CHECKING:
    from sentinel.agent.exporter import Agent
    from sentinel.agent.server import HttpServer

log = logging.getLogger(__name__)


def register(subparsers: Any) -> None:
    """Add the ``agent`` subcommand."""
    p = subparsers.add_parser(
        "agent",
        help="run the node agent (Prometheus metrics for GPUs, disks, host, training jobs)",
        description="Serve /metrics, /healthz and /api/v1/steps for this node.",
        epilog="Config keys (section agent:):\n" + describe(AgentConfig, "agent"),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", help="YAML config file (section agent:)")
    p.add_argument("--listen-address", help="HOST:PORT for HTTP (default 0.0.0.0:9464)")
    p.add_argument("--socket", help="Unix datagram socket for step reports ('' = off)")
    p.add_argument("--udp-address", help="HOST:PORT of the UDP fallback for step reports")
    p.add_argument("--procfs", help="procfs root (default /proc)")
    p.add_argument("--textfile-dir", help="directory of *.prom files to export")
    p.add_argument("--gpu-replay", help="serve GPU series from a captured NVML dump (JSON)")
    p.add_argument("--once", action="store_true",
                   help="print one exposition to stdout and exit")
    for cls in COLLECTORS:
        default = "on" if cls.default_enabled else "off"
        p.add_argument(f"--collector.{cls.name}", dest=f"collector_{cls.name}",
                       action="store_const", const=True, default=None,
                       help=f"enable the {cls.name} collector ({default} by default)")
        p.add_argument(f"--no-collector.{cls.name}", dest=f"collector_{cls.name}",
                       action="store_const", const=False, help=f"disable the {cls.name} collector")
    p.set_defaults(func=run)


def load_config(args: argparse.Namespace, env: dict[str, str] | None = None) -> AgentConfig:
    """Build the AgentConfig from file, environment and flags (ConfigError if bad)."""
    file_data = read_yaml_file(args.config) if args.config else None
    overrides = {
        "listen_address": args.listen_address,
        "socket": args.socket,
        "udp_address": args.udp_address,
        "procfs": args.procfs,
        "textfile_dir": args.textfile_dir,
        "gpu_replay": args.gpu_replay,
    }
    cfg = load_section(AgentConfig, "agent", file_data=file_data, env=env, overrides=overrides)
    flags = {cls.name: getattr(args, f"collector_{cls.name}", None) for cls in COLLECTORS}
    if any(v is not None for v in flags.values()):
        names = [
            n for n, v in flags.items() if v is True or (v is None and n in cfg.collectors)
        ]
        cfg = dataclasses.replace(cfg, collectors=names)
        cfg.validate()
    return cfg


def _context(cfg: AgentConfig) -> Context:
    """Return the collectors' Context for ``cfg`` (loading the GPU replay, if any)."""
    ctx = Context(config=cfg)
    if cfg.hostname:
        ctx.hostname = cfg.hostname
    if cfg.gpu_replay:
        from sentinel.gpu.nvml_replay import ReplayBackend  # noqa: PLC0415

        try:
            ctx.nvml_backend = ReplayBackend.from_file(cfg.gpu_replay)
        except ValueError as e:
            raise ConfigError(f"agent.gpu_replay: {e}") from None
    return ctx


def run(args: argparse.Namespace) -> int:
    """Run the agent; return the exit code."""
    cfg = load_config(args)
    ctx = _context(cfg)
    return _print_once(ctx) if args.once else _serve(ctx)


def _print_once(ctx: Context) -> int:
    """Print one exposition to stdout; no report sockets (training shows drops only)."""
    from sentinel.agent.exporter import Agent  # noqa: PLC0415 - keep `sentinel --help` fast

    agent = Agent(ctx)
    for c in agent.collectors:
        if c.name != "training":
            c.start()
    try:
        sys.stdout.buffer.write(agent.render())
        sys.stdout.flush()
    finally:
        agent.close()
    return 0


def _serve(ctx: Context) -> int:
    """Serve HTTP and the report sockets until SIGTERM/SIGINT."""
    from sentinel.agent.exporter import Agent  # noqa: PLC0415

    import_asyncio_without_tls()
    from sentinel.agent.server import HttpServer  # noqa: PLC0415

    cfg = ctx.config
    host, port = cfg.listen()
    agent = Agent(ctx)
    try:
        agent.start()
        server = HttpServer(host, port, agent, cfg.max_http_connections)
    except OSError as e:
        agent.close()
        print(f"sentinel agent: cannot start: {e}", file=sys.stderr)
        return 1
    server.start()
    stop = threading.Event()

    def _on_signal(signum: int, _frame: Any) -> None:
        log.info("signal %d: stopping", signum)
        stop.set()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    bound = f"http://{server.address[0]}:{server.address[1]}/metrics"
    log.info("serving on %s, collectors: %s, socket: %s, udp: %s", bound,
             ",".join(c.name for c in agent.collectors), cfg.socket or "off",
             cfg.udp_address or "off")
    sd = Notifier.from_env()
    sd.ready(f"serving {bound}")
    try:
        _main_loop(agent, server, sd, stop)
    finally:
        sd.stopping()
        server.stop()
        agent.close()
    return 0


def import_asyncio_without_tls() -> bool:
    """Import asyncio with ``ssl`` hidden, when this process has loaded neither.

    asyncio imports ``ssl`` at load time for TLS transports, and so the OpenSSL
    libraries: 4.5 MB of the agent's RSS (docs/DESIGN.md, Agent) for a server that speaks
    plain HTTP. A ``None`` in ``sys.modules`` makes ``import ssl`` raise ImportError,
    which asyncio handles (``ssl = None``: no TLS transports, all else the same); the
    entry is removed at once, so anything that imports ``ssl`` later gets the real one.
    Return True if asyncio was imported so.
    """
    if "asyncio" in sys.modules or "ssl" in sys.modules:
        return False
    sys.modules["ssl"] = None  # type: ignore[assignment]
    try:
        import asyncio  # noqa: F401, PLC0415
    finally:
        del sys.modules["ssl"]
    return True


def _main_loop(agent: Agent, server: HttpServer, sd: Notifier, stop: threading.Event) -> None:
    """Feed the watchdog while healthy and expire silent jobs, until ``stop`` is set."""
    cfg = agent.ctx.config
    interval = sd.interval(cfg.watchdog_interval_seconds, "agent.watchdog_interval_seconds")
    while not stop.is_set():
        ok, why = agent.health()
        if not server.alive():
            ok, why = False, "the HTTP server thread died"
        sd.watchdog(ok, why)
        if agent.training is not None:
            for job in agent.training.store.expire():
                log.info("job %s expired after %.0fs without reports", job,
                         cfg.job_expiry_seconds)
        stop.wait(interval)
