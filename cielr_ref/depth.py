"""Monocular depth with Depth Anything V2 (transformers), normalised per image to 0 = near, 1 = far.

    est = DepthEstimator("depth-anything/Depth-Anything-V2-Large-hf", device="cuda")
    depth = est.estimate([image])[0]   # float32 HxW in [0, 1]

Relative Depth Anything checkpoints predict inverse depth (larger = nearer); metric checkpoints
(`depth_estimation_type == "metric"`) predict metres (larger = farther). Both are mapped to the same
convention so that the SSR and the spatial operators never need to know which one ran. Images of the
same size are batched together (the processor resizes by aspect ratio, so sizes must agree).
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
from PIL import Image

from .common import CallStats, chunks, group_by, torch_dtype


class DepthEstimator:
    backend = "depth-anything-transformers"

    def __init__(self, model_id: str = "depth-anything/Depth-Anything-V2-Large-hf", device: str = "cpu",
                 dtype: str = "float32", revision: str | None = None, batch_size: int = 4):
        import transformers

        self.model_id, self.device, self.dtype = model_id, device, torch_dtype(dtype, device)
        self.batch_size = max(1, batch_size)
        self.processor = transformers.AutoImageProcessor.from_pretrained(model_id, revision=revision)
        self.model = transformers.AutoModelForDepthEstimation.from_pretrained(
            model_id, revision=revision, dtype=self.dtype, trust_remote_code=False)
        self.model.to(device).eval()
        kind = getattr(self.model.config, "depth_estimation_type", "relative")
        self.inverse = kind != "metric"
        self.stats = CallStats()

    def describe(self) -> dict[str, Any]:
        return {"backend": self.backend, "model": self.model_id, "output": "inverse depth" if self.inverse else "metric",
                "convention": "normalised per image: 0 = nearest, 1 = farthest",
                "dtype": str(self.dtype).replace("torch.", "")}

    def estimate(self, images: Sequence[Image.Image], keys: Sequence[Any] = ()) -> list[np.ndarray]:
        import torch
        import torch.nn.functional as F

        keys = list(keys) or list(range(len(images)))
        out: list[np.ndarray | None] = [None] * len(images)
        for group in group_by(images, lambda im: im.size):
            for batch in chunks(group, self.batch_size):
                inputs = self.processor(images=[images[i].convert("RGB") for i in batch], return_tensors="pt")
                pixel_values = inputs["pixel_values"].to(self.device, self.dtype)
                with self.stats.track([keys[i] for i in batch]), torch.inference_mode():
                    pred = self.model(pixel_values=pixel_values).predicted_depth.float()
                w, h = images[batch[0]].size
                pred = F.interpolate(pred[:, None], size=(h, w), mode="bicubic", align_corners=False)[:, 0]
                for j, i in enumerate(batch):
                    out[i] = normalise_depth(pred[j].cpu().numpy(), inverse=self.inverse)
        return out  # type: ignore[return-value]


def normalise_depth(raw: np.ndarray, inverse: bool) -> np.ndarray:
    """Map a raw prediction to [0, 1], 0 = nearest. A constant map becomes all 0.5."""
    raw = np.nan_to_num(raw.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    lo, hi = float(raw.min()), float(raw.max())
    if hi - lo < 1e-12:
        return np.full(raw.shape, 0.5, dtype=np.float32)
    x = (raw - lo) / (hi - lo)
    return (1.0 - x if inverse else x).astype(np.float32)
