"""Export ``*.prom`` files from a directory (burn-in results), like node_exporter's textfile."""

from __future__ import annotations

import logging
from pathlib import Path

from sentinel.agent.collectors.base import Collector, Context
from sentinel.exposition import GaugeMetricFamily, MetricFamily, parse

log = logging.getLogger(__name__)

# A results file is a few KB; anything far larger is a mistake, not data to load.
MAX_FILE_BYTES = 1 << 20
# Families the agent itself exports; a textfile may not shadow them.
RESERVED_PREFIXES = ("sentinel_collector_", "sentinel_agent_", "sentinel_textfile_")


class TextfileCollector(Collector):
    """Parse every *.prom file; a bad one is skipped and makes success 0."""

    name = "textfile"

    def __init__(self, ctx: Context) -> None:
        super().__init__(ctx)
        self.dir = Path(ctx.config.textfile_dir) if ctx.config.textfile_dir else None
        self.errors: dict[str, str] = {}

    def _parse(self, path: Path) -> list[MetricFamily]:
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            raise ValueError(f"{size} bytes is larger than the {MAX_FILE_BYTES} allowed")
        text = path.read_text(encoding="utf-8")
        fams = parse(text)
        for f in fams:
            if f.name.startswith(RESERVED_PREFIXES):
                raise ValueError(f"metric {f.name} is reserved for the agent itself")
        return fams

    def collect(self) -> list[MetricFamily]:
        """Read the directory and return the merged families plus per-file mtimes."""
        if self.dir is None:
            self.success = True
            return []
        merged: dict[str, MetricFamily] = {}
        mtime = GaugeMetricFamily(
            "sentinel_textfile_mtime_seconds",
            "Modification time of each textfile that was read successfully.",
            labels=["file"],
        )
        errors: dict[str, str] = {}
        try:
            paths = sorted(self.dir.glob("*.prom"))
        except OSError as e:
            raise RuntimeError(f"textfile dir {self.dir}: {e}") from e
        for path in paths:
            try:
                fams = self._parse(path)
                for f in fams:
                    have = merged.get(f.name)
                    if have is not None and have.type != f.type:
                        raise ValueError(
                            f"metric {f.name} is a {f.type} here but a {have.type} in another file"
                        )
                st = path.stat()
            except (OSError, ValueError, UnicodeDecodeError) as e:
                errors[path.name] = str(e)
                continue
            for f in fams:
                if f.name in merged:
                    merged[f.name].samples.extend(f.samples)
                else:
                    merged[f.name] = f
            mtime.add_metric([path.name], st.st_mtime)
        for name, err in errors.items():
            if self.errors.get(name) != err:
                log.warning("textfile %s skipped: %s", self.dir / name, err)
        self.errors = errors
        self.success = not errors
        return [*merged.values(), mtime]
