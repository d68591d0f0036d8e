"""Benchmarks that live on the Hugging Face hub: the official folder layout as a pinned snapshot."""
from __future__ import annotations

from pathlib import Path

from ciebench.errors import EnvironmentProblem


def snapshot(hub_id: str | None, revision: str | None) -> Path:
    """A local snapshot of dataset repo `hub_id` at `revision` (downloaded once, then cached).
    With HF_HUB_OFFLINE=1 only a cached snapshot is used."""
    if not hub_id:
        raise ValueError("this benchmark has no hub id: pass its folder with --benchmark-root")
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id=hub_id, repo_type="dataset", revision=revision))
    except Exception as exc:  # offline, gated or missing: say where to get it instead
        raise EnvironmentProblem(
            f"cannot get dataset {hub_id}@{revision or 'main'} from the hub ({type(exc).__name__}: {exc}); "
            "download it where there is a network, or pass its folder with --benchmark-root") from exc
