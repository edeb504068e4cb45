import json

import pytest

from sentinel.burnin.baselines import load_baselines
from sentinel.burnin.config import BurninConfigError


def test_shipped_table_has_h100_and_sources():
    t = load_baselines()
    assert t["NVIDIA H100 80GB HBM3"] == 630.0
    from sentinel.burnin.baselines import SHIPPED

    data = json.loads(SHIPPED.read_text())
    assert all(e["source"] for e in data["bf16"].values())
    assert load_baselines(dtype="fp8") == {"NVIDIA H100 80GB HBM3": 1130.0}


def test_yaml_override(tmp_path):
    p = tmp_path / "b.yml"
    p.write_text("bf16:\n  NVIDIA H100 80GB HBM3: 700\n  NVIDIA L4:\n    floor_tflops: 90\n")
    assert load_baselines(p) == {"NVIDIA H100 80GB HBM3": 700.0, "NVIDIA L4": 90.0}


@pytest.mark.parametrize("text, match", [
    ("bf16:\n  X: -5\n", "bf16.X: floor -5 is not valid"),
    ("bf16:\n  X: fast\n", "a positive number of TFLOPS"),
    ("fp16:\n  X: 5\n", "unknown key 'fp16' \\(valid: bf16, fp8"),
    ("- 1\n- 2\n", "top level must map a dtype"),
    ("bf16: [1, 2]\n", "bf16 must map model names"),
    ("bf16: {\n", "not valid YAML"),
])
def test_bad_override_files_say_what_is_wrong(tmp_path, text, match):
    p = tmp_path / "b.yaml"
    p.write_text(text)
    with pytest.raises(BurninConfigError, match=match):
        load_baselines(p)


def test_missing_file(tmp_path):
    with pytest.raises(BurninConfigError, match="cannot read it"):
        load_baselines(tmp_path / "nope.json")
