"""Put a checkpoint into a store by hand, as another tool or sentinel version would."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

import torch


def record_by_hand(store_dir: Path, step: int, state: dict[str, Any]) -> None:
    """Write ``state`` for ``step`` with plain torch.save and record it in the manifest.

    ``CheckpointStore.save`` refuses state that ``torch.load(weights_only=True)`` cannot
    read back; this is how such a checkpoint still reaches a store (an older writer).
    """
    name = f"step_{step:09d}.pt"
    f = store_dir / name
    torch.save({"sentinel_step": step, "state": state}, f)
    data = f.read_bytes()
    manifest_path = store_dir / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["checkpoints"] = [c for c in manifest["checkpoints"] if c["step"] != step]
    manifest["checkpoints"].append({"step": step, "file": name, "size": len(data),
                                    "sha256": hashlib.sha256(data).hexdigest(),
                                    "time": time.time(), "abandoned": None})
    manifest["checkpoints"].sort(key=lambda c: c["step"])
    manifest_path.write_text(json.dumps(manifest))
