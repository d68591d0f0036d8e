"""Offline bundles: one folder holding every file a configuration loads, in the layouts the loaders
already read (a hub cache, torch's hub dir, ciebench's cache, the datasets cache), plus
`manifest.json` with the sha256 and size of every file.

`CIEBENCH_BUNDLE=DIR` (or `ciebench --bundle DIR COMMAND`) points every cache at the bundle and turns
the network off, so a run on a node without internet reads exactly the bundled files. Before that, the
bundle is checked against its manifest (`verify_bundle`): a file missing or changed since it was written
stops the command (IntegrityError, exit 6) before any model loads, since a flipped bit in a weight file
changes the numbers and nothing else would notice (the hub revision recorded stays the same). Hashing
gigabytes on every run would be slow, so `DIR/.verified.json` remembers each file verified with its size,
mtime, ctime and inode; a file whose key changed is hashed again.

    DIR/manifest.json
    DIR/hub/models--ORG--NAME/{refs/main, snapshots/<commit>/...}   HF_HUB_CACHE
    DIR/torch/hub/checkpoints/<file>.pth                            TORCH_HOME
    DIR/ciebench/assets/..., DIR/ciebench/smartedit/...             CIEBENCH_CACHE (also the judge's answer cache)
    DIR/datasets/ciebench_release/<revision>/dataset/               HF_DATASETS_CACHE
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from . import __version__
from .errors import EnvironmentProblem, IntegrityError
from .io import atomic_write_json, atomic_write_text, sha256_file
from .prefetch import Plan

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
VERIFIED = ".verified.json"  # files already hashed against the manifest, by stat key (see verify_bundle)
BUNDLE_ENV = "CIEBENCH_BUNDLE"
FORMAT = 1
# A file modified this recently may be modified again within the same timestamp tick, leaving its stat key
# unchanged: such files are verified but not remembered (git's "racily clean" entries, the same rule).
RACY_NS = 2_000_000_000


def write_bundle(result: Plan, folder: str | os.PathLike, progress: bool = True) -> dict[str, Any]:
    """Copy every planned file (all must be local: run `prefetch.download` first) into `folder` and
    write the manifest last, so a bundle with a manifest is complete."""
    folder = Path(folder)
    absent = [f.bundle_path for f in result.files if f.local is None]
    if absent:
        raise EnvironmentProblem(f"{len(absent)} file(s) are not on this machine yet, e.g. {absent[0]}",
                                 hint="download them first (ciebench prefetch without --dry-run)")
    if result.missing:
        raise EnvironmentProblem("cannot write a complete bundle; missing: " + "; ".join(result.missing))
    folder.mkdir(parents=True, exist_ok=True)
    (folder / MANIFEST).unlink(missing_ok=True)  # an interrupted rewrite must not look complete
    entries = []
    bar = tqdm(total=result.total_bytes, unit="B", unit_scale=True, desc="bundle", disable=not progress)
    try:
        for f in result.files:
            target = folder / f.bundle_path
            digest = _place(f.local, target)
            req = f.requirement
            entries.append({"path": f.bundle_path, "sha256": digest, "size": target.stat().st_size,
                            "kind": req.kind, "ref": req.ref, "revision": req.revision, "commit": f.commit or None,
                            "repo_file": f.repo_file or None, "used_by": req.used_by})
            bar.update(target.stat().st_size)
    finally:
        bar.close()
    for rel, commit in result.refs.items():
        atomic_write_text(folder / rel, commit)
    manifest = {"format": FORMAT, "ciebench_version": __version__,
                "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "configuration": result.configuration.to_dict(), "files": entries, "refs": result.refs,
                "notes": result.notes, "total_bytes": sum(e["size"] for e in entries)}
    atomic_write_json(folder / MANIFEST, manifest)
    return manifest


def _place(source: Path, target: Path) -> str:
    """Copy `source` to `target` (atomically) and return the source's sha256, which the manifest records.
    A file left by an earlier bundle is kept only when it holds the source's bytes: an equal size is no
    proof (a stale revision, a corrupted copy), and the manifest must vouch for the source, not for it."""
    digest = sha256_file(source)  # follows the hub cache's blob symlinks
    if target.is_file() and target.stat().st_size == source.stat().st_size and sha256_file(target) == digest:
        return digest
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp")
    shutil.copyfile(source, tmp)  # follows the hub cache's blob symlinks
    os.replace(tmp, target)
    return digest


def read_manifest(folder: str | os.PathLike) -> dict[str, Any]:
    path = Path(folder) / MANIFEST
    if not path.is_file():
        raise EnvironmentProblem(f"{folder} is not a ciebench bundle (no {MANIFEST})",
                                 hint="write one with `ciebench prefetch ... --bundle DIR`")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise IntegrityError(f"{path}: unreadable manifest ({exc})") from exc


@dataclass(frozen=True)
class BundleProblem:
    path: str
    problem: str  # missing | size | sha256
    used_by: str

    def __str__(self) -> str:
        return f"{self.path}: {self.problem} (needed by {self.used_by})"


def check_bundle(folder: str | os.PathLike, hashes: bool = True) -> list[BundleProblem]:
    """Every manifest file present with its size and (with `hashes`) sha256; each problem names the file."""
    return _check(Path(folder), read_manifest(folder), hashes, {})[0]


def _check(folder: Path, manifest: dict[str, Any], hashes: bool,
           known: dict[str, Any]) -> tuple[list[BundleProblem], dict[str, Any]]:
    """`check_bundle`, hashing only the files whose stat key is not in `known` with the manifest's sha256.
    Also returns the key of every file found intact (taken before hashing it, so a change during the
    hash shows as a new key next time), except racy ones."""
    problems, intact = [], {}
    now = time.time_ns()
    for entry in manifest["files"]:
        path, used_by = folder / entry["path"], entry.get("used_by", "")
        if not path.is_file():
            problems.append(BundleProblem(entry["path"], "missing", used_by))
            continue
        st = path.stat()
        if st.st_size != entry["size"]:
            problems.append(BundleProblem(entry["path"], f"size {st.st_size}, manifest {entry['size']}", used_by))
            continue
        if not hashes:
            continue
        key = {"sha256": entry["sha256"], "stat": [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]}
        if known.get(entry["path"]) != key and sha256_file(path) != entry["sha256"]:
            problems.append(BundleProblem(entry["path"], "sha256 differs from the manifest", used_by))
        elif now - st.st_mtime_ns > RACY_NS:
            intact[entry["path"]] = key
    for rel in manifest.get("refs", {}):
        if not (folder / rel).is_file():
            problems.append(BundleProblem(rel, "missing", "hub revision lookup"))
    return problems, intact


def verify_bundle(folder: str | os.PathLike) -> None:
    """Refuse a bundle whose files are not the ones its manifest vouches for (IntegrityError naming
    them). Files verified before and unchanged since (same size, mtime, ctime and inode) are not hashed
    again; the rest are, and the verified ones are remembered."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    manifest_sha = sha256_file(folder / MANIFEST)
    markers = _marker_paths(folder)
    known = next((m["files"] for m in map(_read_json, markers)
                  if isinstance(m, dict) and m.get("manifest_sha256") == manifest_sha
                  and isinstance(m.get("files"), dict)), {})
    problems, intact = _check(folder, manifest, True, known)
    if problems:
        listed = "; ".join(map(str, problems[:5])) + (f"; ... {len(problems) - 5} more" if len(problems) > 5 else "")
        raise IntegrityError(f"bundle {folder}: {len(problems)} file(s) missing or changed since it was written: "
                             f"{listed}", hint="restore them or write the bundle again (`ciebench prefetch ... "
                                               "--bundle DIR`); nothing was run")
    if intact != known:
        record = {"format": FORMAT, "manifest_sha256": manifest_sha, "files": intact}
        for marker in markers:
            try:
                atomic_write_json(marker, record)
                break
            except OSError as exc:
                log.debug("cannot record the bundle's verification in %s: %s", marker, exc)
        else:
            log.warning("bundle %s verified, but the verification could not be recorded (read-only?): "
                        "the next run hashes every file again", folder)


def _marker_paths(folder: Path) -> list[Path]:
    """Inside the bundle; else, for a read-only bundle, in the user's cache (keyed by the bundle's path)."""
    from .cache import cache_root

    name = hashlib.sha256(str(folder.resolve()).encode()).hexdigest()[:16]
    return [folder / VERIFIED, cache_root() / "bundles-verified" / f"{name}.json"]


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def bundle_environment(folder: str | os.PathLike) -> dict[str, str]:
    folder = Path(folder).resolve()
    return {"HF_HUB_CACHE": str(folder / "hub"), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
            "HF_DATASETS_OFFLINE": "1", "HF_DATASETS_CACHE": str(folder / "datasets"),
            "TORCH_HOME": str(folder / "torch"), "CIEBENCH_CACHE": str(folder / "ciebench"),
            "CIEBENCH_OFFLINE": "1", BUNDLE_ENV: str(folder)}


def activate_bundle(folder: str | os.PathLike, verify: bool = True) -> Path:
    """Check the bundle against its manifest (`verify_bundle`; `verify=False` for a caller that reports
    the problems itself, `doctor --offline`), then point every cache at it and turn the network off, in
    this process and its children. Libraries imported earlier read some of these at import time: their
    constants are updated too."""
    if verify:
        verify_bundle(folder)
    else:
        read_manifest(folder)
    env = bundle_environment(folder)
    os.environ.update(env)
    hub = sys.modules.get("huggingface_hub.constants")
    if hub is not None:
        hub.HF_HUB_CACHE = env["HF_HUB_CACHE"]
        hub.HF_HUB_OFFLINE = True
    ds_config = sys.modules.get("datasets.config")
    if ds_config is not None:
        ds_config.HF_DATASETS_CACHE = Path(env["HF_DATASETS_CACHE"])
        ds_config.HF_HUB_OFFLINE = True
        if hasattr(ds_config, "HF_DATASETS_OFFLINE"):
            ds_config.HF_DATASETS_OFFLINE = True
    torch_mod = sys.modules.get("torch")
    if torch_mod is not None:
        torch_mod.hub.set_dir(str(Path(env["TORCH_HOME"]) / "hub"))
    return Path(folder)
