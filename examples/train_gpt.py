#!/usr/bin/env python3
"""Train a small GPT with sentinel.train: the packaged example, ``sentinel.examples.gpt``.

Run from a checkout (``python examples/train_gpt.py --config tiny``) or, installed, as
``python -m sentinel.examples.gpt``; both take the same flags (``--help``).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout

from sentinel.examples.gpt import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
