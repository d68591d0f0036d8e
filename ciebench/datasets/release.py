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
import zlib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from ciebench.errors import DISK_FULL_ERRNOS, ExitCode, IntegrityError
from ciebench.io import sha256_file

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


class ChecksumError(DatasetError, IntegrityError):
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


_MiB = 1 << 20


def _env_number(name: str, default: float, kind: type = int) -> float:
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    try:
        value = kind(float(text)) if kind is int else float(text)
    except ValueError:
        raise DatasetError(f"{name}={text!r} is not a number") from None
    if value <= 0:
        raise DatasetError(f"{name} must be positive, not {text}")
    return value


@dataclass(frozen=True)
class ExtractLimits:
    """What one download or archive may cost, checked while the bytes arrive (never from the
    archive's own headers, which can lie). Override with the environment variables named below."""

    max_bytes: int = 4 << 30  # CIEBENCH_MAX_EXTRACT_BYTES: total bytes written by an extraction
    max_files: int = 100_000  # CIEBENCH_MAX_EXTRACT_FILES: members written by an extraction
    # CIEBENCH_MAX_EXTRACT_RATIO: extracted bytes per archive byte (archives under 1 MiB count as
    # 1 MiB), so a 658 KB zip may yield 100 MiB, not 400 MB, unless asked.
    max_ratio: float = 100.0
    max_download_bytes: int = 4 << 30  # CIEBENCH_MAX_DOWNLOAD_BYTES

    @classmethod
    def from_env(cls) -> "ExtractLimits":
        d = cls()
        return cls(max_bytes=int(_env_number("CIEBENCH_MAX_EXTRACT_BYTES", d.max_bytes)),
                   max_files=int(_env_number("CIEBENCH_MAX_EXTRACT_FILES", d.max_files)),
                   max_ratio=float(_env_number("CIEBENCH_MAX_EXTRACT_RATIO", d.max_ratio, float)),
                   max_download_bytes=int(_env_number("CIEBENCH_MAX_DOWNLOAD_BYTES", d.max_download_bytes)))

    def extract_budget(self, archive_size: int) -> int:
        return int(min(self.max_bytes, self.max_ratio * max(archive_size, _MiB)))


class _Budget:
    """Counts files and bytes as an extraction writes them; raises the moment a limit is passed."""

    def __init__(self, archive: Path, limits: ExtractLimits) -> None:
        self.archive, self.limits = archive, limits
        self.max_bytes = limits.extract_budget(archive.stat().st_size)
        self.files = 0
        self.bytes = 0

    def add_file(self, name: str) -> None:
        self.files += 1
        if self.files > self.limits.max_files:
            raise DatasetError(
                f"{self.archive}: more than {self.limits.max_files} files (at {name!r}); extraction stopped",
                hint="raise CIEBENCH_MAX_EXTRACT_FILES if the archive is trusted")

    def copy(self, src, dest: Path, name: str) -> None:
        with open(dest, "wb") as out:
            while chunk := src.read(_MiB):
                self.bytes += len(chunk)
                if self.bytes > self.max_bytes:
                    raise DatasetError(
                        f"{self.archive}: expands to more than {self.max_bytes / _MiB:.0f} MiB (at {name!r}; the archive "
                        f"is {self.archive.stat().st_size / _MiB:.2f} MiB); extraction stopped",
                        hint="raise CIEBENCH_MAX_EXTRACT_BYTES / CIEBENCH_MAX_EXTRACT_RATIO if the archive is trusted")
                out.write(chunk)


def unpack(archive: Path, dest: Path, limits: ExtractLimits | None = None) -> None:
    """Unpack a zip or tar archive member by member, refusing members that would land outside `dest`,
    links and special members (devices, FIFOs), and stopping at `limits` (default: from the
    environment) on total bytes and file count."""
    dest = dest.resolve()
    budget = _Budget(archive, limits or ExtractLimits.from_env())
    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as zf:
                for info in zf.infolist():
                    _check_member(dest, info.filename, archive)
                for info in zf.infolist():
                    target = dest / info.filename
                    if info.is_dir():
                        target.mkdir(parents=True, exist_ok=True)
                        continue
                    budget.add_file(info.filename)
                    target.parent.mkdir(parents=True, exist_ok=True)
                    with zf.open(info) as src:
                        budget.copy(src, target, info.filename)
        elif tarfile.is_tarfile(archive):
            with tarfile.open(archive) as tf:
                for member in tf:
                    _check_member(dest, member.name, archive)
                    if member.issym() or member.islnk():
                        raise DatasetError(f"{archive}: archive member {member.name} is a link; refused")
                    target = dest / member.name
                    if member.isdir():
                        target.mkdir(parents=True, exist_ok=True)
                        continue
                    if not member.isreg():
                        kind = ("a FIFO" if member.isfifo() else "a device" if member.isdev() else "a special member")
                        raise DatasetError(f"{archive}: archive member {member.name} is {kind}; refused")
                    budget.add_file(member.name)
                    target.parent.mkdir(parents=True, exist_ok=True)
                    src = tf.extractfile(member)
                    budget.copy(src, target, member.name)
        else:
            raise DatasetError(f"{archive}: not a zip or tar archive")
    except (OSError, EOFError, zipfile.BadZipFile, tarfile.TarError, zlib.error) as exc:
        raise DatasetError(f"{archive}: cannot unpack ({type(exc).__name__}: {exc})") from exc


def _check_member(dest: Path, name: str, archive: Path) -> None:
    target = (dest / name).resolve()
    if not str(target).startswith(str(dest) + os.sep) and target != dest:
        raise DatasetError(f"{archive}: archive member {name!r} would be written outside the target folder; refused")


def download(url: str, dest: Path, timeout: float = 60.0, max_bytes: int | None = None) -> None:
    """Fetch `url` into `dest`, stopping once more than `max_bytes` (default: the environment's
    limit) have arrived."""
    if not url.startswith(("http://", "https://", "file://")):
        raise DatasetError(f"unsupported source URL {url!r} (use http(s):// or file://)")
    limit = max_bytes if max_bytes is not None else ExtractLimits.from_env().max_download_bytes
    received = 0
    with urllib.request.urlopen(url, timeout=timeout) as response, open(dest, "wb") as out:  # noqa: S310 (scheme checked)
        while chunk := response.read(_MiB):
            received += len(chunk)
            if received > limit:
                raise DatasetError(f"{url}: larger than {limit / _MiB:.0f} MiB; download stopped",
                                   hint="raise CIEBENCH_MAX_DOWNLOAD_BYTES if the source is trusted")
            out.write(chunk)


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
                if isinstance(exc, OSError) and exc.errno in DISK_FULL_ERRNOS:
                    raise  # this machine's problem, not the source's: the next source would fill the disk too
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
