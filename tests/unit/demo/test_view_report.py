"""The terminal view, the log tail, the summary and the report, on a recorded outcome."""

from __future__ import annotations

import io
import json
from pathlib import Path

from sentinel.demo.report import episode_rows, slack_lines, summary, write_report
from sentinel.demo.scenario import Episode, Outcome
from sentinel.demo.storage import unavailable
from sentinel.demo.view import View
from sentinel.demo.watch import JobView, LogTail


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_lines_are_timestamped_tagged_and_wrapped():
    out = io.StringIO()
    v = View(out, tty=False)
    v.say("finding", "word " * 40)
    lines = out.getvalue().splitlines()
    assert lines[0].split()[1] == "finding" and lines[0].split()[0].endswith("s")
    assert len(lines) == 3 and all(len(x) <= 100 for x in lines)
    assert lines[1].startswith(" " * 19)  # continuation under the text, not the tag


def test_status_rewrites_one_line_on_a_terminal_and_is_printed_sparingly_elsewhere():
    tty = Tty()
    v = View(tty)
    v.status("step 1")
    v.status("step 2")
    v.say("job", "an event")
    text = tty.getvalue()
    assert text.count("\r\x1b[2K") >= 3 and text.endswith("step 2")
    assert v.lines == [line for line in v.lines if "step" not in line]  # status: no line
    pipe = io.StringIO()
    w = View(pipe, tty=False, status_every_s=3600)
    w.status("step 1")
    w.status("step 2")  # within the interval: not printed
    assert pipe.getvalue().count("step") == 1


def test_log_tail_reads_complete_lines_only(tmp_path):
    p = tmp_path / "rank0.jsonl"
    p.write_text('{"event": "start", "time": 1.0}\n{"event": "st')
    tail = LogTail(p)
    assert [r["event"] for r in tail.read()] == ["start"]
    with open(p, "a") as fh:
        fh.write('ep", "step": 0, "batch": 0, "loss": NaN, "time": 2.0}\n')
    job = JobView(tail)
    new = job.update()
    assert [r["event"] for r in new] == ["step"] and job.step == 0 and job.loss != job.loss
    assert LogTail(tmp_path / "missing").read() == []


def _outcome(tmp_path: Path) -> Outcome:
    o = Outcome(root=tmp_path, started_at=1000.0, ended_at=1120.0)
    o.episodes = [
        Episode("bad batch", "done", "rolled back", 1030.0, 1031.0, 1035.0, 1041.5, "i-1"),
        Episode("GPU fault", "done", "swapped", 1050.0, 1051.2, 1051.3, 1065.0, "i-2"),
        Episode("slow storage", "skipped", "no slowed-storage rig here: need root")]
    o.job = {"state": "COMPLETED", "step": 460, "restarts": 1, "rollbacks": 1,
             "eval_loss": 2.227, "slurm_job": "2"}
    o.status = {"goodput": [{"job": "demo-gpt", "wall_seconds": 90.0, "productive_seconds":
                             60.0, "ratio": 2 / 3, "unclassified_seconds": 0.0,
                             "badput_seconds": {"rollback": 9.4, "requeue": 20.6,
                                                "stall": 0.0}}],
                "incidents": {"open": [], "recent": []}}
    o.messages = [
        {"incident": "i-1", "kind": "open", "state": "sent", "title": "t",
         "text": ":rotating_light: *[i-1] loss spike*\nDecision: no action."},
        {"incident": "i-2", "kind": "open", "state": "sent", "title": "t",
         "text": ":rotating_light: *[i-2] XID 79*"},
        {"incident": "i-1", "kind": "update", "state": "pending", "title": "t",
         "text": ":information_source: *[i-1] rollback_skip: verified*"}]
    return o


def test_summary_has_each_episode_with_its_times_goodput_and_the_threads(tmp_path):
    o = _outcome(tmp_path)
    assert episode_rows(o)[0] == ("1. bad batch", "+30 s", "1.0 s", "11.5 s", "done: rolled back")
    assert episode_rows(o)[2][1:4] == ("-", "-", "-")
    text = "\n".join(summary(o, tmp_path / "messages.jsonl"))
    assert "job demo-gpt (Slurm job 2): COMPLETED at step 460, 1 rollback(s), 1 requeue(s)" \
        in text
    assert "66.7% of 1m 30s productive; lost to rollback 9.4 s, requeue 20.6 s" in text
    assert "stall" not in text.split("goodput")[1].split("\n")[0]  # nothing lost: not listed
    threads = slack_lines(o, tmp_path / "messages.jsonl")
    assert threads[0].startswith("3 messages in 2 threads, recorded in ")
    assert threads[1:] == ["  :rotating_light: *[i-1] loss spike*", "  Decision: no action.",
                           "    ↳ :information_source: *[i-1] rollback_skip: verified* "
                           "[pending]", "  :rotating_light: *[i-2] XID 79*"]
    assert slack_lines(o, None)[0].endswith("sent to Slack:")


def test_report_is_markdown_with_its_plots(tmp_path):
    o = _outcome(tmp_path)
    recs = [{"event": "start", "time": 1001.0}]
    recs += [{"event": "step", "step": s, "loss": 3.0, "batch": s, "time": 1002.0 + s / 10}
             for s in range(120)]
    recs += [{"event": "rollback", "to_step": 100, "time": 1015.0}]
    recs += [{"event": "step", "step": s, "loss": 2.5, "batch": s, "time": 1016.0 + s / 10}
             for s in range(100, 150)]
    path = write_report(o, tmp_path / "report", recs, None, None)
    md = path.read_text()
    assert "| 1. bad batch | +30 s | 1.0 s | 11.5 s | done: rolled back |" in md
    assert "![loss](loss.png)" in md and "![timeline](timeline.png)" in md
    assert "signals.png" not in md  # no Prometheus: no plot of its series
    for png in ("loss.png", "timeline.png"):
        assert (path.parent / png).read_bytes()[:4] == b"\x89PNG"
    saved = json.loads(json.dumps(o.to_dict(), default=str))  # outcome.json's form
    assert saved["episodes"][0]["incident"] == "i-1" and saved["ok"] is True


def test_storage_rig_says_why_it_cannot_run(tmp_path):
    why = unavailable(blkio=tmp_path)
    assert why is not None
    if why.startswith("no cgroup v1 blkio throttling"):
        assert str(tmp_path) in why
