"""Where SmartEdit's weights come from: the official repos of each variant, the files in them, and
the facts about their keys that preparation and loading rely on.

| part | official file (hub repo `TencentARC/SmartEdit-7B` / `-13B`) | keys |
| --- | --- | --- |
| LLaMA + LoRA | `LLM-15000/adapter_model.bin` | `model.base_model.model.*` (all LLaMA weights, LoRA A/B, rotary buffers) |
| Q-Former, projector, LM head | `embeddings_qformer/checkpoint-15000_embeddings_qformer.bin` | `sd_qformer.*`, `sd_query_tokens`, `mm_projector.*`, `lm_head.weight` |
| BIM | `modulate-15000/adapter_model.bin` | `modulate_head.*`, `modulate_transformer.*`, `pe_layer.*`, `dimension_reduction_head_*` |
| UNet | `unet-15000/adapter_model.bin` | `unet.*` (the whole 8-channel UNet) |
| LoRA settings | `LLM-15000/adapter_config.json` | r, alpha, target modules |

Two things come from elsewhere. The first 32000 rows of the token embedding and of the LM head are
LLaVA-1.1's (the official loader overwrites them after loading the files above), and LLaVA-1.1 is
only published as a delta against the original LLaMA weights (see smartedit_prepare.py). The LLM
config and the sentencepiece tokenizer are Vicuna-1.1's (`lmsys/vicuna-*-delta-v1.1`, two small files;
its weights are not needed because every LLaMA weight is replaced by SmartEdit's). Run-time models:
CLIP ViT-L/14 (`openai/clip-vit-large-patch14`) and InstructPix2Pix's VAE, scheduler, UNet config and
CLIP text encoder (`timbrooks/instruct-pix2pix`, the text encoder only for the empty negative prompt).

No torch here: the editor's configuration and the CLI read this module without loading models.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ciebench.cache import cache_root
from ciebench.errors import EnvironmentProblem

VARIANTS: dict[str, dict[str, str]] = {
    "7b": {
        "smartedit_repo": "TencentARC/SmartEdit-7B",
        "vicuna_repo": "lmsys/vicuna-7b-delta-v1.1",
        "llava_delta_repo": "liuhaotian/LLaVA-Lightning-7B-delta-v1-1",
        "llama_base_repo": "huggyllama/llama-7b",
    },
    "13b": {
        "smartedit_repo": "TencentARC/SmartEdit-13B",
        "vicuna_repo": "lmsys/vicuna-13b-delta-v1.1",
        "llava_delta_repo": "liuhaotian/LLaVA-13b-delta-v1-1",
        "llama_base_repo": "huggyllama/llama-13b",
    },
}
CLIP_REPO = "openai/clip-vit-large-patch14"
IP2P_REPO = "timbrooks/instruct-pix2pix"

# part -> path inside the SmartEdit repo
SMARTEDIT_FILES = {
    "llm": "LLM-{step}/adapter_model.bin",
    "embeddings_qformer": "embeddings_qformer/checkpoint-{step}_embeddings_qformer.bin",
    "modulate": "modulate-{step}/adapter_model.bin",
    "unet": "unet-{step}/adapter_model.bin",
}
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_CONFIG_FILE = "LLM-{step}/adapter_config.json"  # the hub repos have it beside the LLM weights
LLM_PREFIX = "model.base_model.model."
EMBED_KEY = LLM_PREFIX + "embed_tokens.weight"
LM_HEAD_KEY = "lm_head.weight"
# keys that some releases of a file carry and that the official loader explicitly discards
DISCARDED = {"embeddings_qformer": {EMBED_KEY}}
# run-time files fetched into the hub cache by prepare
CLIP_FILES = ["config.json", "preprocessor_config.json", "model.safetensors"]
IP2P_FILES = ["model_index.json", "vae/config.json", "vae/diffusion_pytorch_model.safetensors",
              "scheduler/scheduler_config.json", "unet/config.json", "text_encoder/config.json",
              "text_encoder/model.safetensors", "tokenizer/*"]


class SmartEditWeightsError(EnvironmentProblem, RuntimeError):
    """A prepared folder or an official file is missing, incomplete or does not match the architecture."""


@dataclass(frozen=True)
class Sources:
    """Where every weight comes from. Hub revisions default to each repo's main branch; the commit
    actually used is recorded in the prepared folder's manifest."""

    variant: str = "7b"
    step: int = 15000
    smartedit_repo: str = ""
    smartedit_revision: str | None = None
    vicuna_repo: str = ""
    llava_delta_repo: str = ""
    llama_base_repo: str = ""
    clip_repo: str = CLIP_REPO
    ip2p_repo: str = IP2P_REPO

    @classmethod
    def for_variant(cls, variant: str = "7b", **overrides: Any) -> "Sources":
        if variant not in VARIANTS:
            raise ValueError(f"unknown SmartEdit variant {variant!r}; known: {', '.join(VARIANTS)}")
        values: dict[str, Any] = {"variant": variant, **VARIANTS[variant]}
        values.update({k: v for k, v in overrides.items() if v not in (None, "")})
        return cls(**values)

    def file(self, part: str) -> str:
        return SMARTEDIT_FILES[part].format(step=self.step)


def default_weights_dir(sources: Sources) -> Path:
    root = cache_root()
    name = sources.smartedit_repo.replace("/", "--")
    return root / "smartedit" / f"{name}-step{sources.step}"

