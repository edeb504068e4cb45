"""The controller: findings -> policy -> journaled actions -> verification -> people.

``sentinel controller run`` is a daemon on one host of the cluster. Each cycle it runs the
rules engine, gives every new or changed finding to :func:`sentinel.controller.policy.decide`
(a pure function), journals the decision and the intent, runs the chosen action's steps
(each journaled before and after, so a controller killed at any moment resumes and never
acts twice), verifies the outcome and tells people (one Slack thread per incident).

Only ``sentinel/cli.py`` imports this package. It may import ``sentinel.rules``,
``sentinel.notify``, the request side of ``sentinel.train``, burn-in's report format and
the shared modules; nothing imports it back (tests/unit/test_imports.py).
"""
