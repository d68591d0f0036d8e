"""The key layout of SmartEdit's official checkpoint files, derived by hand from the released source.

This module does not import ciebench's SmartEdit implementation: it restates the official
architecture, as published in github.com/TencentARC/SmartEdit (read, not copied), so that the key
conformance test compares our modules against an independent account of the official files.

How each file's keys follow from the release:

* The training script's `_save` (train/DS_SmartEdit_train.py) splits `SmartEdit_model.state_dict()`
  by substring into four files: keys containing `model.base_model.model` -> `LLM-<step>/adapter_model.bin`;
  `sd_qformer`, `sd_query_tokens`, `mm_projector`, `lm_head` -> `embeddings_qformer/checkpoint-<step>_embeddings_qformer.bin`;
  `unet` -> `unet-<step>/adapter_model.bin`; `modulate_head`, `modulate_transformer`, `pe_layer`,
  `dimension_reduction_head_zeroconv`, `dimension_reduction_head_qformer_out` -> `modulate-<step>/adapter_model.bin`.
  Its comment gives the 7B counts: 133, 686 and 450 keys for the first three.
* LLM file: `SmartEdit_model.model` is a LLaMA `LlamaModel` (transformers 4.28) wrapped by a peft
  (< 0.7, no `base_layer` segment) LoRA model -> prefix `model.base_model.model.`; LoRA r=8 on
  q_proj and v_proj (data/adapter_config.json) adds `lora_A.default` (r x hidden) and `lora_B.default`
  (hidden x r); 4.28's `LlamaRotaryEmbedding` stores a persistent `inv_freq` (head_dim / 2) in every
  layer; the embedding has 32000 + 35 rows (README "Explanation of new tokens").
  7B: 32 layers x (9 weights + 4 LoRA + inv_freq) + embed + norm = 450.
* Q-Former file: BLIP-2's BERT (model/LLMSD_QFormerv01.py) built from bert-base-uncased's config with
  6 layers, cross-attention every 2nd layer (layers 0, 2, 4) to the LLM width, `word_embeddings`,
  `position_embeddings`, and every layer's text-branch `intermediate`/`output` set to None; the
  embeddings keep `LayerNorm` and the persistent `position_ids` buffer (1 x 512), no pooler;
  `sd_query_tokens` is 1 x 77 x 768; `mm_projector` is Linear(1024, hidden); `lm_head` is 32035 rows.
  2 + 4 + 1 + 2 + 6 x 16 + 3 x 10 = 133.
* BIM file: `init_BIM_module` (model/DS_SmartEdit_model.py) with SAM's `TwoWayTransformer`
  (model/two_way_transformer.py: depth 2, width 1024, MLP 2048, attention downsample 2) and
  `PositionEmbeddingRandom(512)`; zero-convolution 1024 -> 320 (1x1) and Linear(1024, 768).
* UNet file: diffusers 0.20's `UNet2DConditionModel` for Stable Diffusion 1.5 (the ZeroConv copy in
  model/unet_2d_condition_ZeroConv.py adds no parameter) with `conv_in` replaced by 8 input channels;
  keys enumerated below block by block (ResNet blocks, Transformer2D blocks with 1x1-conv projections,
  GEGLU feed-forward), 686 of them for SD 1.5.

Regenerate the committed fixtures with `python -m tests.support.smartedit_layout`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

Shape = tuple[int, ...]

FIXTURES = Path(__file__).parent / "fixtures"
FILES = {  # part -> official path (step 15000, as released)
    "llm": "LLM-15000/adapter_model.bin",
    "embeddings_qformer": "embeddings_qformer/checkpoint-15000_embeddings_qformer.bin",
    "modulate": "modulate-15000/adapter_model.bin",
    "unet": "unet-15000/adapter_model.bin",
}


@dataclass(frozen=True)
class OfficialDims:
    llm_hidden: int
    llm_intermediate: int
    llm_layers: int
    llm_heads: int
    base_vocab: int = 32000
    added_tokens: int = 35
    lora_r: int = 8
    lora_targets: tuple[str, ...] = ("q_proj", "v_proj")
    vision_hidden: int = 1024
    qformer_hidden: int = 768
    qformer_intermediate: int = 3072
    qformer_layers: int = 6
    qformer_cross_every: int = 2
    qformer_max_positions: int = 512
    query_tokens: int = 77
    bim_width: int = 1024
    bim_mlp: int = 2048
    bim_depth: int = 2
    bim_downsample: int = 2
    unet_channels: tuple[int, ...] = (320, 640, 1280, 1280)
    unet_layers_per_block: int = 2
    unet_down: tuple[str, ...] = ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",)
    unet_up: tuple[str, ...] = ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3
    unet_in: int = 8
    unet_out: int = 4
    cross_attention_dim: int = 768


SMARTEDIT_7B = OfficialDims(llm_hidden=4096, llm_intermediate=11008, llm_layers=32, llm_heads=32)
SMARTEDIT_13B = OfficialDims(llm_hidden=5120, llm_intermediate=13824, llm_layers=40, llm_heads=40)


@dataclass
class _Keys:
    prefix: str = ""
    keys: dict[str, Shape] = field(default_factory=dict)

    def add(self, name: str, *shape: int) -> None:
        self.keys[self.prefix + name] = tuple(shape)

    def linear(self, name: str, out: int, inp: int, bias: bool = True) -> None:
        self.add(f"{name}.weight", out, inp)
        if bias:
            self.add(f"{name}.bias", out)

    def norm(self, name: str, dim: int, bias: bool = True) -> None:
        self.add(f"{name}.weight", dim)
        if bias:
            self.add(f"{name}.bias", dim)

    def conv(self, name: str, out: int, inp: int, k: int) -> None:
        self.add(f"{name}.weight", out, inp, k, k)
        self.add(f"{name}.bias", out)


def llm_file(d: OfficialDims) -> dict[str, Shape]:
    k = _Keys("model.base_model.model.")
    h, vocab = d.llm_hidden, d.base_vocab + d.added_tokens
    k.add("embed_tokens.weight", vocab, h)
    for i in range(d.llm_layers):
        p = f"layers.{i}."
        for proj in ("q_proj", "k_proj", "v_proj", "o_proj"):
            k.add(f"{p}self_attn.{proj}.weight", h, h)
            if proj in d.lora_targets:
                k.add(f"{p}self_attn.{proj}.lora_A.default.weight", d.lora_r, h)
                k.add(f"{p}self_attn.{proj}.lora_B.default.weight", h, d.lora_r)
        k.add(f"{p}self_attn.rotary_emb.inv_freq", h // d.llm_heads // 2)
        k.add(f"{p}mlp.gate_proj.weight", d.llm_intermediate, h)
        k.add(f"{p}mlp.down_proj.weight", h, d.llm_intermediate)
        k.add(f"{p}mlp.up_proj.weight", d.llm_intermediate, h)
        k.add(f"{p}input_layernorm.weight", h)
        k.add(f"{p}post_attention_layernorm.weight", h)
    k.add("norm.weight", h)
    return k.keys


def embeddings_qformer_file(d: OfficialDims) -> dict[str, Shape]:
    k = _Keys()
    q = d.qformer_hidden
    k.linear("mm_projector", d.llm_hidden, d.vision_hidden)
    k.add("lm_head.weight", d.base_vocab + d.added_tokens, d.llm_hidden)
    k.add("sd_query_tokens", 1, d.query_tokens, q)
    k.prefix = "sd_qformer."
    k.add("embeddings.position_ids", 1, d.qformer_max_positions)
    k.norm("embeddings.LayerNorm", q)
    for i in range(d.qformer_layers):
        p = f"encoder.layer.{i}."
        blocks = [("attention", q)] + ([("crossattention", d.llm_hidden)] if i % d.qformer_cross_every == 0 else [])
        for block, kv_width in blocks:
            k.linear(f"{p}{block}.self.query", q, q)
            k.linear(f"{p}{block}.self.key", q, kv_width)
            k.linear(f"{p}{block}.self.value", q, kv_width)
            k.linear(f"{p}{block}.output.dense", q, q)
            k.norm(f"{p}{block}.output.LayerNorm", q)
        k.linear(f"{p}intermediate_query.dense", d.qformer_intermediate, q)
        k.linear(f"{p}output_query.dense", q, d.qformer_intermediate)
        k.norm(f"{p}output_query.LayerNorm", q)
    return k.keys


def modulate_file(d: OfficialDims) -> dict[str, Shape]:
    k = _Keys()
    w, inner = d.bim_width, d.bim_width // d.bim_downsample
    k.linear("modulate_head", w, d.qformer_hidden)
    k.add("pe_layer.positional_encoding_gaussian_matrix", 2, w // 2)
    k.conv("dimension_reduction_head_zeroconv", d.unet_channels[0], w, 1)
    k.linear("dimension_reduction_head_qformer_out", d.qformer_hidden, w)
    k.prefix = "modulate_transformer."

    def attention(name: str, internal: int) -> None:
        for proj in ("q_proj", "k_proj", "v_proj"):
            k.linear(f"{name}.{proj}", internal, w)
        k.linear(f"{name}.out_proj", w, internal)

    for i in range(d.bim_depth):
        p = f"layers.{i}."
        attention(f"{p}self_attn", w)
        k.norm(f"{p}norm1", w)
        attention(f"{p}cross_attn_token_to_image", inner)
        k.norm(f"{p}norm2", w)
        k.linear(f"{p}mlp.lin1", d.bim_mlp, w)
        k.linear(f"{p}mlp.lin2", w, d.bim_mlp)
        k.norm(f"{p}norm3", w)
        k.norm(f"{p}norm4", w)
        attention(f"{p}cross_attn_image_to_token", inner)
    attention("final_attn_token_to_image", inner)
    k.norm("norm_final_attn", w)
    return k.keys


def unet_file(d: OfficialDims) -> dict[str, Shape]:
    k = _Keys("unet.")
    ch = d.unet_channels
    temb = 4 * ch[0]
    x = d.cross_attention_dim

    def resnet(p: str, cin: int, cout: int) -> None:
        k.norm(f"{p}norm1", cin)
        k.conv(f"{p}conv1", cout, cin, 3)
        k.linear(f"{p}time_emb_proj", cout, temb)
        k.norm(f"{p}norm2", cout)
        k.conv(f"{p}conv2", cout, cout, 3)
        if cin != cout:
            k.conv(f"{p}conv_shortcut", cout, cin, 1)

    def transformer(p: str, c: int) -> None:
        k.norm(f"{p}norm", c)
        k.conv(f"{p}proj_in", c, c, 1)
        b = f"{p}transformer_blocks.0."
        k.norm(f"{b}norm1", c)
        for attn, kv in (("attn1", c), ("attn2", x)):
            k.linear(f"{b}{attn}.to_q", c, c, bias=False)
            k.linear(f"{b}{attn}.to_k", c, kv, bias=False)
            k.linear(f"{b}{attn}.to_v", c, kv, bias=False)
            k.linear(f"{b}{attn}.to_out.0", c, c)
            k.norm(f"{b}norm{2 if attn == 'attn1' else 3}", c)
        k.linear(f"{b}ff.net.0.proj", 8 * c, c)
        k.linear(f"{b}ff.net.2", c, 4 * c)
        k.conv(f"{p}proj_out", c, c, 1)

    k.conv("conv_in", ch[0], d.unet_in, 3)
    k.linear("time_embedding.linear_1", temb, ch[0])
    k.linear("time_embedding.linear_2", temb, temb)
    out = ch[0]
    for i, kind in enumerate(d.unet_down):
        cin, out = out, ch[i]
        for j in range(d.unet_layers_per_block):
            resnet(f"down_blocks.{i}.resnets.{j}.", cin if j == 0 else out, out)
            if kind.startswith("CrossAttn"):
                transformer(f"down_blocks.{i}.attentions.{j}.", out)
        if i < len(ch) - 1:
            k.conv(f"down_blocks.{i}.downsamplers.0.conv", out, out, 3)
    resnet("mid_block.resnets.0.", ch[-1], ch[-1])
    transformer("mid_block.attentions.0.", ch[-1])
    resnet("mid_block.resnets.1.", ch[-1], ch[-1])
    rev = list(reversed(ch))
    out = rev[0]
    for i, kind in enumerate(d.unet_up):
        prev, out, skip_in = out, rev[i], rev[min(i + 1, len(ch) - 1)]
        for j in range(d.unet_layers_per_block + 1):
            skip = skip_in if j == d.unet_layers_per_block else out
            resnet(f"up_blocks.{i}.resnets.{j}.", (prev if j == 0 else out) + skip, out)
            if kind.startswith("CrossAttn"):
                transformer(f"up_blocks.{i}.attentions.{j}.", out)
        if i < len(ch) - 1:
            k.conv(f"up_blocks.{i}.upsamplers.0.conv", out, out, 3)
    k.norm("conv_norm_out", ch[0])
    k.conv("conv_out", d.unet_out, ch[0], 3)
    return k.keys


def official_layout(d: OfficialDims) -> dict[str, dict[str, Shape]]:
    return {"llm": llm_file(d), "embeddings_qformer": embeddings_qformer_file(d), "modulate": modulate_file(d),
            "unet": unet_file(d)}


def render_fixture(d: OfficialDims, title: str) -> str:
    lines = [f"# {title}: keys and shapes of the official checkpoint files, one per line:",
             "# <part>\\t<key as stored in the official file>\\t<shape>",
             "# Derived from the released SmartEdit source by tests/support/smartedit_layout.py (see its docstring);",
             "# parts: " + ", ".join(f"{p} = {f}" for p, f in FILES.items())]
    for part, keys in official_layout(d).items():
        for key, shape in keys.items():
            lines.append(f"{part}\t{key}\t{','.join(map(str, shape))}")
    return "\n".join(lines) + "\n"


def read_fixture(path: Path) -> dict[str, dict[str, Shape]]:
    layout: dict[str, dict[str, Shape]] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line or line.startswith("#"):
            continue
        part, key, shape = line.split("\t")
        layout.setdefault(part, {})[key] = tuple(int(s) for s in shape.split(","))
    return layout


FIXTURE_FILES = {"7b": ("smartedit_keys_7b.txt", SMARTEDIT_7B, "SmartEdit-7B"),
                 "13b": ("smartedit_keys_13b.txt", SMARTEDIT_13B, "SmartEdit-13B")}

if __name__ == "__main__":
    FIXTURES.mkdir(exist_ok=True)
    for name, dims, title in FIXTURE_FILES.values():
        (FIXTURES / name).write_text(render_fixture(dims, title), encoding="utf-8")
        print(f"wrote {FIXTURES / name}")
