"""Grafana dashboards for sentinel, generated from code (``sentinel dashboards generate``)."""
