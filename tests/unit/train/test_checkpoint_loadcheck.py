"""The write's load check runs only where a state's types cannot vouch for weights_only."""

from __future__ import annotations

import collections
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from sentinel.train import checkpoint as ck  # noqa: E402
from sentinel.train.checkpoint import CheckpointError, CheckpointStore  # noqa: E402
from sentinel.train.data import DataPosition  # noqa: E402


class Tagged(dict):
    """A dict subclass: weights_only has no GLOBAL for it."""


def _spy(monkeypatch) -> list[int]:
    calls: list[int] = []
    real = CheckpointStore._check_loadable

    def spy(self, step, path, state):
        calls.append(step)
        return real(self, step, path, state)

    monkeypatch.setattr(CheckpointStore, "_check_loadable", spy)
    return calls


def test_a_training_state_is_vouched_for_and_its_file_loads(tmp_path, monkeypatch):
    model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.LayerNorm(8))
    opt = torch.optim.AdamW(model.parameters())
    model(torch.randn(2, 8)).sum().backward()
    opt.step()
    state = ck.training_state(model, opt, None, DataPosition(3), {"note": "x", "n": 1})
    assert ck._surely_loadable(state)  # rng, AdamW's state, OrderedDict state_dict...
    calls = _spy(monkeypatch)
    store = CheckpointStore(tmp_path)
    store.save(3, state)
    assert calls == []  # no load back: the types vouch for it
    loaded = CheckpointStore.deserialize(store.read_verified(3))  # weights_only=True
    assert torch.equal(loaded["model"]["0.weight"], model[0].weight.detach())


@pytest.mark.parametrize("value", [
    Tagged(a=1), {1, 2}, np.float64(0.5), torch.nn.Parameter(torch.ones(2)),
    b"raw", 1j, torch.Size([2]), collections.Counter(a=1),
])
def test_anything_else_is_loaded_back(tmp_path, monkeypatch, value):
    calls = _spy(monkeypatch)
    state = {"w": torch.ones(4), "odd": [value]}
    assert not ck._surely_loadable(state)
    try:
        CheckpointStore(tmp_path).save(5, state)
    except CheckpointError as e:
        assert "torch.load(weights_only=True) could not read it back" in str(e)
    assert calls == [5]


def test_a_refused_value_is_still_refused(tmp_path):
    with pytest.raises(CheckpointError, match=r"state\['lr'\], a numpy.float64"):
        CheckpointStore(tmp_path).save(1, {"w": torch.ones(2), "lr": np.float64(0.1)})
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(("step_", ".step_"))]


def test_shared_or_cyclic_containers_are_left_to_the_load(tmp_path):
    shared = [1, 2]
    assert not ck._surely_loadable({"a": shared, "b": shared})
    cyclic: list = []
    cyclic.append(cyclic)
    assert not ck._surely_loadable({"c": cyclic})
    t = torch.ones(2)
    t.tag = "x"  # an attribute is pickled with the tensor
    assert not ck._surely_loadable({"t": t})
    with warnings.catch_warnings():  # quantized tensors are deprecated; still refused
        warnings.simplefilter("ignore")
        q = torch.quantize_per_tensor(torch.ones(2), 0.1, 0, torch.qint8)
    assert not ck._surely_loadable({"q": q})


def test_every_kind_the_walk_vouches_for_loads_with_weights_only(tmp_path, monkeypatch):
    calls = _spy(monkeypatch)
    state = {
        "tensors": [torch.ones(3, dtype=d) for d in ck._sure_dtypes()],
        "views": (torch.arange(10.0)[2:7], torch.ones(4, 4).t(), torch.zeros(0)),
        "plain": [None, True, 0, -(2 ** 70), 1.5, float("nan"), float("inf"), "é✓", ""],
        "nested": collections.OrderedDict(a=({}, [], ()), b={7: {"x": (1, (2, [3]), ())}}),
        3: "an int key",
    }
    assert ck._surely_loadable(state)
    store = CheckpointStore(tmp_path)
    store.save(9, state)
    assert calls == []
    got = CheckpointStore.deserialize(store.read_verified(9))
    assert [t.dtype for t in got["tensors"]] == [t.dtype for t in state["tensors"]]
    assert torch.equal(got["views"][1], torch.ones(4, 4).t())
    assert got["plain"][3] == -(2 ** 70) and got["plain"][7] == "é✓"
    assert got["nested"]["b"] == {7: {"x": (1, (2, [3]), ())}} and got[3] == "an int key"


def test_load_check_always_loads_every_file_and_must_be_known(tmp_path, monkeypatch):
    calls = _spy(monkeypatch)
    CheckpointStore(tmp_path, load_check="always").save(2, {"w": torch.ones(2)})
    assert calls == [2]
    with pytest.raises(ValueError, match="load_check must be one of auto, always, got 'no'"):
        CheckpointStore(tmp_path, load_check="no")
