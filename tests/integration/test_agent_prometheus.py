"""A real Prometheus scrapes a real agent while a Reporter process reports steps."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import requests

from sentinel.gpu.nvml_replay import H100_LOAD
from tests.support.agent import run_agent
from tests.support.metrics import check_promtool
from tests.support.services import run_prometheus

FIX = Path(__file__).resolve().parents[1] / "fixtures"

NON_GPU = [
    "sentinel_agent_info", "sentinel_collector_success", "sentinel_collector_duration_seconds",
    "sentinel_disk_reads_completed_total", "sentinel_disk_writes_completed_total",
    "sentinel_disk_read_bytes_total", "sentinel_disk_written_bytes_total",
    "sentinel_disk_read_time_seconds_total", "sentinel_disk_write_time_seconds_total",
    "sentinel_disk_io_time_seconds_total", "sentinel_disk_read_latency_seconds",
    "sentinel_host_cpu_utilization_ratio", "sentinel_host_memory_total_bytes",
    "sentinel_host_memory_available_bytes", "sentinel_host_memory_used_bytes",
    "sentinel_host_load_average", "sentinel_host_filesystem_free_bytes",
    "sentinel_host_filesystem_size_bytes",
    "sentinel_train_step", "sentinel_train_loss", "sentinel_train_loss_finite",
    "sentinel_train_grad_norm",
    "sentinel_train_tokens_total", "sentinel_train_samples_total",
    "sentinel_train_tokens_per_second", "sentinel_train_step_duration_seconds_bucket",
    "sentinel_train_step_duration_seconds_count", "sentinel_train_seconds_since_last_report",
    "sentinel_train_events_total", "sentinel_train_job_info", "sentinel_train_rank_info",
    "sentinel_train_datagrams_received_total", "sentinel_train_datagrams_dropped_total",
    "sentinel_burnin_tflops", "sentinel_textfile_mtime_seconds",
]
GPU = [
    "sentinel_gpu_nvml_available", "sentinel_gpu_up", "sentinel_gpu_temperature_celsius",
    "sentinel_gpu_memory_temperature_celsius", "sentinel_gpu_slowdown_temperature_celsius",
    "sentinel_gpu_shutdown_temperature_celsius", "sentinel_gpu_sm_clock_hertz",
    "sentinel_gpu_memory_clock_hertz", "sentinel_gpu_sm_clock_max_hertz",
    "sentinel_gpu_utilization_ratio", "sentinel_gpu_memory_utilization_ratio",
    "sentinel_gpu_memory_used_bytes", "sentinel_gpu_memory_total_bytes",
    "sentinel_gpu_power_watts", "sentinel_gpu_power_limit_watts",
    "sentinel_gpu_energy_joules_total", "sentinel_gpu_clock_event_active",
    "sentinel_gpu_violation_seconds_total", "sentinel_gpu_ecc_errors_total",
    "sentinel_gpu_remapped_rows", "sentinel_gpu_remap_pending", "sentinel_gpu_remap_failure",
    "sentinel_gpu_pcie_replay_total", "sentinel_gpu_xid_errors_total",
]

REPORTER = textwrap.dedent("""
    import sys, time
    from sentinel.train import Reporter
    r = Reporter(job="itest", rank=0, socket_path=sys.argv[1], gpu_uuid="GPU-itest")
    step = 0
    while True:
        r.step(step, loss=3.0 / (1 + step), tokens=2048, grad_norm=1.0, samples=4)
        if step % 10 == 0:
            r.event("checkpoint_saved", step=step)
        step += 1
        time.sleep(0.05)
""")


@pytest.mark.integration
def test_prometheus_sees_every_family(tmp_path):
    replay = H100_LOAD
    import json

    dump = json.loads(replay.read_text())
    dump["xid_events"] = [{"uuid": dump["devices"][0]["uuid"], "xid": 79}]
    (tmp_path / "replay.json").write_text(json.dumps(dump))
    args = [f"--gpu-replay={tmp_path / 'replay.json'}",
            f"--textfile-dir={FIX / 'agent' / 'textfile'}"]
    with run_agent(tmp_path / "agent", args) as agent:
        job = subprocess.Popen([sys.executable, "-c", REPORTER, agent.socket_path])
        try:
            # As deploy/prometheus/prometheus.yml: honor_labels keeps the training `job`
            # label instead of renaming it exported_job.
            scrape = {"job_name": "sentinel-agent", "honor_labels": True,
                      "static_configs": [{"targets": [agent.hostport]}]}
            with run_prometheus(tmp_path / "prom", [agent.hostport],
                                extra_config={"scrape_configs": [scrape]}) as prom:
                prom.wait_for('sentinel_train_step{job="itest"} > 5', timeout=20)
                prom.wait_for("sentinel_disk_read_latency_seconds", timeout=10)
                missing = []
                for fam in NON_GPU + GPU:
                    if not prom.query(fam):
                        missing.append(fam)
                assert not missing, missing
                r = prom.query('sentinel_train_rank_info{job="itest"}')
                assert r[0]["metric"]["UUID"] == "GPU-itest"
                x = prom.query('sentinel_gpu_xid_errors_total{xid="79"}')
                assert x and float(x[0]["value"][1]) == 1
                up = prom.query(f'up{{job="sentinel-agent",instance="{agent.hostport}"}}')
                assert float(up[0]["value"][1]) == 1
            scrape = requests.get(f"{agent.url}/metrics", timeout=5).text
            steps = requests.get(f"{agent.url}/api/v1/steps",
                                 params={"job": "itest", "since": 0}, timeout=5).json()
        finally:
            job.terminate()
            job.wait(10)
    check_promtool(scrape)
    nums = [s["step"] for s in steps["steps"]]
    assert nums == sorted(nums) and len(nums) > 5
    assert time.time() - steps["steps"][-1]["time"] < 30
