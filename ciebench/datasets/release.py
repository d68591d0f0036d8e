"""`ciebench`: the official CIEBench release, downloaded, checksum-verified, converted and cached.

Sources are tried in order. Each is an archive URL (http(s) or file://) with an optional folder
hint after '#'; inside the unpacked archive the folder holding the annotation file is located. The
files are verified against `ciebench/data/ciebench_release.sha256.json`, built from the authors'
release, before anything is converted.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import tarfile
import tempfile
import urllib.request
import zipfile
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from ..errors import ExitCode
from ..io import sha256_file
from .authors import ANNOTATION_FILES
from .problems import DatasetError

log = logging.getLogger(__name__)

MANIFEST_NAME = "ciebench_release.sha256.json"


@dataclass(frozen=True)
class ReleaseSource:
    url: str
    folder: str | None = None  # the folder inside the archive that holds the release, when known

    @classmethod
    def parse(cls, text: str) -> "ReleaseSource":
        url, _, folder = text.strip().partition("#")
        return cls(url=url, folder=folder or None)


DEFAULT_SOURCES = (
    ReleaseSource("https://github.com/Jia-shao/Reasoning-Editing/archive/refs/heads/main.zip"),
    ReleaseSource("https://github.com/Jia-shao/project/archive/refs/heads/main.zip", "imgREBench"),
)
SOURCES_ENV = "CIEBENCH_SOURCES"  # whitespace-separated `url[#folder]` entries, tried in order


class ChecksumError(DatasetError):
    exit_code = ExitCode.INTEGRITY
    def __init__(self, source: str, bad: list[str]):
        self.bad = bad
        listing = "\n  ".join(bad[:20]) + ("\n  ..." if len(bad) > 20 else "")
        super().__init__(
            f"CIEBench release from {source} does not match the shipped sha256 manifest "
            f"({len(bad)} file(s)):\n  {listing}\n"
            "If you trust this copy, pass --ignore-checksums (Python: verify=False); the run records it.")


def release_manifest() -> dict:
    return json.loads(resources.files("ciebench.data").joinpath(MANIFEST_NAME).read_text(encoding="utf-8"))


def configured_sources(sources: list[str] | None = None) -> list[ReleaseSource]:
    if sources:
        return [ReleaseSource.parse(s) for s in sources]
    env = os.environ.get(SOURCES_ENV, "").split()
    return [ReleaseSource.parse(s) for s in env] if env else list(DEFAULT_SOURCES)


def cache_dir() -> Path:
    import datasets

    return Path(datasets.config.HF_DATASETS_CACHE) / "ciebench_release" / release_manifest()["revision"]


def verify_release(root: Path, manifest: dict | None = None) -> list[str]:
    """Files that are missing or differ from the manifest ('path: reason'); empty when all match."""
    manifest = manifest or release_manifest()
    bad = []
    for rel, expected in sorted(manifest["files"].items()):
        path = root / rel
        if rel in ANNOTATION_FILES and not path.exists():
            # the earlier upload names its annotation file differently; images and masks still count
            continue
        if not path.is_file():
            bad.append(f"{rel}: missing")
            continue
        actual = sha256_file(path)
        if actual != expected:
            bad.append(f"{rel}: sha256 {actual[:12]}... expected {expected[:12]}...")
    return bad


def locate_release(tree: Path, folder: str | None) -> Path | None:
    """The folder under `tree` that holds an annotation file, preferring one named `folder`."""
    candidates = sorted({p.parent for name in ANNOTATION_FILES for p in tree.rglob(name)}, key=lambda p: len(p.parts))
    if folder:
        named = [c for c in candidates if c.name == folder]
        candidates = named or candidates
    return candidates[0] if candidates else None


def unpack(archive: Path, dest: Path) -> None:
    """Unpack a zip or tar archive, refusing members that would land outside `dest`."""
    dest = dest.resolve()
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf:
            for member in zf.namelist():
                _check_member(dest, member, archive)
            zf.extractall(dest)
    elif tarfile.is_tarfile(archive):
        with tarfile.open(archive) as tf:
            for member in tf.getmembers():
                _check_member(dest, member.name, archive)
                if member.issym() or member.islnk():
                    raise DatasetError(f"{archive}: archive member {member.name} is a link; refused")
            tf.extractall(dest, filter="data")
    else:
        raise DatasetError(f"{archive}: not a zip or tar archive")


def _check_member(dest: Path, name: str, archive: Path) -> None:
    target = (dest / name).resolve()
    if not str(target).startswith(str(dest) + os.sep) and target != dest:
        raise DatasetError(f"{archive}: archive member {name!r} would be written outside the target folder; refused")


def download(url: str, dest: Path, timeout: float = 60.0) -> None:
    if not url.startswith(("http://", "https://", "file://")):
        raise DatasetError(f"unsupported source URL {url!r} (use http(s):// or file://)")
    with urllib.request.urlopen(url, timeout=timeout) as response, open(dest, "wb") as out:  # noqa: S310 (scheme checked)
        shutil.copyfileobj(response, out)


def fetch_release(sources: list[str] | None = None, verify: bool = True) -> Path:
    """Download and unpack the release into the cache; return the folder holding the annotation file.
    A verified copy already in the cache is reused without any network access."""
    target = cache_dir() / "raw"
    if target.exists() and locate_release(target, None) is not None:
        root = locate_release(target, None)
        if not verify or not verify_release(root):
            return root
        shutil.rmtree(target)  # a cached copy that no longer verifies is redone, never trusted
    failures = []
    for source in configured_sources(sources):
        with tempfile.TemporaryDirectory(dir=_ensure(cache_dir())) as tmp:
            tmp_path = Path(tmp)
            try:
                log.info("downloading CIEBench from %s", source.url)
                download(source.url, tmp_path / "archive")
                unpack(tmp_path / "archive", tmp_path / "tree")
            except (OSError, DatasetError, zipfile.BadZipFile, tarfile.TarError) as exc:
                failures.append(f"{source.url}: {exc}")
                continue
            root = locate_release(tmp_path / "tree", source.folder)
            if root is None:
                failures.append(f"{source.url}: no {' or '.join(ANNOTATION_FILES)} in the archive")
                continue
            if verify:
                bad = verify_release(root)
                if bad:
                    raise ChecksumError(source.url, bad)
            else:
                log.warning("CIEBench checksums NOT verified (verify=False) for %s", source.url)
            if target.exists():
                shutil.rmtree(target)
            shutil.move(str(root), str(target))
            return target
    raise DatasetError("could not obtain the CIEBench release from any source:\n  " + "\n  ".join(failures)
                       + f"\nSet {SOURCES_ENV} to an archive URL or pass a local folder instead of 'ciebench'.")


def _ensure(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path
