"""hovle's cache folder: converted weights and generated datasets, never downloads."""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    """``$HOVLE_CACHE`` when set, else ``~/.cache/hovle``."""
    root = os.environ.get("HOVLE_CACHE")
    return Path(root).expanduser() if root else Path.home() / ".cache" / "hovle"
