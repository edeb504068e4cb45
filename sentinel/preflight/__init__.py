"""``sentinel preflight``: the pre-flight checklist of a training job, automated.

An application (like ``sentinel/cli.py``): it wires parts together, the controller's
Slurm client and spare pool included. ``cli.py`` parses flags, ``config.py`` loads
every config section and ``preflight:``, ``checks/`` holds one module per check,
``runner.py`` runs them in order and ``report.py`` says what they found.
"""
