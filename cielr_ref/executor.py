"""Execution: diffusers inpainting on a crop around the region, pasted back only inside the region.

    ex = InpaintExecutor("stabilityai/stable-diffusion-2-inpainting", InpaintParams(), device="cuda")
    outcome = ex.run([InpaintJob(key, image, region_mask, prompt="a blue bottle", seed=0)])[0]

For each job: the region is dilated by `dilation_px`; a crop around it (at least `resolution` pixels
a side where the image allows, `context` times the region's extent; the whole image with
`whole_image`, as the release's SD 1.5 back end did) is resized so that its long side is
`resolution` (a multiple of what the UNet needs), inpainted with the dilated mask, resized back
and pasted with a per-pixel weight that is 1 on the region, ramps to 0 across the dilation band when
`feather` is on (else 1 on the whole band) and is 0 elsewhere. Pixels with weight 0 are copied from
the source unchanged: everything outside the dilated region stays byte-identical.

Jobs with the same processed size are batched into one pipeline call; each job has its own seeded
CPU generator, so a result does not depend on which jobs shared its batch or on the device.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

import numpy as np
from PIL import Image

from ciebench.isolate import run_isolated

from .common import CallStats, chunks, group_by, torch_dtype


@dataclass(frozen=True)
class InpaintParams:
    resolution: int = 512
    steps: int = 50
    guidance_scale: float = 7.5
    strength: float = 1.0
    dilation_px: int = 8
    feather: bool = True
    context: float = 1.5  # the crop spans at least this multiple of the region's larger side
    batch_size: int = 4
    whole_image: bool = False  # inpaint the whole image (resized) instead of a crop around the region


@dataclass
class InpaintJob:
    key: Any
    image: Image.Image  # RGB
    mask: np.ndarray  # bool, image size: the region to repaint
    prompt: str
    negative_prompt: str = ""
    seed: int = 0


@dataclass
class InpaintOutcome:
    image: Image.Image | None
    error: str | None = None
    info: dict[str, Any] = field(default_factory=dict)


# ------------------------------------------------------------------------------ pure geometry
def dilate(mask: np.ndarray, radius: int) -> np.ndarray:
    """Euclidean dilation by `radius` pixels."""
    if radius <= 0:
        return mask.copy()
    from scipy.ndimage import distance_transform_edt

    return distance_transform_edt(~mask) <= radius


def paste_weights(mask: np.ndarray, radius: int, feather: bool) -> np.ndarray:
    """float32 weights: 1 on `mask`, 0 outside its `radius` dilation, and across the band either 1
    (hard) or a linear ramp 1 - d / (radius + 1) (feathered), d = distance to the mask."""
    if radius <= 0:
        return mask.astype(np.float32)
    from scipy.ndimage import distance_transform_edt

    dist = distance_transform_edt(~mask)
    band = dist <= radius
    if not feather:
        return band.astype(np.float32)
    w = np.where(band, 1.0 - dist / (radius + 1.0), 0.0)
    w[mask] = 1.0
    return w.astype(np.float32)


def plan_crop(region: np.ndarray, resolution: int, context: float) -> tuple[int, int, int, int]:
    """A crop (x0, y0, x1, y1) containing `region` (bool), as square as the image allows."""
    h, w = region.shape
    ys, xs = np.nonzero(region)
    if xs.size == 0:
        raise ValueError("empty region")
    bx0, by0, bx1, by1 = int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1
    side = max(bx1 - bx0, by1 - by0) * max(1.0, context)
    side = int(round(max(side, resolution)))
    cw, ch = min(side, w), min(side, h)
    cw, ch = max(cw, bx1 - bx0), max(ch, by1 - by0)
    cx, cy = (bx0 + bx1) / 2.0, (by0 + by1) / 2.0
    x0 = int(round(min(max(cx - cw / 2.0, 0), w - cw)))
    y0 = int(round(min(max(cy - ch / 2.0, 0), h - ch)))
    return x0, y0, x0 + cw, y0 + ch


def model_size(crop_w: int, crop_h: int, resolution: int, multiple: int) -> tuple[int, int]:
    """(width, height) with the long side `resolution`, both multiples of `multiple`."""
    scale = resolution / float(max(crop_w, crop_h))

    def r(v: float) -> int:
        return max(multiple, int(round(v * scale / multiple)) * multiple)

    return r(crop_w), r(crop_h)


def paste(source: np.ndarray, generated: np.ndarray, weights: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    """Blend `generated` (crop-sized uint8) into a copy of `source` with `weights` (image-sized);
    pixels with weight 0 are not touched."""
    x0, y0, x1, y1 = box
    out = source.copy()
    wc = weights[y0:y1, x0:x1]
    sel = wc > 0
    if not sel.any():
        return out
    src = out[y0:y1, x0:x1]
    a = wc[sel][:, None].astype(np.float64)
    blended = np.rint(src[sel].astype(np.float64) * (1.0 - a) + generated[sel].astype(np.float64) * a)
    src[sel] = np.clip(blended, 0, 255).astype(np.uint8)
    return out


# ------------------------------------------------------------------------------ the model
class InpaintExecutor:
    backend = "diffusers-inpaint"

    def __init__(self, model_id: str = "stabilityai/stable-diffusion-2-inpainting", params: InpaintParams = InpaintParams(),
                 device: str = "cpu", dtype: str = "auto", revision: str | None = None, safety_checker: bool = True):
        import diffusers

        self.model_id, self.params, self.device = model_id, params, device
        self.dtype = torch_dtype(dtype, device)
        kwargs: dict[str, Any] = dict(dtype=self.dtype, revision=revision)
        if not safety_checker:
            kwargs.update(safety_checker=None, requires_safety_checker=False)
        self.pipe = diffusers.AutoPipelineForInpainting.from_pretrained(model_id, **kwargs)
        self.pipe.to(device)
        self.pipe.set_progress_bar_config(disable=True)
        vae_scale = int(getattr(self.pipe, "vae_scale_factor", 8))
        unet = getattr(self.pipe, "unet", None)
        downs = len(getattr(unet.config, "block_out_channels", (0, 0, 0, 0))) - 1 if unet is not None else 3
        self.multiple = vae_scale * (2 ** max(0, downs))
        self.has_safety_checker = getattr(self.pipe, "safety_checker", None) is not None
        self.stats = CallStats()

    def describe(self) -> dict[str, Any]:
        return {"backend": self.backend, "model": self.model_id, "pipeline": type(self.pipe).__name__,
                "scheduler": type(self.pipe.scheduler).__name__, "params": asdict(self.params),
                "size_multiple": self.multiple, "safety_checker": self.has_safety_checker,
                "dtype": str(self.dtype).replace("torch.", "")}

    def prepare(self, job: InpaintJob) -> dict[str, Any]:
        p = self.params
        src = np.asarray(job.image.convert("RGB"))
        if job.mask.shape != src.shape[:2]:
            raise ValueError(f"mask {job.mask.shape} does not match image {src.shape[:2]}")
        if not job.mask.any():
            raise ValueError("the region to edit is empty")
        band = dilate(job.mask, p.dilation_px)
        weights = paste_weights(job.mask, p.dilation_px, p.feather)
        box = (0, 0, src.shape[1], src.shape[0]) if p.whole_image else plan_crop(band, p.resolution, p.context)
        x0, y0, x1, y1 = box
        size = model_size(x1 - x0, y1 - y0, p.resolution, self.multiple)
        crop = Image.fromarray(src[y0:y1, x0:x1]).resize(size, Image.Resampling.LANCZOS)
        mask = Image.fromarray(np.where(band[y0:y1, x0:x1], 255, 0).astype(np.uint8)).resize(size, Image.Resampling.NEAREST)
        return {"src": src, "weights": weights, "box": box, "size": size, "crop": crop, "mask": mask,
                "info": {"crop_box": list(box), "model_size": list(size), "region_px": int(job.mask.sum()),
                         "dilated_px": int(band.sum())}}

    def run(self, jobs: Sequence[InpaintJob]) -> list[InpaintOutcome]:
        outcomes: list[InpaintOutcome | None] = [None] * len(jobs)
        prepared: dict[int, dict[str, Any]] = {}
        for i, job in enumerate(jobs):
            try:
                prepared[i] = self.prepare(job)
            except ValueError as exc:
                outcomes[i] = InpaintOutcome(None, f"execution: {exc}")
        ready = sorted(prepared)
        for group in group_by(ready, lambda i: prepared[i]["size"]):
            for batch in chunks([ready[g] for g in group], self.params.batch_size):
                results = run_isolated(lambda part: self._call(jobs, prepared, part), batch,
                                       lambda i, exc: InpaintOutcome(None, f"execution: {type(exc).__name__}: {exc}"))
                for i, res in zip(batch, results):
                    outcomes[i] = res
        return outcomes  # type: ignore[return-value]

    def _call(self, jobs: Sequence[InpaintJob], prepared: dict[int, dict[str, Any]], batch: list[int]) -> list[InpaintOutcome]:
        import torch

        p = self.params
        width, height = prepared[batch[0]]["size"]
        generators = [torch.Generator(device="cpu").manual_seed(int(jobs[i].seed)) for i in batch]
        with self.stats.track([jobs[i].key for i in batch]), torch.inference_mode():
            out = self.pipe(prompt=[jobs[i].prompt for i in batch],
                            negative_prompt=[jobs[i].negative_prompt or "" for i in batch],
                            image=[prepared[i]["crop"] for i in batch], mask_image=[prepared[i]["mask"] for i in batch],
                            height=height, width=width, strength=p.strength, num_inference_steps=p.steps,
                            guidance_scale=p.guidance_scale, generator=generators, output_type="np")
        images = out.images
        flags = getattr(out, "nsfw_content_detected", None) or [False] * len(batch)
        results = []
        for j, i in enumerate(batch):
            prep = prepared[i]
            info = dict(prep["info"], seed=int(jobs[i].seed), prompt=jobs[i].prompt,
                        negative_prompt=jobs[i].negative_prompt)
            if flags[j]:
                results.append(InpaintOutcome(None, "execution: the pipeline's safety checker flagged the output", info))
                continue
            gen = np.clip(np.rint(np.asarray(images[j], dtype=np.float64) * 255.0), 0, 255).astype(np.uint8)
            x0, y0, x1, y1 = prep["box"]
            gen = np.asarray(Image.fromarray(gen).resize((x1 - x0, y1 - y0), Image.Resampling.LANCZOS))
            edited = paste(prep["src"], gen, prep["weights"], prep["box"])
            results.append(InpaintOutcome(Image.fromarray(edited), None, info))
        return results
