"""SmartEdit's networks (Huang et al., CVPR 2024), assembled from transformers / peft / diffusers classes.

Only what those libraries lack is written here: SAM's random-Fourier position embedding, the
container that holds the parts under the attribute names of the official checkpoints, and the
checkpoint-key translation. The official architecture, as released in `TencentARC/SmartEdit`:

* LLaVA-1.1: a LLaMA-7B/13B decoder (`model`, wrapped with a LoRA adapter: r=8, alpha=16 on
  q_proj/v_proj, read from the checkpoint's adapter_config.json) and `lm_head`, vocabulary 32000 + 35
  added tokens; CLIP ViT-L/14 (`openai/clip-vit-large-patch14`, 224 px) features from the second-to-last
  layer without the CLS token, projected by `mm_projector` (Linear 1024 -> hidden) into the prompt.
* `sd_query_tokens` (1 x 77 x 768) and `sd_qformer`, a BLIP-2-style Q-Former (BERT-base sizes: 768
  wide, 12 heads, 3072 MLP; 6 layers, cross-attention to the LLM states in every 2nd layer, no text
  branch): it maps the hidden states of the 32 generated `<img_i>` tokens to 77 conditioning tokens.
* The bidirectional interaction module (BIM): `modulate_head` (768 -> 1024), SAM's two-way transformer
  (`modulate_transformer`: depth 2, width 1024, 8 heads, MLP 2048, ReLU, attention downsample 2),
  `pe_layer` (random Fourier features, 512 frequencies) on the 16 x 16 CLIP grid, and two zero-initialised
  heads: `dimension_reduction_head_qformer_out` (1024 -> 768, added to the conditioning tokens with
  weight 0.5) and `dimension_reduction_head_zeroconv` (1x1 conv 1024 -> 320, on the grid resized to the
  latent size, added to the UNet's `conv_in` output).
* `unet`: Stable Diffusion 1.5's UNet with 8 input channels (InstructPix2Pix layout).

Dimensions that the release hard-codes are derived here from the base models by the rules that give
the released numbers (Q-Former width = UNet cross-attention width, heads = width / 64, MLP = 4 x width;
BIM width = CLIP width, BIM MLP = 2 x width; grid = CLIP image size / patch size; zero-conv output =
UNet's first block width), so a tiny configuration has exactly the same structure and names.
"""
from __future__ import annotations

import contextlib
import copy
import math
import re
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import torch
from torch import nn
import torch.nn.functional as F

from .smartedit_text import ADDED_TOKENS

NUM_QUERY_TOKENS = 77  # the CLIP text length the UNet was trained with
QFORMER_LAYERS = 6
QFORMER_CROSS_ATTENTION_FREQUENCY = 2
QFORMER_HEAD_WIDTH = 64
QFORMER_MAX_POSITIONS = 512  # BERT-base; only the size of an unused position-id buffer in the checkpoint
BIM_DEPTH = 2
BIM_HEADS = 8
BIM_ATTENTION_DOWNSAMPLE = 2
MODULATION_SCALE = 0.5  # conditioning = qformer_out + 0.5 * BIM(qformer_out)
UNET_IN_CHANNELS = 8  # 4 noisy latents + 4 source-image latents
VISION_SELECT_LAYER = -2
CHECKPOINT_EXCLUDED_PREFIXES = ("vision_tower.",)  # loaded from openai/clip-vit-large-patch14 itself


class RandomFourierPositionEmbedding(nn.Module):
    """SAM's positional encoding with random spatial frequencies (`positional_encoding_gaussian_matrix`,
    2 x F): a grid cell centre (x, y) in [0, 1]^2 maps to [sin(2 pi p), cos(2 pi p)], p = (2(x, y) - 1) G."""

    def __init__(self, num_pos_feats: int):
        super().__init__()
        self.register_buffer("positional_encoding_gaussian_matrix", torch.randn(2, num_pos_feats))

    def forward(self, height: int, width: int) -> torch.Tensor:
        g = self.positional_encoding_gaussian_matrix
        ys = (torch.arange(height, device=g.device, dtype=g.dtype) + 0.5) / height
        xs = (torch.arange(width, device=g.device, dtype=g.dtype) + 0.5) / width
        grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
        coords = torch.stack([grid_x, grid_y], dim=-1) * 2 - 1  # (h, w, 2), x first
        proj = 2 * math.pi * (coords @ g)
        return torch.cat([proj.sin(), proj.cos()], dim=-1).permute(2, 0, 1)  # (2F, h, w)


@dataclass(frozen=True)
class SmartEditDims:
    """Every size of the assembled model, derived from the base models' configs."""

    llm_hidden: int
    vocab_size: int  # base vocabulary + 35 added tokens
    vision_hidden: int
    vision_grid: int  # CLIP image size / patch size (16 for ViT-L/14 at 224)
    qformer_hidden: int
    qformer_heads: int
    qformer_intermediate: int
    bim_width: int
    bim_mlp: int
    zero_conv_out: int

    @classmethod
    def derive(cls, llm_config: Any, vision_config: Any, unet_config: dict[str, Any], base_vocab_size: int) -> "SmartEditDims":
        q = int(unet_config["cross_attention_dim"])
        if q % QFORMER_HEAD_WIDTH:
            raise ValueError(f"UNet cross_attention_dim {q} is not a multiple of {QFORMER_HEAD_WIDTH} (Q-Former heads)")
        v = int(vision_config.hidden_size)
        if (v // BIM_ATTENTION_DOWNSAMPLE) % BIM_HEADS or v % BIM_HEADS or v % 2:
            raise ValueError(f"CLIP width {v} does not split into {BIM_HEADS} BIM heads")
        if vision_config.image_size % vision_config.patch_size:
            raise ValueError("CLIP image size is not a multiple of its patch size")
        return cls(
            llm_hidden=int(llm_config.hidden_size), vocab_size=int(base_vocab_size) + len(ADDED_TOKENS),
            vision_hidden=v, vision_grid=int(vision_config.image_size // vision_config.patch_size),
            qformer_hidden=q, qformer_heads=q // QFORMER_HEAD_WIDTH, qformer_intermediate=4 * q,
            bim_width=v, bim_mlp=2 * v, zero_conv_out=int(unet_config["block_out_channels"][0]))


class SmartEditModel(nn.Module):
    """The trainable parts of SmartEdit under the official attribute names (plus `vision_tower`)."""

    def __init__(self, llm_config: Any, vision_config: Any, unet_config: dict[str, Any], lora: dict[str, Any],
                 base_vocab_size: int, attn_implementation: str = "sdpa"):
        super().__init__()
        from diffusers import UNet2DConditionModel
        from peft import LoraConfig, PeftModel
        from transformers import Blip2QFormerConfig, Blip2QFormerModel, LlamaModel
        from transformers.models.sam.configuration_sam import SamMaskDecoderConfig
        from transformers.models.sam.modeling_sam import SamTwoWayTransformer

        dims = SmartEditDims.derive(llm_config, vision_config, unet_config, base_vocab_size)
        self.dims = dims
        self.vision_select_layer = VISION_SELECT_LAYER

        cfg = copy.deepcopy(llm_config)
        cfg.vocab_size = dims.vocab_size
        cfg.use_cache = True
        cfg._attn_implementation = attn_implementation
        lora_config = LoraConfig(r=int(lora["r"]), lora_alpha=int(lora["lora_alpha"]),
                                 target_modules=list(lora["target_modules"]),
                                 lora_dropout=float(lora.get("lora_dropout", 0.0)), bias=lora.get("bias", "none"))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # deprecation chatter between peft and transformers
            self.model = PeftModel(LlamaModel(cfg), lora_config)  # keys: model.base_model.model.<llama>
        self.lm_head = nn.Linear(dims.llm_hidden, dims.vocab_size, bias=False)
        self.mm_projector = nn.Linear(dims.vision_hidden, dims.llm_hidden)
        self.vision_tower: nn.Module | None = None  # a CLIPVisionModel, set by the loader

        self.sd_query_tokens = nn.Parameter(torch.zeros(1, NUM_QUERY_TOKENS, dims.qformer_hidden))
        qcfg = Blip2QFormerConfig(
            hidden_size=dims.qformer_hidden, num_attention_heads=dims.qformer_heads,
            intermediate_size=dims.qformer_intermediate, num_hidden_layers=QFORMER_LAYERS,
            cross_attention_frequency=QFORMER_CROSS_ATTENTION_FREQUENCY, encoder_hidden_size=dims.llm_hidden,
            hidden_act="gelu", layer_norm_eps=1e-12, max_position_embeddings=QFORMER_MAX_POSITIONS,
            use_qformer_text_input=False)
        qcfg._attn_implementation = "eager"
        self.sd_qformer = Blip2QFormerModel(qcfg)

        self.modulate_head = nn.Linear(dims.qformer_hidden, dims.bim_width)
        scfg = SamMaskDecoderConfig(hidden_size=dims.bim_width, num_hidden_layers=BIM_DEPTH,
                                    num_attention_heads=BIM_HEADS, mlp_dim=dims.bim_mlp,
                                    attention_downsample_rate=BIM_ATTENTION_DOWNSAMPLE, hidden_act="relu",
                                    layer_norm_eps=1e-5)  # SAM's nn.LayerNorm default
        scfg._attn_implementation = "eager"
        self.modulate_transformer = SamTwoWayTransformer(scfg)
        self.pe_layer = RandomFourierPositionEmbedding(dims.bim_width // 2)
        self.dimension_reduction_head_zeroconv = nn.Conv2d(dims.bim_width, dims.zero_conv_out, kernel_size=1)
        self.dimension_reduction_head_qformer_out = nn.Linear(dims.bim_width, dims.qformer_hidden)

        self.unet = UNet2DConditionModel.from_config({**unet_config, "in_channels": UNET_IN_CHANNELS})

    # ----------------------------------------------------------------------------------------------
    # pieces of the forward pass
    @property
    def llm(self) -> nn.Module:
        """The LLaMA decoder with its LoRA layers injected (what the PeftModel wraps)."""
        return self.model.get_base_model()

    def embed_tokens(self, ids: torch.Tensor) -> torch.Tensor:
        return self.llm.get_input_embeddings()(ids)

    def encode_image(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """CLIP patch features (B, grid*grid, vision_hidden) from the second-to-last layer, CLS dropped."""
        out = self.vision_tower(pixel_values=pixel_values, output_hidden_states=True)
        return out.hidden_states[self.vision_select_layer][:, 1:]

    def qformer(self, image_token_states: torch.Tensor) -> torch.Tensor:
        """(B, 32, llm_hidden) LLM states -> (B, 77, qformer_hidden) conditioning tokens."""
        query = self.sd_query_tokens.expand(image_token_states.shape[0], -1, -1)
        return self.sd_qformer(query_embeds=query, encoder_hidden_states=image_token_states).last_hidden_state

    def bim(self, clip_features: torch.Tensor, conditioning: torch.Tensor,
            latent_size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """The bidirectional interaction module. Returns (image modulation for the UNet's conv_in output,
        B x zero_conv_out x h x w; conditioning residual, B x 77 x qformer_hidden)."""
        b, n, c = clip_features.shape
        g = self.dims.vision_grid
        if n != g * g:
            raise ValueError(f"expected {g * g} CLIP patch features, got {n}")
        dtype = self.modulate_head.weight.dtype
        image = clip_features.to(dtype).permute(0, 2, 1).reshape(b, c, g, g)
        pe = self.pe_layer(g, g).unsqueeze(0).expand(b, -1, -1, -1)
        points = self.modulate_head(conditioning.to(dtype))
        out = self.modulate_transformer(point_embeddings=points.unsqueeze(1), image_embeddings=image,
                                        image_positional_embeddings=pe, attention_similarity=None)
        queries, keys = out[0].squeeze(1), out[1].squeeze(1)  # (B, 77, C), (B, g*g, C)
        grid = keys.transpose(1, 2).reshape(b, c, g, g)
        grid = F.interpolate(grid, size=latent_size, mode="bilinear", align_corners=False)
        return self.dimension_reduction_head_zeroconv(grid), self.dimension_reduction_head_qformer_out(queries)

    @contextlib.contextmanager
    def unet_modulation(self, modulation: torch.Tensor) -> Iterator[None]:
        """While active, `modulation` is added to the output of the UNet's conv_in (SmartEdit's
        'ZeroConv' UNet), broadcast over the classifier-free-guidance copies of the batch."""

        def add(_module: nn.Module, _inputs: Any, output: torch.Tensor) -> torch.Tensor:
            reps = output.shape[0] // modulation.shape[0]
            return output + modulation.to(output.dtype).repeat(reps, 1, 1, 1)

        handle = self.unet.conv_in.register_forward_hook(add)
        try:
            yield
        finally:
            handle.remove()

    # ----------------------------------------------------------------------------------------------
    def checkpoint_state_shapes(self) -> dict[str, tuple[int, ...]]:
        """Keys and shapes that SmartEdit's checkpoint files must supply (the vision tower excluded)."""
        return {k: tuple(v.shape) for k, v in self.state_dict().items()
                if not k.startswith(CHECKPOINT_EXCLUDED_PREFIXES)}


def build_skeleton(llm_config: Any, vision_config: Any, unet_config: dict[str, Any], lora: dict[str, Any],
                   base_vocab_size: int, attn_implementation: str = "sdpa") -> SmartEditModel:
    """The model with parameters on the meta device (no memory), buffers real; fill it with
    `load_state_dict(..., assign=True)`."""
    from accelerate import init_empty_weights

    with init_empty_weights(include_buffers=False):
        return SmartEditModel(llm_config, vision_config, unet_config, lora, base_vocab_size, attn_implementation)


# --------------------------------------------------------------------------------------------------
# Official checkpoint keys -> this implementation's keys.
#
# The official files were written with transformers 4.28, peft < 0.7 and SmartEdit's own copies of the
# BLIP-2 Q-Former and SAM two-way transformer. The differences are pure naming, plus three buffers
# that the libraries now recompute instead of storing:
RENAMES: tuple[tuple[str, str], ...] = (
    (r"^sd_qformer\.embeddings\.LayerNorm\.", "sd_qformer.layernorm."),
    (r"^(sd_qformer\.encoder\.layer\.\d+\.(?:attention|crossattention))\.self\.", r"\1.attention."),
    (r"^(modulate_transformer\.layers\.\d+)\.norm(\d)\.", r"\1.layer_norm\2."),
    (r"^modulate_transformer\.norm_final_attn\.", "modulate_transformer.layer_norm_final_attn."),
)
# Buffers stored by the official checkpoint that carry no learned information: they are checked
# against the values they must have, then dropped.
DERIVED_BUFFERS: tuple[tuple[str, str], ...] = (
    (r"^model\.base_model\.model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq$", "rotary_inv_freq"),
    (r"^sd_qformer\.embeddings\.position_ids$", "arange"),
)


def rotary_inv_freq(head_dim: int, theta: float = 10000.0) -> torch.Tensor:
    return 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))


def derived_kind(official_key: str) -> str | None:
    for pattern, kind in DERIVED_BUFFERS:
        if re.match(pattern, official_key):
            return kind
    return None


def check_derived(kind: str, value: torch.Tensor, llm_head_dim: int, rope_theta: float = 10000.0) -> str | None:
    """None when a dropped buffer holds what it must; else a description of the difference."""
    if kind == "rotary_inv_freq":
        want = rotary_inv_freq(llm_head_dim, rope_theta)
        if tuple(value.shape) != tuple(want.shape):
            return f"shape {tuple(value.shape)}, expected {tuple(want.shape)}"
        # stored in bf16 by SmartEdit's training (cast with the model); the rotary cache is built from
        # exact fp32 values, as in the official inference, so bf16 rounding is the tolerance
        if not torch.allclose(value.float(), want, rtol=1e-2, atol=0):
            return "values differ from 1 / theta^(2i/d)"
        return None
    if kind == "arange":
        want = torch.arange(value.shape[-1]).expand(1, -1)
        return None if torch.equal(value.long().reshape(1, -1), want) else "values are not 0..n-1"
    raise ValueError(kind)


class KeyMap:
    """Translate official checkpoint keys to this model's keys (LoRA base weights gain peft's
    `.base_layer` segment when the installed peft uses it; the rules above do the rest)."""

    def __init__(self, local_keys: set[str] | dict[str, Any]):
        self.local = set(local_keys)
        self._by_canonical = {k.replace(".base_layer.", "."): k for k in self.local}

    def __call__(self, official_key: str) -> str:
        key = official_key
        for pattern, repl in RENAMES:
            key = re.sub(pattern, repl, key)
        if key in self.local:
            return key
        return self._by_canonical.get(key, key)


def parameter_counts(model: SmartEditModel) -> dict[str, int]:
    """Parameters per component (the vision tower only when attached)."""
    groups: dict[str, Callable[[str], bool]] = {
        "llm": lambda k: k.startswith(("model.", "lm_head.")),
        "vision_tower+projector": lambda k: k.startswith(("vision_tower.", "mm_projector.")),
        "qformer": lambda k: k.startswith(("sd_qformer.", "sd_query_tokens")),
        "bim": lambda k: k.startswith(("modulate_", "pe_layer.", "dimension_reduction_")),
        "unet": lambda k: k.startswith("unet."),
    }
    counts = {name: 0 for name in groups}
    for key, p in model.named_parameters():
        for name, match in groups.items():
            if match(key):
                counts[name] += p.numel()
                break
    return counts
