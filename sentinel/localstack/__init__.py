"""Real services on this machine for ``sentinel demo`` and the tests: started here, stopped by PID.

- :mod:`~sentinel.localstack.procs`: free ports, waiting for a URL, stopping a process;
  :class:`~sentinel.localstack.procs.Unavailable` says which tool is missing and how to
  install it (the tests turn it into a skip, or a failure in CI);
- :mod:`~sentinel.localstack.prometheus`: Prometheus and Alertmanager on 127.0.0.1;
- :mod:`~sentinel.localstack.slurm`: a Slurm cluster on 127.0.0.1 (its own munged,
  slurmctld, one slurmd per node), the recipe of /work/shared/LOCAL-STACK.md.

Daemons start in sessions of their own, so a Ctrl-C in the terminal reaches only the
process that started them, which stops them in order. A shared module below the parts:
it imports none of them.
"""
