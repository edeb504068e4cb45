"""Checkpoint writes skip torch's zip CRC32 (the sha256 covers the file) and restore it."""

from __future__ import annotations

import threading

import pytest

torch = pytest.importorskip("torch")
config = pytest.importorskip("torch.utils.serialization").config


def test_save_runs_without_zip_crc_and_restores_the_setting(tmp_path, monkeypatch):
    from sentinel.train import checkpoint as ck

    seen: list[bool] = []
    real = torch.save

    def spy(obj, f, *a, **kw):
        seen.append(config.save.compute_crc32)
        return real(obj, f, *a, **kw)

    monkeypatch.setattr(torch, "save", spy)
    store = ck.CheckpointStore(tmp_path)
    assert config.save.compute_crc32 is True
    store.save(1, {"w": torch.arange(1000.0)})
    assert seen == [False]
    assert config.save.compute_crc32 is True  # the setting is back
    assert torch.equal(store.load(1)["w"], torch.arange(1000.0))  # loads, sha256 checked
    store.save(2, {"w": torch.arange(10.0)})
    with pytest.raises(Exception, match="sha256|size"):  # a flipped byte is still caught
        path = tmp_path / store.info(2).file
        data = bytearray(path.read_bytes())
        data[-200] ^= 0xFF
        path.write_bytes(bytes(data))
        store.load(2)


def test_a_background_save_leaves_the_loop_threads_crc_alone():
    from sentinel.train.checkpoint import _no_zip_crc

    inside, leave = threading.Event(), threading.Event()
    seen: list[bool] = []

    def writer():
        with _no_zip_crc():
            seen.append(config.save.compute_crc32)
            inside.set()
            leave.wait(5)

    t = threading.Thread(target=writer)
    t.start()
    assert inside.wait(5)
    assert config.save.compute_crc32 is True  # the loop's own torch.save keeps its CRC
    leave.set()
    t.join(5)
    assert seen == [False]
