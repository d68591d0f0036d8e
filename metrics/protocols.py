"""Scoring protocols: frozen, named presets fixing every choice that decides a region-metric value.

A result is only comparable with another when both were computed under the same protocol; its
`hash` (over every field except the name and description) goes into each run's manifest.

Presets (see docs/metrics.md for the formulas):

- ``cielr``      the CIEBench paper's evaluation: 512x512 bicubic squash, soft background weight
                 multiplied into both images, averages over all elements, legacy SSIM border crop,
                 CLIP ViT-L/14-336 on the mask's bounding box with PIL's off-by-one crop.
- ``smartedit``  SmartEdit's Reason-Edit evaluation: the same steps at 256x256 with CLIP ViT-L/14.
- ``exact``      ours, recommended beside the parity numbers: no resize (unless the prediction's
                 size differs from the source's), true background-only weighted averages, inclusive
                 CLIP crop box.
- ``cielr-full`` / ``smartedit-full``: the parity presets with torchmetrics >= 1.5 SSIM borders
                 (whole map averaged). Published CIEBench / SmartEdit numbers predate torchmetrics
                 1.5, so the parity presets default to the 5-px crop.
- ``exact-tf32`` / ``exact-bf16``: ``exact`` with the CLIP image tower and LPIPS run in TF32
                 matmuls / bfloat16 autocast (faster on GPUs; deviation bound in docs/metrics.md).
                 Parity presets refuse any precision but float32.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal

from ciebench.errors import UsageError, lookup
from ciebench.io import stable_hash

Weighting = Literal["multiply", "exact"]
SSIMBorder = Literal["crop", "full"]
ClipCrop = Literal["pil_exclusive", "inclusive"]
PredictionResize = Literal["to_protocol_size", "to_source_size"]
ModelPrecision = Literal["float32", "tf32", "bfloat16"]
MODEL_PRECISIONS = ("float32", "tf32", "bfloat16")

PIL_FILTERS = ("nearest", "bilinear", "bicubic", "lanczos", "box", "hamming")  # metrics.align.pil_filter
# Fields that describe the only behaviour ciebench computes (see their comments in `Protocol`).
_ONE_IMPLEMENTATION = {"ssim_padding": "reflect", "lpips_net": "squeeze", "lpips_input": "2x-1",
                       "lpips_trunk": "torchvision/squeezenet1_1/IMAGENET1K_V1", "clip_text_reduce": "mean",
                       "prediction_mode": "pil_convert_rgb"}

# Fields that name or describe a protocol but cannot change a number.
_NOT_HASHED = ("name", "description")
# Fields added after hashes were first recorded: left out of the hash at their default, so every
# protocol that does not use them keeps the hash it always had.
_HASHED_UNLESS_DEFAULT = {"model_precision": "float32"}


@dataclass(frozen=True)
class Protocol:
    name: str
    # Square side both images are squashed to (aspect not kept); None keeps the source's size.
    size: int | None
    weighting: Weighting
    clip_model: str
    clip_crop: ClipCrop
    ssim_border: SSIMBorder
    prediction_resize: PredictionResize
    image_filter: str = "bicubic"  # PIL filter for source and prediction
    mask_filter: str = "nearest"  # PIL filter for the mask, resized on its own (its size may differ)
    data_range: float = 1.0
    # SSIM: Gaussian window; 11 taps = int(3.5 * sigma + 0.5) * 2 + 1 as torchmetrics derives it.
    ssim_sigma: float = 1.5
    ssim_kernel_size: int = 11
    ssim_k1: float = 0.01
    ssim_k2: float = 0.03
    ssim_padding: str = "reflect"  # torch's reflect (edge pixel not repeated) before the window
    # PSNR / MSE / SSIM arithmetic. Parity: torchmetrics' float32 operations per image, so the
    # published rounding is reproduced (SSIM's float32 variances alone drift by up to ~1e-5);
    # exact: float64 accumulation (SSIM with the separable window).
    arithmetic: str = "torchmetrics-float32"
    # LPIPS: v0.1 linear heads of the lpips package on torchvision's squeezenet1_1 ImageNet trunk.
    lpips_version: str = "0.1"
    lpips_net: str = "squeeze"
    lpips_trunk: str = "torchvision/squeezenet1_1/IMAGENET1K_V1"
    lpips_input: str = "2x-1"
    lpips_norm_eps: float = 1e-8  # feature unit-normalisation: f / sqrt(sum f^2 + eps), as torchmetrics
    # CLIP: edited image cropped to the mask box, uint8 into the PIL-backend image processor.
    clip_image_backend: str = "pil"
    clip_scale: float = 100.0
    clip_text_reduce: str = "mean"  # several CLIP texts: mean of the per-text scores
    clip_clamp: str = "zero_after_mean"  # max(0, mean), the clamp after averaging (torchmetrics CLIPScore)
    clip_max_tokens: int = 77  # longer texts truncated by the tokenizer, end token kept
    # Locality: changed = max channel |pred - source| > threshold (8-bit levels); region = mask >= level.
    locality_threshold: int = 8
    locality_mask_level: int = 128
    # Predictions in other modes: PIL convert("RGB") (alpha dropped, grey replicated); 16-bit grey /257.
    prediction_mode: str = "pil_convert_rgb"
    # Neural-network forwards (CLIP image tower, LPIPS): "float32"; "tf32" (TF32 matmuls and
    # convolutions, CUDA only: float32 elsewhere); "bfloat16" (autocast). Text embeddings, pixel
    # metrics and SSIM are never affected. Only non-parity protocols may leave float32.
    model_precision: ModelPrecision = "float32"
    description: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        if self.weighting not in ("multiply", "exact"):
            raise ValueError(f"weighting must be 'multiply' or 'exact', not {self.weighting!r}")
        if self.ssim_border not in ("crop", "full"):
            raise ValueError(f"ssim_border must be 'crop' or 'full', not {self.ssim_border!r}")
        if self.clip_crop not in ("pil_exclusive", "inclusive"):
            raise ValueError(f"clip_crop must be 'pil_exclusive' or 'inclusive', not {self.clip_crop!r}")
        if self.prediction_resize not in ("to_protocol_size", "to_source_size"):
            raise ValueError(f"unknown prediction_resize {self.prediction_resize!r}")
        if self.size is None and self.prediction_resize != "to_source_size":
            raise ValueError("a protocol without a fixed size must resize predictions to the source size")
        if self.arithmetic not in ("torchmetrics-float32", "float64"):
            raise ValueError(f"unknown arithmetic {self.arithmetic!r}")
        if self.weighting == "exact" and self.arithmetic != "float64":
            raise ValueError("the exact weighting is computed in float64 only")
        if self.model_precision not in MODEL_PRECISIONS:
            raise ValueError(f"model_precision must be one of {', '.join(MODEL_PRECISIONS)}, not {self.model_precision!r}")
        if self.model_precision != "float32" and self.is_parity:
            raise ValueError(f"protocol {self.name!r} reproduces published numbers, which were computed in float32: "
                             f"model_precision {self.model_precision!r} is only allowed for non-parity protocols "
                             "(use exact-tf32 / exact-bf16, or exact.with_(model_precision=...))")
        if self.clip_clamp not in ("zero_after_mean", "none"):
            raise ValueError(f"clip_clamp must be 'zero_after_mean' or 'none', not {self.clip_clamp!r}")
        if self.image_filter not in PIL_FILTERS or self.mask_filter not in PIL_FILTERS:
            raise ValueError(f"image_filter and mask_filter must be one of {', '.join(PIL_FILTERS)}, not "
                             f"{self.image_filter!r} / {self.mask_filter!r}")
        # Fields that name the one behaviour implemented: another value would be recorded in the
        # manifest but not computed, so the numbers would silently disagree with their protocol.
        for name, implemented in _ONE_IMPLEMENTATION.items():
            if getattr(self, name) != implemented:
                raise ValueError(f"{name} {getattr(self, name)!r} is not implemented (only {implemented!r})")
        if self.ssim_kernel_size != int(3.5 * self.ssim_sigma + 0.5) * 2 + 1:
            raise ValueError("ssim_kernel_size must equal int(3.5 * sigma + 0.5) * 2 + 1 (torchmetrics' Gaussian window)")

    @property
    def is_parity(self) -> bool:
        """Whether this protocol reproduces published numbers (their float32 torchmetrics arithmetic)."""
        return self.arithmetic == "torchmetrics-float32"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def hash(self) -> str:
        return stable_hash({k: v for k, v in self.to_dict().items()
                            if k not in _NOT_HASHED and _HASHED_UNLESS_DEFAULT.get(k, object()) != v})

    def manifest(self) -> dict[str, Any]:
        """What a run records: every field plus the hash."""
        return {**self.to_dict(), "hash": self.hash}

    def with_(self, **changes: Any) -> "Protocol":
        """A variant (give it a new `name`: the hash changes with any setting, never with the name)."""
        return replace(self, **changes)


CIELR = Protocol(
    name="cielr",
    size=512,
    weighting="multiply",
    clip_model="openai/clip-vit-large-patch14-336",
    clip_crop="pil_exclusive",
    ssim_border="crop",
    prediction_resize="to_protocol_size",
    description="CIEBench paper parity: 512x512 squash, soft background weight multiplied into both images, "
    "all-element averages, torchmetrics<1.5 SSIM 5-px border crop, CLIP ViT-L/14-336 on the PIL-cropped mask box.",
)

SMARTEDIT = CIELR.with_(
    name="smartedit",
    size=256,
    clip_model="openai/clip-vit-large-patch14",
    description="SmartEdit Reason-Edit parity: the cielr steps at 256x256 with CLIP ViT-L/14 (224).",
)

EXACT = CIELR.with_(
    name="exact",
    size=None,
    weighting="exact",
    clip_crop="inclusive",
    prediction_resize="to_source_size",
    arithmetic="float64",
    description="True background-only averages (weighted by w = 1 - mask, divided by sum w) at the source's "
    "size; SSIM/LPIPS maps weighted the same way; inclusive CLIP crop box.",
)

PROTOCOLS: dict[str, Protocol] = {
    p.name: p
    for p in (
        CIELR,
        SMARTEDIT,
        EXACT,
        CIELR.with_(name="cielr-full", ssim_border="full",
                    description=CIELR.description + " Variant: SSIM over the whole map (torchmetrics>=1.5)."),
        SMARTEDIT.with_(name="smartedit-full", ssim_border="full",
                        description=SMARTEDIT.description + " Variant: SSIM over the whole map (torchmetrics>=1.5)."),
        EXACT.with_(name="exact-tf32", model_precision="tf32",
                    description=EXACT.description + " Variant: CLIP image tower and LPIPS with TF32 matmuls (CUDA)."),
        EXACT.with_(name="exact-bf16", model_precision="bfloat16",
                    description=EXACT.description + " Variant: CLIP image tower and LPIPS under bfloat16 autocast."),
    )
}


class UnknownProtocolError(UsageError, ValueError):
    """An unknown --protocol name (exit code 2)."""


def get_protocol(name: "str | Protocol") -> Protocol:
    if isinstance(name, Protocol):
        return name
    return lookup(PROTOCOLS, name, "protocol", UnknownProtocolError)


def list_protocols() -> list[str]:
    return list(PROTOCOLS)
