"""The demo's rules and the configs and job script it writes (no process started)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from sentinel.controller.daemon import load_configs
from sentinel.demo import story
from sentinel.demo.stack import AgentProc, Options, Stack
from sentinel.rules.rulefile import DEFAULT_RULES, parse_rules


def test_demo_rules_are_the_defaults_with_shorter_windows():
    defaults = {r.name: r for r in parse_rules(yaml.safe_load(DEFAULT_RULES.read_text()))}
    demo = {r.name: r for r in parse_rules(story.demo_rules())}
    assert demo.keys() == defaults.keys()
    assert all(demo[n].series == defaults[n].series for n in demo)  # the same PromQL
    assert demo["throughput"].window_s == 180 and demo["throughput"].step_s == 1
    assert demo["throughput"].params.sustain_s == 6 and demo["throughput"].params.drop_ratio \
        == defaults["throughput"].params.drop_ratio
    assert demo["disk-latency"].params.baseline_s == 40
    assert demo["loss-spike"].params == defaults["loss-spike"].params


def test_an_override_of_a_rule_that_does_not_exist_is_refused(monkeypatch):
    monkeypatch.setitem(story.RULE_OVERRIDES, "no-such-rule", {"step": "1s"})
    with pytest.raises(ValueError, match=r"name no default rule: \['no-such-rule'\]"):
        story.demo_rules()


def _stack(tmp_path: Path, slurm: bool, slack: bool) -> Stack:
    s = Stack(Options(root=tmp_path, slack_env=slack))
    s.prometheus = SimpleNamespace(url="http://127.0.0.1:9090")  # type: ignore[assignment]
    s.controller_url = "127.0.0.1:9465"
    for n in s.nodes():
        s.agents[n] = AgentProc(n, f"http://{n}:9464", f"{n}:9464", tmp_path / n / "a.sock",
                                tmp_path / n / "r.json", tmp_path / n / "t", None)  # type: ignore[arg-type]
    if slurm:
        s.slurm = SimpleNamespace(conf=tmp_path / "slurm.conf")  # type: ignore[assignment]
    return s


@pytest.mark.parametrize("slurm", [True, False])
def test_controller_config_loads_and_acts_where_it_can(tmp_path, slurm):
    data = _stack(tmp_path, slurm, slack=False).write_controller_config()
    cfg, policy, jobs = load_configs(yaml.safe_load((tmp_path / "controller" / "sentinel.yml")
                                                    .read_text()), env={})
    assert (cfg.scheduler, policy.spare_swap_mode) == (
        ("slurm", "act") if slurm else ("none", "observe"))
    assert policy.rollback_skip_mode == "act" and cfg.interval_seconds == 1.0
    assert jobs[story.JOB].agent == "http://node1:9464"  # rank 0's node
    assert (jobs[story.JOB].reservation == story.RESERVATION) is slurm
    assert cfg.burnin_command[-3:] == ["-m", "sentinel.burnin.replay", "fail"]
    assert data["notify"]["record_dir"] == str(tmp_path / "controller" / "slack")
    rules = yaml.safe_load(Path(cfg.rules).read_text())
    assert rules == story.demo_rules()


def test_with_slack_credentials_the_messages_are_not_recorded(tmp_path):
    data = _stack(tmp_path, True, slack=True).write_controller_config()
    assert "record_dir" not in data["notify"]


def test_job_script_gives_each_rank_its_nodes_agent_and_data(tmp_path):
    s = _stack(tmp_path, True, slack=False)
    s.storage = SimpleNamespace(root=tmp_path / "storage")  # type: ignore[assignment]
    script = s.job_script()
    assert script.startswith("#!/bin/bash\n")
    assert f"SENTINEL_AGENT_SOCKET={tmp_path}/nodes/$SLURMD_NODENAME/agent.sock" in script
    assert f"--data-file {tmp_path}/storage/nodes/$SLURMD_NODENAME/corpus.bin" in script
    assert "MASTER_PORT=${ports[$(( ${SLURM_RESTART_COUNT:-0} % 4 ))]}" in script
    assert f"--inject-bad-batch {story.bad_batches_arg()}" in script
    assert "exec srun --kill-on-bad-exit=1 --ntasks-per-node=1" in script


def test_job_script_runs_the_ranks_on_this_sentinel_from_any_folder(tmp_path):
    """A rank starts in the run directory: it must import the sentinel the demo runs."""
    import subprocess

    import sentinel

    s = _stack(tmp_path, True, slack=False)
    script = s.job_script()
    [line] = [ln for ln in script.splitlines() if ln.startswith("export PYTHONPATH=")]
    r = subprocess.run(["bash", "-c", f"{line}; cd {tmp_path} && env -u PYTHONHOME python3 -c "
                        "'import sentinel; print(sentinel.__file__)'"],
                       capture_output=True, text=True, timeout=60, env={"PATH": "/usr/bin:/bin"})
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == sentinel.__file__
