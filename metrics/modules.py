"""torchmetrics `Metric` classes over the functional twins, one per region metric.

Every class takes images already aligned by the protocol (see `metrics.align.align`), as float
tensors in [0, 1] (B, 3, H, W) plus the mask (B, 1, H, W) in [0, 1], 1 = edit region. `compute`
returns the mean over images of the per-image values, as the published scripts average their
per-image calls; undefined (NaN) images are left out and counted in the `undefined` state (so is,
for the background metrics, an image whose mask covers all of it, as in `RegionScorer`).
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import torch
from torch import Tensor
from torchmetrics import Metric

from . import catalogue
from .align import no_background
from .clipscore import RegionCLIP, clip_score
from .locality import edit_locality
from .perceptual import SqueezeLPIPS, background_lpips
from .pixel import background_mse, background_psnr
from .protocols import Protocol, get_protocol
from .ssim import background_ssim


class _PerImageMean(Metric):
    is_differentiable = False
    full_state_update = False

    def __init__(self, protocol: Protocol | str = "cielr", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.protocol = get_protocol(protocol)
        self.add_state("total", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("undefined", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def _accumulate(self, values: Tensor) -> None:
        values = values.to(self.total.device, torch.float64)
        ok = ~torch.isnan(values)
        self.total += values[ok].sum()
        self.count += ok.sum()
        self.undefined += (~ok).sum()

    def compute(self) -> Tensor:
        if self.count == 0:
            return torch.tensor(math.nan, dtype=torch.float64)
        return self.total / self.count


class _BackgroundMean(_PerImageMean):
    """A metric of the unchanged region: an image whose mask covers all of it has none, and is
    undefined (as in `RegionScorer`), not the parity formula's perfect score."""

    def _accumulate_background(self, values: Tensor, mask: Tensor | None) -> None:
        if mask is not None:
            values = values.to(torch.float64).masked_fill(no_background(mask).to(values.device), math.nan)
        self._accumulate(values)


class BackgroundPSNR(_BackgroundMean):
    """Mean per-image background PSNR (dB); +inf when an image's background is unchanged."""

    higher_is_better = catalogue.CATALOGUE["psnr"].higher_is_better

    def update(self, preds: Tensor, target: Tensor, mask: Tensor | None = None) -> None:
        p = self.protocol
        self._accumulate_background(background_psnr(preds, target, mask, p.weighting, p.data_range, p.arithmetic), mask)


class BackgroundMSE(_BackgroundMean):
    higher_is_better = catalogue.CATALOGUE["mse"].higher_is_better

    def update(self, preds: Tensor, target: Tensor, mask: Tensor | None = None) -> None:
        self._accumulate_background(background_mse(preds, target, mask, self.protocol.weighting,
                                                   self.protocol.arithmetic), mask)


class BackgroundSSIM(_BackgroundMean):
    higher_is_better = catalogue.CATALOGUE["ssim"].higher_is_better

    def update(self, preds: Tensor, target: Tensor, mask: Tensor | None = None) -> None:
        p = self.protocol
        self._accumulate_background(background_ssim(preds, target, mask, p.weighting, p.ssim_border, p.data_range,
                                                    p.ssim_sigma, p.ssim_kernel_size, p.ssim_k1, p.ssim_k2,
                                                    p.arithmetic), mask)


class BackgroundLPIPS(_BackgroundMean):
    """Pass `net` to share one loaded network between metric instances."""

    higher_is_better = catalogue.CATALOGUE["lpips"].higher_is_better

    def __init__(self, protocol: Protocol | str = "cielr", net: SqueezeLPIPS | None = None, **kwargs: Any) -> None:
        super().__init__(protocol, **kwargs)
        self.net = net or SqueezeLPIPS.pretrained(self.protocol.lpips_version, self.protocol.lpips_norm_eps)

    def update(self, preds: Tensor, target: Tensor, mask: Tensor | None = None) -> None:
        self._accumulate_background(background_lpips(preds, target, mask, self.net, self.protocol.weighting), mask)


class RegionCLIPScore(_PerImageMean):
    """CLIP score of the mask's box against the CLIP texts. Like torchmetrics' CLIPScore, `update`
    accumulates unclamped scores and `compute` returns max(0, mean); images without a box or text
    are undefined. `images` are uint8 (or float in [0, 1]) (B, 3, H, W) on the protocol's grid."""

    higher_is_better = catalogue.CATALOGUE["clip"].higher_is_better

    def __init__(self, protocol: Protocol | str = "cielr", clip: RegionCLIP | None = None, **kwargs: Any) -> None:
        super().__init__(protocol, **kwargs)
        p = self.protocol
        self.clip = clip or RegionCLIP(p.clip_model, image_backend=p.clip_image_backend, max_tokens=p.clip_max_tokens)
        self.clip_model = self.clip.model  # registered, so .to(device) moves the network

    def update(self, images: Tensor, mask: Tensor, texts: str | Sequence[str | Sequence[str]]) -> None:
        p = self.protocol
        self._accumulate(clip_score(images, mask, texts, self.clip, p.clip_crop, p.clip_scale, clamp=False))

    def compute(self) -> Tensor:
        return super().compute().clamp_min(0.0)


class EditLocality(Metric):
    """Mean per-image edit precision, recall and F1 of the changed pixels against the mask."""

    is_differentiable = False
    full_state_update = False
    higher_is_better = catalogue.CATALOGUE["locality_f1"].higher_is_better

    def __init__(self, protocol: Protocol | str = "cielr", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.protocol = get_protocol(protocol)
        for key in ("precision", "recall", "f1"):
            self.add_state(f"{key}_total", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
            self.add_state(f"{key}_count", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, preds: Tensor, target: Tensor, mask: Tensor | None = None) -> None:
        p = self.protocol
        for key, values in edit_locality(preds, target, mask, p.locality_threshold, p.locality_mask_level).items():
            ok = ~torch.isnan(values)
            setattr(self, f"{key}_total", getattr(self, f"{key}_total") + values[ok].sum().to(self.device))
            setattr(self, f"{key}_count", getattr(self, f"{key}_count") + ok.sum().to(self.device))

    def compute(self) -> dict[str, Tensor]:
        out = {}
        for key in ("precision", "recall", "f1"):
            count = getattr(self, f"{key}_count")
            out[key] = getattr(self, f"{key}_total") / count if count > 0 else torch.tensor(math.nan, dtype=torch.float64)
        return out
