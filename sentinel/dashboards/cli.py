"""``sentinel dashboards generate|push``: write the Grafana JSON, or upload it."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from sentinel.config import ConfigError, load_section, read_yaml_file
from sentinel.dashboards.config import DashboardsConfig

EXIT_OK = 0
EXIT_PROBLEM = 1
EXIT_USAGE = 2


def register(subparsers: Any) -> None:
    """Add the ``dashboards`` subcommand."""
    p = subparsers.add_parser(
        "dashboards",
        help="generate the Grafana dashboards or push them to Grafana",
        description="Generate dashboards/*.json from code, or push them to a Grafana server.",
    )
    sub = p.add_subparsers(dest="dashboards_command", metavar="ACTION")

    g = sub.add_parser("generate", help="write the dashboards' JSON files")
    g.add_argument("--out", type=Path, default=Path("dashboards"), help="directory to write")
    g.add_argument(
        "--check",
        action="store_true",
        help="write nothing; exit 1 if the files in --out differ from a fresh generation",
    )
    g.set_defaults(func=_generate)

    u = sub.add_parser(
        "push",
        help="save the dashboards into a Grafana folder (overwrites)",
        description="Save the dashboards into a Grafana folder through the HTTP API. The token "
        "comes from --token-file or $SENTINEL_GRAFANA_TOKEN and is never printed.",
    )
    u.add_argument("--config", type=Path, help="sentinel YAML config (section dashboards:)")
    u.add_argument("--url", help="Grafana base URL (config dashboards.grafana_url)")
    u.add_argument("--token-file", help="file holding a Grafana service-account token")
    u.add_argument("--folder", help="folder title (default Sentinel)")
    u.add_argument("--folder-uid", help="folder uid (default sentinel)")
    u.add_argument(
        "--from-dir",
        type=Path,
        help="push the JSON files in this directory instead of generating them",
    )
    u.set_defaults(func=_push)

    p.set_defaults(func=lambda _args: _usage(p))


def _usage(p: argparse.ArgumentParser) -> int:
    p.print_help(sys.stderr)
    return EXIT_USAGE


def _generate(args: argparse.Namespace) -> int:
    from sentinel.dashboards.generate import build_all, generate

    out: Path = args.out
    if args.check:
        stale = []
        for name, text in build_all().items():
            path = out / name
            if not path.exists() or path.read_text(encoding="utf-8") != text:
                stale.append(str(path))
        if stale:
            print(
                f"dashboards out of date: {', '.join(stale)} (run: make dashboards)",
                file=sys.stderr,
            )
            return EXIT_PROBLEM
        return EXIT_OK
    for path in generate(out):
        print(path)
    return EXIT_OK


def _load_dir(d: Path) -> dict[str, dict[str, Any]]:
    files = sorted(d.glob("*.json"))
    if not files:
        raise ConfigError(f"--from-dir {d}: no *.json dashboards there")
    out = {}
    for f in files:
        try:
            data = json.loads(f.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise ConfigError(f"--from-dir {d}: {f.name} is not readable JSON ({e})") from e
        if not isinstance(data, dict) or not data.get("uid") or "panels" not in data:
            raise ConfigError(
                f"--from-dir {d}: {f.name} is not a Grafana dashboard (needs uid and panels)"
            )
        out[f.name] = data
    return out


def _push(args: argparse.Namespace) -> int:
    from sentinel.dashboards.push import PushError, push, read_token

    file_data = read_yaml_file(args.config) if args.config else None
    cfg = load_section(
        DashboardsConfig,
        "dashboards",
        file_data=file_data,
        overrides={
            "grafana_url": args.url,
            "token_file": args.token_file,
            "folder": args.folder,
            "folder_uid": args.folder_uid,
        },
    )
    if not cfg.grafana_url:
        print(
            "sentinel dashboards push: no Grafana URL (give --url or dashboards.grafana_url)",
            file=sys.stderr,
        )
        return EXIT_USAGE
    if args.from_dir is not None:
        dashboards = _load_dir(args.from_dir)
    else:
        from sentinel.dashboards.generate import DASHBOARDS

        dashboards = {f"{stem}.json": build() for stem, build in DASHBOARDS}
    try:
        token = read_token(cfg.token_file or None)
        urls = push(cfg.grafana_url, dashboards, token=token, config=cfg)
    except PushError as e:
        print(f"sentinel dashboards push: {e}", file=sys.stderr)
        return e.exit_code
    for name, url in zip(dashboards, urls, strict=True):
        print(f"{name}: saved {url}")
    return EXIT_OK
