"""sentinel.dashboards."""
