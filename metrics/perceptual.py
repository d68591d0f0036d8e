"""LPIPS v0.1 with the SqueezeNet trunk, batched, with parity and background-weighted reductions.

The network is the published one: torchvision's `squeezenet1_1` ImageNet features cut after
layers 2, 5, 8, 10, 11, 12 and 13 (seven taps), a fixed input scaling layer, unit-normalised
features, squared differences, and the lpips package's v0.1 linear heads (1x1 convolutions to one
channel). Only the heads ship with lpips / torchmetrics; the trunk comes from torchvision's weights
API, which caches it in `$TORCH_HOME/hub/checkpoints/squeezenet1_1-b8a52dc0.pth`.

Reductions of the seven head maps d_l (B, 1, h_l, w_l):
- spatial mean (parity): LPIPS = sum_l mean(d_l), images first multiplied by w;
- background-weighted (exact): each d_l is upsampled bilinearly (align_corners=False, as lpips'
  `spatial=True` does) to the image size, summed over layers into one map D, and
  LPIPS = sum_p w_p D_p / sum_p w_p over the raw images' map.
"""
from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .pixel import Weighting, background_weight, check_pair, masked_pair, weighted_mean
from .precision import float32_math

# SqueezeNet feature indices where the lpips taps end (slices [0:2], [2:5], ... [12:13]).
_TAPS = (2, 5, 8, 10, 11, 12, 13)
_CHANNELS = (64, 128, 256, 384, 384, 512, 512)
# LPIPS v0.1 input scaling (the trunk's expected statistics for inputs in [-1, 1]).
_SHIFT = (-0.030, -0.088, -0.188)
_SCALE = (0.458, 0.448, 0.450)
TRUNK_FILE = "squeezenet1_1-b8a52dc0.pth"


def lpips_heads_path(version: str = "0.1", net: str = "squeeze") -> Path:
    spec = importlib.util.find_spec("lpips")
    if spec is None or spec.origin is None:
        raise ImportError("LPIPS needs the `lpips` package for its linear heads (pip install lpips)")
    return Path(spec.origin).parent / "weights" / f"v{version}" / f"{net}.pth"


def load_squeezenet_features() -> nn.Sequential:
    """torchvision's ImageNet squeezenet1_1 features (loaded from the torch hub cache, or downloaded
    there on first use)."""
    from torchvision.models import SqueezeNet1_1_Weights, squeezenet1_1

    try:
        model = squeezenet1_1(weights=SqueezeNet1_1_Weights.IMAGENET1K_V1)
    except Exception as exc:  # noqa: BLE001 - an offline miss surfaces as URLError, OSError, ...
        raise RuntimeError(
            f"LPIPS needs torchvision's squeezenet1_1 ImageNet weights ({TRUNK_FILE}) in "
            f"$TORCH_HOME/hub/checkpoints/ or network access to download them: {exc}") from exc
    return model.features


class SqueezeLPIPS(nn.Module):
    """LPIPS v0.1 (squeeze). `forward(x0, x1)` takes images in [-1, 1] and returns the seven head
    maps; use `background_lpips` for scores."""

    def __init__(self, features: nn.Sequential, heads: dict[str, Tensor], norm_eps: float = 1e-8) -> None:
        super().__init__()
        bounds = (0,) + _TAPS
        self.slices = nn.ModuleList(nn.Sequential(*[features[i] for i in range(a, b)]) for a, b in zip(bounds, bounds[1:]))
        self.heads = nn.ModuleList(nn.Conv2d(c, 1, 1, bias=False) for c in _CHANNELS)
        for i, head in enumerate(self.heads):
            head.weight.data.copy_(heads[f"lin{i}.model.1.weight"])
        self.register_buffer("shift", torch.tensor(_SHIFT).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor(_SCALE).view(1, 3, 1, 1))
        self.norm_eps = norm_eps
        self.requires_grad_(False)
        self.eval()
        # channels-last convolutions: about a third less time on CPU (oneDNN) and tensor-core friendly
        # on CUDA; the maps differ from NCHW's only by float rounding (~1e-9 on CIEBench).
        self.to(memory_format=torch.channels_last)

    @classmethod
    def pretrained(cls, version: str = "0.1", norm_eps: float = 1e-8) -> "SqueezeLPIPS":
        heads = torch.load(lpips_heads_path(version), map_location="cpu", weights_only=True)
        return cls(load_squeezenet_features(), heads, norm_eps)

    def _normalize(self, f: Tensor) -> Tensor:
        return f / torch.sqrt(self.norm_eps + (f * f).sum(1, keepdim=True))

    def forward(self, x0: Tensor, x1: Tensor) -> list[Tensor]:
        n = x0.shape[0]
        h = ((torch.cat((x0, x1)) - self.shift) / self.scale).contiguous(memory_format=torch.channels_last)
        maps = []
        with float32_math():  # the caller's forward precision, else IEEE float32
            for block, head in zip(self.slices, self.heads):
                h = block(h)
                # Under bfloat16 autocast the convolutions return bfloat16: normalise and reduce in
                # float32 (no-ops in float32).
                f0, f1 = self._normalize(h[:n].float()), self._normalize(h[n:].float())
                maps.append(head((f0 - f1) ** 2).float())
        return maps


def lpips_from_maps(maps: list[Tensor], size: tuple[int, int], w: Tensor | None) -> Tensor:
    """Per-image LPIPS (B,), float64: spatial means when `w` is None, else the w-weighted mean of the
    upsampled, layer-summed map."""
    if w is None:
        return sum(m.double().flatten(1).mean(1) for m in maps)
    total = sum(F.interpolate(m, size=size, mode="bilinear", align_corners=False) for m in maps)
    return weighted_mean(total, w)


def background_lpips(preds: Tensor, target: Tensor, mask: Tensor | None, net: SqueezeLPIPS,
                     weighting: Weighting = "multiply") -> Tensor:
    """Per-image background LPIPS (B,) of images in [0, 1] (mapped to [-1, 1] as 2x - 1)."""
    check_pair(preds, target)
    w = background_weight(mask, preds)
    if weighting == "multiply":
        p, t = masked_pair(preds, target, w)
        return lpips_from_maps(net(2 * p - 1, 2 * t - 1), preds.shape[-2:], None)
    if weighting == "exact":
        if not bool((w.flatten(1).sum(1) > 0).any()):
            return torch.full((preds.shape[0],), math.nan, dtype=torch.float64, device=preds.device)
        return lpips_from_maps(net(2 * preds - 1, 2 * target - 1), preds.shape[-2:], w)
    raise ValueError(f"unknown weighting {weighting!r}")
