"""The demo's end: a summary on the terminal, and an incident report on disk (Markdown + PNG).

Per episode: when the fault happened, how long sentinel took to open its incident (time
to detect) and to end it (time to recover: verified, or for the storage episode, the
incident over once the storage was back), what it did. Then the job's goodput as the
controller accounted it, the Slack messages (sent, or recorded when no token is set),
and the path of the report: ``report.md`` with ``loss.png`` (the loss over the steps of
every timeline), ``timeline.png`` (the job's step over time: the rollback, the requeue,
the slowdown) and ``signals.png`` (tokens/s and disk read latency from Prometheus).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from sentinel.controller.status import duration
from sentinel.demo import story
from sentinel.demo.scenario import Episode, Outcome
from sentinel.localstack.prometheus import Prometheus, QueryError


def _after(a: float | None, b: float | None) -> str:
    return "-" if a is None or b is None else duration(max(0.0, b - a))


def episode_rows(outcome: Outcome) -> list[tuple[str, str, str, str, str]]:
    """Return (episode, fault at, time to detect, time to recover, what happened) rows."""
    rows = []
    for i, e in enumerate(outcome.episodes, 1):
        at = "-" if e.fault_at is None else f"+{e.fault_at - outcome.started_at:.0f} s"
        rows.append((f"{i}. {e.name}", at, _after(e.fault_at, e.detected_at),
                     _after(e.fault_at, e.recovered_at), f"{e.state}: {e.note}"))
    return rows


def goodput_line(outcome: Outcome) -> str:
    """Return the job's goodput as the controller accounted it."""
    for g in outcome.status.get("goodput", []):
        ratio = "-" if g["ratio"] is None else f"{g['ratio']:.1%}"
        lost = ", ".join(f"{c} {duration(v)}" for c, v in g["badput_seconds"].items() if v > 0)
        return (f"{ratio} of {duration(g['wall_seconds'])} productive; lost to "
                f"{lost or 'nothing'}" + (f"; {duration(g['unclassified_seconds'])} of pauses "
                                         "not classified yet"
                                         if g["unclassified_seconds"] > 0 else ""))
    return "not accounted (no step records reached the controller)"


def slack_lines(outcome: Outcome, recorded_in: Path | None) -> list[str]:
    """Return the Slack messages, one thread per incident, as people would read them."""
    if not outcome.messages:
        return ["(none)"]
    where = (f"recorded in {recorded_in} (no Slack token configured: "
             "SENTINEL_NOTIFY_SLACK_TOKEN_FILE and SENTINEL_NOTIFY_CHANNEL send them for real)"
             if recorded_in else "sent to Slack")
    threads: dict[str, list[dict[str, Any]]] = {}
    for m in outcome.messages:
        threads.setdefault(m["incident"], []).append(m)
    out = [f"{len(outcome.messages)} messages in {len(threads)} threads, {where}:"]
    for msgs in threads.values():
        for k, m in enumerate(msgs):
            first, *rest = m["text"].splitlines() or [""]
            lead = "  " if k == 0 else "    ↳ "
            out.append(f"{lead}{first}" + ("" if m["state"] == "sent" else f" [{m['state']}]"))
            out += [f"{' ' * len(lead)}{line}" for line in rest]
    return out


def summary(outcome: Outcome, recorded_in: Path | None) -> list[str]:
    """Return the end-of-demo summary as lines."""
    j = outcome.job
    where = f" (Slurm job {j['slurm_job']})" if j.get("slurm_job") else ""
    lines = [f"job {story.JOB}{where}: {j.get('state', '?')} at step {j.get('step')}, "
             f"{j.get('rollbacks', 0)} rollback(s), {j.get('restarts', 0)} requeue(s)"
             + (f", final eval loss {j['eval_loss']:.3f}" if j.get("eval_loss") else ""), ""]
    rows = [("episode", "fault", "detected in", "recovered in", "what happened"),
            *episode_rows(outcome)]
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    for r in rows:
        lines.append("  ".join(c.ljust(w) for c, w in zip(r[:4], widths, strict=True))
                     + "  " + r[4])
    lines += ["", f"goodput of the job: {goodput_line(outcome)}", "", "Slack:",
              *slack_lines(outcome, recorded_in)]
    return lines


def conclude(sc: Any, outcome: Outcome, recorded_in: Path | None) -> list[str]:
    """Write the report and ``outcome.json`` (Prometheus still up); return the summary."""
    root = sc.stack.root
    outcome.report = write_report(outcome, root / "report", sc.job.tail.records,
                                  sc.stack.prometheus, recorded_in)
    (root / "outcome.json").write_text(json.dumps(outcome.to_dict(), indent=1, default=str))
    return summary(outcome, recorded_in)


# -- the report on disk ------------------------------------------------------------------

def write_report(outcome: Outcome, directory: Path, records: list[dict[str, Any]],
                 prom: Prometheus | None, recorded_in: Path | None) -> Path:
    """Write report.md and its plots to ``directory``; return the Markdown file's path."""
    directory.mkdir(parents=True, exist_ok=True)
    plots = [p for p in (_loss_plot(directory / "loss.png", records),
                         _timeline_plot(directory / "timeline.png", records, outcome),
                         _signals_plot(directory / "signals.png", prom, outcome)) if p]
    md = ["# sentinel demo: incident report", "",
          f"Run directory `{outcome.root}`; {duration(outcome.ended_at - outcome.started_at)} "
          "from start to the job's end.", ""]
    if outcome.why_no_slurm:
        md += [f"No local Slurm: {outcome.why_no_slurm}. Spare swaps were observe-only.", ""]
    if outcome.why_no_storage:
        md += [f"No slowed-storage rig: {outcome.why_no_storage}.", ""]
    md += ["| episode | fault at | time to detect | time to recover | outcome |",
           "|---|---|---|---|---|"]
    md += [f"| {' | '.join(r)} |" for r in episode_rows(outcome)]
    md += ["", f"**Goodput**: {goodput_line(outcome)}.", ""]
    for e in outcome.episodes:
        md += _episode_md(e, outcome)
    md += ["## Slack", "", "```", *slack_lines(outcome, recorded_in), "```", ""]
    md += ["## Plots", ""] + [f"![{p.stem}]({p.name})" for p in plots]
    path = directory / "report.md"
    path.write_text("\n".join(md) + "\n")
    return path


def _episode_md(e: Episode, outcome: Outcome) -> list[str]:
    out = [f"## {e.name}", "", f"{e.state}: {e.note}", ""]
    incs = outcome.status.get("incidents", {})
    for inc in [*incs.get("open", []), *incs.get("recent", [])]:
        if inc["id"] != e.incident:
            continue
        t = inc["time_to"]
        out.append(f"Incident `{inc['id']}` ({inc['kind']}, {inc['state']}): {inc['summary']}. "
                   f"The controller's own reckoning from the finding's start: detected in "
                   f"{duration(t['detect'])}, decided in {duration(t['decide'])}, "
                   + (f"recovered in {duration(t['recover'])}." if t["recover"] is not None
                      else "nothing to recover (no action taken)."))
        out.append("")
        for a in inc["actions"]:
            steps = ", ".join(f"{s['name']} {s['state']}" for s in a["steps"])
            out.append(f"- `{a['id']}` {a['action']} ({a['mode']}): {a['state']}"
                       + (f" - {a['error']}" if a["error"] else "") + (f"; steps: {steps}"
                                                                       if steps else ""))
        out.append("")
    facts = {k: v for k, v in e.facts.items() if v is not None}
    if facts:
        out += ["Facts: " + "; ".join(f"{k} = {v}" for k, v in facts.items()), ""]
    return out


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _timelines(records: list[dict[str, Any]]) -> list[tuple[str, list[dict[str, Any]]]]:
    """Split rank 0's steps where the step number goes back; name what began each part."""
    out: list[tuple[str, list[dict[str, Any]]]] = []
    last, cause = None, "the run"
    for r in records:
        ev = r.get("event")
        if ev == "rollback":
            cause = f"after the rollback to {r['to_step']}"
        elif ev == "resume":
            cause = f"after the restart (checkpoint {r['checkpoint']})"
        if ev != "step":
            continue
        if last is None or r["step"] <= last:
            out.append((cause, []))
        out[-1][1].append(r)
        last = r["step"]
    return out


def _loss_plot(path: Path, records: list[dict[str, Any]]) -> Path | None:
    parts = _timelines(records)
    if not parts:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(9, 4))
    styles = ["-", "--", ":", "-."]
    for i, (cause, tl) in enumerate(parts):
        # Later timelines on top, dashed: a restart from the same checkpoint repeats the
        # steps exactly (same data, same seed), so its line lies on the earlier one.
        ax.plot([r["step"] for r in tl], [r["loss"] for r in tl], lw=1.0 + 0.4 * i,
                ls=styles[i % len(styles)], label=f"{cause}: steps {tl[0]['step']}-"
                f"{tl[-1]['step']}", zorder=2 + i)
    bad = [r["step"] for r in records if r.get("event") == "inject"]
    if bad:
        ax.axvspan(min(bad), max(bad), color="red", alpha=0.12, label="corrupted batches")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (rank 0)")
    ax.set_title("loss over steps: the spike, the rollback, the requeue")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _timeline_plot(path: Path, records: list[dict[str, Any]], outcome: Outcome) -> Path | None:
    steps = [r for r in records if r.get("event") == "step"]
    if not steps:
        return None
    plt = _pyplot()
    t0 = outcome.started_at
    fig, ax = plt.subplots(figsize=(9, 3.5))
    ax.plot([r["time"] - t0 for r in steps], [r["step"] for r in steps], ".", ms=1.5)
    for e, color in zip(outcome.episodes, ("tab:red", "tab:orange", "tab:purple"),
                        strict=False):
        if e.fault_at is not None:
            end = e.recovered_at or e.handled_at or e.fault_at
            ax.axvspan(e.fault_at - t0, end - t0, alpha=0.15, color=color, label=e.name)
    ax.set_xlabel("seconds since the demo started")
    ax.set_ylabel("step (rank 0)")
    ax.set_title("the job's progress: fault to recovery shaded per episode")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _range(prom: Prometheus, q: str, start: float, end: float) -> list[tuple[float, float]]:
    try:
        res = prom.query_range(q, start, end, 1.0)
    except QueryError:
        return []
    pts = [(float(t), float(v)) for t, v in res[0]["values"]] if res else []
    out: list[tuple[float, float]] = []
    for t, v in pts:
        if out and t - out[-1][0] > 3.0:
            out.append((out[-1][0] + 1.0, math.nan))  # no data: no line across the gap
        if math.isfinite(v):
            out.append((t, v))
    return out


def _signals_plot(path: Path, prom: Prometheus | None, outcome: Outcome) -> Path | None:
    if prom is None:
        return None
    t0, t1 = outcome.started_at, outcome.ended_at or outcome.started_at + 1
    tps = _range(prom, f'job:sentinel_train_tokens_per_second:sum{{job="{story.JOB}"}}', t0,
                 t1)
    disk = _range(prom, "max(sentinel_disk_read_latency_seconds) * 1000", t0, t1)
    if not tps and not disk:
        return None
    plt = _pyplot()
    fig, (a1, a2) = plt.subplots(2, 1, figsize=(9, 4.5), sharex=True)
    a1.plot([t - t0 for t, _ in tps], [v for _, v in tps], lw=0.9)
    a1.set_ylabel("tokens/s (job)")
    a2.plot([t - t0 for t, _ in disk], [v for _, v in disk], lw=0.9, color="tab:red")
    a2.set_ylabel("disk read ms (max)")
    a2.set_xlabel("seconds since the demo started")
    for e in outcome.episodes:
        if e.fault_at is not None:
            for ax in (a1, a2):
                ax.axvline(e.fault_at - t0, color="gray", ls=":", lw=0.8)
    a1.set_title("what Prometheus saw: throughput and disk latency (faults dotted)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
