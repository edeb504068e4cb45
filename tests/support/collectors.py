"""Run the agent's collectors in tests: a Context over captured fixtures, one scrape."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from sentinel.agent.collectors.base import Context
from sentinel.agent.config import AgentConfig
from sentinel.exposition import render
from sentinel.gpu.nvml_replay import H100_LOAD

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
H100 = FIXTURES / "h100"
# The H100's NVML dumps at idle and under load (the load one ships in the package).
NVML_DUMPS = {"idle": H100 / "nvml_idle.json", "load": H100_LOAD}
PROC = FIXTURES / "agent" / "proc"


def make_ctx(tmp_path: Path, **cfg: Any) -> Context:
    """Return a collector Context on the captured /proc, with ``cfg`` overriding defaults."""
    defaults: dict[str, Any] = {
        "procfs": str(PROC),
        "socket": str(tmp_path / "agent.sock"),
        "filesystem_paths": [str(tmp_path)],
    }
    defaults.update(cfg)
    return Context(config=AgentConfig(**defaults), hostname="node1")


def render_collector(c: Any) -> str:
    """Return the exposition of one collect() of collector ``c``."""
    return render(c.collect()).decode()


def proc_dir(tmp_path: Path, which: int) -> Path:
    """Return a procfs root holding the H100's captured diskstats number ``which``."""
    d = tmp_path / "proc"
    d.mkdir(exist_ok=True)
    shutil.copy(H100 / f"diskstats-{which}.txt", d / "diskstats")
    return d


def diskstats_line(dev: str, reads: int, read_ms: int, in_flight: int, io_ms: int) -> str:
    """Return one /proc/diskstats line: ``dev`` with these counts, 10 writes, 80 sectors."""
    # major minor name reads merged sectors read_ms writes merged sectors write_ms
    # in_flight io_ms weighted_ms (then discard/flush fields)
    return (f" 259 0 {dev} {reads} 0 {reads * 8} {read_ms} 10 0 80 5 {in_flight} {io_ms} "
            f"{read_ms + 5} 0 0 0 0\n")
