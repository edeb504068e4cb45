"""Issue 13, agent item 4: the agent's memory stays under its unit's MemoryMax.

The probe grew a real agent to 734 MB with ordinary datagrams (16 jobs x 64 ranks),
to 2.3 GB in 10 s with 7 KB host strings, and to 4.8 GB with 16 parallel
``/api/v1/steps`` answers, under a unit that says ``MemoryMax=256M``. Here one real
agent process takes the three floods in turn and its resident memory is read from
/proc all along; the peak (VmHWM) must stay under the unit's limit.
"""

from __future__ import annotations

import re
import socket
import threading
import time
from pathlib import Path

import pytest
import requests

from sentinel import protocol
from tests.support.agent import run_agent
from tests.support.probe import raw_identity, status_kib

pytestmark = [pytest.mark.adversarial, pytest.mark.integration]

UNIT = Path(__file__).resolve().parents[2] / "deploy" / "systemd" / "sentinel-agent.service"
JOBS, RANKS = 16, 64
RING = 20000  # agent.step_ring_size's default: flood 1 fills every job's ring
HOST_FLOOD_S = 5.0
STEPS_CLIENTS, STEPS_FLOOD_S = 16, 4.0


def memory_max_kib() -> int:
    """Return the unit's MemoryMax in KiB (the limit the floods must stay under)."""
    m = re.search(r"^MemoryMax=(\d+)M$", UNIT.read_text(), re.M)
    assert m, "deploy/systemd/sentinel-agent.service has no MemoryMax=<N>M"
    return int(m.group(1)) * 1024


class RssSampler:
    """Read a process's VmRSS every 50 ms; ``peak()`` is the highest since ``reset()``."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self._peak = 0
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            try:
                self._peak = max(self._peak, status_kib(self.pid, "VmRSS"))
            except (OSError, AssertionError):
                return

    def reset(self) -> None:
        self._peak = status_kib(self.pid, "VmRSS")

    def peak(self) -> int:
        return max(self._peak, status_kib(self.pid, "VmRSS"))

    def stop(self) -> None:
        self._stop.set()
        self._t.join(2)


def _prefixes(host: str, *, job_len: int = protocol.MAX_JOB_LEN) -> list[bytes]:
    """One step prefix per (job, rank), with identity strings as long as the agent takes."""
    out = []
    for j in range(JOBS):
        job = f"job{j:02d}-".ljust(job_len, "x")
        for r in range(RANKS):
            ident = protocol.Identity(job=job, rank=r, pid=100000 + r,
                                      gpu_uuid=f"GPU-{j:02d}{r:02d}".ljust(40, "0"), host=host)
            out.append(protocol.header(protocol.TYPE_STEP, raw_identity(ident)))
    return out


def _flood(path: str, prefixes: list[bytes], steps: int, seconds: float | None = None) -> int:
    """Send ``steps`` steps from every prefix (blocking: at the agent's pace); return the count."""
    n = 0
    end = None if seconds is None else time.monotonic() + seconds
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.connect(path)
        for step in range(steps):
            t = time.time()
            for p in prefixes:
                s.send(protocol.encode_step(p, step, 2.0, 4096, 1.0, 8, t, {"batch": step}))
                n += 1
            if end is not None and time.monotonic() > end:
                break
    return n


def _steps_flood(url: str, jobs: list[str], seconds: float) -> tuple[int, int]:
    """16 clients read whole rings through /api/v1/steps at once; return (requests, bytes)."""
    counts = [0, 0]
    lock = threading.Lock()
    end = time.monotonic() + seconds

    def client(i: int) -> None:
        with requests.Session() as http:
            while time.monotonic() < end:
                params = {"job": jobs[i % len(jobs)], "since": "0"}
                while True:  # follow the pages (an agent without paging answers in one)
                    r = http.get(f"{url}/api/v1/steps", params=params, timeout=60)
                    assert r.status_code == 200, r.text[:200]
                    with lock:
                        counts[0] += 1
                        counts[1] += len(r.content)
                    nxt = r.json().get("next")
                    if not nxt or time.monotonic() > end:
                        break
                    params["cursor"] = nxt

    threads = [threading.Thread(target=client, args=(i,)) for i in range(STEPS_CLIENTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(seconds + 120)
    return counts[0], counts[1]


def test_rss_stays_under_memory_max_under_each_flood(tmp_path):
    limit = memory_max_kib()
    # One sender here: let it fill every job slot (agent.max_jobs), the worst case.
    with run_agent(tmp_path, ["--no-collector.gpu"],
                   env={"SENTINEL_AGENT_MAX_JOBS_PER_UID": str(JOBS)}) as agent:
        pid = agent.proc.pid
        rss = RssSampler(pid)
        figures = {"start": status_kib(pid, "VmRSS")}
        try:
            # 1. Ordinary datagrams, 16 jobs x 64 ranks, until every job's ring is full;
            #    identity strings as long as the agent accepts.
            rss.reset()
            t0 = time.monotonic()
            sent = _flood(agent.socket_path, _prefixes("n" * 253), RING // RANKS + 2)
            took = time.monotonic() - t0
            names = requests.get(f"{agent.url}/metrics", timeout=30).text
            assert names.count("sentinel_train_job_info{") == JOBS
            figures["ordinary"] = rss.peak()
            # 2. 16 parallel /api/v1/steps readers of full rings.
            rss.reset()
            jobs = sorted({m for m in re.findall(r'job="(job[^"]+)"', names)})
            n_req, n_bytes = _steps_flood(agent.url, jobs, STEPS_FLOOD_S)
            figures["steps"] = rss.peak()
            # 3. 7 KB host strings, for HOST_FLOOD_S (the 2.3 GB took 10 s; these
            #    are refused, so RSS does not move: 5 s shows it).
            rss.reset()
            sent_host = _flood(agent.socket_path, _prefixes("h" * 7000, job_len=40), 10**6,
                               HOST_FLOOD_S)
            figures["host"] = rss.peak()
            hwm = status_kib(pid, "VmHWM")
        finally:
            rss.stop()
        assert agent.proc.poll() is None, agent.log()[-2000:]
        health = requests.get(f"{agent.url}/healthz", timeout=10)
    mib = {k: round(v / 1024, 1) for k, v in figures.items()}
    print(f"\nPROBE RSS MiB: start {mib['start']}, ordinary datagrams ({sent} sent) "
          f"{mib['ordinary']} (in {took:.0f} s), {STEPS_CLIENTS} parallel /api/v1/steps "
          f"({n_req} answers, {n_bytes / 2**20:.0f} MiB) {mib['steps']}, 7 KB hosts "
          f"({sent_host} sent) {mib['host']}; peak VmHWM {hwm / 1024:.1f} MiB; "
          f"MemoryMax {limit // 1024} MiB")
    assert health.status_code == 200
    assert hwm < limit, f"peak RSS {hwm} KiB >= MemoryMax {limit} KiB: {mib}"
