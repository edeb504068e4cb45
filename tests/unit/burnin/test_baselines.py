import json

import pytest

from sentinel.burnin.baselines import LinkFloor, link_floor, load_baselines, load_link_floors
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


def test_link_floors_per_model_kind_and_gpu_count(tmp_path):
    p = tmp_path / "b.yml"
    p.write_text("bf16: {X: 100}\ninterconnect:\n  about: notes\n  NVIDIA H200:\n"
                 "    nvlink: {copy_gbps: 350, allreduce_busbw_gbps: {'2': 300, '8': null},\n"
                 "             source: measured}\n    sys: {copy_gbps: null}\n")
    floors = load_link_floors(p)
    assert floors == {"NVIDIA H200": {
        "nvlink": LinkFloor(copy_gbps=350.0, allreduce_busbw_gbps={2: 300.0}, source="measured"),
        "sys": LinkFloor()}}
    assert link_floor(floors, "nvidia h200", "nvlink").copy_gbps == 350.0  # case-blind
    assert link_floor(floors, "NVIDIA H200", "pix") is None
    assert link_floor(floors, "NVIDIA L4", "nvlink") is None
    # A file without the section has no link floors (its TFLOPS floors still load).
    q = tmp_path / "c.json"
    q.write_text('{"bf16": {"X": 1}}')
    assert load_link_floors(q) == {} and load_baselines(q) == {"X": 1.0}


@pytest.mark.parametrize("text, match", [
    ("interconnect: [1]\n", "interconnect must map model names"),
    ("interconnect: {M: 5}\n", r"interconnect\.M: must map a link kind \(nvlink, pix"),
    ("interconnect: {M: {nvswitch: {}}}\n", "unknown link kind 'nvswitch'"),
    ("interconnect: {M: {nvlink: {copy_gbps: -1}}}\n", r"nvlink\.copy_gbps: -1 is not valid"),
    ("interconnect: {M: {nvlink: {copy: 5}}}\n", "unknown key 'copy'"),
    ("interconnect: {M: {nvlink: {allreduce_busbw_gbps: {one: 5}}}}\n",
     "key 'one' is not a GPU count"),
    ("interconnect: {M: {nvlink: {allreduce_busbw_gbps: 5}}}\n",
     "must map a GPU count"),
    ("interconnect: {M: {nvlink: {allreduce_busbw_gbps: {'2': fast}}}}\n",
     r"allreduce_busbw_gbps\.2: 'fast' is not valid"),
])
def test_bad_link_floors_say_what_is_wrong(tmp_path, text, match):
    p = tmp_path / "b.yaml"
    p.write_text(text)
    with pytest.raises(BurninConfigError, match=match):
        load_link_floors(p)


def test_shipped_link_floors_have_sources():
    from sentinel.burnin.baselines import SHIPPED

    data = json.loads(SHIPPED.read_text())["interconnect"]
    assert data["NVIDIA H200"]["nvlink"]["source"].startswith("measured 2026-11-29 on 2x")
    assert all(k["source"] for m in data.values() for k in m.values())
    assert "NVIDIA H200" in load_link_floors()
