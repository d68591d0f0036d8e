"""`instructpix2pix` and `magicbrush`: diffusers' StableDiffusionInstructPix2PixPipeline.

Resolution policy (recorded in the run spec through the config): "long-side-512-multiple-64", ours:
scale so the long side is `resolution`, round each side to the nearest multiple of 64 (aspect ratio
approximately kept, nothing cropped), edit, then resize the output back to the source size (bicubic)
so every metric compares like with like. It is not the original repository's rule: its edit_cli.py
rounds the scaled short side UP to a multiple of 64, floors both sides to multiples of 64 (the long
side can exceed 512) and centre-crops to that aspect ratio (ImageOps.fit, Lanczos), which gives another
working size for 24 of the 86 CIEBench images (826x550: 576x384 there, 512x320 here). We keep ours
because the crop would leave no output pixels for the source's cropped margins. "pipeline" hands the
source to the pipeline as is (diffusers only floors sizes to a multiple of 8) and resizes back the
same way.
"""
from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass

from PIL import Image

from ciebench.editor import EditorConfig, EditRequest, EditResult, Editor

RESOLUTION_POLICIES = ("long-side-512-multiple-64", "pipeline")


@dataclass(frozen=True)
class InstructPix2PixConfig(EditorConfig):
    model_id: str = "timbrooks/instruct-pix2pix"
    revision: str | None = None
    steps: int = 100
    guidance_scale: float = 7.5
    image_guidance_scale: float = 1.5
    scheduler: str = "euler_ancestral"  # the paper's sampler; "pipeline" keeps the checkpoint's own
    resolution_policy: str = "long-side-512-multiple-64"
    resolution: int = 512
    dtype: str = "auto"  # auto = float16 on CUDA, float32 on CPU
    negative_prompt: str | None = None

    def __post_init__(self) -> None:  # checked with the config, so a bad value is a usage error (exit 2)
        if self.resolution_policy not in RESOLUTION_POLICIES:
            raise ValueError(f"resolution_policy must be one of {RESOLUTION_POLICIES}, not {self.resolution_policy!r}")


class InstructPix2PixEditor(Editor):
    name = "instructpix2pix"
    version = "1"
    requires = ("gpu (recommended)", "hub:timbrooks/instruct-pix2pix")
    Config = InstructPix2PixConfig
    presets = {"paper": {}, "lite": {"steps": 20}}

    def __init__(self, config=None, **options):
        super().__init__(config, **options)
        self._pipe = None

    def _pipeline(self):
        if self._pipe is None:
            import torch
            from diffusers import EulerAncestralDiscreteScheduler, StableDiffusionInstructPix2PixPipeline

            cfg = self.config
            dtype = {"auto": torch.float16 if self.device.startswith("cuda") else torch.float32,
                     "float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}[cfg.dtype]
            pipe = StableDiffusionInstructPix2PixPipeline.from_pretrained(
                cfg.model_id, revision=cfg.revision, dtype=dtype, safety_checker=None,
                requires_safety_checker=False, use_safetensors=None)
            if cfg.scheduler == "euler_ancestral":
                pipe.scheduler = EulerAncestralDiscreteScheduler.from_config(pipe.scheduler.config)
            pipe.set_progress_bar_config(disable=True)
            self._pipe = pipe.to(self.device)
        return self._pipe

    def required_assets(self) -> list:
        from ciebench.requirements import hub_repo

        # the pipeline is loaded with safety_checker=None: that component is never read
        return [hub_repo(self.config.model_id, used_by=f"editor {self.name}", revision=self.config.revision,
                         layout="diffusers", skip=("safety_checker",))]

    def to(self, device: str) -> "InstructPix2PixEditor":
        super().to(device)
        if self._pipe is not None:
            self._pipe.to(device)
        return self

    def working_size(self, size: tuple[int, int]) -> tuple[int, int]:
        """(width, height) the pipeline edits at; see the module docstring for the policies."""
        w, h = size
        if self.config.resolution_policy == "pipeline":
            return w - w % 8, h - h % 8
        scale = self.config.resolution / max(w, h)
        return max(64, round(w * scale / 64) * 64), max(64, round(h * scale / 64) * 64)

    def edit(self, requests: list[EditRequest]) -> list[EditResult]:
        import torch

        pipe = self._pipeline()
        results: list[EditResult | None] = [None] * len(requests)
        groups: dict[tuple[int, int], list[int]] = defaultdict(list)
        for i, r in enumerate(requests):  # one pipeline call per working size: a batch must share it
            groups[self.working_size(r.image.size)].append(i)
        for size, idx in groups.items():
            started = time.perf_counter()
            batch = [requests[i] for i in idx]
            generators = [torch.Generator(device="cpu").manual_seed(r.seed) for r in batch]
            output = pipe(
                prompt=[r.instruction for r in batch],
                image=[r.image.convert("RGB").resize(size, Image.BICUBIC) for r in batch],
                num_inference_steps=self.config.steps,
                guidance_scale=self.config.guidance_scale,
                image_guidance_scale=self.config.image_guidance_scale,
                negative_prompt=[self.config.negative_prompt] * len(batch) if self.config.negative_prompt else None,
                generator=generators,
            )
            per_image = (time.perf_counter() - started) / len(batch)
            for i, r, image in zip(idx, batch, output.images):
                results[i] = EditResult(
                    image=image.resize(r.image.size, Image.BICUBIC),
                    trace={"working_size": list(size), "resolution_policy": self.config.resolution_policy},
                    timings={"edit_seconds": per_image})
        return results  # type: ignore[return-value]

    def close(self) -> None:
        self._pipe = None


@dataclass(frozen=True)
class MagicBrushConfig(InstructPix2PixConfig):
    model_id: str = "vinesmsuic/magicbrush-jul7"


class MagicBrushEditor(InstructPix2PixEditor):
    """InstructPix2Pix fine-tuned on MagicBrush (diffusers port)."""

    name = "magicbrush"
    requires = ("gpu (recommended)", "hub:vinesmsuic/magicbrush-jul7")
    Config = MagicBrushConfig
