"""Safe reading of the image and mask files a dataset's annotations point to."""
from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ciebench.images import (
    MAX_PIXELS,
    ImageRefused,
    exif_orientation,
    mask_is_label_map,
    open_image,
    read_regular_file,
    to_mask8,
    to_rgb8,
)

from .problems import Problem

__all__ = ["MAX_PIXELS", "ReadImage", "resolve_inside", "read_image", "read_contained", "decode_image", "check_pair",
           "union_masks"]

@dataclass
class ReadImage:
    data: bytes
    image: Image.Image  # fully decoded


def resolve_inside(root: Path, rel: str) -> Path | None:
    """The path `rel` under `root`, or None when it is absolute or escapes `root`."""
    if not rel or "\x00" in rel or os.path.isabs(rel) or rel.startswith(("/", "\\")) or any(":" in p for p in Path(rel).parts[:1]):
        return None
    try:
        root = root.resolve()
        path = (root / rel).resolve()  # symlinks followed: a link pointing outside escapes too
        path.relative_to(root)
    except (ValueError, OSError):
        return None
    return path


def read_contained(root: Path, rel: str, sample_id: str, role: str, problems: list[Problem]) -> bytes | None:
    """The bytes of the regular file `rel` inside `root`; on failure append an error naming sample and
    file and return None. Special files (devices, FIFOs, sockets) are refused without being opened."""
    path = resolve_inside(root, rel)
    if path is None:
        problems.append(Problem("error", sample_id, rel, f"{role} path escapes the dataset folder (absolute or '..'); rejected"))
        return None
    if not path.exists():
        problems.append(Problem("error", sample_id, rel, f"{role} file is missing"))
        return None
    try:
        return read_regular_file(path)
    except ImageRefused as exc:
        problems.append(Problem("error", sample_id, rel, f"{role} file: {_without_path(str(exc), path)}"))
    except OSError as exc:
        problems.append(Problem("error", sample_id, rel, f"{role} file cannot be read ({exc.strerror or exc})"))
    return None


def _without_path(message: str, path: Path) -> str:
    """The problem line already names the file relative to the dataset; drop the absolute path."""
    return message.removeprefix(f"{path}: ")


def read_image(root: Path, rel: str, sample_id: str, role: str, problems: list[Problem]) -> ReadImage | None:
    """Read and fully decode one file; on failure append an error naming sample and file, return None."""
    data = read_contained(root, rel, sample_id, role, problems)
    return None if data is None else decode_image(data, rel, sample_id, role, problems)


def decode_image(data: bytes, name: str, sample_id: str, role: str, problems: list[Problem]) -> ReadImage | None:
    """Decode `data` with the shared allow-list and check that its pixels convert by the pixel rule
    (`ciebench.images`); on failure append an error and return None."""
    try:
        image = open_image(data)
        to_mask8(image) if role == "mask" else to_rgb8(image)
    except ImageRefused as exc:
        problems.append(Problem("error", sample_id, name, f"{role} refused: {exc}"))
        return None
    except Image.DecompressionBombError as exc:
        problems.append(Problem("error", sample_id, name, f"{role} rejected by the decompression-bomb limit ({exc})"))
        return None
    except Exception as exc:  # PIL raises many types for corrupt files
        problems.append(Problem("error", sample_id, name, f"{role} is unreadable ({type(exc).__name__}: {exc})"))
        return None
    return ReadImage(data=data, image=image)


def check_pair(image: ReadImage, mask: ReadImage | None, sample_id: str, image_name: str, mask_name: str | None,
               problems: list[Problem]) -> bool:
    """Whether the pair is usable. Appends warnings that leave it usable (modes, size mismatch, EXIF
    orientation, empty mask) and the one error that does not (a mask of a rotated image's stored pixels)."""
    if image.image.mode != "RGB":
        problems.append(Problem("warning", sample_id, image_name, f"image mode is {image.image.mode}, not RGB; "
                                f"{_conversion(image.image.mode)} to 8-bit RGB when used"))
    if mask is None:
        return True
    if mask.image.mode not in ("L", "1"):
        problems.append(Problem("warning", sample_id, mask_name, f"mask mode is {mask.image.mode}, not L; "
                                f"{_conversion(mask.image.mode)} to L when used"))
    if mask_is_label_map(mask.image):
        problems.append(Problem("warning", sample_id, mask_name, "mask holds only 0 and 1 (a label map, not 0/255); "
                                "rescaled to 0/255 when used"))
    stored, orientation = _as_stored(image)
    if orientation != 1 and mask.image.size != image.image.size and mask.image.size == stored:
        # The mask was drawn on the file's stored pixels, but the image is used as displayed: a
        # nearest-neighbour squash across a rotation would put the region somewhere else.
        problems.append(Problem(
            "error", sample_id, mask_name,
            f"mask is {stored[0]}x{stored[1]}, the size of {image_name} as stored, but that image has EXIF "
            f"orientation {orientation} and is used as displayed ({image.image.size[0]}x{image.image.size[1]}); "
            "save the image with its orientation applied (PIL.ImageOps.exif_transpose) or rotate the mask"))
        return False
    if orientation != 1:
        problems.append(Problem("warning", sample_id, image_name,
                                f"EXIF orientation {orientation}: the image is used as displayed (rotated / mirrored "
                                "from its stored pixels, as `datasets` decodes it); its mask must match that view"))
    if mask.image.size != image.image.size:
        problems.append(Problem(
            "warning", sample_id, mask_name,
            f"mask is {mask.image.size[0]}x{mask.image.size[1]} but the image is {image.image.size[0]}x{image.image.size[1]}; "
            "resized with nearest neighbour to the image size when used, as the protocols do"))
    if not np.asarray(to_mask8(mask.image)).any():
        problems.append(Problem("warning", sample_id, mask_name, "mask is empty (no pixel to edit); its CLIP score is undefined"))
    return True


def _as_stored(image: ReadImage) -> tuple[tuple[int, int], int]:
    """The image's size as its file stores it, and its EXIF orientation (1: displayed as stored)."""
    with Image.open(io.BytesIO(image.data)) as raw:  # already decoded once through the allow-list
        return raw.size, exif_orientation(raw)


def _conversion(mode: str) -> str:
    if mode.startswith("I") or mode == "F":
        return "scaled (not clipped)"
    return "converted"


def union_masks(masks: list[ReadImage]) -> ReadImage:
    """Several mask files for one sample: their pixelwise maximum, as one PNG."""
    if len(masks) == 1:
        return masks[0]
    size = masks[0].image.size
    arrays = [np.asarray(to_mask8(m.image).resize(size, Image.NEAREST)) for m in masks]
    merged = Image.fromarray(np.maximum.reduce(arrays), mode="L")
    buf = io.BytesIO()
    merged.save(buf, format="PNG")
    return ReadImage(data=buf.getvalue(), image=merged)
