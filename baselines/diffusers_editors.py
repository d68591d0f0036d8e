"""Editors over diffusers image-editing pipelines, with the settings that produced published numbers.

Built-ins: `qwen-image-edit`, `flux-kontext`, `flux2-klein`, `longcat-image-edit`; and `diffusers`, the
generic editor for any image-to-image pipeline (`--editor-arg pipeline=CLASS model_id=HUB_ID`).

Settings live in one table, `ciebench/data/diffusers_editors.json`: per model entry the pipeline class,
hub id, licence, download size and GPU memory, and each generation setting with its source. At
construction every setting left unset is filled from the table, so the run spec's editor config holds
the values actually used and any changed value (from `--editor-arg` or a table edit) changes the config
hash. Settings that stay None (the generic editor) are not passed: the pipeline's own default applies.

Resolution policies: "pipeline" hands the source to the pipeline unchanged and lets it choose the working
size; "area" rescales to `max_area` pixels at the source aspect ratio; "source" keeps the source size,
shrunk to at most `max_area`; "kontext" takes the FLUX.1 Kontext training resolution whose aspect ratio is
nearest the source's (BFL's reference generates there), shrunk to at most `max_area` when that is set.
All but "pipeline" round sides down to `multiple_of`, resize the input to that size and pass it as
height/width to pipelines that take them (and its area as `max_area` to those that refit height/width
to `max_area`, as Kontext does, so they keep it). One exception to "pipeline": QwenImageEditPlusPipeline
sizes its output from the last of several input images, so a multi-image case is given the size the
pipeline picks for the source alone. Outputs are resized back to the source size (bicubic) so metrics
compare like with like; the trace records the working size.

Pipelines load with all their components, a safety checker included (StableDiffusion* checkpoints ship
one). A flagged output, which diffusers replaces with a black image, is the sample's refusal (status
"refused", naming the checker), never an edited image.
"""
from __future__ import annotations

import dataclasses
import inspect
import json
import math
import time
from collections import defaultdict
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from typing import Any

from PIL import Image

from ciebench.editor import EditorConfig, EditRequest, EditResult, Editor
from ciebench.status import Status
from ciebench.turns import MULTI_IMAGE
from ciebench.errors import UsageError

SETTINGS_FILE = "diffusers_editors.json"
RESOLUTION_POLICIES = ("pipeline", "area", "source", "kontext")
OFFLOAD = ("none", "model", "sequential")
QUANTIZATION = ("none", "bnb-nf4", "bnb-int8")
DTYPES = ("auto", "bfloat16", "float16", "float32")
# config field -> pipeline call argument
CALL_ARGS = {"steps": "num_inference_steps", "guidance_scale": "guidance_scale", "true_cfg_scale": "true_cfg_scale",
             "negative_prompt": "negative_prompt", "strength": "strength", "auto_resize": "_auto_resize"}


class DiffusersEditorError(UsageError, ValueError):
    """A bad option of the diffusers editor, or one this machine cannot honour (exit code 2)."""


@lru_cache(maxsize=1)
def settings_table() -> dict[str, Any]:
    """The packaged settings table (models -> entry)."""
    text = resources.files("ciebench.data").joinpath(SETTINGS_FILE).read_text(encoding="utf-8")
    return json.loads(text)["models"]


def table_entry(model: str) -> dict[str, Any]:
    table = settings_table()
    if model not in table:
        raise DiffusersEditorError(f"no entry {model!r} in {SETTINGS_FILE}; entries: {', '.join(table)}")
    return table[model]


def table_settings(model: str) -> dict[str, Any]:
    """Entry `model`'s setting values, without their sources."""
    entry = table_entry(model)
    return {"pipeline": entry["pipeline"], "model_id": entry["model_id"],
            **{k: v["value"] for k, v in entry["settings"].items()}}


@dataclass(frozen=True)
class DiffusersEditConfig(EditorConfig):
    model: str | None = None  # entry of the settings table; None: everything from the options below
    pipeline: str | None = None  # diffusers pipeline class name
    model_id: str | None = None
    revision: str | None = None
    steps: int | None = None
    guidance_scale: float | None = None
    true_cfg_scale: float | None = None
    negative_prompt: str | None = None
    strength: float | None = None  # img2img pipelines
    resolution_policy: str | None = None  # pipeline | area | source | kontext (None: pipeline)
    max_area: int | None = None  # pixels; passed to pipelines that take `max_area`
    multiple_of: int | None = None  # side rounding for "area" / "source" / "kontext" (None: 16)
    auto_resize: bool | None = None  # FluxKontextPipeline `_auto_resize`
    scheduler: str | None = None  # "pipeline" (the checkpoint's) or a diffusers scheduler class name
    dtype: str | None = None  # auto (bfloat16 on CUDA, float32 on CPU) | bfloat16 | float16 | float32
    batch: bool | None = None  # several samples per pipeline call (None: no)
    # Memory options (see README): they trade speed for memory; quantisation also changes the numbers.
    offload: str = "none"  # none | model (enable_model_cpu_offload) | sequential (enable_sequential_cpu_offload)
    vae_tiling: bool = False
    quantization: str = "none"  # none | bnb-nf4 | bnb-int8 (bitsandbytes, transformer + text encoder)


# Pipelines whose `image` argument, given as a list, is the set of reference images of ONE prompt
# (diffusers 0.42: QwenImageEditPlusPipeline.__call__ and Flux2(Klein)Pipeline.__call__ loop over it as
# condition images), not a batch of samples. They take multi-image cases, and cannot batch samples.
REFERENCE_LIST_PIPELINES = frozenset({"QwenImageEditPlusPipeline", "Flux2KleinPipeline", "Flux2Pipeline"})


# Output fields in which diffusers pipelines give their safety checker's verdict per image (diffusers
# 0.42: StableDiffusion*PipelineOutput and others `nsfw_content_detected`, DeepFloyd IF `nsfw_detected`);
# the checker has already replaced a flagged image with a black one.
NSFW_FIELDS = ("nsfw_content_detected", "nsfw_detected")


def nsfw_flags(output: Any, n: int) -> list[bool]:
    """Per image of `output`, whether the pipeline's safety checker flagged it (all False without one)."""
    for name in NSFW_FIELDS:
        flags = getattr(output, name, None)
        if flags is not None:
            flags = [bool(f) for f in flags] if hasattr(flags, "__iter__") else [bool(flags)] * n
            if len(flags) != n:
                raise RuntimeError(f"the pipeline's {name} has {len(flags)} entries for {n} images")
            return flags
    return [False] * n


def resolve_config(config: DiffusersEditConfig) -> DiffusersEditConfig:
    """Fill every unset setting from the table entry `config.model`, then check the result."""
    if config.model is not None:
        fields = {f.name for f in dataclasses.fields(config)}
        unset = {k: v for k, v in table_settings(config.model).items() if k in fields and getattr(config, k) is None}
        config = dataclasses.replace(config, **unset)
    if not config.pipeline or not config.model_id:
        raise DiffusersEditorError("the diffusers editor needs pipeline=CLASS and model_id=HUB_ID "
                                   "(e.g. --editor-arg pipeline=QwenImageEditPipeline --editor-arg model_id=Qwen/Qwen-Image-Edit)")
    for name, value, allowed in (("resolution_policy", config.resolution_policy or "pipeline", RESOLUTION_POLICIES),
                                 ("offload", config.offload, OFFLOAD), ("quantization", config.quantization, QUANTIZATION),
                                 ("dtype", config.dtype or "auto", DTYPES)):
        if value not in allowed:
            raise DiffusersEditorError(f"{name} must be one of {allowed}, not {value!r}")
    if config.resolution_policy in ("area", "source") and not config.max_area:
        raise DiffusersEditorError(f"resolution_policy={config.resolution_policy} needs max_area (pixels)")
    if config.batch and config.pipeline in REFERENCE_LIST_PIPELINES:
        raise DiffusersEditorError(f"batch=true: {config.pipeline} reads a list of images as the reference images of "
                                   "one prompt, so it cannot batch samples; unset batch")
    return config


def kontext_resolution(size: tuple[int, int]) -> tuple[int, int]:
    """The FLUX.1 Kontext training resolution (width, height) whose aspect ratio is nearest `size`'s,
    ties to the smaller width: the rule of BFL's reference (`prepare_kontext`) and of diffusers'
    `_auto_resize`, over diffusers' own copy of the list."""
    from diffusers.pipelines.flux.pipeline_flux_kontext import PREFERRED_KONTEXT_RESOLUTIONS

    ratio = size[0] / size[1]
    return min(PREFERRED_KONTEXT_RESOLUTIONS, key=lambda wh: (abs(ratio - wh[0] / wh[1]), wh))


def working_size(size: tuple[int, int], policy: str, max_area: int | None, multiple_of: int) -> tuple[int, int] | None:
    """The (width, height) to ask the pipeline for, or None to let it choose ("pipeline")."""
    if policy == "pipeline":
        return None
    w, h = kontext_resolution(size) if policy == "kontext" else size
    scale = math.sqrt(max_area / (w * h)) if max_area else 1.0
    if policy in ("source", "kontext"):  # a cap, never an enlargement
        scale = min(1.0, scale)
    m = multiple_of
    return max(m, int(w * scale) // m * m), max(m, int(h * scale) // m * m)


class DiffusersEditor(Editor):
    """Any diffusers image-editing pipeline: `--editor-arg pipeline=CLASS model_id=HUB_ID`."""

    name = "diffusers"
    version = "1"
    track = "direct"
    requires = ("gpu (recommended)",)
    Config = DiffusersEditConfig
    presets: dict[str, dict[str, Any]] = {}

    def __init__(self, config=None, **options):
        super().__init__(config, **options)
        self.config = resolve_config(self.config)
        self._pipe = None
        self._accepts: frozenset[str] = frozenset()
        if self.config.pipeline in REFERENCE_LIST_PIPELINES:  # per instance: the preset decides the pipeline
            self.supports = frozenset({MULTI_IMAGE})

    # ------------------------------------------------------------------------------------ loading
    def _dtype(self):
        import torch

        name = self.config.dtype or "auto"
        if name == "auto":
            return torch.bfloat16 if self.device.startswith("cuda") else torch.float32
        return getattr(torch, name)

    def _quantization(self, dtype):
        q = self.config.quantization
        if q == "none":
            return None
        try:
            import bitsandbytes  # noqa: F401
        except ImportError as exc:
            raise DiffusersEditorError(f"quantization={q} needs bitsandbytes (pip install bitsandbytes) and a CUDA GPU") from exc
        from diffusers.quantizers import PipelineQuantizationConfig

        kwargs = ({"load_in_4bit": True, "bnb_4bit_quant_type": "nf4", "bnb_4bit_compute_dtype": dtype}
                  if q == "bnb-nf4" else {"load_in_8bit": True})
        backend = "bitsandbytes_4bit" if q == "bnb-nf4" else "bitsandbytes_8bit"
        return PipelineQuantizationConfig(quant_backend=backend, quant_kwargs=kwargs,
                                          components_to_quantize=["transformer", "text_encoder"])

    def _pipeline(self):
        if self._pipe is not None:
            return self._pipe
        import diffusers

        cfg = self.config
        cls = getattr(diffusers, cfg.pipeline, None)
        if not (isinstance(cls, type) and issubclass(cls, diffusers.DiffusionPipeline)):
            raise DiffusersEditorError(f"diffusers {diffusers.__version__} has no pipeline class {cfg.pipeline!r}")
        if cfg.offload != "none" and not self.device.startswith("cuda"):
            raise DiffusersEditorError(f"offload={cfg.offload} moves weights between CPU and GPU: it needs --device cuda")
        dtype = self._dtype()
        kwargs: dict[str, Any] = {"revision": cfg.revision, "dtype": dtype}
        quant = self._quantization(dtype)
        if quant is not None:
            kwargs["quantization_config"] = quant
        pipe = cls.from_pretrained(cfg.model_id, **kwargs)
        if cfg.scheduler not in (None, "pipeline"):
            sched_cls = getattr(diffusers, cfg.scheduler, None)
            if sched_cls is None or not hasattr(sched_cls, "from_config"):
                raise DiffusersEditorError(f"diffusers has no scheduler class {cfg.scheduler!r}")
            pipe.scheduler = sched_cls.from_config(pipe.scheduler.config)
        if cfg.vae_tiling:
            (pipe.vae.enable_tiling if hasattr(pipe.vae, "enable_tiling") else pipe.enable_vae_tiling)()
        pipe.set_progress_bar_config(disable=True)
        accepts = frozenset(inspect.signature(pipe.__call__).parameters)
        for field, arg in CALL_ARGS.items():
            if getattr(cfg, field) is not None and arg not in accepts:
                raise DiffusersEditorError(f"{cfg.pipeline} takes no {arg!r} (set by option {field}={getattr(cfg, field)!r}); "
                                           f"unset it for this pipeline")
        if cfg.offload == "model":
            pipe.enable_model_cpu_offload(device=self.device)
        elif cfg.offload == "sequential":
            pipe.enable_sequential_cpu_offload(device=self.device)
        else:
            # quantised or not: from_pretrained places bitsandbytes modules on the GPU but leaves the rest (the
            # VAE) on the CPU; diffusers' `DiffusionPipeline.to` moves bitsandbytes modules where they can move
            # and skips them where not, so it is safe for every quantisation
            pipe.to(self.device)
        self._accepts = accepts
        self._pipe = pipe
        return pipe

    def required_assets(self) -> list:
        from pathlib import Path

        from ciebench.requirements import hub_repo, local_path

        # `from_pretrained(model_id, revision=...)` reads every component of the pipeline; quantisation and
        # offload change how the weights are held, not which files are read
        cfg, who = self.config, f"editor {self.name}"
        if Path(cfg.model_id).is_dir():  # a pipeline saved on this machine, not a hub id
            return [local_path(cfg.model_id, used_by=who, detail=f"a saved {cfg.pipeline}")]
        return [hub_repo(cfg.model_id, used_by=who, revision=cfg.revision, layout="diffusers")]

    def to(self, device: str) -> "DiffusersEditor":
        super().to(device)
        if self._pipe is not None and self.config.offload == "none":  # quantised too: see `_pipeline`
            self._pipe.to(device)
        return self

    # ------------------------------------------------------------------------------------ editing
    def call_kwargs(self) -> dict[str, Any]:
        """The fixed pipeline arguments from the config (per-sample ones are added by `edit`)."""
        cfg = self.config
        kwargs = {arg: getattr(cfg, field) for field, arg in CALL_ARGS.items() if getattr(cfg, field) is not None}
        if cfg.max_area is not None and "max_area" in self._accepts:
            kwargs["max_area"] = cfg.max_area
        return kwargs

    def _size(self, r: EditRequest) -> tuple[int, int] | None:
        cfg = self.config
        return working_size(r.image.size, cfg.resolution_policy or "pipeline", cfg.max_area, cfg.multiple_of or 16)

    def _multi_image_size(self, r: EditRequest) -> tuple[int, int] | None:
        """Under "pipeline", the output size of a multi-image case for QwenImageEditPlusPipeline: the one
        it picks for the source alone. Given several images it sizes the output from the LAST one
        (diffusers 0.42 `__call__`: `image[-1].size`), a reference whose aspect ratio is not the source's,
        so the output would be stretched back to the source. The pipeline's own rule: its module's
        `calculate_dimensions` at 1024*1024 pixels for the image's aspect ratio (it floors the sides to
        its latent multiple itself)."""
        if self.config.pipeline != "QwenImageEditPlusPipeline" or len(r.images) <= 1:
            return None
        from diffusers.pipelines.qwenimage import pipeline_qwenimage_edit_plus as plus

        w, h = r.image.size
        return plus.calculate_dimensions(1024 * 1024, w / h)

    def edit(self, requests: list[EditRequest]) -> list[EditResult]:
        pipe = self._pipeline()
        results: list[EditResult | None] = [None] * len(requests)
        groups: dict[Any, list[int]] = defaultdict(list)
        for i, r in enumerate(requests):
            # a batch shares one working size; "pipeline" sizes from the source, so group by that
            key = (self._size(r) or ("src", r.image.size)) if self.config.batch else i
            groups[key].append(i)
        for idx in groups.values():
            batch = [requests[i] for i in idx]
            for i, result in zip(idx, self._run(pipe, batch)):
                results[i] = result
        return results  # type: ignore[return-value]

    def _run(self, pipe, batch: list[EditRequest]) -> list[EditResult]:
        import torch

        started = time.perf_counter()
        size = self._size(batch[0])
        images = [r.image.convert("RGB") for r in batch]
        if size is not None:
            # Lanczos for Kontext: the resampling of BFL's reference and of the pipeline's own _auto_resize
            # (which then finds the image at a training resolution already and leaves it alone)
            resample = Image.LANCZOS if self.config.resolution_policy == "kontext" else Image.BICUBIC
            images = [im.resize(size, resample) for im in images]
        # A multi-image case (one request, since these pipelines never batch): the source first, then
        # the other inputs in the case's order, as the pipeline's reference images.
        image_arg = images if len(batch) > 1 else images[0]
        if len(batch) == 1 and len(batch[0].images) > 1 and self.config.pipeline in REFERENCE_LIST_PIPELINES:
            image_arg = [images[0], *(im.convert("RGB") for im in batch[0].images[1:])]
        kwargs = self.call_kwargs()
        out_size = size or (self._multi_image_size(batch[0]) if len(batch) == 1 else None)
        if out_size is not None and {"height", "width"} <= self._accepts:  # else the resized input decides
            kwargs.update(width=out_size[0], height=out_size[1])
            if "max_area" in self._accepts:  # FluxKontextPipeline refits height/width to max_area: keep them
                kwargs["max_area"] = out_size[0] * out_size[1]
        if "negative_prompt" in kwargs and len(batch) > 1:
            kwargs["negative_prompt"] = [kwargs["negative_prompt"]] * len(batch)
        output = pipe(image=image_arg,
                      prompt=[r.instruction for r in batch] if len(batch) > 1 else batch[0].instruction,
                      generator=[torch.Generator(device="cpu").manual_seed(r.seed) for r in batch], **kwargs)
        if len(output.images) != len(batch):
            raise RuntimeError(f"{self.config.pipeline} returned {len(output.images)} images for {len(batch)} prompts")
        per_image = (time.perf_counter() - started) / len(batch)
        checker = type(getattr(pipe, "safety_checker", None)).__name__
        results = []
        for r, image, flagged in zip(batch, output.images, nsfw_flags(output, len(batch))):
            trace = {"working_size": list(image.size), "pipeline": self.config.pipeline, "model_id": self.config.model_id,
                     "resolution_policy": self.config.resolution_policy or "pipeline"}
            if flagged:  # the image is the checker's black stand-in: scoring it would score a non-edit
                results.append(EditResult(image=None, status=Status.REFUSED, trace=trace, timings={"edit_seconds": per_image},
                                          error=f"sample {r.sample_id}: {self.config.pipeline}'s safety checker ({checker}) "
                                                "flagged the output as NSFW (diffusers returns a black image instead)"))
            else:
                results.append(EditResult(image=image.convert("RGB").resize(r.image.size, Image.BICUBIC), trace=trace,
                                          timings={"edit_seconds": per_image}))
        return results

    def close(self) -> None:
        self._pipe = None

    # ---------------------------------------------------------------------------------- describing
    # The sources of the settings stay in the packaged table (named by `config.model`) and out of the
    # run spec, so rewording a source does not make finished runs unresumable.
    @classmethod
    def catalog(cls) -> list[str]:
        """One line per preset for `ciebench editors`: licence, download size, GPU memory."""
        lines = []
        for preset, options in cls.presets.items():
            entry = table_entry(options["model"])
            dl, mem = entry["download_gb"], entry["gpu_memory"]
            lines.append(f"{preset}: {entry['model_id']} | licence {entry['license']['value']} | "
                         f"download {dl['value']} GB{' (estimate)' if dl.get('estimate') else ''} | "
                         f"GPU memory {mem['value']}{' (estimate)' if mem.get('estimate') else ''}")
        return lines


# Built-in entries: `Config.model` names the default table entry and `presets` the others.
@dataclass(frozen=True)
class QwenImageEditConfig(DiffusersEditConfig):
    model: str | None = "qwen-image-edit-2511"


class QwenImageEditEditor(DiffusersEditor):
    """Qwen-Image-Edit-2511 (QwenImageEditPlusPipeline); presets 2509 and base (the first release)."""

    name = "qwen-image-edit"
    requires = ("gpu (recommended)", "hub:Qwen/Qwen-Image-Edit-2511")
    Config = QwenImageEditConfig
    presets = {"2511": {"model": "qwen-image-edit-2511"}, "2509": {"model": "qwen-image-edit-2509"},
               "base": {"model": "qwen-image-edit"}}


@dataclass(frozen=True)
class FluxKontextConfig(DiffusersEditConfig):
    model: str | None = "flux-kontext-dev"


class FluxKontextEditor(DiffusersEditor):
    """FLUX.1 Kontext [dev] (FluxKontextPipeline)."""

    name = "flux-kontext"
    requires = ("gpu (recommended)", "hub:black-forest-labs/FLUX.1-Kontext-dev")
    Config = FluxKontextConfig
    presets = {"dev": {"model": "flux-kontext-dev"}}


@dataclass(frozen=True)
class Flux2KleinConfig(DiffusersEditConfig):
    model: str | None = "flux2-klein-4b"


class Flux2KleinEditor(DiffusersEditor):
    """FLUX.2 [klein] 4B (Apache-2.0); preset 9b (non-commercial licence)."""

    name = "flux2-klein"
    requires = ("gpu (recommended)", "hub:black-forest-labs/FLUX.2-klein-4B")
    Config = Flux2KleinConfig
    presets = {"4b": {"model": "flux2-klein-4b"}, "9b": {"model": "flux2-klein-9b"}}


@dataclass(frozen=True)
class LongCatImageEditConfig(DiffusersEditConfig):
    model: str | None = "longcat-image-edit"


class LongCatImageEditEditor(DiffusersEditor):
    """LongCat-Image-Edit (LongCatImageEditPipeline)."""

    name = "longcat-image-edit"
    requires = ("gpu (recommended)", "hub:meituan-longcat/LongCat-Image-Edit")
    Config = LongCatImageEditConfig
    presets = {"default": {"model": "longcat-image-edit"}}
