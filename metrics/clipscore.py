"""Region CLIP score with transformers directly (torchmetrics' CLIPScore breaks on transformers 5).

Per sample: crop the aligned edited image to the mask's bounding box (nonzero pixels; PIL's
exclusive right/bottom in parity protocols, inclusive in `exact`), give the uint8 crop to the CLIP
image processor (shortest side to the model's size, bicubic, centre crop), and score
`100 * cos(image embedding, text embedding)` for each CLIP text; the sample's score is
`max(0, mean over its texts)`. No box, an empty crop or no text -> NaN (undefined).
Texts longer than 77 tokens are truncated by the tokenizer, which keeps the end token.
"""
from __future__ import annotations

import math
import threading
from typing import Sequence

import numpy as np
import torch
from torch import Tensor

from .align import crop_box, mask_box
from .precision import float32_math


def _features(output) -> Tensor:
    # transformers < 5 returns the projected embeddings; 5 returns an output object holding them.
    return output if isinstance(output, Tensor) else output.pooler_output


def _revision(model_id: str) -> str:
    """The hub snapshot (commit) the weights were read from; "local" for a folder path."""
    from pathlib import Path

    if Path(model_id).exists():
        return "local"
    from huggingface_hub import try_to_load_from_cache

    path = try_to_load_from_cache(model_id, "config.json")
    return Path(path).parent.name if isinstance(path, str) else "unknown"


class CLIPPreprocessor:
    """A CLIP model's image processor alone: small and quick to load, so crops can be preprocessed
    while the model itself is still loading. `__call__` is thread-safe (pure PIL / numpy)."""

    def __init__(self, model_id: str, backend: str = "pil") -> None:
        import transformers

        if backend == "pil":
            cls = getattr(transformers, "CLIPImageProcessorPil", None) or transformers.CLIPImageProcessor
            self.processor = cls.from_pretrained(model_id)
        elif backend == "torchvision":
            self.processor = transformers.AutoImageProcessor.from_pretrained(model_id, backend="torchvision")
        else:
            raise ValueError(f"unknown CLIP image backend {backend!r} (pil | torchvision)")

    def __call__(self, crop: np.ndarray) -> Tensor:
        """uint8 (H, W, 3) crop -> pixel values (3, S, S)."""
        out = self.processor(images=crop, return_tensors="pt", input_data_format="channels_last")
        return out["pixel_values"][0]


class RegionCLIP:
    """One loaded CLIP model with its processor, tokenizer and a text-embedding cache.

    `preprocess` is thread-safe (pure PIL / numpy), so callers can run it in worker threads.
    `preprocessor`: an already loaded `CLIPPreprocessor` of `model_id` (default: load one)."""

    def __init__(self, model_id: str, *, image_backend: str = "pil", max_tokens: int = 77,
                 device: str | torch.device = "cpu", preprocessor: CLIPPreprocessor | None = None) -> None:
        from transformers import AutoTokenizer, CLIPModel

        self.model_id = model_id
        self.preprocessor = preprocessor or CLIPPreprocessor(model_id, image_backend)
        self.model = CLIPModel.from_pretrained(model_id).eval().to(torch.device(device))
        self.tokenizer = AutoTokenizer.from_pretrained(model_id)
        self.max_tokens = max_tokens
        # keyed by device too: a model moved to another device (a torchmetrics `.to()`) encodes anew there
        self._texts: dict[tuple[torch.device, str], Tensor] = {}
        self._lock = threading.Lock()

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def model_ids(self) -> dict[str, str]:
        processor = self.preprocessor.processor
        crop = getattr(processor, "crop_size", None) or {}
        return {"clip": self.model_id, "clip_revision": _revision(self.model_id),
                "clip_image_processor": f"{type(processor).__name__}@{crop.get('height', '?')}",
                "clip_tokenizer": type(self.tokenizer).__name__}

    def preprocess(self, crop: np.ndarray) -> Tensor:
        """uint8 (H, W, 3) crop -> pixel values (3, S, S)."""
        return self.preprocessor(crop)

    @torch.inference_mode()
    def image_embeddings(self, pixel_values: Tensor) -> Tensor:
        pixel_values = pixel_values.to(self.device, non_blocking=pixel_values.is_pinned())
        with float32_math():  # the caller's forward precision, else IEEE float32
            feats = _features(self.model.get_image_features(pixel_values=pixel_values)).float()
        return feats / feats.norm(p=2, dim=-1, keepdim=True)

    @torch.inference_mode()
    def text_embeddings(self, texts: Sequence[str]) -> Tensor:
        """Unit-norm embeddings (T, D); each distinct text is encoded once per instance and device."""
        with self._lock:
            device = self.device
            new = list(dict.fromkeys(t for t in texts if (device, t) not in self._texts))
            if new:
                tokens = self.tokenizer(new, padding=True, truncation=True, max_length=self.max_tokens, return_tensors="pt")
                # IEEE float32 always: the cache serves every precision, so no forward's mode may leak in.
                with float32_math("ieee"):
                    feats = _features(self.model.get_text_features(
                        input_ids=tokens["input_ids"].to(device),
                        attention_mask=tokens["attention_mask"].to(device)))
                feats = feats / feats.norm(p=2, dim=-1, keepdim=True)
                self._texts.update(((device, t), f) for t, f in zip(new, feats))
            return torch.stack([self._texts[device, t] for t in texts]) if texts else torch.empty(0)

    def score_embeddings(self, image_embeds: Tensor, texts: Sequence[Sequence[str]], scale: float = 100.0,
                         clamp: bool = True) -> Tensor:
        """(B,) float64 scores of unit image embeddings against each sample's texts (NaN: no text)."""
        flat = [t for ts in texts for t in ts]
        text_embeds = self.text_embeddings(flat).to(image_embeds.device) if flat else None
        out = torch.full((len(texts),), math.nan, dtype=torch.float64)
        spans, start = [], 0  # (sample, its texts' rows)
        for i, ts in enumerate(texts):
            if ts:
                spans.append((i, start, start + len(ts)))
                start += len(ts)
        # float32 matmuls: TF32 on CUDA under the process's "high", or while another thread holds "tf32"
        with float32_math("ieee"):
            sims = [scale * (image_embeds[i:i + 1] @ text_embeds[a:b].T) for i, a, b in spans]
        for (i, _, _), s in zip(spans, sims):  # reading a value waits for the device: outside the mode
            value = s.double().mean()
            out[i] = value.clamp_min(0.0) if clamp else value
        return out


def clip_texts(texts: str | Sequence[str] | None) -> list[str]:
    """One sample's CLIP texts as a list: a plain string is one text (not its characters), and empty
    or whitespace-only texts are dropped, so a sample with none has no CLIP score (NaN) rather than
    a score against the empty prompt averaged in."""
    items = [texts] if isinstance(texts, str) else list(texts or [])
    return [str(t) for t in items if str(t).strip()]


def region_crop(image: np.ndarray, mask: np.ndarray, inclusive: bool) -> np.ndarray | None:
    return crop_box(image, mask_box(mask, inclusive))


def _as_uint8_hwc(images: Tensor) -> np.ndarray:
    if images.dtype != torch.uint8:
        images = (images.float() * 255).round().clamp(0, 255).to(torch.uint8)
    return images.permute(0, 2, 3, 1).cpu().numpy()


def clip_score(images: Tensor, masks: Tensor, texts: str | Sequence[str | Sequence[str]], model: RegionCLIP,
               crop: str = "pil_exclusive", scale: float = 100.0, clamp: bool = True) -> Tensor:
    """Per-image region CLIP score (B,), float64.

    `images` (B, 3, H, W) uint8 (or float in [0, 1], rounded to uint8) already aligned by the
    protocol; `masks` (B, 1, H, W) or (B, H, W), nonzero = edit region; `texts` one string or a list
    of strings per image. A bare string is the text of one image, as torchmetrics' CLIPScore takes it
    (iterated, it would give each image one of its characters)."""
    if crop not in ("pil_exclusive", "inclusive"):
        raise ValueError(f"unknown CLIP crop {crop!r}")
    if isinstance(texts, str):
        texts = [texts]
    arrays = _as_uint8_hwc(images)
    m = masks[:, 0] if masks.ndim == 4 else masks
    m = m.cpu().numpy()
    per_text = [clip_texts(t) for t in texts]
    if len(per_text) != len(arrays):
        raise ValueError(f"{len(arrays)} images but {len(per_text)} text entries")
    crops = [region_crop(a, mm, crop == "inclusive") for a, mm in zip(arrays, m)]
    valid = [i for i, c in enumerate(crops) if c is not None and per_text[i]]
    out = torch.full((len(arrays),), math.nan, dtype=torch.float64)
    if valid:
        pixels = torch.stack([model.preprocess(crops[i]) for i in valid])
        scores = model.score_embeddings(model.image_embeddings(pixels), [per_text[i] for i in valid], scale, clamp)
        out[valid] = scores
    return out
