"""`CIELREditor`: the CIELR reference editor (registered as "cielr").

    editor = CIELREditor(**CIELREditor.presets["lite"]).to("cuda")
    results = editor.edit(requests)

Per `edit` call (a batch of samples):

1. every sample's chain starts and its object-list VLM call goes out (concurrently, bounded by the
   LLM config's `concurrency`), while the segmenter (once per sample) and the depth model run;
2. the scheduler drives all chains together: each LLM / VLM call is in flight in a thread pool as
   soon as its chain asks for it, and labeller runs (SSR version 1 and semantic updates) are batched
   across samples on the main thread;
3. the executor applies each sample's steps in order, batching the same step of different samples.

Models are loaded on first use and kept until `close()`. A failing sample (an invalid LLM answer
after retries, an empty region, a model error on its image) gets status "error" with the stage in
the message; the others go on. Each result's trace holds the SSR versions (region masks as 1-bit PNG
artifacts, `trace["artifacts"] = {name: PIL image}`, written by the runner beside the trace), every
LLM / VLM exchange, the plan, chosen regions, actions, model call counts and timings.
"""
from __future__ import annotations

import dataclasses
import logging
import threading
import time
import traceback
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ciebench.cache import cache_root
from ciebench.editor import EditorConfig, EditRequest, EditResult, Editor
from ciebench.isolate import run_isolated
from ciebench.llm import LLMConfig, make_client
from ciebench.status import EDITOR_FAILURE, Status

from .components import DepthModel, Inpainter, Labeller, Reasoner, Segmenter
from .executor import InpaintExecutor, InpaintJob, InpaintParams
from .lama import BIG_LAMA
from .reasoning import ABLATIONS, Ask, ChainFailure, ChainResult, Detect, ReasoningChain, Settings
from .segmenters import AMGParams, Sam2Segmenter, SegmentAnythingSegmenter
from .ssr import mask_to_image

log = logging.getLogger("ciebench.cielr")

DASHSCOPE_BASE_URL = "https://dashscope.aliyuncs.com/compatible-mode/v1"
SEGMENTERS = ("sam2", "segment-anything")
REMOVALS = ("sd-crop", "sd-whole", "lama")


def _llm(value: Any, name: str) -> LLMConfig | None:
    if value is None or isinstance(value, LLMConfig):
        return value
    if isinstance(value, dict):
        return LLMConfig.from_dict(value)
    raise TypeError(f"{name} must be an LLMConfig or a mapping of its fields, got {type(value).__name__}")


@dataclass(frozen=True)
class CIELRConfig(EditorConfig):
    """Every option of the CIELR editor. The defaults are our improved pipeline (planning, crop
    inpainting with a feathered band, SAM with the SAM 2 package's own AMG defaults); preset "paper"
    sets what the authors' release used (see PRESETS and docs/cielr.md, fidelity table)."""

    # Reasoning models (OpenAI-compatible HTTP or local transformers; see ciebench.llm.LLMConfig).
    llm: LLMConfig = LLMConfig()
    vlm: LLMConfig | None = None  # the object-list model; None: the same as `llm`
    llm_cache: bool = True  # cache every LLM / VLM answer on disk by content hash
    llm_cache_dir: str | None = None  # None: $CIEBENCH_CACHE/llm or ~/.cache/ciebench/llm
    # Scene representation: segmenter.
    segmenter: str = "sam2"  # "sam2" (transformers) | "segment-anything" (the SAM 1 package)
    sam_model: str = "facebook/sam2.1-hiera-large"
    sam1_model_type: str = "vit_h"
    sam1_checkpoint: str | None = None  # path of a SAM 1 .pth checkpoint (segment-anything back end)
    # segmentation defaults are the segmenter's own (released CIELR settings), so they cannot drift
    points_per_side: int = AMGParams.points_per_side
    pred_iou_thresh: float = AMGParams.pred_iou_thresh
    stability_score_thresh: float = AMGParams.stability_score_thresh
    stability_score_offset: float = AMGParams.stability_score_offset  # release: 0.7
    crop_n_points_downscale_factor: int = AMGParams.crop_n_points_downscale_factor  # release: 2
    use_m2m: bool = AMGParams.use_m2m  # release: on (one mask-to-mask refinement pass); sam2 back end only
    crop_n_layers: int = AMGParams.crop_n_layers
    box_nms_thresh: float = AMGParams.box_nms_thresh
    crop_nms_thresh: float = AMGParams.crop_nms_thresh
    mask_threshold: float = AMGParams.mask_threshold  # logit threshold that binarises SAM's masks
    min_mask_area: int = AMGParams.min_mask_area
    points_per_batch: int = AMGParams.points_per_batch
    # Labeller (open-vocabulary detection) and label assignment.
    labeller_model: str = "google/owlv2-large-patch14-ensemble"
    label_threshold: float = 0.1
    label_query_template: str = "{label}"
    # label-assignment and reasoning defaults are the chain's own (reasoning.Settings), so they cannot drift
    min_overlap: float = Settings.min_overlap  # a segment is "Unknown" unless some box overlaps it by more than this
    merge_unknown: bool = Settings.merge_unknown  # merge all "Unknown" segments into one region (as released)
    # Depth.
    depth_model: str = "depth-anything/Depth-Anything-V2-Large-hf"
    # Reasoning chain.
    max_ssr_versions: int = Settings.max_ssr_versions  # SSR builds per step (1 = no updates)
    max_steps: int = Settings.max_steps  # steps of a multi-step instruction
    max_objects: int = Settings.max_objects  # objects the VLM may list (= detector queries of version 1)
    plan: bool = Settings.plan  # decompose into steps; False: one step, edit type from a separate call (release)
    ablation: str = Settings.ablation  # "none" | "no_update" (SSR built once) | "no_chain" (one combined prompt)
    feedback_retries: int = Settings.feedback_retries  # re-asks carrying the rejection reason; 0: blind resampling
    max_regions_in_prompt: int = Settings.max_regions_in_prompt  # regions per prompt, largest first (rest summarised)
    # Execution (diffusers inpainting on a crop around the region).
    inpaint_model: str = "stabilityai/stable-diffusion-2-inpainting"
    # defaults are the executor's own, so the two cannot drift apart
    resolution: int = InpaintParams.resolution
    steps: int = InpaintParams.steps
    guidance_scale: float = InpaintParams.guidance_scale
    strength: float = InpaintParams.strength
    dilation_px: int = InpaintParams.dilation_px
    feather: bool = InpaintParams.feather
    context: float = InpaintParams.context
    remove_prompt: str = Settings.remove_prompt
    remove_negative_prompt: str = Settings.remove_negative_prompt
    negative_prompt: str = Settings.negative_prompt
    safety_checker: bool = True  # keep the pipeline's safety checker when the checkpoint ships one
    # Removal back end: "sd-crop" (the inpainting model above, on the crop), "sd-whole" (the release's
    # alternative: SD 1.5 inpainting on the whole image with a fixed prompt) or "lama" (Big-LaMa, as
    # released; a pinned TorchScript file verified by sha256, see lama.py).
    removal: str = "sd-crop"
    sd_whole_model: str = "stable-diffusion-v1-5/stable-diffusion-inpainting"
    sd_whole_prompt: str = "white wall"
    lama_url: str = BIG_LAMA.url
    lama_sha256: str = BIG_LAMA.sha256
    lama_dir: str | None = None  # a folder holding big-lama.pt, used instead of the download
    lama_allow_unverified: bool = False  # accept a local big-lama.pt whose hash differs (recorded)
    # Compute.
    inpaint_dtype: str = "auto"  # auto: float16 on CUDA, float32 on CPU
    vision_dtype: str = "float32"  # segmenter, labeller, depth
    model_batch_size: int = 4  # images per labeller / depth / SAM-encoder forward
    inpaint_batch_size: int = 4

    def __post_init__(self) -> None:
        object.__setattr__(self, "llm", _llm(self.llm, "llm"))
        object.__setattr__(self, "vlm", _llm(self.vlm, "vlm"))
        if self.segmenter not in SEGMENTERS:
            raise ValueError(f"segmenter must be one of {SEGMENTERS}, got {self.segmenter!r}")
        if self.max_ssr_versions < 1 or self.max_steps < 1 or self.max_objects < 1:
            raise ValueError("max_ssr_versions, max_steps and max_objects must be >= 1")
        if "{label}" not in self.label_query_template:
            raise ValueError("label_query_template must contain {label}")
        if self.resolution < 8 or self.steps < 1 or self.dilation_px < 0:
            raise ValueError("resolution >= 8, steps >= 1, dilation_px >= 0")
        if self.ablation not in ABLATIONS:
            raise ValueError(f"ablation must be one of {ABLATIONS}, got {self.ablation!r}")
        if self.removal not in REMOVALS:
            raise ValueError(f"removal must be one of {REMOVALS}, got {self.removal!r}")
        if self.use_m2m and self.segmenter != "sam2":
            raise ValueError("use_m2m needs segmenter='sam2' (segment-anything's generator has no m2m pass)")
        if self.feedback_retries < 0 or self.max_regions_in_prompt < 1 or self.crop_n_points_downscale_factor < 1:
            raise ValueError("feedback_retries >= 0, max_regions_in_prompt >= 1, crop_n_points_downscale_factor >= 1")

    @property
    def vlm_config(self) -> LLMConfig:
        return self.vlm or self.llm

    def downloads(self) -> list[str]:
        """Hub repositories (and local models) this configuration loads."""
        out = [self.sam_model if self.segmenter == "sam2" else f"segment-anything {self.sam1_model_type} checkpoint: "
               f"{self.sam1_checkpoint or '(set sam1_checkpoint)'}",
               self.labeller_model, self.depth_model, self.inpaint_model]
        if self.removal == "sd-whole":
            out.append(self.sd_whole_model)
        elif self.removal == "lama":
            out.append(f"Big-LaMa TorchScript: {self.lama_dir or self.lama_url} (sha256 {self.lama_sha256})")
        for cfg in {self.llm, self.vlm_config}:
            out.append(cfg.model if cfg.backend == "transformers" else f"API: {cfg.model_id}")
        return list(dict.fromkeys(out))


_PAPER_LLM = dict(model="qwen-max", base_url=DASHSCOPE_BASE_URL, api_key_env="DASHSCOPE_API_KEY",
                  response_format="json_object", max_tokens=1024, timeout_s=120.0, concurrency=16)
_PAPER_VLM = dict(_PAPER_LLM, model="qwen-vl-max")
_LITE_LLM = dict(backend="transformers", model="Qwen/Qwen2.5-VL-3B-Instruct", api_key_env=None, max_tokens=768)

PRESETS: dict[str, dict[str, Any]] = {
    # The released method: SAM 2.1 Hiera-L with the release's AMG settings, OWLv2 large ensemble,
    # Depth Anything V2 large; no decomposition (a separate edit-type call), removal with Big-LaMa,
    # SD 2 inpainting at 512 pasted back on exactly the selected mask; qwen-max for text and
    # qwen-vl-max for the image through DashScope's OpenAI-compatible endpoint.
    "paper": {"llm": _PAPER_LLM, "vlm": _PAPER_VLM, "plan": False, "removal": "lama",
              "stability_score_offset": 0.7, "crop_n_points_downscale_factor": 2, "use_m2m": True,
              "dilation_px": 0, "feather": False},
    # Small public checkpoints for one modest GPU (about 12 GB), everything local.
    "lite": {
        "llm": _LITE_LLM, "vlm": None,
        "sam_model": "facebook/sam2.1-hiera-tiny",
        "labeller_model": "google/owlv2-base-patch16-ensemble",
        "depth_model": "depth-anything/Depth-Anything-V2-Small-hf",
        "inpaint_model": "stable-diffusion-v1-5/stable-diffusion-inpainting",
        "steps": 30,
    },
}


# ---------------------------------------------------------------------------------- per-sample state
@dataclass
class _Sample:
    index: int
    key: str
    request: EditRequest
    image: Image.Image
    chain: ReasoningChain | None = None
    gen: Any = None
    result: ChainResult | None = None
    error: str | None = None
    error_stage: str | None = None
    segments: list[np.ndarray] | None = None
    depth: np.ndarray | None = None
    images: list[Image.Image] = field(default_factory=list)  # output of each executed step
    execution: list[dict[str, Any]] = field(default_factory=list)
    t_chain: float = 0.0

    @property
    def failed(self) -> bool:
        return self.error is not None

    def fail(self, stage: str, message: str) -> None:
        if self.error is None:
            self.error_stage, self.error = stage, f"{stage}: {message}"
        if self.gen is not None:
            try:
                self.gen.close()
            except Exception:  # noqa: BLE001 - closing a finished or broken generator
                pass
            self.gen = None


class CIELREditor(Editor):
    name = "cielr"
    version = "1.0"
    track = "agentic"
    requires = ("gpu (recommended)", "hub:SAM 2.1, OWLv2, Depth Anything V2, SD inpainting",
                "llm: an API key or a local model")
    Config = CIELRConfig
    presets = PRESETS

    def __init__(self, config: CIELRConfig | None = None, **options: Any):
        super().__init__(config, **options)
        # components (protocols in components.py), loaded on first `edit` unless swapped in with `use`
        self.segmenter: Segmenter | None = None
        self.labeller: Labeller | None = None
        self.depth_model: DepthModel | None = None
        self.executor: Inpainter | None = None
        self.remover: Inpainter | None = None  # the removal back end when it is not the executor ("lama", "sd-whole")
        self.llm_client: Reasoner | None = None
        self.vlm_client: Reasoner | None = None
        self._calls = 0
        self._lock = threading.Lock()

    # ------------------------------------------------------------------------------ components
    def use(self, *, segmenter: Segmenter | None = None, labeller: Labeller | None = None,
            depth: DepthModel | None = None, executor: Inpainter | None = None, llm: Reasoner | None = None,
            vlm: Reasoner | None = None, remover: Inpainter | None = None) -> "CIELREditor":
        """Swap in components: any object that follows the protocol in components.py (no base class
        needed), e.g. a fine-tuned segmenter."""
        for attr, value in (("segmenter", segmenter), ("labeller", labeller), ("depth_model", depth),
                            ("executor", executor), ("llm_client", llm), ("vlm_client", vlm), ("remover", remover)):
            if value is not None:
                setattr(self, attr, value)
        return self

    def required_assets(self) -> list:
        from ciebench.requirements import hub_repo, local_path, pinned_asset

        from .lama import lama_asset

        c, who = self.config, f"editor {self.name}"
        skip = () if c.safety_checker else ("safety_checker",)
        out = [hub_repo(c.sam_model, used_by=f"{who}: segmenter") if c.segmenter == "sam2" else
               local_path(c.sam1_checkpoint or "(sam1_checkpoint not set)", used_by=f"{who}: segmenter",
                          detail=f"segment-anything {c.sam1_model_type} checkpoint")]
        out += [hub_repo(c.labeller_model, used_by=f"{who}: labeller"),
                hub_repo(c.depth_model, used_by=f"{who}: depth"),
                hub_repo(c.inpaint_model, used_by=f"{who}: inpainting", layout="diffusers", skip=skip)]
        # the removal back ends `_load` builds besides the executor ("sd-crop" is the executor itself)
        if c.removal == "lama":
            asset = lama_asset(c.lama_url, c.lama_sha256)
            out.append(pinned_asset(asset, used_by=f"{who}: removal") if c.lama_dir is None else
                       local_path(str(Path(c.lama_dir) / asset.filename), used_by=f"{who}: removal",
                                  detail=f"{asset.filename}: {asset.source}"))
        elif c.removal == "sd-whole":
            out.append(hub_repo(c.sd_whole_model, used_by=f"{who}: removal", layout="diffusers", skip=skip))
        for role, llm in (("llm", c.llm), ("vlm", c.vlm_config)):
            out += llm.required_assets(used_by=f"{who}: {role}")
        return out

    def to(self, device: str) -> "CIELREditor":
        """Set the device; models already loaded elsewhere are dropped and reload there on next use."""
        if str(device) != str(self.device) and any(m is not None for m in (self.segmenter, self.labeller,
                                                                           self.depth_model, self.executor,
                                                                           self.remover)):
            self.segmenter = self.labeller = self.depth_model = self.executor = self.remover = None
        self.device = str(device)
        return self

    def _load(self) -> None:
        """Load every model once (first `edit`), on `self.device`."""
        c, dev = self.config, self.device
        if self.segmenter is None:
            params = AMGParams(points_per_side=c.points_per_side, pred_iou_thresh=c.pred_iou_thresh,
                               stability_score_thresh=c.stability_score_thresh, crop_n_layers=c.crop_n_layers,
                               box_nms_thresh=c.box_nms_thresh, crop_nms_thresh=c.crop_nms_thresh,
                               mask_threshold=c.mask_threshold, min_mask_area=c.min_mask_area,
                               points_per_batch=c.points_per_batch, stability_score_offset=c.stability_score_offset,
                               crop_n_points_downscale_factor=c.crop_n_points_downscale_factor, use_m2m=c.use_m2m)
            if c.segmenter == "sam2":
                self.segmenter = Sam2Segmenter(c.sam_model, params, device=dev, dtype=c.vision_dtype,
                                               encoder_batch_size=c.model_batch_size)
            else:
                self.segmenter = SegmentAnythingSegmenter(c.sam1_model_type, c.sam1_checkpoint, params, device=dev)
        if self.labeller is None:
            from .labeller import Owlv2Labeller

            self.labeller = Owlv2Labeller(c.labeller_model, threshold=c.label_threshold,
                                          query_template=c.label_query_template, device=dev, dtype=c.vision_dtype,
                                          batch_size=c.model_batch_size)
        if self.depth_model is None:
            from .depth import DepthEstimator

            self.depth_model = DepthEstimator(c.depth_model, device=dev, dtype=c.vision_dtype,
                                              batch_size=c.model_batch_size)
        if self.executor is None:
            params = InpaintParams(resolution=c.resolution, steps=c.steps, guidance_scale=c.guidance_scale,
                                   strength=c.strength, dilation_px=c.dilation_px, feather=c.feather,
                                   context=c.context, batch_size=c.inpaint_batch_size)
            self.executor = InpaintExecutor(c.inpaint_model, params, device=dev, dtype=c.inpaint_dtype,
                                            safety_checker=c.safety_checker)
        if self.remover is None and c.removal == "lama":
            from .lama import LamaRemover

            self.remover = LamaRemover(InpaintParams(dilation_px=c.dilation_px, feather=c.feather), device=dev,
                                       url=c.lama_url, sha256=c.lama_sha256, local_dir=c.lama_dir,
                                       allow_unverified=c.lama_allow_unverified)
        elif self.remover is None and c.removal == "sd-whole":
            params = InpaintParams(resolution=c.resolution, steps=c.steps, guidance_scale=c.guidance_scale,
                                   strength=c.strength, dilation_px=c.dilation_px, feather=c.feather,
                                   batch_size=c.inpaint_batch_size, whole_image=True)
            self.remover = InpaintExecutor(c.sd_whole_model, params, device=dev, dtype=c.inpaint_dtype,
                                           safety_checker=c.safety_checker)
        if self.llm_client is None:
            cache = self._cache_dir()
            self.llm_client = make_client(self._local(c.llm), cache_dir=cache)
            vlm = self._local(c.vlm_config)
            self.vlm_client = self.llm_client if vlm == self.llm_client.config else make_client(vlm, cache_dir=cache)
        elif self.vlm_client is None:
            self.vlm_client = self.llm_client

    def _local(self, cfg: LLMConfig) -> LLMConfig:
        # A local model follows the editor's device unless its config names one.
        if cfg.backend == "transformers" and cfg.device is None and self.device != "cpu":
            return dataclasses.replace(cfg, device=self.device)
        return cfg

    def _cache_dir(self) -> Path | None:
        c = self.config
        if not c.llm_cache:
            return None
        if c.llm_cache_dir:
            return Path(c.llm_cache_dir)
        return cache_root() / "llm"

    def close(self) -> None:
        """Free every model this editor holds (call it before scoring). A local LLM shared with the
        judge (ciebench.llm.local_models) stays loaded while the judge holds it; models reload on the
        next `edit`."""
        self.segmenter = self.labeller = self.depth_model = self.executor = self.remover = None
        self.llm_client = self.vlm_client = None
        import gc

        gc.collect()  # drop reference cycles now, so the weakly held local models really go
        try:
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except ImportError:  # pragma: no cover
            pass

    def describe(self) -> dict[str, Any]:
        out = super().describe()
        out["downloads"] = self.config.downloads()
        return out

    def settings(self) -> Settings:
        c = self.config
        # The removal prompt the chain records is the one the removal back end really uses.
        remove = {"sd-crop": (c.remove_prompt, c.remove_negative_prompt), "sd-whole": (c.sd_whole_prompt, ""),
                  "lama": ("", "")}[c.removal]
        # every chain setting the config has (all but max_labels) is passed by its name
        own = {f.name for f in dataclasses.fields(c)}
        shared = {f.name: getattr(c, f.name) for f in dataclasses.fields(Settings) if f.name in own}
        return Settings(**{**shared, "remove_prompt": remove[0], "remove_negative_prompt": remove[1]})

    # ------------------------------------------------------------------------------ edit
    def edit(self, requests: list[EditRequest]) -> list[EditResult]:
        if not requests:
            return []
        with self._lock:
            self._load()
            self._calls += 1
            call = self._calls
        t0 = time.perf_counter()
        samples = [_Sample(i, f"{call}:{i}:{r.sample_id}", r, r.image.convert("RGB")) for i, r in enumerate(requests)]
        settings = self.settings()
        t_reason0 = time.perf_counter()
        self._reason(samples, settings)
        t_reason = time.perf_counter() - t_reason0
        t_exec0 = time.perf_counter()
        self._execute(samples)
        t_exec = time.perf_counter() - t_exec0
        wall = time.perf_counter() - t0
        return [self._result(s, wall / len(samples), t_reason, t_exec) for s in samples]

    # The reasoning scheduler: chains as generators, LLM calls in a pool, model work batched here.
    def _reason(self, samples: list[_Sample], settings: Settings) -> None:
        clients = {"llm": self.llm_client, "vlm": self.vlm_client}
        workers = max(1, min(len(samples), max(self.llm_client.config.concurrency, self.vlm_client.config.concurrency)))
        pending: dict[Future, _Sample] = {}
        detect_queue: list[tuple[_Sample, Detect]] = []

        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="cielr-llm") as pool:
            def advance(s: _Sample, value: Any, first: bool = False) -> None:
                try:
                    req = next(s.gen) if first else s.gen.send(value)
                except StopIteration as stop:
                    s.result, s.gen = stop.value, None
                    s.t_chain = time.perf_counter() - s.t_chain
                    return
                except ChainFailure as exc:
                    s.gen = None
                    s.fail(exc.stage, exc.message)
                    return
                except Exception as exc:  # noqa: BLE001 - a bug or model error in one chain must not stop the batch
                    s.gen = None
                    log.debug("cielr chain %s failed:\n%s", s.request.sample_id, traceback.format_exc())
                    s.fail(s.chain.stage if s.chain else "reasoning", f"{type(exc).__name__}: {exc}")
                    return
                if isinstance(req, Ask):
                    client = clients[req.client]
                    fut = pool.submit(client.complete, req.template, req.variables, req.images, req.schema, req.validate)
                    pending[fut] = s
                elif isinstance(req, Detect):
                    detect_queue.append((s, req))
                else:  # pragma: no cover - a programming error
                    s.fail("reasoning", f"unknown request {type(req).__name__}")

            # 1. start every chain: the object-list calls go out at once ...
            for s in samples:
                s.chain = ReasoningChain(s.request.instruction, s.image, [], None, settings)
                s.gen = s.chain.run()
                s.t_chain = time.perf_counter()
                advance(s, None, first=True)

            # 2. ... and while they are in flight the segmenter and the depth model run (once per
            # sample, a few images at a time). A chain whose first answer arrives before its scene is
            # ready is parked until it is. Labeller runs go first: they unblock chains.
            scene_todo = list(samples)
            parked: dict[int, Any] = {}
            while pending or detect_queue or scene_todo:
                if detect_queue:
                    batch, detect_queue[:] = list(detect_queue), []
                    self._detect(batch, advance)
                    continue
                if scene_todo:
                    chunk, scene_todo[:] = scene_todo[:self.config.model_batch_size], scene_todo[self.config.model_batch_size:]
                    self._scene(chunk)
                    for s in chunk:
                        s.chain.segments, s.chain.depth = s.segments or [], s.depth
                        if s.index in parked:
                            reply = parked.pop(s.index)
                            if s.gen is not None:
                                advance(s, reply)
                    if pending:  # collect whatever finished meanwhile, without waiting
                        done, _ = wait(list(pending), timeout=0)
                        self._deliver(done, pending, parked, advance)
                    continue
                done, _ = wait(list(pending), return_when=FIRST_COMPLETED)
                self._deliver(done, pending, parked, advance)

    @staticmethod
    def _deliver(done, pending: dict, parked: dict, advance) -> None:
        for fut in done:
            s = pending.pop(fut)
            if s.gen is None:
                continue
            try:
                reply = fut.result()
            except Exception as exc:  # noqa: BLE001 - complete() does not raise, but be safe
                s.fail(s.chain.stage, f"LLM call raised {type(exc).__name__}: {exc}")
                continue
            if s.segments is None and not s.failed:
                parked[s.index] = reply  # its scene is not ready yet
            else:
                advance(s, reply)

    def _scene(self, samples: list[_Sample]) -> None:
        live = [s for s in samples if not s.failed]
        for s, m in zip(live, self._per_image(live, self.segmenter.segment, "segmentation")):
            if not s.failed:
                s.segments = m
        live = [s for s in samples if not s.failed]
        for s, d in zip(live, self._per_image(live, self.depth_model.estimate, "depth")):
            if not s.failed:
                s.depth = d

    @staticmethod
    def _per_image(live: list[_Sample], model, stage: str) -> list:
        """`model` on the images of `live` batched; if the batch fails, image by image (a batch of one
        too: the batched path may be what failed), so only the culprit fails, at `stage`."""
        return run_isolated(lambda batch: model([s.image for s in batch], keys=[s.key for s in batch]), live,
                            lambda s, exc: s.fail(stage, f"{type(exc).__name__}: {exc}"), retry_single=True,
                            on_batch_failure=lambda exc, n: log.debug("batched %s failed (%s); ran per image",
                                                                      stage, exc))

    def _detect(self, batch: list[tuple[_Sample, Detect]], advance) -> None:
        batch = [(s, d) for s, d in batch if s.gen is not None]
        if not batch:
            return
        found = run_isolated(
            lambda part: self.labeller.detect([s.image for s, _ in part], [d.labels for _, d in part],
                                              keys=[s.key for s, _ in part]),
            batch, lambda sd, exc: sd[0].fail("labeller", f"{type(exc).__name__}: {exc}"), retry_single=True)
        for (s, _), dets in zip(batch, found):
            if dets is not None and s.gen is not None:
                advance(s, dets)

    # ------------------------------------------------------------------------------ execution
    def _execute(self, samples: list[_Sample]) -> None:
        n_steps = max((len(s.result.steps) for s in samples if s.result is not None), default=0)
        for s in samples:
            if s.result is not None and not s.failed:
                s.images = [s.image]
        for k in range(n_steps):
            todo = [s for s in samples if not s.failed and s.result is not None and k < len(s.result.steps)]
            jobs = []
            for s in todo:
                step = s.result.steps[k]
                jobs.append(InpaintJob(s.key, s.images[-1], step.mask, step.prompt, step.negative_prompt,
                                       seed=int(s.request.seed) + k))
            # removals go to the removal back end when it is not the inpainting model itself
            routes = [self.remover if self.remover is not None and s.result.steps[k].edit_type == "remove"
                      else self.executor for s in todo]
            outcomes: list[Any] = [None] * len(jobs)
            for backend in {id(r): r for r in routes}.values():
                idx = [i for i, r in enumerate(routes) if r is backend]
                for i, out in zip(idx, backend.run([jobs[i] for i in idx])):
                    outcomes[i] = out
            for s, out in zip(todo, outcomes):
                s.execution.append({"step": k + 1, "error": out.error, **out.info})
                if out.error is not None or out.image is None:
                    s.fail(f"execution step {k + 1}", (out.error or "no image").removeprefix("execution: "))
                else:
                    s.images.append(out.image)

    # ------------------------------------------------------------------------------ results
    def _result(self, s: _Sample, wall_share: float, t_reason: float, t_exec: float) -> EditResult:
        trace, artifacts = self._trace(s)
        stats = {name: getattr(comp, "stats", None) for name, comp in
                 (("segmenter", self.segmenter), ("labeller", self.labeller), ("depth", self.depth_model),
                  ("inpaint", self.executor), ("removal", self.remover))}
        timings = {name: round(st.per_key_seconds.get(s.key, 0.0), 4) for name, st in stats.items() if st is not None}
        exchanges = s.chain.exchanges if s.chain else []
        timings["llm"] = round(sum(e["latency_s"] for e in exchanges), 4)
        timings["reasoning_wall"] = round(s.t_chain, 4) if s.result is not None else None
        timings["batch_reasoning_wall"] = round(t_reason, 4)
        timings["batch_execution_wall"] = round(t_exec, 4)
        timings["wall_share"] = round(wall_share, 4)
        trace["timings"] = timings
        trace["model_calls"] = {
            **{name: int(st.per_key.get(s.key, 0)) for name, st in stats.items() if st is not None},
            "llm_calls": sum(1 for e in exchanges if e["client"] == "llm"),
            "vlm_calls": sum(1 for e in exchanges if e["client"] == "vlm"),
            "llm_requests": sum(int(e["attempts"]) for e in exchanges),
            "feedback_retries": sum(1 for e in exchanges if e.get("feedback_round")),
        }
        trace["artifacts"] = artifacts
        timings_out = {k: float(v) for k, v in timings.items() if isinstance(v, (int, float))}
        if s.failed:
            return EditResult(image=None, status=EDITOR_FAILURE, error=s.error, trace=trace, timings=timings_out)
        return EditResult(image=s.images[-1], status=Status.OK, trace=trace, timings=timings_out)

    def _trace(self, s: _Sample) -> tuple[dict[str, Any], dict[str, Image.Image]]:
        c = self.config
        chain = s.chain
        artifacts: dict[str, Image.Image] = {}
        versions = []
        known: dict[str, str] = {}  # mask digest -> artifact name: unchanged masks are written once
        for ssr in (chain.ssrs if chain else []):
            desc, arts = ssr.to_trace(known=known)
            versions.append(desc)
            artifacts.update(arts)
        steps = []
        if s.result is not None:
            for k, step in enumerate(s.result.steps):
                d = step.to_trace()
                name = f"step{k + 1}_mask.png"
                artifacts[name] = mask_to_image(step.mask)
                d["mask"] = name
                if k < len(s.execution):
                    d["execution"] = s.execution[k]
                steps.append(d)
        trace: dict[str, Any] = {
            "editor": self.name,
            "editor_version": self.version,
            "sample_id": s.request.sample_id,
            "instruction": s.request.instruction,
            "seed": int(s.request.seed),
            "status": EDITOR_FAILURE if s.failed else Status.OK,
            "error": s.error,
            "failed_stage": s.error_stage,
            "objects": chain.objects if chain else [],
            "plan": s.result.plan if s.result else None,
            "steps": steps,
            "ssr_versions": versions,
            "exchanges": chain.exchanges if chain else [],
            "n_segments": len(s.segments) if s.segments is not None else None,
            "models": {
                "segmenter": self.segmenter.describe() if self.segmenter is not None else None,
                "labeller": self.labeller.describe() if self.labeller is not None else None,
                "depth": self.depth_model.describe() if self.depth_model is not None else None,
                "inpaint": self.executor.describe() if self.executor is not None else None,
                "removal": self.remover.describe() if self.remover is not None else None,
                "llm": self.llm_client.model_id if self.llm_client else None,
                "vlm": self.vlm_client.model_id if self.vlm_client else None,
            },
            "settings": {"max_ssr_versions": c.max_ssr_versions, "max_steps": c.max_steps,
                         "dilation_px": c.dilation_px, "feather": c.feather, "plan": c.plan, "ablation": c.ablation,
                         "removal": c.removal, "feedback_retries": c.feedback_retries,
                         "max_regions_in_prompt": c.max_regions_in_prompt},
        }
        truncated = getattr(self.labeller, "truncated", None)
        if chain and chain.ssrs and truncated is not None:
            # detector queries cut to the text encoder's length (the SSR keeps the full labels)
            labels = list(dict.fromkeys(l for v in chain.ssrs for l in v.queried_labels))
            trace["labeller_truncated_queries"] = truncated(labels)
        return trace, artifacts


__all__ = ["CIELREditor", "CIELRConfig", "PRESETS"]
