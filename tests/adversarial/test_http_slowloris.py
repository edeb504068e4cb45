"""Issue 13, agent item 3: slow HTTP clients cannot lock Prometheus out of /metrics.

32 clients trickling bytes held every connection slot (0 of 120 scrapes succeeded in
60 s) and 20 clients that never read their answer failed 19 of 80. Here a real agent
process is attacked by both at once for ``ATTACK_S`` while a real Prometheus scrapes it
every second and a plain client scrapes it on fresh connections; both must succeed.
Prometheus keeps its connection alive between scrapes at this interval, so it starts
under the attack (its first connection must get in); the plain client reconnects for
every scrape, which is what Prometheus does at intervals longer than the agent keeps an
idle connection (the usual 15 s or more).
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import requests

from sentinel.train.reporter import Reporter
from tests.support.agent import run_agent
from tests.support.services import run_prometheus

pytestmark = [pytest.mark.adversarial, pytest.mark.integration]

ROOT = Path(__file__).resolve().parents[2]
ATTACK_S = 15.0
# Required share of successful scrapes while the attack runs. Not 100%: this 2-core VM
# is shared with other test runs, and one late scrape out of twenty is noise, while the
# attack on the old server made every scrape fail.
MIN_SUCCESS = 0.95


def _scrape_loop(url: str, stop: threading.Event, results: list[tuple[bool, float]]) -> None:
    """Scrape on a fresh connection every 0.25 s with Prometheus's 10 s default timeout."""
    while not stop.is_set():
        t0 = time.monotonic()
        try:
            r = requests.get(url, timeout=10, headers={"Connection": "close"})
            ok = r.status_code == 200 and b"sentinel_agent_info" in r.content
        except requests.RequestException:
            ok = False
        results.append((ok, time.monotonic() - t0))
        stop.wait(0.25)


def test_scrapes_succeed_while_slow_clients_attack(tmp_path):
    with run_agent(tmp_path / "agent", ["--no-collector.gpu", "--no-collector.disk"]) as agent:
        rep = Reporter(job="big", socket_path=agent.socket_path)
        for i in range(3000):  # a ring worth answering at length to the never-readers
            rep.step(i, loss=2.0, tokens=4096, grad_norm=1.0)
            if i % 8 == 0:
                time.sleep(0.0005)
        attack = subprocess.Popen(
            [sys.executable, "-m", "tests.adversarial.attackers", agent.hostport,
             "--tricklers", "32", "--never-read", "20", "--seconds", str(ATTACK_S + 12),
             "--path", "/api/v1/steps?job=big&since=0"],
            cwd=ROOT, stdout=subprocess.PIPE, text=True)
        try:
            time.sleep(2.0)  # every attacker connected and holding its connection
            # Prometheus starts under attack: its first connection must get in too.
            with run_prometheus(tmp_path / "prom", [agent.hostport]) as prom:
                stop = threading.Event()
                results: list[tuple[bool, float]] = []
                t = threading.Thread(target=_scrape_loop,
                                     args=(f"{agent.url}/metrics", stop, results))
                t.start()
                time.sleep(ATTACK_S)
                stop.set()
                t.join(15)
                at = time.time()
                window = f"{ATTACK_S + 5:.0f}s"  # reaches back before Prometheus started
                total = prom.query(f'count_over_time(up{{job="sentinel-agent"}}[{window}])', at)
                good = prom.query(f'sum_over_time(up{{job="sentinel-agent"}}[{window}])', at)
                slowest = prom.query('max_over_time(scrape_duration_seconds'
                                     f'{{job="sentinel-agent"}}[{window}])', at)
            attack.terminate()  # it prints what it saw and exits
            out, _ = attack.communicate(timeout=30)
        finally:
            if attack.poll() is None:
                attack.kill()
                attack.wait(10)
        cut = json.loads(out.strip().splitlines()[-1])
        assert agent.proc.poll() is None, agent.log()[-2000:]
    n_prom, ok_prom = float(total[0]["value"][1]), float(good[0]["value"][1])
    n_loop, ok_loop = len(results), sum(ok for ok, _ in results)
    worst = max(s for _, s in results)
    print(f"\nPROBE slowloris ({ATTACK_S:.0f} s, 32 tricklers + 20 never-readers): "
          f"Prometheus {ok_prom:.0f}/{n_prom:.0f} scrapes up (slowest "
          f"{float(slowest[0]['value'][1]) * 1000:.0f} ms); client {ok_loop}/{n_loop} "
          f"(slowest {worst * 1000:.0f} ms); attackers cut off: {cut}")
    assert n_prom >= ATTACK_S * 0.5, "Prometheus hardly scraped at all"
    assert ok_prom / n_prom >= MIN_SUCCESS
    assert n_loop >= ATTACK_S * 2 and ok_loop / n_loop >= MIN_SUCCESS
    # The attackers were really there: the server had to cut them off, repeatedly.
    assert cut["trickle"] >= 32 and cut["never"] >= 10
