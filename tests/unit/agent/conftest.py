"""Helpers for the agent's unit tests: a Context over fixtures, scrape parsing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from sentinel.agent.collectors.base import Context
from sentinel.agent.config import AgentConfig
from sentinel.gpu.nvml_replay import H100_LOAD

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures"
H100 = FIXTURES / "h100"
# The H100's NVML dumps at idle and under load (the load one ships in the package).
NVML_DUMPS = {"idle": H100 / "nvml_idle.json", "load": H100_LOAD}
PROC = FIXTURES / "agent" / "proc"


def make_ctx(tmp_path: Path, **cfg: Any) -> Context:
    defaults: dict[str, Any] = {
        "procfs": str(PROC),
        "socket": str(tmp_path / "agent.sock"),
        "filesystem_paths": [str(tmp_path)],
    }
    defaults.update(cfg)
    return Context(config=AgentConfig(**defaults), hostname="node1")


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Parse an exposition into {(sample name, sorted labels): value}."""
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(text_or_samples: Any, name: str, **labels: str) -> float:
    """Return the one sample called name whose labels include ``labels``."""
    ss = samples(text_or_samples) if isinstance(text_or_samples, str) else text_or_samples
    hits = [v for (n, ls), v in ss.items() if n == name and labels.items() <= dict(ls).items()]
    if len(hits) != 1:
        raise AssertionError(f"{len(hits)} samples match {name}{labels}")
    return hits[0]


@pytest.fixture
def ctx(tmp_path: Path) -> Context:
    return make_ctx(tmp_path)
