"""Automatic mask generation: SAM 2.1 through transformers (default) or the `segment-anything` package.

A segmenter (protocol `components.Segmenter`) turns images into lists of boolean masks (image size,
largest first):

    seg = Sam2Segmenter("facebook/sam2.1-hiera-large", AMGParams(), device="cuda")
    masks = seg.segment([image])[0]

`Sam2Segmenter` implements SAM's automatic mask generation over `Sam2Model` itself: a grid of point
prompts per crop (crop layer 0 is the whole image, layer i adds (2^i)^2 overlapping crops), three
masks per point, filtered by predicted IoU (above its threshold) and by stability (at or above its
threshold; the IoU between the mask thresholded at +offset and at -offset), masks touching a crop
edge that is not an image edge dropped, box NMS within each crop and then across crops (preferring
masks from smaller crops). With `use_m2m` (SAM 2's mask-to-mask refinement) every first-pass mask is
predicted once more from its point with its own low-resolution logits as the mask prompt, and only
the refined masks go through the IoU and stability filters, as in SAM 2's generator (the first
pass's scores decide nothing). See `AMGParams` for which values the CIELR release used.

We do not use transformers' "mask-generation" pipeline: for SAM 2 it places the point grid with the
SAM 1 convention (longest side scaled to 1024) while SAM 2 squashes the image to 1024x1024, so on a
non-square image the points only cover part of it; it also run-length-encodes every candidate mask
in Python, which is slow. Everything here stays vectorised in torch.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Sequence

import numpy as np
from PIL import Image

from .common import CallStats, chunks, torch_dtype


@dataclass(frozen=True)
class AMGParams:
    """Automatic-mask-generation parameters. Defaults: the release's grid and thresholds (16 points
    per side, predicted IoU 0.7, stability 0.92, one crop layer, NMS 0.7) with SAM's generator defaults
    for the rest (stability offset 1.0, no point downscaling in crops, no m2m pass); the release itself
    used offset 0.7, downscale factor 2 and m2m, which CIELR's preset "paper" sets."""

    points_per_side: int = 16
    pred_iou_thresh: float = 0.7
    stability_score_thresh: float = 0.92
    stability_score_offset: float = 1.0
    mask_threshold: float = 0.0
    crop_n_layers: int = 1
    crop_overlap_ratio: float = 512 / 1500
    crop_n_points_downscale_factor: int = 1
    box_nms_thresh: float = 0.7
    crop_nms_thresh: float = 0.7
    min_mask_area: int = 0  # drop masks with fewer pixels (0 keeps all)
    points_per_batch: int = 64
    crop_edge_atol: float = 20.0
    use_m2m: bool = False  # SAM 2's mask-to-mask pass: every first-pass mask re-predicted with itself as prompt


# ---------------------------------------------------------------------------------- crop geometry
def crop_boxes(width: int, height: int, n_layers: int, overlap_ratio: float) -> list[tuple[tuple[int, int, int, int], int]]:
    """[(x0, y0, x1, y1), layer]: the whole image, then (2^i)^2 overlapping crops per layer i."""
    out = [((0, 0, width, height), 0)]
    short = min(width, height)
    for layer in range(1, n_layers + 1):
        n = 2 ** layer
        overlap = int(overlap_ratio * short * (2 / n))
        cw = int(math.ceil((overlap * (n - 1) + width) / n))
        ch = int(math.ceil((overlap * (n - 1) + height) / n))
        for i in range(n):
            for j in range(n):
                x0, y0 = int((cw - overlap) * i), int((ch - overlap) * j)
                out.append(((x0, y0, min(x0 + cw, width), min(y0 + ch, height)), layer))
    return out


def point_grid(n_per_side: int):
    """n*n points at the centres of an n x n grid over [0, 1]^2, as (x, y)."""
    import torch

    offset = 1.0 / (2 * n_per_side)
    side = torch.linspace(offset, 1 - offset, n_per_side)
    xs = side[None, :].expand(n_per_side, n_per_side)
    ys = side[:, None].expand(n_per_side, n_per_side)
    return torch.stack([xs, ys], dim=-1).reshape(-1, 2)


def masks_to_boxes(masks):
    """(N, H, W) bool -> (N, 4) float boxes x0, y0, x1, y1 (inclusive max); zeros for empty masks."""
    import torch

    n, h, w = masks.shape
    if n == 0:
        return torch.zeros((0, 4), device=masks.device)
    rows, cols = masks.any(dim=2), masks.any(dim=1)
    ar_h = torch.arange(h, device=masks.device)
    ar_w = torch.arange(w, device=masks.device)
    y1 = torch.where(rows, ar_h, -1).max(dim=1).values
    y0 = torch.where(rows, ar_h, h).min(dim=1).values
    x1 = torch.where(cols, ar_w, -1).max(dim=1).values
    x0 = torch.where(cols, ar_w, w).min(dim=1).values
    boxes = torch.stack([x0, y0, x1, y1], dim=1).float()
    empty = ~rows.any(dim=1)
    boxes[empty] = 0
    return boxes


def near_crop_edge(boxes, crop: tuple[int, int, int, int], width: int, height: int, atol: float):
    """Boxes (in image coordinates) touching a crop edge that is not also an image edge."""
    import torch

    crop_t = torch.tensor(crop, dtype=torch.float, device=boxes.device)
    orig_t = torch.tensor((0, 0, width, height), dtype=torch.float, device=boxes.device)
    near_crop = torch.isclose(boxes, crop_t[None, :], atol=atol, rtol=0)
    near_image = torch.isclose(boxes, orig_t[None, :], atol=atol, rtol=0)
    return (near_crop & ~near_image).any(dim=1)


# ---------------------------------------------------------------------------------- SAM 2 (transformers)
class Sam2Segmenter:
    """SAM 2 / 2.1 automatic masks through `transformers` (any checkpoint whose config maps to
    `Sam2Model`: facebook/sam2.1-hiera-large / -base-plus / -small / -tiny)."""

    backend = "sam2-transformers"

    def __init__(self, model_id: str = "facebook/sam2.1-hiera-large", params: AMGParams = AMGParams(),
                 device: str = "cpu", dtype: str = "float32", revision: str | None = None,
                 encoder_batch_size: int = 4):
        import transformers

        self.model_id, self.params, self.device = model_id, params, device
        self.dtype = torch_dtype(dtype, device)
        self.encoder_batch_size = max(1, encoder_batch_size)
        self.model = transformers.AutoModelForMaskGeneration.from_pretrained(
            model_id, revision=revision, dtype=self.dtype, trust_remote_code=False)
        if not isinstance(self.model, transformers.Sam2Model):
            raise ValueError(f"{model_id} loads as {type(self.model).__name__}, not a SAM 2 model; use "
                             f"segmenter='segment-anything' for SAM 1 checkpoints")
        self.model.to(device).eval()
        self.processor = transformers.AutoImageProcessor.from_pretrained(model_id, revision=revision)
        size = getattr(self.processor, "size", None) or {}
        self.input_size = int(size.get("height") or size.get("longest_edge") or 1024)
        self.stats = CallStats()

    def describe(self) -> dict[str, Any]:
        return {"backend": self.backend, "model": self.model_id, "params": asdict(self.params),
                "input_size": self.input_size, "dtype": str(self.dtype).replace("torch.", "")}

    def segment(self, images: Sequence[Image.Image], keys: Sequence[Any] = ()) -> list[list[np.ndarray]]:
        keys = list(keys) or list(range(len(images)))
        out = []
        for image, key in zip(images, keys):
            with self.stats.track([key]):
                out.append(self._generate(image.convert("RGB")))
        return out

    # The automatic mask generator, one image at a time (the crops of one image form a batch).
    def _generate(self, image: Image.Image) -> list[np.ndarray]:
        import torch
        from torchvision.ops import batched_nms

        p = self.params
        width, height = image.size
        arr = np.asarray(image)
        crops = crop_boxes(width, height, p.crop_n_layers, p.crop_overlap_ratio)
        kept_masks: list[tuple[torch.Tensor, tuple[int, int, int, int]]] = []  # crop-size masks + crop
        kept_boxes, kept_scores = [], []
        for batch in chunks(list(range(len(crops))), self.encoder_batch_size):
            crop_images = [Image.fromarray(arr[c[1]:c[3], c[0]:c[2]]) for c, _ in (crops[i] for i in batch)]
            inputs = self.processor(images=crop_images, return_tensors="pt")
            pixel_values = inputs["pixel_values"].to(self.device, self.dtype)
            with torch.inference_mode():
                embeddings = self.model.get_image_embeddings(pixel_values)
            for j, i in enumerate(batch):
                box, layer = crops[i]
                emb = [e[j:j + 1] for e in embeddings]
                masks, scores, boxes = self._crop_masks(emb, box, layer, width, height)
                if len(masks):
                    keep = batched_nms(boxes, scores, torch.zeros_like(scores), p.box_nms_thresh)
                    for k in keep.tolist():
                        kept_masks.append((masks[k], box))
                    kept_boxes.append(boxes[keep])
                    kept_scores.append(scores[keep])
        if not kept_masks:
            return []
        boxes = torch.cat(kept_boxes)
        if len(crops) > 1:  # across crops: prefer masks from smaller crops (as SAM does)
            areas = torch.tensor([float((c[2] - c[0]) * (c[3] - c[1])) for _, c in kept_masks])
            keep = batched_nms(boxes, 1.0 / areas, torch.zeros_like(areas), p.crop_nms_thresh).tolist()
        else:
            keep = list(range(len(kept_masks)))
        out = []
        for k in keep:
            m, (x0, y0, x1, y1) = kept_masks[k]
            full = np.zeros((height, width), dtype=bool)
            full[y0:y1, x0:x1] = m.numpy()
            if full.sum() >= max(1, p.min_mask_area):
                out.append(full)
        out.sort(key=lambda m: -int(m.sum()))
        return out

    def _crop_masks(self, emb, box, layer, width, height):
        import torch

        p = self.params
        x0, y0, x1, y1 = box
        cw, ch = x1 - x0, y1 - y0
        n = max(1, int(p.points_per_side / (p.crop_n_points_downscale_factor ** layer)))
        points = point_grid(n) * self.input_size  # the model sees the crop squashed to a square
        masks_out, scores_out, boxes_out = [], [], []
        for sel in chunks(list(range(points.shape[0])), p.points_per_batch):
            pts = points[sel].to(self.device, self.dtype)[None, :, None, :]
            labels = torch.ones(pts.shape[:3], dtype=torch.int64, device=self.device)
            with torch.inference_mode():
                out = self.model(image_embeddings=emb, input_points=pts, input_labels=labels, multimask_output=True)
            low = out.pred_masks[0].flatten(0, 1).float()  # (points*3, h, w) logits
            iou = out.iou_scores[0].flatten(0, 1).float()
            n_out = out.pred_masks.shape[2]
            origin = torch.arange(len(sel), device=low.device).repeat_interleave(n_out)  # mask -> its point
            for sub in chunks(list(range(low.shape[0])), 32):  # bound memory of full-size logits
                sub_low, sub_iou = low[sub], iou[sub]
                if p.use_m2m:  # as SAM 2: every first-pass mask is refined; only the refined one is filtered
                    sub_low, sub_iou = self._refine(emb, pts[0, origin[sub], 0], sub_low)
                binary, sc = self._filter(sub_low, sub_iou, ch, cw)
                if not len(binary):
                    continue
                bx = masks_to_boxes(binary) + torch.tensor([x0, y0, x0, y0], device=binary.device)
                if (cw, ch) != (width, height):
                    edge = near_crop_edge(bx, box, width, height, p.crop_edge_atol)
                    binary, sc, bx = binary[~edge], sc[~edge], bx[~edge]
                masks_out.append(binary.cpu())
                scores_out.append(sc.cpu())
                boxes_out.append(bx.cpu())
        if not masks_out:
            return [], torch.zeros(0), torch.zeros((0, 4))
        return torch.cat(masks_out), torch.cat(scores_out), torch.cat(boxes_out)


    def _filter(self, low, iou, ch: int, cw: int):
        """Low-resolution logits -> (binary crop-size masks, scores): the predicted-IoU filter (before
        upsampling, so rejected masks cost nothing), the stability filter, empty masks dropped. Both
        filters are SAM / SAM 2's: IoU strictly above its threshold, stability at or above its own."""
        import torch
        import torch.nn.functional as F

        p = self.params
        if p.pred_iou_thresh > 0:
            ok = iou > p.pred_iou_thresh
            low, iou = low[ok], iou[ok]
        logits = F.interpolate(low[:, None].float(), size=(ch, cw), mode="bilinear", align_corners=False)[:, 0]
        hi = (logits > p.mask_threshold + p.stability_score_offset).sum(dim=(1, 2))
        lo = (logits > p.mask_threshold - p.stability_score_offset).sum(dim=(1, 2))
        stability = hi.float() / lo.clamp(min=1).float()
        ok = stability >= p.stability_score_thresh if p.stability_score_thresh > 0 else torch.ones_like(stability, dtype=torch.bool)
        binary = logits[ok] > p.mask_threshold
        nonempty = binary.flatten(1).any(dim=1)
        return binary[nonempty], iou[ok][nonempty]

    def _refine(self, emb, points, low):
        """SAM 2's m2m pass: one prediction per mask from its point (in model input coordinates) and
        its low-resolution logits as the dense prompt; single-mask output."""
        import torch

        n = points.shape[0]
        with torch.inference_mode():
            out = self.model(image_embeddings=[e.expand(n, *e.shape[1:]) for e in emb],
                             input_points=points[:, None, None, :],
                             input_labels=torch.ones((n, 1, 1), dtype=torch.int64, device=self.device),
                             input_masks=low[:, None].to(self.device, self.dtype), multimask_output=False)
        return out.pred_masks[:, 0, 0].float(), out.iou_scores[:, 0, 0].float()


# ---------------------------------------------------------------------------------- segment-anything
class SegmentAnythingSegmenter:
    """SAM 1 through the `segment-anything` package (`pip install segment-anything`): its own
    `SamAutomaticMaskGenerator` with the same parameters. Needs a checkpoint file
    (`sam_vit_h_4b8939.pth`, `sam_vit_l_0b3195.pth` or `sam_vit_b_01ec64.pth` from the SAM release) or
    an already built `segment_anything.modeling.Sam`."""

    backend = "segment-anything"

    def __init__(self, model_type: str = "vit_h", checkpoint: str | None = None, params: AMGParams = AMGParams(),
                 device: str = "cpu", model: Any = None):
        try:
            from segment_anything import SamAutomaticMaskGenerator, sam_model_registry
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise ImportError("segmenter='segment-anything' needs `pip install segment-anything`") from exc
        if model is None:
            if not checkpoint:
                raise ValueError("segmenter='segment-anything' needs sam1_checkpoint: the path of a SAM checkpoint "
                                 "(e.g. sam_vit_h_4b8939.pth from the segment-anything release)")
            if model_type not in sam_model_registry:
                raise ValueError(f"unknown SAM model type {model_type!r}; known: {sorted(sam_model_registry)}")
            model = sam_model_registry[model_type](checkpoint=checkpoint)
        self.model_type, self.checkpoint, self.params, self.device = model_type, checkpoint, params, device
        self.model = model.to(device).eval()
        self.generator = SamAutomaticMaskGenerator(
            self.model, points_per_side=params.points_per_side, points_per_batch=params.points_per_batch,
            pred_iou_thresh=params.pred_iou_thresh, stability_score_thresh=params.stability_score_thresh,
            stability_score_offset=params.stability_score_offset, box_nms_thresh=params.box_nms_thresh,
            crop_n_layers=params.crop_n_layers, crop_nms_thresh=params.crop_nms_thresh,
            crop_overlap_ratio=params.crop_overlap_ratio,
            crop_n_points_downscale_factor=params.crop_n_points_downscale_factor)
        self.stats = CallStats()

    def describe(self) -> dict[str, Any]:
        return {"backend": self.backend, "model_type": self.model_type, "checkpoint": self.checkpoint,
                "params": asdict(self.params)}

    def segment(self, images: Sequence[Image.Image], keys: Sequence[Any] = ()) -> list[list[np.ndarray]]:
        import torch

        keys = list(keys) or list(range(len(images)))
        out = []
        for image, key in zip(images, keys):
            with self.stats.track([key]), torch.inference_mode():
                found = self.generator.generate(np.asarray(image.convert("RGB")))
            masks = [np.asarray(f["segmentation"], dtype=bool) for f in found]
            masks = [m for m in masks if m.sum() >= max(1, self.params.min_mask_area)]
            masks.sort(key=lambda m: -int(m.sum()))
            out.append(masks)
        return out
