"""The top-level CLI: it imports the module of the command it runs, and only that one."""

from __future__ import annotations

import argparse
import subprocess
import sys

import pytest

from sentinel.cli import COMMANDS, build_parser, command_in
from sentinel.gpu.nvml_replay import H100_LOAD
from tests.support.collectors import FIXTURES, PROC


@pytest.mark.parametrize(("argv", "command"), [
    (["agent", "--once"], "agent"),
    (["--log-level", "debug", "agent"], "agent"),
    (["--log-level=debug", "detect", "--help"], "detect"),
    (["--log-level", "agent"], None),  # "agent" is the level there (argparse refuses it)
    (["--help"], None),
    (["--version"], None),
    ([], None),
    (["agnet"], None),  # an unknown command: the full parser names the valid ones
])
def test_command_in(argv, command):
    assert command_in(argv) == command


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    [action] = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(action.choices)


def test_the_parser_for_one_command_is_that_of_the_full_parser():
    full = _subparsers(build_parser())
    assert list(full) == [name for name, _ in COMMANDS]
    for name, _ in COMMANDS:
        one = _subparsers(build_parser(name))
        assert list(one) == [name]
        assert one[name].format_help() == full[name].format_help()


def test_the_agent_process_loads_no_other_part_and_no_prometheus_client(tmp_path):
    """What a scrape by `sentinel agent` imports (its RSS): its part and the shared modules."""
    code = (
        "import atexit, sys\n"
        "atexit.register(lambda: print(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('prometheus_client', 'psutil', 'wsgiref', 'email') or m == 'http.server' or "
        "m.split('.')[:2] in (['sentinel', p] for p in ('controller', 'burnin', 'rules', "
        "'notify', 'train', 'preflight', 'dashboards', 'demo', 'deploy'))), file=sys.stderr))\n"
        "from sentinel.cli import main\n"
        f"sys.exit(main(['agent', '--once', '--procfs={PROC}', '--socket={tmp_path}/s', "
        f"'--textfile-dir={FIXTURES}/agent/textfile', '--gpu-replay={H100_LOAD}']))\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=60, check=True)
    assert "sentinel_host_memory_total_bytes" in r.stdout
    assert "sentinel_gpu_up{" in r.stdout and "sentinel_burnin_tflops" in r.stdout
    assert r.stderr.strip().splitlines()[-1] == "[]"


def test_an_unknown_command_still_lists_every_command():
    r = subprocess.run([sys.executable, "-m", "sentinel", "agnet"], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 2
    assert "invalid choice: 'agnet' (choose from 'agent', 'detect'" in r.stderr
