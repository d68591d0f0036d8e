"""Assets of other projects (official judge prompts, scripts' constants, checkpoints), obtained at run
time from their public source at a pinned commit, verified by sha256 and cached by content.

Nothing of another project is stored in this repository: a `PinnedAsset` is only an address and a
hash. Resolution order: a local folder the user names (`local_dir`, e.g. `--judge-prompts DIR`), the
content-addressed cache, then the URL. A file whose sha256 differs from the pin is refused
(`IntegrityError`) unless the caller allows unverified local files, in which case the actual hash is
reported so the run records exactly what it used.
"""
from __future__ import annotations

import logging
import os
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from .cache import cache_root
from .errors import EnvironmentProblem, IntegrityError
from .io import atomic_write_bytes, sha256_bytes, sha256_file

log = logging.getLogger(__name__)

# Prompt files and constants are small; a larger answer is a wrong URL or a hostile server.
DEFAULT_MAX_BYTES = 16 * 1024 * 1024
TIMEOUT_S = 60.0


@dataclass(frozen=True)
class PinnedAsset:
    """One file of another project at a pinned commit. `filename` is how a local folder names it."""

    name: str  # logical id, e.g. "idcs-paper/describe"
    url: str  # immutable address (a raw URL at a commit sha, never a branch)
    sha256: str
    source: str  # human-readable provenance, e.g. "Jia-shao/Reasoning-Editing@<sha>:path/file.py"
    licence: str = "not stated"
    filename: str = ""
    max_bytes: int = DEFAULT_MAX_BYTES

    def __post_init__(self) -> None:
        if len(self.sha256) != 64 or any(c not in "0123456789abcdef" for c in self.sha256):
            raise ValueError(f"asset {self.name}: sha256 must be 64 lowercase hex digits")
        if not self.filename:
            object.__setattr__(self, "filename", Path(urllib.parse.urlparse(self.url).path).name or self.name)


@dataclass(frozen=True)
class ResolvedAsset:
    asset: PinnedAsset
    path: Path
    sha256: str
    verified: bool  # sha256 equals the pin
    origin: str  # "local", "cache" or "download"

    def read_text(self) -> str:
        return self.path.read_bytes().decode("utf-8")

    def provenance(self) -> dict[str, object]:
        return {"name": self.asset.name, "source": self.asset.source, "url": self.asset.url,
                "sha256": self.sha256, "pinned_sha256": self.asset.sha256, "verified": self.verified,
                "origin": self.origin, "licence": self.asset.licence}


def asset_cache_dir() -> Path:
    return cache_root() / "assets"


def cached_path(asset: PinnedAsset) -> Path:
    return asset_cache_dir() / asset.sha256[:2] / asset.sha256 / asset.filename


def resolve_asset(asset: PinnedAsset, local_dir: str | os.PathLike | None = None,
                  allow_unverified_local: bool = False, offline: bool | None = None) -> ResolvedAsset:
    """The verified local path of `asset`, downloading it once if needed.

    `offline` defaults to HF_HUB_OFFLINE / CIEBENCH_OFFLINE: then a missing asset is an error naming
    where to put it, never a network call."""
    if local_dir is not None:
        path = Path(local_dir) / asset.filename
        if not path.is_file():
            raise EnvironmentProblem(f"asset {asset.name}: {path} does not exist",
                                     hint=f"put {asset.filename} from {asset.source} there")
        digest = sha256_file(path)
        if digest != asset.sha256 and not allow_unverified_local:
            raise IntegrityError(f"asset {asset.name}: {path} has sha256 {digest}, pinned {asset.sha256}",
                                 hint=f"use the file from {asset.source}, or allow unverified local files")
        if digest != asset.sha256:
            log.warning("asset %s: using unverified local file %s (sha256 %s)", asset.name, path, digest)
        return ResolvedAsset(asset, path, digest, digest == asset.sha256, "local")

    target = cached_path(asset)
    if target.is_file():
        digest = sha256_file(target)
        if digest == asset.sha256:
            return ResolvedAsset(asset, target, digest, True, "cache")
        log.warning("asset %s: cached copy %s is corrupt; fetching again", asset.name, target)
        target.unlink()

    if offline is None:
        offline = _env_true("CIEBENCH_OFFLINE") or _env_true("HF_HUB_OFFLINE")
    if offline and not is_local_url(asset.url):
        raise EnvironmentProblem(f"asset {asset.name} is not cached at {target} and the network is off",
                                 hint=f"run `ciebench prefetch` where there is a network, or pass a local folder holding {asset.filename}")
    data = download(asset.url, asset.max_bytes, what=f"asset {asset.name}")
    digest = sha256_bytes(data)
    if digest != asset.sha256:
        raise IntegrityError(f"asset {asset.name}: {asset.url} served sha256 {digest}, pinned {asset.sha256}",
                             hint="the source changed or the download was tampered with; nothing was cached")
    atomic_write_bytes(target, data)
    return ResolvedAsset(asset, target, digest, True, "download")


def download(url: str, max_bytes: int, what: str) -> bytes:
    """GET `url` (http, https or file) into memory, refusing more than `max_bytes` while reading."""
    scheme = urllib.parse.urlparse(url).scheme
    if scheme not in ("http", "https", "file"):
        raise EnvironmentProblem(f"{what}: unsupported URL scheme in {url}")
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_S) as resp:  # noqa: S310 (scheme checked above)
            chunks, total = [], 0
            while True:
                chunk = resp.read(1 << 16)
                if not chunk:
                    break
                total += len(chunk)
                if total > max_bytes:
                    raise EnvironmentProblem(f"{what}: {url} is larger than {max_bytes} bytes; refused")
                chunks.append(chunk)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise EnvironmentProblem(f"{what}: cannot download {url}: {exc}") from exc
    return b"".join(chunks)


def is_local_url(url: str) -> bool:
    """file:// and loopback URLs stay usable offline (test servers, a mirror on this machine)."""
    parsed = urllib.parse.urlparse(url)
    return parsed.scheme == "file" or (parsed.hostname or "") in ("127.0.0.1", "localhost", "::1")


def _env_true(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")
