"""The one way ciebench reads images from untrusted input, and the one pixel rule for images and masks.

Reading (`read_regular_file`, `open_image`):
- a file is read only when `stat` says it is a regular file, so devices, FIFOs and sockets are refused
  without ever being opened (a FIFO would block, a device would stream forever);
- decoding is restricted to `ALLOWED_FORMATS` (PNG, JPEG, WebP, BMP, TIFF): formats whose Pillow
  plugin runs an external program (EPS through Ghostscript) or that are rarely real photographs are
  never tried;
- images over `MAX_PIXELS` are refused before decoding (decompression bombs);
- an EXIF orientation is applied (`upright`), as `datasets` applies it to a dataset's images.

Pixels (`to_rgb8`, `to_mask8`): everything downstream (editors, metrics, gallery) sees 8-bit RGB
images and 8-bit L masks (255 = edit here). Deeper sources are *scaled*, never clipped:
- 16-bit integer (`I;16*`, and `I` with values in [0, 65535]): v / 257, rounded (65535 -> 255);
  16-bit RGB(A) PNGs arrive already reduced by Pillow, which keeps the high byte (v >> 8: up to one
  level below v / 257 rounded, for values that are not 8-bit levels scaled by 257);
- float (`F`): values in [0, 1] are multiplied by 255; values in [0, 255] are taken as 8-bit levels;
  anything else (negative, > 255, NaN, inf) has no knowable range and is refused;
- alpha is dropped, not composited; palettes are expanded; grey is replicated into three channels.

Editor outputs (`check_image`): the one check every run applies to what an editor returns (a dataset
run's samples, a benchmark run's final and intermediate turn images): a PIL image or an HxWx3(4)
array, uint8 or float in [0, 1]. Values outside the range are the output's status (`out_of_range`),
NaN/inf, other shapes or dtypes `invalid`: never clipped, zeroed or wrapped around. A PIL image of a
mode deeper than 8 bits per channel (`F`, `I`, `I;16*`, `I;32*`) is checked as the same pixels given as
an array (one band replicated to three), since Pillow's own conversion clips 16-bit values to 255 and
truncates float values.

The mask rule: a mask is converted with the same scaling to one grey channel (alpha dropped, colour
by ITU-R 601 luma as Pillow's "L"), 255 = edit region, intermediate values are soft weights. A mask
whose values are only 0 and 1 (with some 1s) is a 0/1 label map saved as an image: it is rescaled to
0/255 (validation warns about it), since read literally it would exclude almost nothing.
"""
from __future__ import annotations

import io
import os
import stat
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageMode, ImageOps

from .errors import DataError
from .status import Status

ALLOWED_FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "TIFF")
ORIENTATION_TAG = 0x0112  # EXIF Orientation
# Above this many pixels an image is treated as a decompression bomb and never decoded. CIEBench's
# largest image has about 1.0 Mpx; 64 Mpx leaves room for any real benchmark photograph.
MAX_PIXELS = 64_000_000


class ImageRefused(DataError):
    """An image file that ciebench will not read or decode (special file, format, size, range)."""


def read_regular_file(path: str | os.PathLike, max_bytes: int | None = None) -> bytes:
    """The bytes of `path`, which must be a regular file (checked by `stat` before it is opened)."""
    path = Path(path)
    try:
        info = os.stat(path)
    except OSError as exc:
        raise ImageRefused(f"{path}: cannot stat ({exc.strerror or exc})") from exc
    if not stat.S_ISREG(info.st_mode):
        raise ImageRefused(f"{path}: not a regular file ({_kind(info.st_mode)}); refused without reading")
    if max_bytes is not None and info.st_size > max_bytes:
        raise ImageRefused(f"{path}: {info.st_size} bytes, over the {max_bytes}-byte limit")
    # O_NONBLOCK: should the path be swapped for a FIFO between stat and open, open does not hang,
    # and fstat below refuses it before a byte is read.
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    with os.fdopen(fd, "rb") as fh:
        if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
            raise ImageRefused(f"{path}: not a regular file; refused without reading")
        data = fh.read() if max_bytes is None else fh.read(max_bytes + 1)
    if max_bytes is not None and len(data) > max_bytes:
        raise ImageRefused(f"{path}: over the {max_bytes}-byte limit")
    return data


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "a special file"


def open_image(data: bytes, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Decode `data` fully, trying only `ALLOWED_FORMATS`; raise `ImageRefused` for a format outside
    the list or an image over `max_pixels`, and Pillow's own errors for corrupt data."""
    try:
        probe = Image.open(io.BytesIO(data), formats=list(ALLOWED_FORMATS))
    except Image.UnidentifiedImageError as exc:
        raise ImageRefused(f"not a {'/'.join(ALLOWED_FORMATS)} image (other formats are not read)") from exc
    with probe:
        width, height = probe.size
    if width * height > max_pixels:
        raise ImageRefused(f"{width}x{height} ({width * height / 1e6:.0f} Mpx), over the {max_pixels / 1e6:.0f} Mpx "
                           "decompression-bomb limit; not decoded")
    image = Image.open(io.BytesIO(data), formats=list(ALLOWED_FORMATS))
    image.load()
    return upright(image)


def exif_orientation(image: Image.Image) -> int:
    """The EXIF Orientation tag (1 = as stored; 2-8 = mirrored and/or rotated when displayed)."""
    try:
        return int(image.getexif().get(ORIENTATION_TAG, 1) or 1)
    except Exception:  # noqa: BLE001 - a malformed EXIF block: no orientation to apply, the pixels are fine
        return 1


def upright(image: Image.Image) -> Image.Image:
    """`image` as it is displayed: its EXIF orientation applied, as Hugging Face `datasets` applies it
    when it decodes a dataset's images. Every image ciebench reads goes through this one rule, so a
    phone photo's source, its mask and an editor's output are compared on one pixel grid."""
    return ImageOps.exif_transpose(image) if exif_orientation(image) != 1 else image


def open_image_file(path: str | os.PathLike, max_pixels: int = MAX_PIXELS) -> Image.Image:
    return open_image(read_regular_file(path), max_pixels)


def _grey8(image: Image.Image) -> Image.Image | None:
    """One-channel 16-bit / 32-bit / float images as 8-bit L by the module's scaling rule; None for
    every other mode (Pillow's own conversion is exact for 8-bit modes)."""
    mode = image.mode
    if mode.startswith("I;16") or mode == "I":
        values = np.asarray(image).astype(np.float64)
        if mode == "I" and values.size and (values.min() < 0 or values.max() > 65535):
            raise ImageRefused(f"32-bit integer image with values in [{values.min():.0f}, {values.max():.0f}]: "
                               "not a 16-bit range; save it as 8- or 16-bit")
        return Image.fromarray(np.round(values / 257.0).astype(np.uint8), "L")
    if mode == "F":
        values = np.asarray(image).astype(np.float64)
        if not np.isfinite(values).all():
            raise ImageRefused("float image contains NaN or inf")
        if values.size and (values.min() < 0 or values.max() > 255):
            raise ImageRefused(f"float image with values in [{values.min():.3g}, {values.max():.3g}]: "
                               "expected [0, 1] or [0, 255]")
        scale = 255.0 if not values.size or values.max() <= 1.0 else 1.0
        return Image.fromarray(np.round(values * scale).astype(np.uint8), "L")
    return None


def to_rgb8(image: Image.Image) -> Image.Image:
    """8-bit RGB by the module's rule (16-bit and float scaled, alpha dropped, grey replicated)."""
    if image.mode == "RGB":
        return image
    grey = _grey8(image)
    if grey is not None:
        return grey.convert("RGB")
    return image.convert("RGB")


def _mask_levels(mask: Image.Image) -> tuple[np.ndarray, bool]:
    """(8-bit levels by the mask rule, whether the mask was a 0/1 label map)."""
    if mask.mode.startswith("I"):
        raw = np.asarray(mask)
        if raw.size and raw.min() >= 0 and raw.max() == 1:  # a 16/32-bit label map: 1 would scale to 0
            return (raw * 255).astype(np.uint8), True
    grey = _grey8(mask)
    if grey is None:
        if mask.mode in ("RGBA", "LA", "PA", "P"):
            mask = mask.convert("RGB")  # alpha dropped, palette expanded, as for images
        grey = mask if mask.mode == "L" else mask.convert("L")
    levels = np.asarray(grey)
    # Values only 0 and 1, with some 1s: a label map, not a 0/255 mask.
    if levels.size and int(levels.max()) == 1:
        return (levels * 255).astype(np.uint8), True
    return levels, False


def to_mask8(mask: Image.Image) -> Image.Image:
    """The mask rule: 8-bit L, 255 = edit region (see the module docstring); 0/1 label maps rescaled."""
    if mask.mode == "L" and mask.getextrema()[1] != 1:
        return mask  # the common case, without a copy
    return Image.fromarray(_mask_levels(mask)[0], "L")


def mask_is_label_map(mask: Image.Image) -> bool:
    """Whether `to_mask8` rescales this mask as a 0/1 label map (validation warns about it)."""
    return _mask_levels(mask)[1]


FLOAT_TOLERANCE = 1e-6  # float pixels this far outside [0, 1] are rounding, not an out-of-range output


def check_image(value: Any, size: tuple[int, int] | None = None) -> tuple[Image.Image | None, Status | None, str | None]:
    """(image, status, problem) for an editor's output: values outside the valid range are reported
    (Status.OUT_OF_RANGE), never clipped or wrapped around; anything else unusable (no image, NaN/inf, a
    shape or dtype that is no RGB image, an object numpy or PIL cannot read, another size than `size`
    where one is required) is Status.INVALID. `size` None: any size (benchmarks take any output size)."""
    try:
        return _check_image(value, size)
    except Exception as exc:  # noqa: BLE001 - an output numpy/PIL cannot read fails its sample only
        return None, Status.INVALID, f"editor returned an unreadable image ({type(exc).__name__}: {exc})"


def _check_image(value: Any, size: tuple[int, int] | None) -> tuple[Image.Image | None, Status | None, str | None]:
    if value is None:
        return None, Status.INVALID, "editor returned no image"
    if not isinstance(value, Image.Image):
        image, status, problem = _check_array(np.asarray(value.detach().cpu() if hasattr(value, "detach") else value))
    elif _eight_bit(value.mode):
        image, status, problem = value, None, None
    else:
        # Pillow's convert("RGB") would clip 16/32-bit values to 255 and truncate floats in [0, 1] to 0 or 1
        # (a grey float image scored as black), so these pixels take the array rule, one band as grey.
        array = np.asarray(value)
        if array.ndim == 2:
            array = np.repeat(array[..., None], 3, axis=2)
        image, status, problem = _check_array(array, f" (a PIL image of mode {value.mode})")
    if image is None:
        return None, status, problem
    if size is not None and image.size != size:
        return None, Status.INVALID, (f"editor returned {image.size[0]}x{image.size[1]}, "
                                      f"the source is {size[0]}x{size[1]}")
    return image.convert("RGB"), None, None


def _eight_bit(mode: str) -> bool:
    """Whether Pillow stores `mode` in 8 bits (or 1 bit) per channel (L, LA, P, PA, RGB, RGBA, 1, CMYK,
    YCbCr, LAB, HSV, ...): then its own conversion to RGB is exact. Unknown modes count as deeper."""
    try:
        return ImageMode.getmode(mode).typestr in ("|u1", "|b1")
    except KeyError:
        return False


def _check_array(array: np.ndarray, origin: str = "") -> tuple[Image.Image | None, Status | None, str | None]:
    """The array rule of `check_image`; `origin` names where the pixels came from in the problem."""
    if array.ndim != 3 or array.shape[2] not in (3, 4):
        return None, Status.INVALID, f"editor returned an array of shape {array.shape}{origin}, expected HxWx3"
    if array.dtype.kind == "f":
        if not np.isfinite(array).all():
            return None, Status.INVALID, f"editor returned an image with NaN or inf values{origin}"
        low, high = float(array.min()), float(array.max())
        if low < -FLOAT_TOLERANCE or high > 1 + FLOAT_TOLERANCE:
            return None, Status.OUT_OF_RANGE, (f"editor returned float pixels in [{low:.4g}, {high:.4g}]{origin}; "
                                               "float images must lie in [0, 1] (nothing was clipped)")
        array = np.round(np.clip(array, 0.0, 1.0) * 255.0).astype(np.uint8)
    elif array.dtype.kind in "iu":
        low, high = int(array.min()), int(array.max())
        if low < 0 or high > 255:
            return None, Status.OUT_OF_RANGE, (f"editor returned integer pixels in [{low}, {high}]{origin}; integer "
                                               "images must lie in [0, 255] (nothing was wrapped around)")
        array = array.astype(np.uint8)
    elif array.dtype.kind == "b":
        return None, Status.INVALID, "editor returned a boolean array, expected an RGB image"
    else:
        return None, Status.INVALID, f"editor returned an array of dtype {array.dtype}{origin}, expected uint8 or float"
    return Image.fromarray(array[..., :3]), None, None
