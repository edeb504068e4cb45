"""Metrics flowing, Prometheus side: every agent target of the scrape job is up.

One instant query, ``up{job="<preflight.agent_scrape_job>"}``: no target at all means
the scrape config (file_sd from ``sentinel deploy file-sd``) is not loaded; a target at
0 is an agent Prometheus cannot scrape. A second query catches the usual deployment
mistake: training series scraped without ``honor_labels: true`` carry the training job
in ``exported_job``, and every alert and dashboard keyed on ``job`` misses them.
"""

from __future__ import annotations

from sentinel.preflight.checks.base import Context
from sentinel.preflight.report import Result, ok, problem, skipped

TITLE = "Prometheus scrapes the agents"
# The query may wait on a busy Prometheus, not on a dead one.
QUERY_TIMEOUT_S = 10.0
# Names shown in the summary; the evidence lists every target.
SHOW = 5


def check(ctx: Context) -> Result:
    """Ask Prometheus whether it scrapes every agent, with the training job label kept."""
    from sentinel.rules.sources import PrometheusSource, SourceError

    s = ctx.setup
    url = s.prometheus_url()
    if not url:
        return skipped("no Prometheus configured (controller.prometheus_url, "
                       "preflight.prometheus_url or --prometheus-url)")
    job = s.preflight.agent_scrape_job
    prom = PrometheusSource(url, timeout=QUERY_TIMEOUT_S)
    try:
        up = prom.instant(f'up{{job="{job}"}}')
        renamed = prom.instant(f'count by (instance) (sentinel_train_rank_info{{job="{job}", '
                               'exported_job!=""})')
    except SourceError as e:
        return problem(f"Prometheus did not answer: {e}", prometheus=url)
    targets = {labels.get("instance", "?"): v for labels, v in up}
    ev = {"prometheus": url, "scrape_job": job, "targets": dict(sorted(targets.items()))}
    if not targets:
        return problem(f"Prometheus has no target in scrape job {job!r}: load "
                       "deploy/prometheus/prometheus.yml and its file_sd targets "
                       "(sentinel deploy file-sd)", **ev)
    down = sorted(i for i, v in targets.items() if v != 1)
    if down:
        more = f" and {len(down) - SHOW} more" if len(down) > SHOW else ""
        return problem(f"{len(down)} of {len(targets)} agent(s) down: "
                       f"{', '.join(down[:SHOW])}{more} (is sentinel-agent running there, "
                       "listening on an address Prometheus reaches?)", down=down, **ev)
    if renamed:
        where = sorted(labels.get("instance", "?") for labels, _v in renamed)
        return problem(f"training series of {', '.join(where[:SHOW])} carry exported_job: "
                       f"scrape job {job!r} lacks honor_labels: true", **ev)
    return ok(f"{len(targets)} agent target(s) up in scrape job {job!r}", **ev)
