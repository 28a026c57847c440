"""Where banditspec keeps what it builds on first use: converted checkpoints and assembled drafts."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    root = os.environ.get("BANDITSPEC_CACHE") or Path.home() / ".cache" / "banditspec"
    return Path(root)
