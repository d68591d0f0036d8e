"""Tiny random-weight models saved into a temporary Hugging Face hub cache, so the product's real
`from_pretrained("<org>/<name>")` code path runs with HF_HUB_OFFLINE=1 and no network.

    path = publish("openai/clip-vit-large-patch14-336", lambda d: model.save_pretrained(d))

writes `$HF_HUB_CACHE/models--openai--clip-vit-large-patch14-336/snapshots/<rev>/` and `refs/main`.
Publishing is idempotent within a test session (the session shares one cache, see conftest.py).
"""
from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Callable

_lock = threading.Lock()


def hub_cache() -> Path:
    return Path(os.environ["HF_HUB_CACHE"])


def snapshot_dir(repo_id: str, repo_type: str = "model") -> Path:
    folder = f"{repo_type}s--" + repo_id.replace("/", "--")
    rev = hashlib.sha1(repo_id.encode()).hexdigest()
    return hub_cache() / folder / "snapshots" / rev


def point_main(repo_id: str, commit: str, cache: Path | None = None) -> None:
    """`repo_id`'s main resolving to `commit` (an empty snapshot) in `cache` (default: the session's hub
    cache), in the layout huggingface_hub writes: what a cache holds after main moved on the hub."""
    folder = (cache or hub_cache()) / ("models--" + repo_id.replace("/", "--"))
    (folder / "snapshots" / commit).mkdir(parents=True, exist_ok=True)
    (folder / "refs").mkdir(exist_ok=True)
    (folder / "refs" / "main").write_text(commit)


def publish(repo_id: str, save: Callable[[Path], None], repo_type: str = "model") -> Path:
    """Run `save(dir)` once for `repo_id` and place the files as the hub cache's snapshot of `main`."""
    snap = snapshot_dir(repo_id, repo_type)
    with _lock:
        if snap.exists():
            return snap
        tmp = Path(tempfile.mkdtemp(dir=hub_cache()))
        try:
            save(tmp)
            snap.parent.mkdir(parents=True, exist_ok=True)
            tmp.rename(snap)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        refs = snap.parent.parent / "refs"
        refs.mkdir(parents=True, exist_ok=True)
        (refs / "main").write_text(snap.name)
    return snap


def torch_checkpoint(filename: str, state_dict) -> Path:
    """Save a state dict under $TORCH_HOME/hub/checkpoints/<filename>, where torchvision's
    `load_state_dict_from_url` looks before downloading."""
    import torch

    path = Path(os.environ["TORCH_HOME"]) / "hub" / "checkpoints" / filename
    with _lock:
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            torch.save(state_dict, path)
    return path
