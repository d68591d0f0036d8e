"""Atomic file writes and content hashes: the only way ciebench writes results to disk."""
from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to `path` so that readers see either the old file or the whole new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        # mkstemp creates 0600; results are shared (galleries, web servers): use open()'s mode
        os.chmod(tmp, 0o666 & ~_UMASK)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()


def staging_dir(parent: str | os.PathLike | None, prefix: str) -> Path:
    """A new temporary folder in `parent`, to be filled and renamed into place. mkdtemp creates it
    0700, which the rename would carry over: it gets the mode `mkdir` gives under the umask instead,
    so a prepared dataset or an export is as readable as any other folder the user makes."""
    path = Path(tempfile.mkdtemp(dir=parent, prefix=prefix))
    os.chmod(path, 0o777 & ~_UMASK)
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    """Standard JSON (no NaN/Infinity literals: non-finite numbers are written by `stats.json_number`,
    as the strings "nan", "inf", "-inf"). Raises TypeError for values JSON cannot hold."""
    atomic_write_text(path, json_text(obj) + "\n")


def json_text(obj: Any, indent: int | None = 2) -> str:
    return json.dumps(json_safe(obj), indent=indent, sort_keys=True, allow_nan=False)


def json_safe(obj: Any) -> Any:
    """`obj` with non-finite floats as strings (the one JSON number codec), numpy values, sets and paths
    converted; anything else that JSON cannot hold raises TypeError naming its type."""
    if isinstance(obj, (float, np.floating)):
        from .stats import json_number

        return json_number(float(obj))
    if obj is None or isinstance(obj, (str, bool, int)):
        return obj
    if isinstance(obj, dict):
        return {(k if isinstance(k, str) else _json_key(k)): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, (set, frozenset)):
        return [json_safe(v) for v in sorted(obj)]
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "tolist"):  # numpy arrays and scalars
        return json_safe(obj.tolist())
    raise TypeError(f"not JSON-serialisable: {type(obj).__name__}")


def _json_key(key: Any) -> str:
    if isinstance(key, (int, float, bool)) or key is None:
        return json.dumps(json_safe(key))
    raise TypeError(f"not JSON-serialisable as a key: {type(key).__name__}")


def _json_default(obj: Any) -> Any:
    return json_safe(obj)


def read_json_object(path: str | os.PathLike, error: type[Exception] = ValueError) -> dict[str, Any]:
    """The JSON object in `path`; {} when the file is absent or holds another JSON value. An unreadable
    file raises `error` naming it."""
    path = Path(path)
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise error(f"{path}: unreadable JSON ({exc})") from exc
    return data if isinstance(data, dict) else {}


def png_bytes(image: Image.Image) -> bytes:
    """Deterministic PNG encoding (no timestamps, fixed compression) so equal pixels give equal bytes."""
    buf = io.BytesIO()
    image.save(buf, format="PNG", compress_level=6)
    return buf.getvalue()


def atomic_save_png(path: str | os.PathLike, image: Image.Image) -> str:
    """Save `image` as PNG atomically and return the sha256 of the written bytes."""
    data = png_bytes(image)
    atomic_write_bytes(path, data)
    return sha256_bytes(data)


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def stable_hash(obj: Any, length: int = 16) -> str:
    """Hash of a JSON-able object, independent of dict order; used for specs, protocols and cache keys."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=_json_default)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:length]
