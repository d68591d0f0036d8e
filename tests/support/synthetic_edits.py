"""Synthetic "edited images" for metric tests and benchmarks: deterministic, one per kind.

Each kind stresses one part of the protocols: changes inside vs outside the mask, content moved
by a few pixels, a prediction at another size (an editor working at 512x512), grey and RGBA files.
"""
from __future__ import annotations

import numpy as np
from PIL import Image

KINDS = ("identity", "noise_in_mask", "noise_everywhere", "shifted_patch", "other_size", "grey", "rgba")


def _mask_array(source: Image.Image, mask: Image.Image | None) -> np.ndarray:
    """Float mask in [0, 1] at the source's size (nearest resize, as the protocols align masks)."""
    if mask is None:
        return np.zeros((source.height, source.width), dtype=np.float64)
    if mask.size != source.size:
        mask = mask.resize(source.size, Image.Resampling.NEAREST)
    return np.asarray(mask.convert("L"), dtype=np.float64) / 255.0


def synthetic_edit(source: Image.Image, mask: Image.Image | None, kind: str, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    src = np.asarray(source.convert("RGB"), dtype=np.float64)
    m = _mask_array(source, mask)[..., None]
    h, w = src.shape[:2]
    if kind == "identity":
        return source.copy()
    if kind == "noise_in_mask":
        out = src + m * rng.normal(0, 60, src.shape)
    elif kind == "noise_everywhere":
        out = src + rng.normal(0, 6, src.shape) + m * rng.normal(0, 50, src.shape)
    elif kind == "shifted_patch":
        # A block of the image moved by a few pixels, away from and across the mask's edge.
        out = src.copy()
        y0, x0 = h // 4, w // 3
        out[y0:y0 + h // 3, x0:x0 + w // 4] = np.roll(src, (7, -11), axis=(0, 1))[y0:y0 + h // 3, x0:x0 + w // 4]
        out = out * (1 - m) + (255 - src) * m
    elif kind == "other_size":
        edited = src * (1 - m) + m * rng.uniform(0, 255, src.shape)
        return Image.fromarray(np.clip(np.round(edited), 0, 255).astype(np.uint8), "RGB").resize((512, 512), Image.Resampling.BICUBIC)
    elif kind == "grey":
        grey = np.asarray(source.convert("L"), dtype=np.float64)
        out = grey + m[..., 0] * rng.normal(0, 40, grey.shape)
        return Image.fromarray(np.clip(np.round(out), 0, 255).astype(np.uint8), "L")
    elif kind == "rgba":
        out = src + m * rng.normal(0, 30, src.shape)
        alpha = rng.integers(0, 256, (h, w, 1))
        rgba = np.concatenate([np.clip(np.round(out), 0, 255), alpha], axis=2).astype(np.uint8)
        return Image.fromarray(rgba, "RGBA")
    else:
        raise ValueError(f"unknown synthetic edit {kind!r}; known: {', '.join(KINDS)}")
    return Image.fromarray(np.clip(np.round(out), 0, 255).astype(np.uint8), "RGB")
