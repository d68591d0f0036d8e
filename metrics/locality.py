"""Edit locality: did the editor change the region the instruction was about, and only that?

On the protocol's aligned grid, with images quantised to 8-bit levels:
- changed pixel: max over channels of |prediction - source| > `threshold` (default 8 levels, 8/255),
  so resampling and codec noise do not count as an edit;
- region pixel: mask >= `mask_level` (default 128, i.e. at least half covered by the soft mask).
TP = changed & region, FP = changed & ~region, FN = ~changed & region, and
precision = TP / (TP + FP)          NaN when nothing changed,
recall    = TP / (TP + FN)          NaN when the region is empty,
f1        = 2TP / (2TP + FP + FN)   NaN only when nothing changed and the region is empty
(f1 equals the harmonic mean of precision and recall where both are defined, and is 0 for an
editor that changed nothing inside a non-empty region).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor


def _levels(x: Tensor) -> Tensor:
    if x.dtype == torch.uint8:
        return x.to(torch.int16)
    return (x.float() * 255).round().to(torch.int16)


def _ratio(num: Tensor, den: Tensor) -> Tensor:
    num, den = num.double(), den.double()
    return torch.where(den > 0, num / den.clamp_min(1), torch.full_like(den, math.nan))


def edit_locality(preds: Tensor, target: Tensor, mask: Tensor | None, threshold: int = 8,
                  mask_level: int = 128) -> dict[str, Tensor]:
    """Per-image {"precision", "recall", "f1"} (each (B,), float64).

    `preds`, `target` (B, 3, H, W) uint8 or float in [0, 1]; `mask` (B, 1, H, W) / (B, H, W) uint8
    or float in [0, 1] (1 = edit region), or None (empty region)."""
    if preds.shape != target.shape or preds.ndim != 4:
        raise ValueError(f"expected two (B, C, H, W) tensors of one shape, got {tuple(preds.shape)} and {tuple(target.shape)}")
    changed = (_levels(preds) - _levels(target)).abs().amax(1) > threshold
    if mask is None:
        region = torch.zeros_like(changed)
    else:
        m = mask[:, 0] if mask.ndim == 4 else mask
        if m.shape != changed.shape:
            raise ValueError(f"mask of shape {tuple(mask.shape)} does not fit images of shape {tuple(preds.shape)}")
        region = _levels(m) >= mask_level
    tp = (changed & region).flatten(1).sum(1)
    fp = (changed & ~region).flatten(1).sum(1)
    fn = (~changed & region).flatten(1).sum(1)
    return {"precision": _ratio(tp, tp + fp), "recall": _ratio(tp, tp + fn), "f1": _ratio(2 * tp, 2 * tp + fp + fn)}
