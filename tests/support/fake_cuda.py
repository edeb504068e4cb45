"""A stand-in ``torch.cuda`` over real CPU tensors, so burn-in code runs without a GPU.

Every CUDA device maps to the CPU; "CUDA events" are timed with the host clock. The
runner, the memory test, the copies between GPUs, the result check, the sampler and the
verdict then run their real code: only what needs a GPU is replaced. Knobs make a GPU
hang (its events never complete), report little free memory, or corrupt copies.
"""

from __future__ import annotations

import time
import types
from typing import Any

import torch

H100_NAME = "NVIDIA H100 80GB HBM3"


class FakeEvent:
    """A CUDA event timed with the host clock; a hung one never completes."""

    def __init__(self, enable_timing: bool = False, hung: bool = False) -> None:
        self.t: float | None = None
        self.hung = hung

    def record(self, stream: Any = None) -> None:
        """Note the time."""
        self.t = time.monotonic()

    def query(self) -> bool:
        """Return True unless hung."""
        return not self.hung

    def elapsed_time(self, end: FakeEvent) -> float:
        """Return milliseconds between this event and ``end``."""
        assert self.t is not None and end.t is not None
        return (end.t - self.t) * 1000.0


class _Null:
    def __enter__(self) -> _Null:
        return self

    def __exit__(self, *exc: object) -> bool:
        return False


def _stream(device: Any = None, priority: int = 0) -> Any:
    return types.SimpleNamespace(synchronize=lambda: None, priority=priority)


class FakeTorch:
    """Real torch for tensors; ``torch.cuda`` answers as for ``gpus`` GPUs mapped to the CPU."""

    def __init__(self, uuids: list[str] | str, *, name: str = H100_NAME, hung: bool = False,
                 free_bytes: int = 1 << 20, corrupt_copies: bool = False,
                 hang_copies: bool = False) -> None:
        self.uuids = [uuids] if isinstance(uuids, str) else list(uuids)
        self.hung = hung
        self.hang_copies = hang_copies
        self.corrupt_copies = corrupt_copies
        self.streams: list[Any] = []
        self.cuda = types.SimpleNamespace(
            device_count=lambda: len(self.uuids),
            get_device_properties=lambda i: types.SimpleNamespace(name=name,
                                                                  uuid=self.uuids[i]),
            set_device=lambda d: None,
            Stream=self._new_stream,
            stream=lambda s: _Null(),
            device=lambda d: _Null(),
            current_stream=lambda d=None: _stream(d),
            Event=self._event,
            mem_get_info=lambda d: (free_bytes, 2 * free_bytes),
            empty_cache=lambda: None,
            can_device_access_peer=lambda a, b: True,
        )
        self.backends = types.SimpleNamespace(
            cuda=types.SimpleNamespace(matmul=types.SimpleNamespace(allow_tf32=True)))
        self._copying = False

    def _new_stream(self, device: Any = None, priority: int = 0) -> Any:
        s = _stream(device, priority)
        self.streams.append(s)
        return s

    def _event(self, enable_timing: bool = False) -> FakeEvent:
        return FakeEvent(enable_timing, hung=self.hung or (self.hang_copies and self._copying))

    def device(self, *_a: Any) -> Any:
        """Map every device to the CPU."""
        return torch.device("cpu")

    def empty(self, *a: Any, **kw: Any) -> Any:
        """Allocate on the CPU; with ``corrupt_copies`` a copy into the buffer flips a word."""
        t = torch.empty(*a, **kw)
        if self.corrupt_copies or self.hang_copies:
            orig = t.copy_

            def copy_(src: Any, non_blocking: bool = False) -> Any:
                self._copying = True
                orig(src)
                if self.corrupt_copies:
                    t.view(-1)[-1] ^= 1 << 20
                return t

            t.copy_ = copy_
        return t

    def __getattr__(self, name: str) -> Any:
        return getattr(torch, name)
