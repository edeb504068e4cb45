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
            assert stats.blocked_s < 0.2
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
