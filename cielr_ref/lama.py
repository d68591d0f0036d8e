"""Object removal with Big-LaMa, as the CIELR release removed objects.

    remover = LamaRemover(InpaintParams(dilation_px=0, feather=False), device="cuda")
    outcome = remover.run([InpaintJob(key, image, region_mask, prompt="")])[0]

The checkpoint is another project's file, so it is never stored here: `BIG_LAMA` pins a public
TorchScript export by URL and sha256, `resolve_asset` downloads it once into the content-addressed
cache and refuses a file with another hash. It is loaded with `torch.jit.load` (a TorchScript
archive: a graph and tensors, no arbitrary pickled objects); pickled `.ckpt` files are not accepted.

The model's call is that of the well-known export: `model(image, mask)` with `image` float32
(1, 3, H, W) in [0, 1], `mask` float32 (1, 1, H, W) with 1 = fill, H and W multiples of 8 (the input
is padded by mirroring at the bottom / right and the output cropped back); it returns (1, 3, H, W)
in [0, 1]. The result is pasted back with the executor's weights, so with `dilation_px=0` only the
region's own pixels change.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
from PIL import Image

from ciebench.assets import PinnedAsset, resolve_asset

from .common import CallStats
from .executor import InpaintJob, InpaintOutcome, InpaintParams, dilate, paste, paste_weights

# The TorchScript export of Big-LaMa that simple-lama-inpainting downloads (its v0.1.0 release asset;
# IOPaint / lama-cleaner serve an export under the same name from Sanster/models, pinned there by md5
# e3aa4aaa15225a33ec84f9f4bc47e500, 205,669,692 bytes). UNVERIFIED PIN: the sha256 below is the one a
# third-party project (MedICL-VU/LaMa-depth-stack-OCTA README) records for big-lama.pt; it was not
# checked against the file here (no network). A mismatch is refused, never used silently: fix the pin
# or pass a local copy with `lama_dir` and `lama_allow_unverified=True`, which records the real hash.
BIG_LAMA = PinnedAsset(
    name="big-lama/torchscript",
    url="https://github.com/enesmsahin/simple-lama-inpainting/releases/download/v0.1.0/big-lama.pt",
    sha256="7ba7aa7ac37a4d41fdbbeba3a2af7ead18058552997e3a3cd1a3b2210c9e6b4c",
    source="advimman/lama Big-LaMa, TorchScript export released with enesmsahin/simple-lama-inpainting v0.1.0",
    licence="Apache-2.0",
    filename="big-lama.pt",
    max_bytes=320 * 1024 * 1024,
)
BIG_LAMA_SHA256_VERIFIED = False  # see above: flip only after hashing the real file
PAD_MULTIPLE = 8


def pad_to_multiple(arr: np.ndarray, multiple: int = PAD_MULTIPLE) -> np.ndarray:
    """(C, H, W) padded at the bottom / right by mirroring, to multiples of `multiple`."""
    _, h, w = arr.shape
    ph, pw = (-h) % multiple, (-w) % multiple
    return np.pad(arr, ((0, 0), (0, ph), (0, pw)), mode="symmetric") if ph or pw else arr


def lama_asset(url: str = BIG_LAMA.url, sha256: str = BIG_LAMA.sha256) -> PinnedAsset:
    """The pinned checkpoint a `lama_url` / `lama_sha256` pair names: `BIG_LAMA` itself, or the user's pin
    under the same name and file name (what the remover loads and what `required_assets` declares)."""
    if (url, sha256) == (BIG_LAMA.url, BIG_LAMA.sha256):
        return BIG_LAMA
    return PinnedAsset(name=BIG_LAMA.name, url=url, sha256=sha256, source=f"user-pinned {url}",
                       filename=BIG_LAMA.filename, max_bytes=BIG_LAMA.max_bytes)


class LamaRemover:
    """Removal back end `lama`: same `run(jobs)` / `stats` / `describe()` as `InpaintExecutor`."""

    backend = "lama-torchscript"

    def __init__(self, params: InpaintParams = InpaintParams(), device: str = "cpu", url: str = BIG_LAMA.url,
                 sha256: str = BIG_LAMA.sha256, local_dir: str | None = None, allow_unverified: bool = False):
        import torch

        self.resolved = resolve_asset(lama_asset(url, sha256), local_dir=local_dir,
                                      allow_unverified_local=allow_unverified)
        self.params, self.device = params, device
        self.model = torch.jit.load(str(self.resolved.path), map_location=device).eval()
        self.stats = CallStats()

    def describe(self) -> dict[str, Any]:
        prov = self.resolved.provenance()
        prov["pin_checked_against_real_file"] = BIG_LAMA_SHA256_VERIFIED if self.resolved.asset is BIG_LAMA else None
        return {"backend": self.backend, "checkpoint": prov, "params": {
            "dilation_px": self.params.dilation_px, "feather": self.params.feather}, "pad_multiple": PAD_MULTIPLE}

    def run(self, jobs: Sequence[InpaintJob]) -> list[InpaintOutcome]:
        return [self._one(job) for job in jobs]

    def _one(self, job: InpaintJob) -> InpaintOutcome:
        import torch

        p = self.params
        src = np.asarray(job.image.convert("RGB"))
        h, w = src.shape[:2]
        if job.mask.shape != (h, w):
            return InpaintOutcome(None, f"execution: mask {job.mask.shape} does not match image {(h, w)}")
        if not job.mask.any():
            return InpaintOutcome(None, "execution: the region to edit is empty")
        band = dilate(job.mask, p.dilation_px)
        weights = paste_weights(job.mask, p.dilation_px, p.feather)
        image = pad_to_multiple(src.transpose(2, 0, 1).astype(np.float32) / 255.0)
        mask = pad_to_multiple(band[None].astype(np.float32))
        info = {"backend": "lama", "region_px": int(job.mask.sum()), "dilated_px": int(band.sum()),
                "model_size": [int(image.shape[2]), int(image.shape[1])], "seed": int(job.seed)}
        try:
            with self.stats.track([job.key]), torch.inference_mode():
                out = self.model(torch.from_numpy(image)[None].to(self.device),
                                 torch.from_numpy(mask)[None].to(self.device))
            gen = out[0, :, :h, :w].float().cpu().numpy().transpose(1, 2, 0)
        except Exception as exc:  # noqa: BLE001 - one failing image must not stop the batch
            return InpaintOutcome(None, f"execution: {type(exc).__name__}: {exc}", info)
        if gen.shape != (h, w, 3):
            return InpaintOutcome(None, f"execution: LaMa returned shape {gen.shape}, expected {(h, w, 3)}", info)
        gen = np.clip(np.rint(gen * 255.0), 0, 255).astype(np.uint8)
        return InpaintOutcome(Image.fromarray(paste(src, gen, weights, (0, 0, w, h))), None, info)


__all__ = ["LamaRemover", "BIG_LAMA", "lama_asset", "BIG_LAMA_SHA256_VERIFIED", "pad_to_multiple"]
