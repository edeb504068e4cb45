"""``sentinel demo``: the whole loop on one machine with no GPU and no cluster.

A local Slurm cluster (4 nodes and a staged spare), a sentinel agent per node (replaying
a real H100's NVML), Prometheus, the controller in act mode and the real GPT example on
CPU (a rank per node, reporting through the Reporter). Three faults happen for real and
sentinel handles each: a corrupted shard (loss spike -> rollback to the last verified
checkpoint, bad batches skipped -> loss verified back on trend), an XID on a GPU
(spare swap on Slurm), slow storage (diagnosed as storage, told). It ends with a summary
and an incident report. The full-stack test (tests/integration/test_fullstack.py) runs
the same scenario and asserts on its outcome.

Modules: ``story`` (the numbers), ``stack`` (start/stop the parts), ``storage`` (the
slowed-storage rig), ``scenario`` (the episodes), ``watch`` (what it reads), ``view``
(the terminal), ``report`` (summary and report), ``cli`` (the command).
"""

from sentinel.gpu.nvml_replay import H100_LOAD

# Without NVML the agents replay this captured H100 dump (package data).
REPLAY = H100_LOAD
