"""Small generated datasets and the tools the hostile-input tests share (nothing binary is committed)."""
from __future__ import annotations

import builtins
import io
import json
import os
import struct
import zlib
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np
from PIL import Image


def png_bytes(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def picture(seed: int, size: tuple[int, int] = (24, 16)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8), "RGB")


def box_mask(size: tuple[int, int] = (24, 16), box: tuple[int, int, int, int] = (4, 4, 12, 10), value: int = 255) -> Image.Image:
    levels = np.zeros((size[1], size[0]), dtype=np.uint8)
    left, top, right, bottom = box
    levels[top:bottom, left:right] = value
    return Image.fromarray(levels, "L")


def png16_rgb(levels: np.ndarray) -> bytes:
    """A 16-bit-per-channel RGB PNG written by hand (Pillow cannot write one)."""
    height, width, _ = levels.shape
    raw = b"".join(b"\x00" + levels[y].astype(">u2").tobytes() for y in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


def write_jsonl_dataset(root: Path, ids: list[str], size: tuple[int, int] = (24, 16)) -> list[dict]:
    """A manifest dataset with one picture and one box mask per id; returns the manifest entries."""
    root.mkdir(parents=True, exist_ok=True)
    entries = []
    for i, sample_id in enumerate(ids):
        picture(i, size).save(root / f"img{i}.png")
        box_mask(size).save(root / f"img{i}_mask.png")
        entries.append({"id": sample_id, "image": f"img{i}.png", "mask": f"img{i}_mask.png",
                        "instruction": f"What could hold water? Please remove object {i}.", "clip_text": ["wall"]})
    write_manifest(root, entries)
    return entries


def write_manifest(root: Path, entries: list) -> None:
    (root / "manifest.jsonl").write_text("\n".join(json.dumps(e) for e in entries) + "\n", encoding="utf-8")


class OpenSpy:
    """Every path opened through `open`, `io.open`, `os.open` or `PIL.Image.open` while active."""

    def __init__(self) -> None:
        self.paths: list[str] = []

    def seen(self, path: Path) -> bool:
        target = os.path.realpath(path)
        return any(os.path.realpath(p) == target for p in self.paths if p)


@contextmanager
def spy_on_opens(monkeypatch) -> Iterator[OpenSpy]:
    spy = OpenSpy()
    real_open, real_os_open = builtins.open, os.open
    real_image_open = Image.open

    def record(target) -> None:
        if isinstance(target, (str, bytes, os.PathLike)):
            spy.paths.append(os.fsdecode(target))

    def fake_open(file, *args, **kwargs):
        record(file)
        return real_open(file, *args, **kwargs)

    def fake_os_open(path, *args, **kwargs):
        record(path)
        return real_os_open(path, *args, **kwargs)

    def fake_image_open(fp, *args, **kwargs):
        record(fp)
        return real_image_open(fp, *args, **kwargs)

    with monkeypatch.context() as m:
        m.setattr(builtins, "open", fake_open)
        m.setattr(io, "open", fake_open)
        m.setattr(os, "open", fake_os_open)
        m.setattr(Image, "open", fake_image_open)
        yield spy
