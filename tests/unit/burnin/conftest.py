import json
from pathlib import Path

import pytest

from sentinel.burnin.records import GpuRecord

FIXTURES = Path(__file__).with_name("fixtures")


@pytest.fixture
def node_records() -> list[GpuRecord]:
    data = json.loads((FIXTURES / "h100_node.json").read_text())
    return [GpuRecord.from_dict(g) for g in data["gpus"]]
