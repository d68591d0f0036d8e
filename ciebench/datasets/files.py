"""Safe reading of the image and mask files a dataset's annotations point to."""
from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from .problems import Problem

# Above this many pixels an image is treated as a decompression bomb and never decoded. CIEBench's
# largest image has about 1.0 Mpx; 64 Mpx leaves room for any real benchmark photograph.
MAX_PIXELS = 64_000_000


@dataclass
class ReadImage:
    data: bytes
    image: Image.Image  # fully decoded


def resolve_inside(root: Path, rel: str) -> Path | None:
    """The path `rel` under `root`, or None when it is absolute or escapes `root`."""
    if not rel or os.path.isabs(rel) or rel.startswith(("/", "\\")) or ":" in Path(rel).parts[0]:
        return None
    root = root.resolve()
    path = (root / rel).resolve()
    try:
        path.relative_to(root)
    except ValueError:
        return None
    return path


def read_image(root: Path, rel: str, sample_id: str, role: str, problems: list[Problem]) -> ReadImage | None:
    """Read and fully decode one file; on failure append an error naming sample and file, return None."""
    path = resolve_inside(root, rel)
    if path is None:
        problems.append(Problem("error", sample_id, rel, f"{role} path escapes the dataset folder (absolute or '..'); rejected"))
        return None
    if not path.is_file():
        problems.append(Problem("error", sample_id, rel, f"{role} file is missing"))
        return None
    data = path.read_bytes()
    return decode_image(data, rel, sample_id, role, problems)


def decode_image(data: bytes, name: str, sample_id: str, role: str, problems: list[Problem]) -> ReadImage | None:
    try:
        with Image.open(io.BytesIO(data)) as probe:
            width, height = probe.size
            if width * height > MAX_PIXELS:
                problems.append(Problem(
                    "error", sample_id, name,
                    f"{role} is {width}x{height} ({width * height / 1e6:.0f} Mpx), over the {MAX_PIXELS / 1e6:.0f} Mpx "
                    "decompression-bomb limit; not decoded"))
                return None
        image = Image.open(io.BytesIO(data))
        image.load()
    except Image.DecompressionBombError as exc:
        problems.append(Problem("error", sample_id, name, f"{role} rejected by the decompression-bomb limit ({exc})"))
        return None
    except Exception as exc:  # PIL raises many types for corrupt files
        problems.append(Problem("error", sample_id, name, f"{role} is unreadable ({type(exc).__name__}: {exc})"))
        return None
    return ReadImage(data=data, image=image)


def check_pair(image: ReadImage, mask: ReadImage | None, sample_id: str, image_name: str, mask_name: str | None,
               problems: list[Problem]) -> None:
    """Warnings that leave the sample usable: modes, size mismatch, empty mask."""
    if image.image.mode != "RGB":
        problems.append(Problem("warning", sample_id, image_name, f"image mode is {image.image.mode}, not RGB; converted to RGB when used"))
    if mask is None:
        return
    if mask.image.mode not in ("L", "1"):
        problems.append(Problem("warning", sample_id, mask_name, f"mask mode is {mask.image.mode}, not L; converted to L when used"))
    if mask.image.size != image.image.size:
        problems.append(Problem(
            "warning", sample_id, mask_name,
            f"mask is {mask.image.size[0]}x{mask.image.size[1]} but the image is {image.image.size[0]}x{image.image.size[1]}; "
            "resized with nearest neighbour to the image size when used, as the protocols do"))
    if not np.asarray(mask.image.convert("L")).any():
        problems.append(Problem("warning", sample_id, mask_name, "mask is empty (no pixel to edit); its CLIP score is undefined"))


def union_masks(masks: list[ReadImage]) -> ReadImage:
    """Several mask files for one sample: their pixelwise maximum, as one PNG."""
    if len(masks) == 1:
        return masks[0]
    size = masks[0].image.size
    arrays = [np.asarray(m.image.convert("L").resize(size, Image.NEAREST)) for m in masks]
    merged = Image.fromarray(np.maximum.reduce(arrays), mode="L")
    buf = io.BytesIO()
    merged.save(buf, format="PNG")
    return ReadImage(data=buf.getvalue(), image=merged)
