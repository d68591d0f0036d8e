"""Bring a (source, prediction, mask) triple onto one pixel grid as a protocol prescribes.

Everything here is PIL / numpy on one sample, so the scorer can run it in worker threads while the
models work on the previous batch."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from ciebench.images import to_mask8, to_rgb8

from .protocols import PIL_FILTERS, Protocol

_FILTERS = {name: getattr(Image.Resampling, name.upper()) for name in PIL_FILTERS}


def pil_filter(name: str) -> Image.Resampling:
    try:
        return _FILTERS[name]
    except KeyError:
        raise ValueError(f"unknown resize filter {name!r}; known: {', '.join(_FILTERS)}") from None


def to_rgb(image: Image.Image) -> Image.Image:
    """8-bit RGB the way the published scripts read predictions (`convert("RGB")`): grey is
    replicated into three channels, alpha is dropped (not composited), palettes are expanded.
    16-bit grey is scaled to 8 bits (v / 257) by the pixel rule of `ciebench.images`; 32-bit integer
    or float *predictions* are refused because their range is not knowable from the file (dataset
    sources have already been brought to 8-bit RGB by that rule when they were read)."""
    if image.mode in ("I", "F"):
        raise ValueError(f"unsupported image mode {image.mode!r} (32-bit): save predictions as 8-bit RGB, L or RGBA")
    return to_rgb8(image)


def to_mask(mask: Image.Image | None) -> Image.Image | None:
    """The one mask rule (`ciebench.images.to_mask8`): 8-bit L, 255 = edit region, 0/1 label maps rescaled."""
    return None if mask is None else to_mask8(mask)


@dataclass
class Aligned:
    """One sample on the protocol's grid: uint8 arrays, mask 255 = edit region (zeros when the sample
    has no mask: nothing is excluded from the background, and no CLIP box exists)."""

    source: np.ndarray  # (H, W, 3) uint8
    prediction: np.ndarray  # (H, W, 3) uint8
    mask: np.ndarray  # (H, W) uint8

    @property
    def size(self) -> tuple[int, int]:
        return self.source.shape[0], self.source.shape[1]

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Float32 (3,H,W), (3,H,W) in [0, 1] and the mask as (1,H,W) in [0, 1]; computed as
        `uint8 / 255` in float32, the same rounding as `np.float32(img) / 255` in the published scripts."""
        src = torch.from_numpy(np.ascontiguousarray(self.source)).permute(2, 0, 1).float() / 255
        pred = torch.from_numpy(np.ascontiguousarray(self.prediction)).permute(2, 0, 1).float() / 255
        mask = torch.from_numpy(np.ascontiguousarray(self.mask))[None].float() / 255
        return src, pred, mask


def align(source: Image.Image, prediction: Image.Image, mask: Image.Image | None, protocol: Protocol) -> Aligned:
    src = to_rgb(source)
    pred = to_rgb(prediction)
    m = to_mask(mask)
    image_filter = pil_filter(protocol.image_filter)
    mask_filter = pil_filter(protocol.mask_filter)
    if protocol.size is not None:
        size = (protocol.size, protocol.size)
        # Each image is squashed from its own size, so a prediction of another size lands on the
        # same grid as the source without a second resampling step.
        src = src.resize(size, image_filter)
        pred = pred.resize(size, image_filter)
    else:
        size = src.size
        if pred.size != size:
            pred = pred.resize(size, image_filter)
    if m is None:
        m_arr = np.zeros((size[1], size[0]), dtype=np.uint8)
    else:
        if m.size != size:
            m = m.resize(size, mask_filter)
        m_arr = np.asarray(m)
    # np.array copies: PIL's buffers are read-only and torch.from_numpy warns about those.
    return Aligned(np.array(src, dtype=np.uint8), np.array(pred, dtype=np.uint8), np.array(m_arr, dtype=np.uint8))


def no_background(mask: torch.Tensor) -> torch.Tensor:
    """(B,) bool: the mask (B, ...) in [0, 1] covers the whole image, so no unchanged region is left.
    The background metrics are undefined there: the parity formula would compare two all-zero images
    and report a perfect score (PSNR inf, MSE 0) for any editor."""
    return mask.flatten(1).ge(1).all(dim=1)


def mask_box(mask: np.ndarray, inclusive: bool) -> tuple[int, int, int, int] | None:
    """PIL box (left, top, right, bottom) around the nonzero mask pixels, or None if there are none.

    `inclusive=False` reproduces the published crop(min_x, min_y, max_x, max_y): PIL's right and
    bottom are exclusive, so the last column and row of the region are dropped."""
    ys, xs = np.nonzero(mask)
    if ys.size == 0:
        return None
    extra = 1 if inclusive else 0
    return int(xs.min()), int(ys.min()), int(xs.max()) + extra, int(ys.max()) + extra


def crop_box(image: np.ndarray, box: tuple[int, int, int, int] | None) -> np.ndarray | None:
    """The box's pixels (H, W, 3), or None when there is no box or it is empty (a one-row or
    one-column region under the exclusive crop)."""
    if box is None:
        return None
    left, top, right, bottom = box
    if right <= left or bottom <= top:
        return None
    return np.ascontiguousarray(image[top:bottom, left:right])
