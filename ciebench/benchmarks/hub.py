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


def unpacked(archives: list[Path], target: Path) -> Path:
    """`archives` unpacked once into the one folder `target` (they unpack side by side, as the official
    instructions' `unzip` in one folder does), by the one archive rule (`ciebench.datasets.release.unpack`:
    no member outside the folder, no links or special members, byte / file-count / ratio limits), into a
    staging folder renamed into place only when complete: a refused or interrupted extraction leaves
    nothing behind, and a complete one is not redone."""
    if not (target / ".extracted").is_file():
        import shutil

        from ciebench.datasets.release import unpack
        from ciebench.outdir import staged

        if target.exists():  # an extraction an older ciebench left unfinished
            shutil.rmtree(target)
        target.parent.mkdir(parents=True, exist_ok=True)
        # a shared cache entry: another process extracting it at the same time leaves the first copy
        # in place, never swapped away under a run already reading it
        with staged(target, replace=False) as staging:
            for archive in archives:
                unpack(Path(archive), staging)
            (staging / ".extracted").write_text("\n".join(str(a) for a in archives) + "\n")
    return target


def archives_root(folder: Path, archives: tuple[str, ...], probe: str, benchmark: str) -> Path:
    """The folder a release's relative image paths resolve against, for a release that ships its images
    as archives beside its annotation: `folder` itself when `probe` (a path the annotation names) is
    there, i.e. the archives were unpacked in place as the official instructions say; otherwise each of
    `archives` found in `folder`, unpacked once under the ciebench cache (`unpacked`), keyed by the
    archives' location and size so another copy or revision is never mixed in."""
    if (folder / probe).exists():
        return folder
    found = [folder / name for name in archives if (folder / name).is_file()]
    if not found:
        return folder  # neither unpacked nor archived: each missing file is named when the cases are checked
    from ciebench.cache import cache_root
    from ciebench.io import stable_hash

    key = stable_hash([[str(p.resolve()), p.stat().st_size] for p in found])
    return unpacked(found, cache_root() / "benchmarks" / benchmark / key)
