"""Run promtool's rule unit tests through vmalert's replay mode on VictoriaMetrics.

vmalert 1.79.5 (Debian's) has no unit-test mode: no flag for it, and no
``vmalert-tool``, which later releases added (``vmalert-tool unittest`` reads promtool's
test format). This does what that tool does with the 1.79.5 parts:

1. every test group's ``input_series`` are expanded as promtool expands them and
   imported into VictoriaMetrics, each group at its own base time (12 h apart, far more
   than any rule looks back, and within the store's retention);
2. ``vmalert -replay.timeFrom/-replay.timeTo`` evaluates the rule file over that time
   at the file's ``evaluation_interval``, writing recorded series and ``ALERTS`` back.
   Rules that read another rule's recorded series run in a later replay than that rule
   (the file split by dependency, rules unchanged): vmalert writes results
   asynchronously, so a rule chained to one of the same replay can read nothing yet;
3. at each ``eval_time``, the ``ALERTS{alertstate="firing"}`` samples of that exact
   instant are compared with ``exp_alerts`` labels, and each ``promql_expr_test``
   expression is queried and compared with ``exp_samples``.

Annotations are not compared: replay writes only the ALERTS series, which carry labels.
The result is the list of cases that differ from promtool's expectations.
"""

from __future__ import annotations

import math
import re
import subprocess
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from tests.support.alert_rules import duration_seconds
from tests.support.services import free_port, need_binary
from tests.support.victoria import DEPLOY, PACKAGE, VictoriaMetrics, read_args, set_flags

SPACING_S = 12 * 3600
REPLAY_TIMEOUT_S = 300
_NUM = r"[-+]?(?:\d+(?:\.\d*)?(?:e[-+]?\d+)?|\.\d+|Inf|NaN)"
_ITEM = re.compile(rf"^(?P<a>{_NUM})(?:(?P<op>[-+])(?P<b>{_NUM}))?x(?P<n>\d+)$", re.IGNORECASE)
_BLANKS = re.compile(r"^_x(?P<n>\d+)$")
_LABEL = re.compile(r'(\w+)\s*=\s*"((?:[^"\\]|\\.)*)"')


def expand(values: str) -> list[float | None]:
    """Expand promtool's series notation ('1x3 _x2 0+2x2') into values (None: no sample).

    As promtool 2.42 does: ``axN`` and ``a+bxN`` give N+1 values, ``_xN`` gives N gaps.
    """
    out: list[float | None] = []
    for item in values.split():
        if item == "_":
            out.append(None)
        elif m := _BLANKS.match(item):
            out += [None] * int(m["n"])
        elif m := _ITEM.match(item):
            a, n = float(m["a"]), int(m["n"])
            b = float(m["b"] or 0) * (-1 if m["op"] == "-" else 1)
            out += [a + i * b for i in range(n + 1)]
        elif re.fullmatch(_NUM, item, re.IGNORECASE):
            out.append(float(item))
        else:
            raise ValueError(f"unsupported series value {item!r} in {values!r}")
    return out


def parse_series(text: str) -> tuple[str, dict[str, str]]:
    """Split ``name{a="b"}`` into the name and its labels."""
    name, _, rest = text.strip().partition("{")
    return name.strip(), dict(_LABEL.findall(rest))


def _fmt(v: float) -> str:
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    return repr(v)


@dataclass
class Check:
    """One expectation of a test file: an alert test case or an expression test case."""

    where: str  # file:group index
    kind: str  # "alert" or "expr"
    name: str  # alertname or expression
    eval_s: float
    at: float  # absolute time of the evaluation
    expected: list[tuple[tuple[tuple[str, str], ...], float]]


def _load(files: list[Path], base0: float) -> tuple[list[str], list[Check], Path, float, float]:
    lines: list[str] = []
    checks: list[Check] = []
    rule_files: set[Path] = set()
    intervals: set[float] = set()
    idx = 0
    end = base0
    for path in files:
        doc = yaml.safe_load(path.read_text())
        rule_files |= {(path.parent / r).resolve() for r in doc["rule_files"]}
        intervals.add(duration_seconds(str(doc.get("evaluation_interval", "1m"))))
        for gi, group in enumerate(doc["tests"]):
            base = base0 + idx * SPACING_S
            idx += 1
            step = duration_seconds(str(group.get("interval", "1m")))
            for s in group["input_series"]:
                for i, v in enumerate(expand(str(s["values"]))):
                    if v is not None:
                        lines.append(f"{s['series']} {_fmt(v)} {round((base + i * step) * 1000)}")
            where = f"{path.name}:{gi}"
            for t in group.get("alert_rule_test", []):
                ev = duration_seconds(str(t["eval_time"]))
                exp = [(tuple(sorted((k, str(v)) for k, v in a.get("exp_labels", {}).items())),
                        1.0) for a in t.get("exp_alerts") or []]
                checks.append(Check(where, "alert", t["alertname"], ev, base + ev, exp))
                end = max(end, base + ev)
            for t in group.get("promql_expr_test", []):
                ev = duration_seconds(str(t["eval_time"]))
                exp = []
                for smp in t.get("exp_samples") or []:
                    name, labels = parse_series(smp["labels"])
                    if name:
                        labels["__name__"] = name
                    exp.append((tuple(sorted(labels.items())), float(smp["value"])))
                checks.append(Check(where, "expr", t["expr"], ev, base + ev, exp))
                end = max(end, base + ev)
    if len(rule_files) != 1 or len(intervals) != 1:
        raise ValueError(f"expected one rule file and one evaluation_interval, got "
                         f"{rule_files} {intervals}")
    return lines, checks, rule_files.pop(), intervals.pop(), end


def by_dependency(rule_file: Path) -> list[dict[str, Any]]:
    """Split a rule file into files that run in turn: each rule after the rules it reads.

    Groups keep their names and rules their order; a rule's stage is one more than the
    latest stage of the recorded series its expression names.
    """
    doc = yaml.safe_load(rule_file.read_text())
    rules = [(g["name"], r) for g in doc["groups"] for r in g["rules"]]
    recorded = {r["record"] for _, r in rules if "record" in r}
    reads = {id(r): {n for n in recorded
                     if re.search(rf"(?<![\w:]){re.escape(n)}(?![\w:])", r["expr"])}
             for _, r in rules}
    stage_of: dict[str, int] = {}
    stage: dict[int, int] = {}
    for _ in range(len(rules) + 1):  # a fixpoint; more rounds than rules means a cycle
        changed = False
        for _, r in rules:
            s = 1 + max((stage_of.get(n, 0) for n in reads[id(r)]), default=-1)
            if stage.get(id(r)) != s:
                stage[id(r)], changed = s, True
                if "record" in r:
                    stage_of[r["record"]] = max(stage_of.get(r["record"], 0), s)
        if not changed:
            break
    else:
        raise ValueError(f"{rule_file}: recording rules read each other in a cycle")
    out = []
    for n in range(max(stage.values()) + 1):
        groups = [{**{k: v for k, v in g.items() if k != "rules"},
                   "rules": [r for r in g["rules"] if stage[id(r)] == n]}
                  for g in doc["groups"]]
        out.append({"groups": [g for g in groups if g["rules"]]})
    return out


def replay(vm: VictoriaMetrics, rule_file: Path, start: float, end: float,
           interval_s: float, log: Path) -> None:
    """Run ``vmalert`` in replay mode over [start, end] with the shipped flags."""
    binary = need_binary("vmalert", PACKAGE)
    iso = "%Y-%m-%dT%H:%M:%SZ"
    args = set_flags(read_args(DEPLOY / "default" / "vmalert"), {
        "-rule": str(rule_file),
        "-datasource.url": vm.url,
        "-remoteWrite.url": vm.url,
        "-remoteRead.url": vm.url,
        # Replay sends no notifications; the flag must still name a URL.
        "-notifier.url": vm.url,
        "-evaluationInterval": f"{interval_s:g}s",
        "-remoteWrite.flushInterval": "100ms",
        "-httpListenAddr": f"127.0.0.1:{free_port()}",
    })
    args += [
        f"-replay.timeFrom={datetime.fromtimestamp(start, UTC).strftime(iso)}",
        f"-replay.timeTo={datetime.fromtimestamp(end, UTC).strftime(iso)}",
        "-replay.disableProgressBar",
        # No rule here reads another's results (see by_dependency): no wait between rules.
        "-replay.rulesDelay=0s",
        # The range queries' step; the default 5m would skip four of five evaluations.
        f"-datasource.queryStep={interval_s:g}s",
    ]
    with log.open("wb") as out:
        r = subprocess.run([binary, *args], stdout=out, stderr=subprocess.STDOUT,
                           timeout=REPLAY_TIMEOUT_S, check=False)
    if r.returncode != 0:
        raise AssertionError(f"vmalert replay failed ({r.returncode}):\n"
                             f"{log.read_text(errors='replace')[-3000:]}")


def _observed(vm: VictoriaMetrics, c: Check) -> list[tuple[tuple[tuple[str, str], ...], float]]:
    if c.kind == "alert":
        # Only the samples written for this very evaluation: (at - 1 s, at].
        res = vm.query(f'ALERTS{{alertname="{c.name}",alertstate="firing"}}[1s]', at=c.at)
        drop = {"__name__", "alertname", "alertstate"}
        return [(tuple(sorted((k, v) for k, v in r["metric"].items() if k not in drop)), 1.0)
                for r in res]
    res = vm.query(c.name, at=c.at)
    return [(tuple(sorted(r["metric"].items())), float(r["value"][1])) for r in res]


def _same(a: list[Any], b: list[Any]) -> bool:
    if sorted(x[0] for x in a) != sorted(x[0] for x in b):
        return False
    got = dict(b)
    return all(math.isclose(v, got[k], rel_tol=1e-9, abs_tol=1e-12)
               or (math.isnan(v) and math.isnan(got[k])) for k, v in a)


def run(files: list[Path], vm: VictoriaMetrics, tmp: Path) -> tuple[list[Check], list[str]]:
    """Run every test case of ``files``; return the checks and one line per difference."""
    # Whole hours, ten days back: inside the shipped 90-day retention, and rules that
    # look back 3 h never reach the previous group.
    base0 = (time.time() - 10 * 86400) // 3600 * 3600
    lines, checks, rule_file, interval_s, end = _load(files, base0)
    vm.import_prometheus("\n".join(lines) + "\n")
    vm.flush()
    for i, stage in enumerate(by_dependency(rule_file)):
        path = tmp / f"stage{i}.rules.yml"
        path.write_text(yaml.safe_dump(stage, sort_keys=False))
        replay(vm, path, base0, end + interval_s, interval_s, tmp / f"vmalert-replay{i}.log")
        vm.flush()
    diffs = []
    for c in checks:
        got = _observed(vm, c)
        if not _same(c.expected, got):
            diffs.append(f"{c.where} {c.kind} {c.name} @ {c.eval_s / 60:g}m: "
                         f"expected {_show(c.expected)}, got {_show(got)}")
    return checks, diffs


def _show(samples: list[Any]) -> str:
    return "[" + ", ".join(
        "{" + ",".join(f"{k}={v}" for k, v in labels if k != "__name__") + f"}}={val:g}"
        for labels, val in sorted(samples)) + "]"
