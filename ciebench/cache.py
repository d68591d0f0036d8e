"""Where ciebench keeps what it downloads or computes once: the single cache-root rule."""
from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    """$CIEBENCH_CACHE when set and non-empty, else ~/.cache/ciebench. Read at call time, so tests and
    users can set it late."""
    value = os.environ.get("CIEBENCH_CACHE", "").strip()
    return Path(value) if value else Path.home() / ".cache" / "ciebench"
