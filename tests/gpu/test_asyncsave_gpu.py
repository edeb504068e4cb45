"""AsyncCheckpointer on a real GPU: pinned buffers, the side-stream copy and fence()."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


def test_overlapped_snapshot_is_the_state_at_save_even_as_training_goes_on(tmp_path):
    from sentinel.train.asyncsave import AsyncCheckpointer
    from sentinel.train.checkpoint import CheckpointStore

    torch.manual_seed(0)
    model = torch.nn.Linear(4096, 4096, device="cuda")
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    store = CheckpointStore(tmp_path)
    ck = AsyncCheckpointer(store, ram_budget_bytes=1 << 30, overlap=True)
    for step in range(3):
        x = torch.randn(64, 4096, device="cuda")
        model(x).square().mean().backward()
        if step == 2:
            expected = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
            stats = ck.save(step, {"model": model.state_dict(), "opt": opt.state_dict()})
            assert stats.blocked_s < 0.2 and not stats.staged  # the default: host path
        ck.fence()  # before the optimizer changes the weights
        opt.step()
        opt.zero_grad()
    ck.wait()
    saved = store.load(2)["model"]
    assert all(torch.equal(saved[k], expected[k]) for k in expected)
    assert not torch.equal(model.weight.detach().cpu(), expected["weight"])  # it trained on
    held = ck.get(2, store.info(2), map_location="cuda")
    assert held["model"]["weight"].is_cuda
    assert torch.equal(held["model"]["weight"].cpu(), expected["weight"])
    assert ck._held[2].buffers.tensors[0].is_pinned()
    ck.close()


def _train(model, opt, steps):
    for _ in range(steps):
        x = torch.randn(64, 4096, device="cuda")
        model(x).square().mean().backward()
        opt.step()
        opt.zero_grad()


def test_gpu_staged_snapshots_are_the_state_at_each_save_while_training_goes_on(tmp_path):
    from sentinel.train.asyncsave import AsyncCheckpointer
    from sentinel.train.checkpoint import CheckpointStore

    torch.manual_seed(0)
    model = torch.nn.Linear(4096, 4096, device="cuda")
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    _train(model, opt, 1)  # the optimizer has its moments: they are saved too
    store = CheckpointStore(tmp_path, keep=10)
    ck = AsyncCheckpointer(store, ram_budget_bytes=4 << 30, overlap=True, stage="gpu",
                           gpu_budget_bytes=1 << 30,
                           when_behind="wait")
    expected, staging = {}, []
    for step in (10, 11, 12):  # back to back: each copy into the one staging set is
        # queued behind the previous drain, never over it
        expected[step] = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        expected[step]["exp_avg"] = opt.state[model.weight]["exp_avg"].cpu().clone()
        stats = ck.save(step, {"model": model.state_dict(), "opt": opt.state_dict()})
        assert stats.staged and stats.blocked_s < 0.5
        staging.append(ck._staging)
        x = torch.randn(64, 4096, device="cuda")
        model(x).square().mean().backward()
        ck.fence()  # the loop waits for the device-to-device copy only
        opt.step()  # changes weights and moments while the drain may still run
        opt.zero_grad()
        with torch.no_grad():
            model.weight.add_(1.0)  # and more, to be sure nothing later leaks in
    assert staging[0] is staging[1] is staging[2]  # one reused set
    # Weight and bias, and their two AdamW moments: every CUDA tensor, once.
    assert ck.staging_bytes() == 3 * (4096 * 4096 + 4096) * 4
    ck.wait()
    for step, exp in expected.items():
        saved = store.load(step)
        assert torch.equal(saved["model"]["weight"], exp["weight"]), step
        assert torch.equal(saved["model"]["bias"], exp["bias"]), step
        moments = saved["opt"]["state"][0]["exp_avg"]
        assert torch.equal(moments, exp["exp_avg"]), step
    held = ck.get(12, store.info(12), map_location="cuda")
    assert torch.equal(held["model"]["weight"].cpu(), expected[12]["weight"])
    assert ck._held[12].buffers.tensors[0].is_pinned()
    ck.close()


def test_staging_follows_the_budget_and_gpu_insists(tmp_path):
    from sentinel.train.asyncsave import AsyncCheckpointer
    from sentinel.train.checkpoint import CheckpointError, CheckpointStore

    w = torch.full((1 << 20,), 3.0, device="cuda")
    store = CheckpointStore(tmp_path, keep=10)
    ck = AsyncCheckpointer(store, overlap=True, stage="auto", gpu_budget_bytes=1 << 10)
    st = ck.save(1, {"w": w})  # 4 MiB > the 1 KiB budget: straight to host
    assert not st.staged and ck.staging_bytes() == 0
    ck.fence()
    w.fill_(4.0)
    ck.wait()
    assert torch.equal(store.load(1)["w"], torch.full((1 << 20,), 3.0))
    ck.close()
    ck = AsyncCheckpointer(store, overlap=True, stage="gpu", gpu_budget_bytes=1 << 10)
    with pytest.raises(CheckpointError, match="stage='gpu': cannot stage"):
        ck.save(2, {"w": w})
    ck.gpu_budget = None
    st = ck.save(2, {"w": w})  # the buffers of the refused save were given back
    assert st.staged and ck.held_bytes() == 4 << 20
    ck.wait()
    assert torch.equal(store.load(2)["w"], torch.full((1 << 20,), 4.0))
    ck.close()
