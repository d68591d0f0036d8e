"""Background MSE and PSNR, batched.

Shapes: `preds`, `target` (B, C, H, W) float in [0, 1]; `mask` (B, 1, H, W) or (B, H, W) in [0, 1],
1 = edit region (soft edges allowed), or None for "no edit region". The background weight is
`w = 1 - mask`.

- weighting="multiply" (parity): `w` is multiplied into both images and the squared error is
  averaged over all C*H*W elements of an image, masked ones included, as the published scripts do.
- weighting="exact": sum(w * (p - t)^2) / (C * sum(w)); NaN when sum(w) == 0 (no background).

Arithmetic: "torchmetrics-float32" (the parity default) sums each image's squared error in
float32 and takes the logarithm in float32, the operations torchmetrics' PSNR / MSE modules run,
so parity values carry the published rounding (PSNR agrees to ~1e-6 dB rather than ~1e-5).
"float64" (the `exact` default) accumulates in float64.
"""
from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor

Weighting = Literal["multiply", "exact"]
Arithmetic = Literal["torchmetrics-float32", "float64"]


def default_arithmetic(weighting: str) -> str:
    return "torchmetrics-float32" if weighting == "multiply" else "float64"


def background_weight(mask: Tensor | None, like: Tensor) -> Tensor:
    """w = 1 - mask as (B, 1, H, W) in `like`'s dtype; ones when there is no mask."""
    if mask is None:
        return torch.ones((like.shape[0], 1, *like.shape[2:]), dtype=like.dtype, device=like.device)
    if mask.ndim == 3:
        mask = mask[:, None]
    if mask.ndim != 4 or mask.shape[1] != 1 or mask.shape[0] != like.shape[0] or mask.shape[2:] != like.shape[2:]:
        raise ValueError(f"mask of shape {tuple(mask.shape)} does not fit images of shape {tuple(like.shape)}")
    if mask.dtype == torch.uint8:
        mask = mask.to(like.dtype) / 255
    return 1 - mask.to(device=like.device, dtype=like.dtype)


def check_pair(preds: Tensor, target: Tensor) -> None:
    if preds.shape != target.shape or preds.ndim != 4:
        raise ValueError(f"expected two (B, C, H, W) tensors of one shape, got {tuple(preds.shape)} and {tuple(target.shape)}")
    if not preds.is_floating_point() or not target.is_floating_point():
        raise TypeError("expected float images in [0, 1]")


def masked_pair(preds: Tensor, target: Tensor, w: Tensor) -> tuple[Tensor, Tensor]:
    """The parity step: the weight multiplied into both images (in the images' dtype, as the
    published scripts did with float32 numpy arrays)."""
    return preds * w, target * w


def weighted_mean(values: Tensor, w: Tensor) -> Tensor:
    """Per-image sum(w * v) / sum(w) in float64 over all but the batch dim; NaN where sum(w) == 0.
    `values` (B, H, W) or (B, 1, H, W), `w` broadcastable to it."""
    v = values.double().flatten(1)
    ww = torch.broadcast_to(w.double(), values.shape).flatten(1)
    den = ww.sum(1)
    num = (v * ww).sum(1)
    return torch.where(den > 0, num / den.clamp_min(torch.finfo(torch.float64).tiny), torch.full_like(den, math.nan))


def _sse_float32(p: Tensor, t: Tensor) -> Tensor:
    """Per-image float32 sum of squared errors, each image reduced on its own as torchmetrics
    reduces a one-image batch (a batched reduction would sum in another order)."""
    return torch.stack([torch.sum((p[i] - t[i]) * (p[i] - t[i])) for i in range(p.shape[0])])


def background_mse_psnr(preds: Tensor, target: Tensor, mask: Tensor | None = None, weighting: Weighting = "multiply",
                        data_range: float = 1.0, arithmetic: Arithmetic | None = None) -> tuple[Tensor, Tensor]:
    """Per-image background (MSE, PSNR in dB), each (B,) float64; PSNR is +inf where MSE == 0."""
    check_pair(preds, target)
    arithmetic = arithmetic or default_arithmetic(weighting)
    w = background_weight(mask, preds)
    if weighting == "multiply":
        p, t = masked_pair(preds, target, w)
        if arithmetic == "torchmetrics-float32":
            n = torch.tensor(p[0].numel(), device=p.device)
            mse = _sse_float32(p.float(), t.float()) / n
            # torchmetrics: (2 ln(range) - ln(sse / n)) * (10 / ln(10)), all in float32.
            psnr = (2 * torch.log(torch.tensor(float(data_range))) - torch.log(mse)) * (10 / torch.log(torch.tensor(10.0)))
            psnr = torch.where(mse == 0, torch.full_like(psnr, math.inf), psnr)  # identical: +inf by definition
            return mse.double(), psnr.double()
        if arithmetic != "float64":
            raise ValueError(f"unknown arithmetic {arithmetic!r}")
        diff = (p - t).double()
        mse = (diff * diff).flatten(1).mean(1)
    elif weighting == "exact":
        diff = (preds - target).double()
        mse = weighted_mean((diff * diff).mean(1, keepdim=True), w)
    else:
        raise ValueError(f"unknown weighting {weighting!r}")
    return mse, psnr_from_mse(mse, data_range)


def background_mse(preds: Tensor, target: Tensor, mask: Tensor | None = None, weighting: Weighting = "multiply",
                   arithmetic: Arithmetic | None = None) -> Tensor:
    """Per-image background MSE (B,), float64."""
    return background_mse_psnr(preds, target, mask, weighting, arithmetic=arithmetic)[0]


def psnr_from_mse(mse: Tensor, data_range: float = 1.0) -> Tensor:
    """10 * log10(range^2 / mse) in float64; +inf where mse == 0 (identical backgrounds), NaN stays NaN."""
    mse = mse.double()
    value = 10.0 * (2.0 * math.log10(data_range) - torch.log10(mse.clamp_min(torch.finfo(torch.float64).tiny)))
    return torch.where(mse == 0, torch.full_like(mse, math.inf), value)


def background_psnr(preds: Tensor, target: Tensor, mask: Tensor | None = None, weighting: Weighting = "multiply",
                    data_range: float = 1.0, arithmetic: Arithmetic | None = None) -> Tensor:
    """Per-image background PSNR in dB (B,), float64; +inf for identical backgrounds."""
    return background_mse_psnr(preds, target, mask, weighting, data_range, arithmetic)[1]
