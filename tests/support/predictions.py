"""Prediction folders for scoring tests: the `mini` sources saved unchanged as `<id>.png`."""
from __future__ import annotations

from pathlib import Path


def identity_predictions(folder: Path, n: int) -> list[dict]:
    """Write the first `n` mini sources into `folder` (created) as predictions; return those rows."""
    import ciebench

    folder.mkdir(parents=True, exist_ok=True)
    rows = list(ciebench.load_dataset("mini"))[:n]
    for row in rows:
        row["image"].convert("RGB").save(folder / f"{row['id']}.png")
    return rows
