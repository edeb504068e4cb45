r"""``sentinel notify``: send a test message, queue an incident message, drain the queue.

Examples::

    SENTINEL_NOTIFY_SLACK_TOKEN_FILE=/etc/sentinel/slack-token \\
    SENTINEL_NOTIFY_CHANNEL=C0123456789 sentinel notify test

    sentinel notify --config /etc/sentinel/sentinel.yml send --incident loss_spike:gpt \\
        --title "Loss spike in gpt" --field job=gpt --field step=1234 \\
        --steps-jsonl run.jsonl --around-step 1234
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
import time
from collections.abc import Callable
from typing import Any

from sentinel.config import ConfigError, read_yaml_file
from sentinel.notify.config import load_notify_config

EXIT_OK, EXIT_PROBLEM, EXIT_USAGE = 0, 1, 2
# Steps kept on each side of the incident step for the plot: PaLM restarted about 100
# steps before a spike, so 200 each side shows the run-up and the recovery.
DEFAULT_PLOT_WINDOW = 200


def register(subparsers: Any) -> None:
    """Add ``sentinel notify`` and its subcommands."""
    p = subparsers.add_parser("notify", help="Slack notifications: test, send, flush, status")
    p.add_argument("--config", help="sentinel YAML config file (section notify:)")
    sub = p.add_subparsers(dest="notify_command", metavar="ACTION")

    t = sub.add_parser("test", help="post a test message now and report whether Slack took it")
    t.set_defaults(func=_guarded(_cmd_test))

    s = sub.add_parser("send", help="queue one incident message and try to deliver it")
    s.add_argument("--incident", required=True, help="incident key: its messages share a thread")
    s.add_argument("--title", required=True)
    s.add_argument("--text", default="")
    s.add_argument("--kind", default="open", choices=["open", "update", "resolved"])
    s.add_argument("--severity", default="warning", choices=["info", "warning", "critical"])
    s.add_argument("--field", action="append", default=[], metavar="NAME=VALUE",
                   help="shown with the message (job=, node=, GPU=, value=); repeatable")
    s.add_argument("--key", default="", help="idempotency key: the same key is sent once")
    s.add_argument("--steps-jsonl", help="detector-input JSON lines to plot (step, loss, "
                   "tokens_per_sec) with an opening message")
    s.add_argument("--around-step", type=int, help="incident step to centre the plot on")
    s.add_argument("--window", type=int, default=DEFAULT_PLOT_WINDOW,
                   help="steps each side of --around-step to plot")
    s.set_defaults(func=_guarded(_cmd_send))

    f = sub.add_parser("flush", help="deliver queued messages")
    f.add_argument("--wait", type=float, default=0.0,
                   help="keep trying for up to this many seconds while messages wait")
    f.set_defaults(func=_guarded(_cmd_flush))

    st = sub.add_parser("status", help="print the queue's counts as JSON")
    st.set_defaults(func=_guarded(_cmd_status))
    p.set_defaults(func=lambda _a: (p.print_help(), EXIT_USAGE)[1])


def _guarded(cmd: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Print an outbox that cannot be used as what it is (not as a bad config), exit 2."""

    def run(args: argparse.Namespace) -> int:
        from sentinel.notify.queue import OutboxError

        try:
            return cmd(args)
        except OutboxError as e:
            print(f"sentinel notify: {e}", file=sys.stderr)
            return EXIT_USAGE

    return run


def _config(args: argparse.Namespace) -> Any:
    data = read_yaml_file(args.config) if args.config else None
    return load_notify_config(file_data=data)


def _notifier(args: argparse.Namespace) -> Any:
    from sentinel.notify.slack import Notifier

    return Notifier.from_config(_config(args))


def _cmd_test(args: argparse.Namespace) -> int:
    from sentinel.notify.message import Notification

    n = _notifier(args)
    note = Notification(
        f"sentinel-test:{socket.gethostname()}:{int(time.time())}",
        "open",
        "sentinel test message",
        f"sent by `sentinel notify test` on {socket.gethostname()}",
        severity="info",
    )
    n.notify(note)
    res = n.flush()
    state = n.outbox.state_of(note.key)
    if state == "sent":
        print("sent: Slack accepted the test message")
        return EXIT_OK
    print(f"not sent ({state}); it stays queued in {n.outbox.path}. See the log above.")
    return EXIT_PROBLEM if res.waiting or state == "dead" else EXIT_OK


def _parse_fields(items: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise ConfigError(f"--field {item!r}: valid form is NAME=VALUE, e.g. job=gpt")
        out[name] = value
    return out


def load_steps_jsonl(path: str, around: int | None, window: int) -> Any:
    """Read detector-input JSON lines into a plot Series, windowed around a step.

    The lines go through the rules engine's parser (``sentinel detect`` reads the same
    format), one at a time, keeping only the window: a whole run's log can be millions
    of steps, and only a few hundred of them are plotted.
    """
    from sentinel.notify.message import Series
    from sentinel.rules.jsonl import InputError, iter_steps

    try:
        # Records without a loss (a throughput-only trace) have nothing to plot here.
        points = [p for p in iter_steps(path) if p.loss_given
                  and (around is None or abs(p.step - around) <= window)]
    except InputError as e:
        raise ConfigError(f"--steps-jsonl {e}") from None
    if not points:
        where = f"within {window} steps of step {around}" if around is not None else "in it"
        raise ConfigError(f"--steps-jsonl {path}: no steps to plot {where} (valid: one JSON "
                          'object per line like {"step": 1, "loss": 2.5})')
    points.sort(key=lambda p: p.step)
    tps_values = [p.tokens_per_sec for p in points]
    return Series(
        step=[p.step for p in points],
        loss=[p.loss for p in points],
        tokens_per_sec=tps_values if any(v is not None for v in tps_values) else [],
        mark_step=around,
    )


def _cmd_send(args: argparse.Namespace) -> int:
    from sentinel.notify.message import Notification

    fields = _parse_fields(args.field)
    series = None
    if args.steps_jsonl:
        series = load_steps_jsonl(args.steps_jsonl, args.around_step, args.window)
    n = _notifier(args)
    try:
        if args.kind == "open":
            result = n.open_incident(args.incident, args.title, args.text,
                                     severity=args.severity, fields=fields, series=series,
                                     key=args.key)
        else:
            result = n.notify(Notification(args.incident, args.kind, args.title, args.text,
                                           args.severity, fields, key=args.key))
    except ValueError as e:
        raise ConfigError(str(e)) from None
    res = n.flush()
    print(json.dumps({"queued": result, "sent": res.sent, "waiting": res.waiting}))
    return EXIT_OK if res.waiting == 0 else EXIT_PROBLEM


def _cmd_flush(args: argparse.Namespace) -> int:
    n = _notifier(args)
    deadline = time.monotonic() + max(0.0, args.wait)
    total = 0
    while True:
        res = n.flush()
        total += res.sent
        if res.waiting == 0 or res.next_in_s is None:
            break
        left = deadline - time.monotonic()
        if left <= 0:
            break
        time.sleep(min(left, max(0.1, res.next_in_s)))
    print(json.dumps({"sent": total, "waiting": res.waiting}))
    return EXIT_OK if res.waiting == 0 else EXIT_PROBLEM


def _cmd_status(args: argparse.Namespace) -> int:
    from sentinel.notify.queue import Outbox

    cfg = _config(args)
    counts = Outbox(cfg.queue_dir, cfg.queue_max_messages).counts()
    print(json.dumps(counts, sort_keys=True))
    return EXIT_OK

