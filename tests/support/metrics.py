"""Read a Prometheus exposition in tests, and check it with ``promtool check metrics``."""

from __future__ import annotations

import subprocess
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from tests.support.services import need_binary


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


def check_promtool(text: str) -> None:
    """Assert ``promtool check metrics`` finds nothing but the ``modelName`` lint.

    The only lint allowed is the camelCase of ``modelName``, the label dcgm-exporter
    users join on (docs/DESIGN.md). An exposition that has the label must get that lint
    (promtool really read it); with the label renamed it must be clean.
    """
    promtool = need_binary("promtool", "prometheus")

    def run(exposition: str) -> tuple[int, list[str]]:
        r = subprocess.run([promtool, "check", "metrics"], input=exposition,
                           capture_output=True, text=True, timeout=30, check=False)
        return r.returncode, [ln for ln in (r.stdout + r.stderr).splitlines() if ln.strip()]

    _, problems = run(text)
    assert all("snake_case" in ln for ln in problems), problems
    assert bool(problems) == ("modelName=" in text), problems
    assert run(text.replace("modelName=", "model_name=")) == (0, []), "not clean with model_name"
