"""The all-reduce ranks as real processes: gloo on the CPU runs the code NCCL runs on GPUs."""

import os
import sys
import time
from pathlib import Path

import pytest

import sentinel
from sentinel.burnin.allreduce import AllreduceRanks, _json_lines, rank_env

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.slow  # each rank process imports torch (several seconds here)


def test_two_gloo_ranks_measure_and_check_an_allreduce():
    ranks = AllreduceRanks([0, 1], "unknown", backend="gloo", nbytes=1 << 20, iters=3,
                           warmup=1)
    ranks.start()
    m = ranks.run()
    assert m.error is None, m.error
    assert m.gpus == [0, 1] and m.backend == "gloo" and m.message_bytes == 1 << 20
    assert m.wrong_elements == 0 and len(m.rank_seconds) == 2
    assert m.seconds_per_iter == max(m.rank_seconds) > 0
    assert m.busbw_gbps == pytest.approx(m.algbw_gbps)  # two ranks: factor 2(n-1)/n = 1
    assert m.version.startswith("gloo (torch ")
    assert m.env["NCCL_NVLS_ENABLE"] == os.environ.get("NCCL_NVLS_ENABLE", "0")


@pytest.mark.skipif(torch.distributed.is_nccl_available(), reason="this torch has NCCL")
def test_ranks_that_cannot_init_nccl_fail_with_the_reason():
    ranks = AllreduceRanks([0, 1], "nvlink", backend="nccl", nbytes=1 << 20, timeout=60)
    ranks.start()
    m = ranks.run()
    assert m.error is not None and m.phase == "init"
    assert m.error.startswith("rank 0 (GPU 0): ")
    assert m.busbw_gbps is None


def test_close_stops_ranks_that_were_never_told_to_go():
    ranks = AllreduceRanks([0, 1], "nvlink", backend="gloo")
    ranks.start()
    procs = list(ranks._procs)
    ranks.close()
    assert all(p.poll() is not None for p in procs)
    ranks.close()  # twice is fine


def test_a_start_failure_is_reported_not_raised(monkeypatch):
    ranks = AllreduceRanks([0, 1], "nvlink", backend="gloo")
    monkeypatch.setattr(sys, "executable", "/nonexistent/python")
    t0 = time.monotonic()
    ranks.start()
    m = ranks.run()
    assert time.monotonic() - t0 < 5
    assert m.phase == "start" and m.error.startswith("could not start the rank processes")


def test_environment_keeps_nvls_off_unless_set_and_finds_sentinel():
    env = rank_env({"PATH": "/bin"})
    assert env["NCCL_NVLS_ENABLE"] == "0" and env["PATH"] == "/bin"
    assert env["PYTHONPATH"].split(os.pathsep)[0] == str(Path(sentinel.__file__).parents[1])
    assert rank_env({"NCCL_NVLS_ENABLE": "1"})["NCCL_NVLS_ENABLE"] == "1"


def test_json_lines_ignore_what_nccl_debug_prints():
    text = 'host:1:1 [0] NCCL INFO Bootstrap\n{"event": "ready", "rank": 1}\n{oops\n[1]\n'
    assert _json_lines(text) == [{"event": "ready", "rank": 1}]
