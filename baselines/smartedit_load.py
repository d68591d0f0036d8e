"""SmartEdit at edit time: the prepared folder (smartedit_checkpoint.py) loaded strictly into the
architecture (smartedit_modules.py), plus the run-time models the official inference uses beside it
(CLIP ViT-L/14 vision tower and its normalisation, InstructPix2Pix's VAE and scheduler, the empty
prompt's CLIP text embedding as the negative conditioning).

    parts = load_parts(config, folder, device)   # SmartEditParts; prepares first if allowed and missing
"""
from __future__ import annotations

import contextlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import torch

from .smartedit_checkpoint import (MANIFEST, LoadReport, PreparedWeights, compare_keys, llm_head_dim, llm_rope_theta,
                                   read_sharded, skeleton_for)
from .smartedit_modules import SmartEditModel, derived_kind
from .smartedit_sources import EMBED_KEY, LM_HEAD_KEY, SMARTEDIT_FILES, SmartEditWeightsError
from .smartedit_text import ADDED_TOKENS, SmartEditTokenizer

if TYPE_CHECKING:
    from .smartedit import SmartEditConfig

log = logging.getLogger(__name__)


@dataclass
class SmartEditParts:
    """Everything one `SmartEditEditor.edit` needs, loaded once per device."""

    model: SmartEditModel  # LLM + LoRA, projector, Q-Former, BIM, UNet, CLIP vision tower
    tokenizer: SmartEditTokenizer
    vae: Any  # diffusers AutoencoderKL
    scheduler_config: Any  # EulerAncestralDiscreteScheduler's; a fresh scheduler per image
    null_embeds: torch.Tensor  # CLIP text embedding of "" (1 x 77 x D): the negative conditioning
    mean: torch.Tensor  # CLIP image normalisation, 1 x 3 x 1 x 1
    std: torch.Tensor
    image_size: int  # CLIP's input side
    llm_dtype: torch.dtype
    diff_dtype: torch.dtype
    provenance: dict[str, str]  # repo@commit per source, recorded in every trace

    @property
    def vae_scale(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)


def dtype_named(name: str, device: str) -> torch.dtype:
    """"auto": float16 on CUDA (the official diffusion precision), float32 elsewhere."""
    if name == "auto":
        return torch.float16 if str(device).startswith("cuda") else torch.float32
    return getattr(torch, name)


def load_parts(cfg: "SmartEditConfig", folder: Path, device: str) -> SmartEditParts:
    """Load a prepared folder strictly and the run-time models, on `device` in the config's dtypes.
    A missing folder is prepared first when `cfg.prepare_if_missing`, else an error says how to."""
    from diffusers import AutoencoderKL, EulerAncestralDiscreteScheduler
    from huggingface_hub import hf_hub_download
    from transformers import CLIPTextModel, CLIPTokenizer, CLIPVisionModel

    if not (folder / MANIFEST).exists():
        if not cfg.prepare_if_missing:
            raise SmartEditWeightsError(f"no prepared SmartEdit weights at {folder}; run "
                                        f"`ciebench baselines smartedit prepare --variant {cfg.variant}`")
        from .smartedit_prepare import prepare

        log.warning("no prepared SmartEdit weights at %s: preparing them now (one-time; downloads about "
                    "52 GB for 7B, 90 GB for 13B; see docs/smartedit.md)", folder)
        prepare(cfg.sources(), folder, echo=log.warning)
    prepared = PreparedWeights(folder)
    if prepared.sources != cfg.sources():
        raise SmartEditWeightsError(f"{folder} was prepared from {prepared.sources}, the config asks for "
                                    f"{cfg.sources()}")
    dev = torch.device(device)
    llm_dtype, diff_dtype = dtype_named(cfg.llm_dtype, device), dtype_named(cfg.diffusion_dtype, device)

    def dtype_for(key: str) -> torch.dtype:
        if key.startswith(("model.", "lm_head.")):
            return llm_dtype
        return diff_dtype if key.startswith("unet.") else torch.float32

    model = skeleton_for(prepared, cfg.attn_implementation)
    report = load_weights(model, prepared, dev, dtype_for)
    log.info("SmartEdit weights loaded strictly from %s: %s", folder, report.summary())
    with quiet_transformers():  # the CLIP checkpoint's text tower is, rightly, not loaded
        vision = CLIPVisionModel.from_pretrained(cfg.clip_repo)
    model.vision_tower = vision.to(device=dev, dtype=torch.float32)
    model.to(dev).eval().requires_grad_(False)
    processor = json.loads(Path(hf_hub_download(cfg.clip_repo, "preprocessor_config.json")).read_text(encoding="utf-8"))
    mean = torch.tensor(processor["image_mean"], dtype=torch.float32, device=dev).view(1, 3, 1, 1)
    std = torch.tensor(processor["image_std"], dtype=torch.float32, device=dev).view(1, 3, 1, 1)

    vae = AutoencoderKL.from_pretrained(cfg.ip2p_repo, subfolder="vae", torch_dtype=diff_dtype)
    vae.to(dev).eval().requires_grad_(False)
    scheduler_config = EulerAncestralDiscreteScheduler.from_pretrained(cfg.ip2p_repo, subfolder="scheduler").config
    # negative conditioning: InstructPix2Pix's CLIP text encoder on the empty prompt
    with quiet_transformers():
        clip_tok = CLIPTokenizer.from_pretrained(cfg.ip2p_repo, subfolder="tokenizer")
        text_encoder = CLIPTextModel.from_pretrained(cfg.ip2p_repo, subfolder="text_encoder")
    text_encoder.to(device=dev, dtype=diff_dtype).eval()
    ids = clip_tok("", padding="max_length", max_length=model.sd_query_tokens.shape[1], truncation=True,
                   return_tensors="pt").input_ids.to(dev)
    with torch.no_grad():
        null_embeds = text_encoder(ids)[0].to(diff_dtype)
    del text_encoder
    return SmartEditParts(model=model, tokenizer=SmartEditTokenizer(prepared.tokenizer_file), vae=vae,
                          scheduler_config=scheduler_config, null_embeds=null_embeds, mean=mean, std=std,
                          image_size=int(vision.config.image_size), llm_dtype=llm_dtype, diff_dtype=diff_dtype,
                          provenance=describe_sources(prepared))


def load_weights(model: SmartEditModel, prepared: PreparedWeights, device: str | torch.device,
                 dtype_for: Callable[[str], torch.dtype]) -> LoadReport:
    """Fill `model` (a skeleton) from the prepared folder, strictly: every expected key from exactly one
    file, no unexpected key, every shape equal, derived buffers verified. Raises SmartEditWeightsError
    with the report otherwise. `dtype_for(local_key)` picks each tensor's dtype."""
    cfg = prepared.llm_config()
    expected = model.checkpoint_state_shapes()
    official = prepared.official_shapes()
    # derived buffers are tiny: read their values for verification first
    derived_values: dict[tuple[str, str], torch.Tensor] = {}
    for part, shapes in official.items():
        wanted = [k for k in shapes if derived_kind(k)]
        if wanted:
            from safetensors import safe_open

            index = json.loads((prepared.folder / "smartedit" / f"{part}.index.json").read_text(encoding="utf-8"))
            for key in wanted:
                with safe_open(str(prepared.folder / "smartedit" / index["weight_map"][key]), framework="pt") as f:
                    derived_values[(part, key)] = f.get_tensor(key)
    report, sources = compare_keys(official, expected, llm_head_dim(cfg), llm_rope_theta(cfg),
                                   values=lambda part, key: derived_values[(part, key)])
    if not report.ok:
        raise SmartEditWeightsError(f"SmartEdit checkpoint does not match the architecture:\n{report.summary()}")

    by_official = {(part, key): local for local, (part, key) in sources.items()}
    llava = prepared.llava_rows(torch.float32)
    base_vocab = model.dims.vocab_size - len(ADDED_TOKENS)
    state: dict[str, torch.Tensor] = {}
    for part in SMARTEDIT_FILES:
        def target(key: str, stored: torch.dtype, part: str = part) -> torch.dtype:
            local = by_official.get((part, key))
            if local is None or key in (EMBED_KEY, LM_HEAD_KEY):
                return torch.float32  # derived/discarded (dropped below) or assembled in fp32 first
            return dtype_for(local)

        tensors = read_sharded(prepared.folder / "smartedit", part, device=device, dtype_for=target)
        for key, value in tensors.items():
            local = by_official.get((part, key))
            if local is None:
                continue
            if key in (EMBED_KEY, LM_HEAD_KEY):
                # the official loader puts LLaVA-1.1's rows back over the first `base_vocab` rows
                rows = llava["model.embed_tokens.weight" if key == EMBED_KEY else "lm_head.weight"]
                value = torch.cat([rows.to(value.device), value[base_vocab:]], dim=0).to(dtype_for(local))
            state[local] = value
        del tensors
    incompatible = model.load_state_dict(state, strict=False, assign=True)
    leftover = [k for k in incompatible.missing_keys if not k.startswith("vision_tower.")]
    if leftover or incompatible.unexpected_keys:
        raise SmartEditWeightsError(f"internal key mismatch after mapping: missing {leftover[:8]}, "
                                    f"unexpected {incompatible.unexpected_keys[:8]}")
    still_meta = [n for n, p in model.named_parameters() if p.is_meta]
    if still_meta:
        raise SmartEditWeightsError(f"parameters left unloaded: {still_meta[:8]}")
    return report


def describe_sources(prepared: PreparedWeights) -> dict[str, str]:
    """The provenance recorded in each result's trace: every repo and the commit actually used."""
    found: dict[str, set[str]] = {}
    for name, rec in prepared.manifest.get("files", {}).items():
        for r in rec if isinstance(rec, list) else [rec]:
            found.setdefault(name.split("/")[0], set()).add(f"{r.get('repo')}@{r.get('commit') or 'local'}")
    return {name: ", ".join(sorted(refs)) for name, refs in sorted(found.items())}


@contextlib.contextmanager
def quiet_transformers():
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
