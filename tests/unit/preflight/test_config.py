"""`sentinel preflight`'s config check and flags: every section loaded, errors named, exit 2."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest
import yaml

from sentinel.cli import main
from sentinel.config import ConfigError, known_sections
from sentinel.preflight.checks import CHECKS
from sentinel.preflight.cli import parse_size
from sentinel.preflight.config import CHECK_NAMES, SECTIONS, load_setup
from sentinel.preflight.runner import parse_names
from tests.support.strictjson import strict_loads

ROOT = Path(__file__).resolve().parents[3]


def write(tmp_path: Path, data: dict) -> str:
    p = tmp_path / "sentinel.yml"
    p.write_text(yaml.safe_dump(data))
    return str(p)


def run_json(capsys, *argv: str) -> tuple[int, dict]:
    rc = main(["preflight", "--json", *argv])
    out = capsys.readouterr().out
    return rc, strict_loads(out)


def test_registry_matches_the_names():
    assert tuple(name for name, _t, _f in CHECKS) == CHECK_NAMES


def test_every_section_a_part_loads_is_checked():
    """Each load_section(..., "name") in sentinel/ names a section preflight loads."""
    literal: set[str] = set()
    for path in (ROOT / "sentinel").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "load_section" \
                    and len(node.args) >= 2:
                arg = node.args[1]
                if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                    literal.add(arg.value)
                elif isinstance(arg, ast.Name) and arg.id == "SECTION":
                    literal.add("notify")  # sentinel/notify/config.py's SECTION
    assert literal, "found no load_section call: the scan is broken"
    sections = set(known_sections())
    assert literal <= sections, literal - sections
    loaded = {name for name, _ in SECTIONS} | {"policy", "jobs", "preflight"}
    assert sections <= loaded, sections - loaded


def test_shipped_example_config_loads_every_section(capsys):
    rc, rep = run_json(capsys, "--config", str(ROOT / "deploy" / "sentinel.yml"),
                       "--only", "config")
    [cfg] = [c for c in rep["checks"] if c["name"] == "config"]
    assert (rc, cfg["status"]) == (0, "ok"), cfg
    assert set(cfg["evidence"]["sections"]) == {n for n, _ in SECTIONS} | {"preflight"}
    assert cfg["evidence"]["job"] == "gpt-7b"


@pytest.mark.parametrize(("data", "section", "words"), [
    ({"agnet": {}}, "agnet", ["unknown section", "did you mean 'agent'", "valid sections: "]),
    ({"agent": {"listen_address": "nope"}}, "agent", ["agent.listen_address", "HOST:PORT"]),
    ({"controller": {"interval_seconds": 0}}, "controller", ["below the minimum"]),
    ({"controller": {"rules": "/nonexistent/rules.yml"}}, "rules", ["rules file", "cannot read"]),
    ({"burnin": {"duration": -1}}, "burnin", ["burnin.duration"]),
    ({"preflight": {"skip": ["spares"]}}, "preflight", ["'spares' is not valid", "spare"]),
    ({"jobs": [{"name": "a"}, {"name": "b"}]}, "job", ["--job", "valid: a, b"]),
    ({"preflight": {"job": "c"}, "jobs": [{"name": "a"}]}, "job", ["'c' is not in jobs"]),
])
def test_a_bad_section_is_named_and_exits_2(tmp_path, capsys, data, section, words):
    rc, rep = run_json(capsys, "--config", write(tmp_path, data))
    assert rc == 2 and rep["exit_code"] == 2 and rep["ok"] is False
    cfg = rep["checks"][0]
    assert cfg["name"] == "config" and cfg["status"] == "problem"
    err = cfg["evidence"][f"error.{section}"]
    for w in words:
        assert w in err, err
    # Nothing else ran: every other check says why.
    assert {c["status"] for c in rep["checks"][1:]} == {"skipped"}
    assert {c["summary"] for c in rep["checks"][1:]} == {"the config does not load (see config)"}


def test_every_error_of_a_file_is_reported_at_once(tmp_path):
    s = load_setup(write(tmp_path, {"agent": {"listen_address": "x"}, "burnin": {"size": 0},
                                    "extra": 1}))
    assert set(s.errors) == {"agent", "burnin", "extra"}


def test_a_file_that_is_not_yaml_is_a_config_problem(tmp_path, capsys):
    p = tmp_path / "bad.yml"
    p.write_text("agent: [unclosed\n")
    rc, rep = run_json(capsys, "--config", str(p))
    assert rc == 2 and "not valid YAML" in rep["checks"][0]["evidence"]["error.file"]


def test_a_notify_secret_file_is_read_and_judged(tmp_path, capsys):
    token = tmp_path / "token"
    token.write_text("xoxb-1\n")
    token.chmod(0o644)  # world-readable: refused, as the notifier would at start
    rc, rep = run_json(capsys, "--config", write(tmp_path, {"notify": {
        "slack_token_file": str(token), "channel": "C1"}}), "--only", "config")
    assert rc == 2 and "chmod 600" in rep["checks"][0]["evidence"]["error.notify"]
    assert "xoxb" not in json.dumps(rep)


def test_the_only_job_is_chosen_and_its_checkpoint_dir_derived(tmp_path):
    s = load_setup(write(tmp_path, {"jobs": [{"name": "gpt", "run_dir": "/runs/gpt"}]}))
    assert s.valid and s.job.name == "gpt"
    assert s.checkpoint_dir() == Path("/runs/gpt/checkpoints")
    s = load_setup(write(tmp_path, {"jobs": [{"name": "gpt", "run_dir": "/r",
                                              "checkpoint_dir": "/ck"}]}),
                   {"checkpoint_dir": None})
    assert s.checkpoint_dir() == Path("/ck")
    s = load_setup(None, {"checkpoint_dir": "/flag"})
    assert s.checkpoint_dir() == Path("/flag")


def test_agent_address_from_its_listen_address(tmp_path):
    s = load_setup(write(tmp_path, {"agent": {"listen_address": "0.0.0.0:9500",
                                              "socket": "/run/x.sock"}}))
    assert (s.agent_url(), s.agent_socket()) == ("http://127.0.0.1:9500", "/run/x.sock")
    s = load_setup(write(tmp_path, {"agent": {"listen_address": "[::]:9464"}}))
    assert s.agent_url() == "http://[::1]:9464"


@pytest.mark.parametrize(("text", "n"), [("80G", 80 << 30), ("512MiB", 512 << 20),
                                         ("1.5T", int(1.5 * (1 << 40))), ("4096", 4096),
                                         ("2k", 2048)])
def test_sizes(text, n):
    assert parse_size(text) == n


def test_bad_flags_are_usage_errors(capsys):
    with pytest.raises(ConfigError, match="'gpu' is not a check"):
        parse_names("burnin,gpu", "--only")
    with pytest.raises(ConfigError, match="not a size"):
        parse_size("eighty gigs")
    assert main(["preflight", "--only", "burnin,gpu"]) == 2
    assert "valid: config, burnin" in capsys.readouterr().err
    assert main(["preflight", "--checkpoint-bytes", "lots"]) == 2
