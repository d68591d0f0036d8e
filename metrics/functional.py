"""Functional twins of the region metrics (batched tensors, any device), as in `torchmetrics.functional`."""
from __future__ import annotations

from .clipscore import clip_score
from .locality import edit_locality
from .perceptual import background_lpips
from .pixel import background_mse, background_mse_psnr, background_psnr, psnr_from_mse
from .ssim import background_ssim, ssim_map

__all__ = ["background_psnr", "background_mse", "background_mse_psnr", "psnr_from_mse", "background_ssim", "ssim_map",
           "background_lpips", "clip_score", "edit_locality"]
