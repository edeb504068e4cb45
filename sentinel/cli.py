"""The ``sentinel`` command: one subcommand per part, each registered in COMMANDS.

Each entry names a module with ``register(subparsers) -> None``; the module adds its
parser and sets ``func`` (a callable taking the parsed args and returning an exit
code). Modules keep heavy imports (torch, NVML, matplotlib) inside their handlers so
``sentinel --help`` stays fast.

Exit codes: 0 healthy / success, 1 found a problem, 2 bad usage or config.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from sentinel import __version__
from sentinel.config import ConfigError

# (subcommand, module). Adding a command means adding a module and a line here.
COMMANDS: list[tuple[str, str]] = [
    ("agent", "sentinel.agent.cli"),
    ("detect", "sentinel.rules.cli"),
    ("burnin", "sentinel.burnin.cli"),
    ("rollback", "sentinel.train.cli"),
    ("notify", "sentinel.notify.cli"),
    ("dashboards", "sentinel.dashboards.cli"),
    ("controller", "sentinel.controller.cli"),
    ("status", "sentinel.controller.status"),
    ("preflight", "sentinel.preflight.cli"),
    ("deploy", "sentinel.deploy"),
    ("demo", "sentinel.demo.cli"),
]

EXIT_OK = 0
EXIT_PROBLEM = 1
EXIT_USAGE = 2


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    """Build the top-level parser with every registered subcommand."""
    parser = _Parser(
        prog="sentinel", description="Monitor, diagnose and recover long GPU training runs."
    )
    parser.add_argument("--version", action="version", version=f"sentinel {__version__}")
    parser.add_argument(
        "--log-level", default="info", choices=["debug", "info", "warning", "error"]
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for _name, module in COMMANDS:
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as e:
            # Only a part that is not built yet is skipped; a broken import is an error.
            if e.name == module:
                continue
            raise
        mod.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI and return its exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, args.log_level.upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    try:
        return int(func(args))
    except ConfigError as e:
        print(f"sentinel {args.command}: bad configuration: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
