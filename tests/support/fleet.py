"""A small GPU fleet for integration tests: real agents, one per hostname, fed by Reporters.

Each node is a real ``sentinel agent`` process serving GPUs replayed from the captured
H100 dump (copied per GPU with its own UUID, optionally with an XID event or hardware
throttling) under its own hostname, and one process runs a real ``Reporter`` per node,
sending steps to that node's agent at a set number of tokens per step (and a NaN loss
where asked).
"""

from __future__ import annotations

import contextlib
import copy
import json
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sentinel.gpu.nvml_replay import H100_LOAD
from tests.support.agent import Agent, run_agent
from tests.support.services import stop

ROOT = Path(__file__).resolve().parents[2]
FIXTURE = H100_LOAD
HW_SLOWDOWN = 0x8  # NVML's clocks-event bit for hardware slowdown

# Steps every STEP_S seconds for every node, each node with its own Reporter (rank 0 of
# its share of the job) and its own agent socket.
REPORTER = textwrap.dedent(
    """
    import json, sys, time
    from sentinel.train import Reporter
    job, step_s, nodes = sys.argv[1], float(sys.argv[2]), json.loads(sys.argv[3])
    reps = [(Reporter(job=job, rank=i, socket_path=n["socket"], host=n["hostname"]),
             n["tokens"], n["nan_loss"]) for i, n in enumerate(nodes)]
    step = 0
    while True:
        for rep, tokens, nan_loss in reps:
            loss = float("nan") if nan_loss else 3.0 - step * 1e-4
            rep.step(step, loss=loss, tokens=tokens, grad_norm=1.0, samples=4)
        step += 1
        time.sleep(step_s)
    """
)


@dataclass
class Node:
    """One simulated node: its hostname, its training speed and its GPU problems."""

    hostname: str
    tokens_per_step: int = 1000
    xid: tuple[int, int] | None = None  # (GPU index, XID) delivered once at start
    throttled_gpu: int | None = None  # GPU index with hardware slowdown active
    nan_loss: bool = False  # every step reports a NaN loss


def node_dump(node: Node, gpus: int, base: dict[str, Any] | None = None) -> dict[str, Any]:
    """Return an NVML dump for ``node``: ``gpus`` copies of the captured H100, renamed."""
    base = base or json.loads(FIXTURE.read_text())
    dump = copy.deepcopy(base)
    template = base["devices"][0]
    devices = []
    for i in range(gpus):
        dev = copy.deepcopy(template)
        dev["index"] = dev["minor_number"] = i
        dev["uuid"] = f"GPU-{node.hostname}-{i}"
        dev["serial"] = f"{node.hostname}-{i}"
        bus = f"00000000:{0x18 + i * 0x10:02x}:00.0"
        dev["pci_info"] = {**dev["pci_info"], "busId": bus, "bus": 0x18 + i * 0x10,
                           "busIdLegacy": bus[4:]}
        if node.throttled_gpu == i:
            dev["clocks_event_reasons"] = int(dev["clocks_event_reasons"]) | HW_SLOWDOWN
        devices.append(dev)
    dump["devices"] = devices
    dump["device_count"] = gpus
    if node.xid is not None:
        gpu, xid = node.xid
        dump["xid_events"] = [{"uuid": devices[gpu]["uuid"], "xid": xid}]
    return dump


@dataclass
class Fleet:
    """Running agents, by hostname, and the Reporter process feeding them."""

    agents: dict[str, Agent]
    reporter: subprocess.Popen[Any]

    def hostport(self, hostname: str) -> str:
        """Return where to scrape the agent of ``hostname``."""
        return self.agents[hostname].hostport


@contextlib.contextmanager
def run_fleet(tmp: Path, nodes: list[Node], *, job: str, gpus: int = 2,
              rate_window_s: float = 3.0, step_s: float = 0.1) -> Iterator[Fleet]:
    """Start one agent per node and one Reporter process sending every node's steps."""
    base = json.loads(FIXTURE.read_text())
    with contextlib.ExitStack() as stack:
        agents: dict[str, Agent] = {}
        for node in nodes:
            d = tmp / node.hostname
            d.mkdir(parents=True, exist_ok=True)
            replay = d / "nvml.json"
            replay.write_text(json.dumps(node_dump(node, gpus, base)))
            agents[node.hostname] = stack.enter_context(run_agent(
                d, ["--gpu-replay", str(replay)],
                env={"SENTINEL_AGENT_HOSTNAME": node.hostname,
                     "SENTINEL_AGENT_RATE_WINDOW_SECONDS": str(rate_window_s)}))
        spec = [{"socket": agents[n.hostname].socket_path, "hostname": n.hostname,
                 "tokens": n.tokens_per_step, "nan_loss": n.nan_loss} for n in nodes]
        reporter = subprocess.Popen(
            [sys.executable, "-c", REPORTER, job, str(step_s), json.dumps(spec)], cwd=ROOT)
        try:
            yield Fleet(agents=agents, reporter=reporter)
        finally:
            stop(reporter)
