"""A tiny SmartEdit, published under the official repo ids into the temporary offline hub cache.

Every repo the real `smartedit` editor reads gets a random-weight stand-in with the official file
names and formats: the SmartEdit checkpoint folders as .bin pickles with the official key names
(enumerated by tests/support/smartedit_layout.py, not by the implementation under test), a sharded LLaVA delta
(.bin + index), a sharded safetensors LLaMA base, Vicuna's config + a real sentencepiece model,
CLIP and InstructPix2Pix parts saved with `save_pretrained`. Sizes are tiny; structure and names are
the official ones.

Two values are set on purpose so that greedy decoding of a random LLM emits SmartEdit's image tokens:
the final RMSNorm scales hidden dimension 0 by 1000, and in the LM head only the 32 image-token rows
read that dimension (+1 / -1 alternately). Whatever the input, the most likely token is then an image
token, as in the trained model, and the hidden states that reach the Q-Former still depend on the
image and the instruction through dimensions 1..n.
"""
from __future__ import annotations

import io
import json
import re
from dataclasses import replace
from pathlib import Path

import torch

from .smartedit_layout import OfficialDims, official_layout
from .fixtures_models import publish_clip
from .fixtures_editors import TINY_CROSS_DIM, TINY_IP2P_UNET, publish_tiny_instruct_pix2pix
from .tinyhub import publish

VARIANT_REPOS = {
    "7b": {"smartedit": "TencentARC/SmartEdit-7B", "vicuna": "lmsys/vicuna-7b-delta-v1.1",
           "llava": "liuhaotian/LLaVA-Lightning-7B-delta-v1-1", "llama": "huggyllama/llama-7b"},
}
CLIP_REPO = "openai/clip-vit-large-patch14"
IP2P_REPO = "timbrooks/instruct-pix2pix"

LLM = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
           max_position_embeddings=2048, rms_norm_eps=1e-6)
VISION = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4, image_size=32,
              patch_size=8)
CROSS_DIM = TINY_CROSS_DIM  # UNet cross-attention width = Q-Former width = text-encoder width
UNET = TINY_IP2P_UNET  # the session's one tiny InstructPix2Pix (tests/support/fixtures_editors.py)
ADAPTER_CONFIG = {"base_model_name_or_path": "vicuna", "bias": "none", "fan_in_fan_out": False, "inference_mode": True,
                  "init_lora_weights": True, "lora_alpha": 16, "lora_dropout": 0.05, "modules_to_save": None,
                  "peft_type": "LORA", "r": 8, "target_modules": ["q_proj", "v_proj"], "task_type": "CAUSAL_LM"}
CORPUS = ([f"Change the {c} {o} to a {c2} {o}. Remove the {o} on the {side}."
           for c in ("red", "blue", "green", "white") for c2 in ("black", "yellow") for o in ("cup", "dog", "car", "bottle")
           for side in ("left", "right")]
          + ["A chat between a curious user and an artificial intelligence assistant. The assistant can generate images.",
             "The assistant needs to conduct the image to image translation task based on given image and text information.",
             "The assistant gives helpful, detailed, and polite answers to the user's questions.",
             "Could you produce an image based on the previous image and text description? USER: ASSISTANT:"])



def _sentencepiece_model() -> bytes:
    import sentencepiece as spm

    out = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(CORPUS * 2), model_writer=out, vocab_size=400, model_type="bpe", byte_fallback=True,
        unk_id=0, bos_id=1, eos_id=2, pad_id=-1, add_dummy_prefix=True, remove_extra_whitespaces=False,
        normalization_rule_name="identity", character_coverage=1.0, hard_vocab_limit=False, minloglevel=2)
    return out.getvalue()


def tiny_dims(base_vocab: int) -> OfficialDims:
    return replace(
        OfficialDims(llm_hidden=LLM["hidden_size"], llm_intermediate=LLM["intermediate_size"],
                     llm_layers=LLM["num_hidden_layers"], llm_heads=LLM["num_attention_heads"]),
        base_vocab=base_vocab, vision_hidden=VISION["hidden_size"], qformer_hidden=CROSS_DIM,
        qformer_intermediate=4 * CROSS_DIM, bim_width=VISION["hidden_size"], bim_mlp=2 * VISION["hidden_size"],
        unet_channels=UNET["block_out_channels"], unet_layers_per_block=UNET["layers_per_block"],
        unet_down=UNET["down_block_types"], unet_up=UNET["up_block_types"], cross_attention_dim=CROSS_DIM)


def _value(key: str, shape: tuple[int, ...], g: torch.Generator, dims: OfficialDims) -> torch.Tensor:
    if key.endswith("rotary_emb.inv_freq"):
        d = dims.llm_hidden // dims.llm_heads
        return (1.0 / (10000 ** (torch.arange(0, d, 2).float() / d))).to(torch.bfloat16)  # bf16, as trained
    if key.endswith("position_ids"):
        return torch.arange(shape[-1]).expand(1, -1).clone()
    if re.search(r"(norm\w*|LayerNorm)\.weight$", key):  # LayerNorm / GroupNorm / RMSNorm scales
        return 1 + 0.05 * torch.randn(shape, generator=g)
    if key.endswith("positional_encoding_gaussian_matrix"):
        return torch.randn(shape, generator=g)
    return 0.05 * torch.randn(shape, generator=g)


def _official_files(dims: OfficialDims, seed: int = 0) -> dict[str, dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    files = {part: {k: _value(k, s, g, dims) for k, s in keys.items()} for part, keys in official_layout(dims).items()}
    llm, head = files["llm"], files["embeddings_qformer"]["lm_head.weight"]
    norm = llm["model.base_model.model.norm.weight"]
    norm[:] = 1.0
    norm[0] = 1000.0
    head[:, 0] = 0.0
    first_image = dims.base_vocab + 3
    head[first_image:, 0] = torch.tensor([1.0 if i % 2 == 0 else -1.0 for i in range(32)])
    head[first_image:, 1:] = 0.0
    for key, value in llm.items():  # LLaMA weights were trained in bf16; the embedding stayed fp32
        if "embed_tokens" not in key and value.is_floating_point():
            llm[key] = value.to(torch.bfloat16)
    return files


def publish_tiny_smartedit(variant: str = "7b") -> dict[str, object]:
    """Publish every repo the `smartedit` editor reads; returns the tiny dimensions used."""
    from transformers import LlamaConfig, LlamaForCausalLM

    repos = VARIANT_REPOS[variant]
    sp_model = _sentencepiece_model()
    import sentencepiece as spm

    base_vocab = spm.SentencePieceProcessor(model_proto=sp_model).get_piece_size()
    dims = tiny_dims(base_vocab)
    llm_config = LlamaConfig(vocab_size=base_vocab, **LLM)

    def vicuna(d: Path) -> None:
        llm_config.save_pretrained(d)
        (d / "tokenizer.model").write_bytes(sp_model)

    publish(repos["vicuna"], vicuna)

    def llama(d: Path) -> None:
        torch.manual_seed(1)
        model = LlamaForCausalLM(llm_config)
        with torch.no_grad():
            model.lm_head.weight[:, 0] = 0.0
        model.save_pretrained(d, max_shard_size="60KB")  # sharded safetensors + index

    publish(repos["llama"], llama)

    def llava_delta(d: Path) -> None:
        g = torch.Generator().manual_seed(2)
        h, v = dims.llm_hidden, base_vocab + 3
        embed = (0.02 * torch.randn(v, h, generator=g)).half()
        head = (0.02 * torch.randn(v, h, generator=g)).half()
        head[:, 0] = 0.0
        shard1 = {"model.embed_tokens.weight": embed,
                  "model.layers.0.self_attn.q_proj.weight": (0.02 * torch.randn(h, h, generator=g)).half()}
        shard2 = {"lm_head.weight": head, "model.norm.weight": torch.ones(h).half(),
                  "model.mm_projector.weight": (0.02 * torch.randn(h, dims.vision_hidden, generator=g)).half(),
                  "model.mm_projector.bias": torch.zeros(h).half()}
        names = ["pytorch_model-00001-of-00002.bin", "pytorch_model-00002-of-00002.bin"]
        weight_map = {}
        for name, shard in zip(names, (shard1, shard2)):
            torch.save(shard, d / name)
            weight_map.update({k: name for k in shard})
        (d / "pytorch_model.bin.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
        (d / "config.json").write_text(json.dumps({"model_type": "llava", "vocab_size": v,
                                                   "mm_vision_tower": CLIP_REPO, "mm_vision_select_layer": -2}))

    publish(repos["llava"], llava_delta)

    def smartedit(d: Path) -> None:
        files = _official_files(dims)
        paths = {"llm": "LLM-15000/adapter_model.bin",
                 "embeddings_qformer": "embeddings_qformer/checkpoint-15000_embeddings_qformer.bin",
                 "modulate": "modulate-15000/adapter_model.bin", "unet": "unet-15000/adapter_model.bin"}
        for part, rel in paths.items():
            (d / rel).parent.mkdir(parents=True, exist_ok=True)
            torch.save(files[part], d / rel)
        (d / "LLM-15000" / "adapter_config.json").write_text(json.dumps(ADAPTER_CONFIG, indent=2))
        (d / "README.md").write_text("tiny stand-in\n")

    publish(repos["smartedit"], smartedit)

    publish_clip(CLIP_REPO)  # the session's one tiny CLIP ViT-L/14 (tests/support/fixtures_models.py)

    publish_tiny_instruct_pix2pix(IP2P_REPO)
    return {"dims": dims, "base_vocab": base_vocab, "repos": repos}
