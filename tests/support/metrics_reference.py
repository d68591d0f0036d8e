"""Independent references for the region metrics. Nothing here imports `ciebench.metrics`.

`PublishedLoop` scores one image at a time the way the published evaluation scripts are written
(PROTOCOLS.md): PIL resize, numpy float32 arrays with the soft background weight multiplied in,
torchmetrics modules called per image, and CLIP through `CLIPModel.forward` per image (the
torchmetrics CLIPScore path, which no longer runs on transformers 5). `exact_reference` computes
the `exact` protocol's PSNR / MSE / SSIM with numpy and scikit-image, and its LPIPS with the
lpips package's spatial map.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

_BICUBIC = Image.Resampling.BICUBIC
_NEAREST = Image.Resampling.NEAREST


@dataclass
class PublishedLoop:
    size: int
    clip_model: str
    ssim_crop: bool = True  # torchmetrics < 1.5 averaged the SSIM map without a 5-px border
    device: str = "cpu"  # the scripts move each image's tensors and the models to one device
    clip_clamp: bool = True  # max(0, score), as torchmetrics' CLIPScore

    def __post_init__(self) -> None:
        import transformers
        from torchmetrics import MeanSquaredError
        from torchmetrics.image import LearnedPerceptualImagePatchSimilarity, PeakSignalNoiseRatio, StructuralSimilarityIndexMeasure

        self.psnr = PeakSignalNoiseRatio(data_range=1.0).to(self.device)
        self.mse = MeanSquaredError().to(self.device)
        self.ssim = StructuralSimilarityIndexMeasure(data_range=1.0).to(self.device)
        self.lpips = LearnedPerceptualImagePatchSimilarity(net_type="squeeze").to(self.device)
        self.clip = transformers.CLIPModel.from_pretrained(self.clip_model).eval().to(self.device)
        image_processor_cls = getattr(transformers, "CLIPImageProcessorPil", None) or transformers.CLIPImageProcessor
        self.processor = transformers.CLIPProcessor(
            image_processor=image_processor_cls.from_pretrained(self.clip_model),
            tokenizer=transformers.AutoTokenizer.from_pretrained(self.clip_model))

    @torch.no_grad()
    def score(self, source: Image.Image, mask: Image.Image | None, prediction: Image.Image, texts: list[str]) -> dict[str, float]:
        t_pred, t_gt, pred, mask_img = published_inputs(source, mask, prediction, self.size)
        t_pred, t_gt = t_pred.to(self.device), t_gt.to(self.device)
        out = {
            "psnr": float(self.psnr(t_pred, t_gt)),
            "mse": float(self.mse(t_pred, t_gt)),
            "lpips": float(self.lpips(t_pred * 2 - 1, t_gt * 2 - 1)),
        }
        out["ssim"] = published_ssim(t_pred, t_gt, self.ssim_crop) if self.ssim_crop else float(self.ssim(t_pred, t_gt))
        out["clip"] = self.clip_score(pred, np.array(mask_img), texts, inclusive=False, clamp=self.clip_clamp)
        return out

    @torch.no_grad()
    def clip_score(self, image: Image.Image, mask: np.ndarray, texts: list[str], inclusive: bool, clamp: bool = True) -> float:
        ys, xs = np.nonzero(mask)
        if ys.size == 0 or not texts:
            return float("nan")
        extra = 1 if inclusive else 0
        crop = image.crop((xs.min(), ys.min(), xs.max() + extra, ys.max() + extra))
        if crop.width == 0 or crop.height == 0:
            return float("nan")
        pixels = torch.tensor(np.array(crop)).permute(2, 0, 1)  # uint8, as torchmetrics hands it over
        scores = []
        for text in texts:
            inputs = self.processor(text=[text], images=[pixels], return_tensors="pt", padding=True,
                                    truncation=True, max_length=77).to(self.device)
            outputs = self.clip(**inputs)
            scores.append(100 * float((outputs.image_embeds * outputs.text_embeds).sum()))
        value = float(np.mean(scores))
        return max(value, 0.0) if clamp else value


def published_inputs(source: Image.Image, mask: Image.Image | None, prediction: Image.Image, size: int):
    """The published preprocessing: PIL squash to size x size, float32 / 255, the soft background
    weight repeated over 3 channels and multiplied into both images. Returns the two (1, 3, S, S)
    tensors, the resized prediction and the resized mask."""
    wh = (size, size)
    src = source.convert("RGB").resize(wh, _BICUBIC)
    pred = prediction.convert("RGB").resize(wh, _BICUBIC)
    mask_img = mask.convert("L").resize(wh, _NEAREST) if mask is not None else Image.new("L", wh, 0)
    img_gt = np.array(src).astype(np.float32) / 255
    img_pred = np.array(pred).astype(np.float32) / 255
    mask_arr = np.array(mask_img).astype(np.float32) / 255
    weight = np.repeat((1 - mask_arr)[:, :, None], 3, axis=2)
    t_gt = torch.tensor(img_gt * weight).permute(2, 0, 1).unsqueeze(0).contiguous()
    t_pred = torch.tensor(img_pred * weight).permute(2, 0, 1).unsqueeze(0).contiguous()
    return t_pred, t_gt, pred, mask_img


def published_ssim(t_pred: torch.Tensor, t_gt: torch.Tensor, crop: bool) -> float:
    """torchmetrics SSIM; `crop` reproduces torchmetrics < 1.5 (map averaged without a 5-px border)."""
    from torchmetrics.functional.image import structural_similarity_index_measure

    similarity, full = structural_similarity_index_measure(t_pred, t_gt, data_range=1.0, return_full_image=True)
    if not crop:
        return float(similarity)
    cropped = full[..., 5:-5, 5:-5]  # what torchmetrics < 1.5 averaged, in its own way
    return float(cropped.reshape(cropped.shape[0], -1).mean(-1))


def exact_reference(source: Image.Image, mask: Image.Image | None, prediction: Image.Image) -> dict[str, float]:
    """PSNR, MSE and SSIM of the `exact` protocol in float64 numpy / scikit-image."""
    from skimage.metrics import structural_similarity

    src = source.convert("RGB")
    pred = prediction.convert("RGB")
    if pred.size != src.size:
        pred = pred.resize(src.size, _BICUBIC)
    if mask is None:
        m = np.zeros((src.height, src.width))
    else:
        m = np.asarray(mask.convert("L").resize(src.size, _NEAREST) if mask.size != src.size else mask.convert("L"),
                       dtype=np.float64) / 255
    w = 1.0 - m
    a = np.asarray(src, dtype=np.float64) / 255
    b = np.asarray(pred, dtype=np.float64) / 255
    out: dict[str, float] = {}
    if w.sum() == 0:
        return {"psnr": float("nan"), "mse": float("nan"), "ssim": float("nan")}
    mse = float((w[..., None] * (b - a) ** 2).sum() / (3 * w.sum()))
    out["mse"] = mse
    out["psnr"] = float("inf") if mse == 0 else float(10 * np.log10(1.0 / mse))
    _, full = structural_similarity(b, a, data_range=1.0, channel_axis=2, gaussian_weights=True, sigma=1.5,
                                    use_sample_covariance=False, full=True)
    s = full.mean(axis=2)[5:-5, 5:-5]
    wc = w[5:-5, 5:-5]
    out["ssim"] = float((s * wc).sum() / wc.sum()) if wc.sum() > 0 else float("nan")
    return out


def exact_lpips_reference(source: Image.Image, mask: Image.Image | None, prediction: Image.Image, net) -> float:
    """The lpips package's spatial LPIPS map (`lpips.LPIPS(net="squeeze", spatial=True)`), weighted by w."""
    src = source.convert("RGB")
    pred = prediction.convert("RGB")
    if pred.size != src.size:
        pred = pred.resize(src.size, _BICUBIC)
    m = np.zeros((src.height, src.width)) if mask is None else np.asarray(
        mask.convert("L").resize(src.size, _NEAREST), dtype=np.float64) / 255
    w = torch.tensor(1.0 - m)
    a = torch.tensor(np.asarray(src, dtype=np.float32) / 255).permute(2, 0, 1)[None]
    b = torch.tensor(np.asarray(pred, dtype=np.float32) / 255).permute(2, 0, 1)[None]
    with torch.no_grad():
        spatial = net(b * 2 - 1, a * 2 - 1)[0, 0].double()
    return float((spatial * w).sum() / w.sum()) if w.sum() > 0 else float("nan")
