"""Collectors declare themselves; the config and the CLI flags follow the one list."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator

import pytest

from sentinel.agent.cli import _context, load_config
from sentinel.agent.collectors import COLLECTORS, Collector
from sentinel.agent.config import AgentConfig, default_collectors
from sentinel.agent.exporter import Agent
from sentinel.cli import build_parser
from sentinel.config import ConfigError, load_section
from sentinel.exposition import GaugeMetricFamily, MetricFamily
from tests.support.collectors import PROC
from tests.support.metrics import samples, value

BUILTIN = ["gpu", "disk", "disk_stall", "host", "training", "textfile"]


class FanCollector(Collector):
    """A throwaway collector, on by default."""

    name = "fan"

    def collect(self) -> list[MetricFamily]:
        g = GaugeMetricFamily("sentinel_fan_speed_ratio", "Fan speed (0..1).")
        g.add_metric([], 0.5)
        return [g]


class QuietCollector(Collector):
    """A throwaway collector, off unless asked for."""

    name = "quiet"
    default_enabled = False

    def collect(self) -> list[MetricFamily]:
        g = GaugeMetricFamily("sentinel_quiet_up", "Quiet.")
        g.add_metric([], 1.0)
        return [g]


@pytest.fixture
def registered() -> Iterator[None]:
    """Add the throwaway collectors as their one line in collectors/__init__.py would."""
    COLLECTORS.extend([FanCollector, QuietCollector])
    try:
        yield
    finally:
        COLLECTORS.remove(FanCollector)
        COLLECTORS.remove(QuietCollector)


def agent_config(yaml_section: dict | None = None) -> AgentConfig:
    return load_section(AgentConfig, "agent", file_data={"agent": yaml_section or {}}, env={})


def scrape(tmp_path, *argv: str) -> tuple[str, AgentConfig]:
    """Parse ``sentinel agent ARGV`` with the real parser and scrape that agent once."""
    args = build_parser().parse_args(["agent", "--once", f"--procfs={PROC}",
                                      f"--socket={tmp_path / 'a.sock'}", *argv])
    cfg = load_config(args, env={})
    agent = Agent(_context(cfg))
    try:
        return agent.render().decode(), cfg
    finally:
        agent.close()


def test_defaults_and_names_come_from_the_collectors():
    assert [c.name for c in COLLECTORS] == BUILTIN
    assert default_collectors() == BUILTIN
    assert agent_config().collectors == BUILTIN
    with pytest.raises(ConfigError, match=r"agent\.collectors: 'fan' is not valid "
                                          r"\(valid: gpu, disk, disk_stall, host, training, "
                                          r"textfile\)"):
        agent_config({"collectors": ["disk", "fan"]})


def test_a_registered_collector_is_accepted_defaulted_flagged_and_scraped(registered, tmp_path):
    # Its default applies: fan runs unless told otherwise, quiet does not.
    assert agent_config().collectors == [*BUILTIN, "fan"]
    assert AgentConfig().collectors == [*BUILTIN, "fan"]
    # The config accepts it by name.
    assert agent_config({"collectors": ["quiet", "disk"]}).collectors == ["quiet", "disk"]
    with pytest.raises(ConfigError, match=r"\(valid: gpu, disk, disk_stall, host, training, "
                                          r"textfile, fan, quiet\)"):
        agent_config({"collectors": ["fans"]})

    text, cfg = scrape(tmp_path, "--no-collector.gpu")
    assert cfg.collectors == ["disk", "disk_stall", "host", "training", "textfile", "fan"]
    assert value(text, "sentinel_collector_success", collector="fan") == 1
    assert value(text, "sentinel_fan_speed_ratio") == 0.5
    assert "sentinel_quiet_up" not in text

    # Its flags exist and work like the built-in collectors' flags.
    text, cfg = scrape(tmp_path, "--no-collector.gpu", "--no-collector.fan", "--collector.quiet")
    assert "quiet" in cfg.collectors and "fan" not in cfg.collectors
    got = {dict(ls)["collector"] for (n, ls) in samples(text) if n == "sentinel_collector_success"}
    assert got == {"disk", "disk_stall", "host", "training", "textfile", "quiet"}
    assert value(text, "sentinel_quiet_up") == 1


def test_listing_the_collectors_imports_neither_psutil_nor_nvml():
    """`sentinel --help` builds every collector flag without loading the heavy libraries."""
    code = ("import sys; from sentinel.cli import build_parser; build_parser(); "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('psutil', 'pynvml')))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                       check=True)
    assert r.stdout.strip() == "[]"
