"""SmartEdit's parts against independent references written from the official equations.

The Q-Former and the BIM reuse transformers' BLIP-2 Q-Former and SAM two-way transformer under
renamed keys; these tests recompute both from tensors stored under the *official* names with plain
torch code (BERT attention blocks; SAM's two-way blocks, random-Fourier encoding and SmartEdit's
heads), so a wrong rename, a missed layer norm epsilon or a changed library default shows up as a
numeric difference. The tokenizer is checked against transformers 4.28's slow-tokenizer rules for
added tokens.
"""
from __future__ import annotations

import pytest

pytest.importorskip("peft", reason="the SmartEdit baseline needs peft (extra: smartedit)")
pytest.importorskip("sentencepiece", reason="the SmartEdit baseline needs sentencepiece (extra: smartedit)")

import math

import pytest
import torch
import torch.nn.functional as F

from ciebench.baselines.smartedit_modules import MODULATION_SCALE, SmartEditModel
from ciebench.baselines.smartedit_text import (ADDED_TOKENS, DEFAULT_HUMAN_TEMPLATE, SYSTEM_MESSAGE, SmartEditTokenizer,
                                               build_prompt)
from ciebench.baselines.smartedit_checkpoint import compare_keys
from tests.support.smartedit_layout import official_layout
from tests.support.smartedit_tiny import LLM, UNET, VISION, _official_files, _sentencepiece_model, tiny_dims

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def sp_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("sp") / "tokenizer.model"
    path.write_bytes(_sentencepiece_model())
    return path


@pytest.fixture(scope="module")
def tiny(sp_file):
    """A real (CPU) tiny SmartEditModel loaded from official-named random tensors."""
    from transformers import CLIPVisionConfig, LlamaConfig

    base_vocab = SmartEditTokenizer(sp_file).base_vocab_size
    dims = tiny_dims(base_vocab)
    files = _official_files(dims, seed=5)
    model = SmartEditModel(LlamaConfig(vocab_size=base_vocab, **LLM), CLIPVisionConfig(**VISION), dict(UNET),
                           {"r": 8, "lora_alpha": 16, "target_modules": ["q_proj", "v_proj"]}, base_vocab).eval()
    shapes = {part: {k: tuple(v.shape) for k, v in tensors.items()} for part, tensors in files.items()}
    report, sources = compare_keys(shapes, model.checkpoint_state_shapes(), LLM["hidden_size"] // LLM["num_attention_heads"],
                                   values=lambda part, key: files[part][key])
    assert report.ok, report.summary()
    model.load_state_dict({local: files[part][key].float() for local, (part, key) in sources.items()}, strict=False)
    official = {k: v.float() for part in ("embeddings_qformer", "modulate") for k, v in files[part].items()}
    return model, official, dims


# ------------------------------------------------------------------------------------------------
def _linear(sd, name, x):
    return x @ sd[f"{name}.weight"].T + sd[f"{name}.bias"]


def _ln(sd, name, x, eps):
    return F.layer_norm(x, x.shape[-1:], sd[f"{name}.weight"], sd[f"{name}.bias"], eps=eps)


def _heads_attention(q, k, v, heads):
    b, n, c = q.shape
    split = lambda t: t.reshape(b, t.shape[1], heads, c // heads).transpose(1, 2)  # noqa: E731
    w = torch.softmax(split(q) @ split(k).transpose(-1, -2) / math.sqrt(c // heads), dim=-1)
    return (w @ split(v)).transpose(1, 2).reshape(b, n, c)


def reference_qformer(sd, states, layers=6, cross_every=2, head_width=64):
    """BLIP-2's BERT Q-Former, query branch only, from the official key names."""
    x = sd["sd_query_tokens"].expand(states.shape[0], -1, -1)
    heads = x.shape[-1] // head_width
    x = _ln(sd, "sd_qformer.embeddings.LayerNorm", x, 1e-12)
    for i in range(layers):
        p = f"sd_qformer.encoder.layer.{i}."
        blocks = [("attention", None)] + ([("crossattention", states)] if i % cross_every == 0 else [])
        for block, ctx in blocks:
            ctx = x if ctx is None else ctx
            q, k, v = (_linear(sd, f"{p}{block}.self.{n}", t) for n, t in (("query", x), ("key", ctx), ("value", ctx)))
            x = _ln(sd, f"{p}{block}.output.LayerNorm", _linear(sd, f"{p}{block}.output.dense", _heads_attention(q, k, v, heads)) + x, 1e-12)
        h = F.gelu(_linear(sd, f"{p}intermediate_query.dense", x))
        x = _ln(sd, f"{p}output_query.LayerNorm", _linear(sd, f"{p}output_query.dense", h) + x, 1e-12)
    return x


def reference_bim(sd, clip_features, conditioning, latent, heads=8, depth=2):
    """SmartEdit's BIM: SAM two-way transformer on the CLIP grid with random-Fourier positions."""
    b, n, c = clip_features.shape
    g = int(math.isqrt(n))
    gauss = sd["pe_layer.positional_encoding_gaussian_matrix"]
    ones = torch.ones(g, g)
    y = (ones.cumsum(0) - 0.5) / g
    x = (ones.cumsum(1) - 0.5) / g
    coords = (2 * torch.stack([x, y], dim=-1) - 1) @ gauss * 2 * math.pi
    pe = torch.cat([coords.sin(), coords.cos()], dim=-1).permute(2, 0, 1)  # C x g x g
    key_pe = pe.flatten(1).T.unsqueeze(0).expand(b, -1, -1)
    keys = clip_features
    points = _linear(sd, "modulate_head", conditioning)
    queries = points

    def attn(name, q, k, v):
        return _linear(sd, f"{name}.out_proj", _heads_attention(
            _linear(sd, f"{name}.q_proj", q), _linear(sd, f"{name}.k_proj", k), _linear(sd, f"{name}.v_proj", v), heads))

    for i in range(depth):
        p = f"modulate_transformer.layers.{i}."
        if i == 0:
            queries = attn(f"{p}self_attn", queries, queries, queries)
        else:
            q = queries + points
            queries = queries + attn(f"{p}self_attn", q, q, queries)
        queries = _ln(sd, f"{p}norm1", queries, 1e-5)
        queries = _ln(sd, f"{p}norm2", queries + attn(f"{p}cross_attn_token_to_image", queries + points, keys + key_pe, keys), 1e-5)
        mlp = _linear(sd, f"{p}mlp.lin2", torch.relu(_linear(sd, f"{p}mlp.lin1", queries)))
        queries = _ln(sd, f"{p}norm3", queries + mlp, 1e-5)
        keys = _ln(sd, f"{p}norm4", keys + attn(f"{p}cross_attn_image_to_token", keys + key_pe, queries + points, queries), 1e-5)
    queries = _ln(sd, "modulate_transformer.norm_final_attn",
                  queries + attn("modulate_transformer.final_attn_token_to_image", queries + points, keys + key_pe, keys), 1e-5)
    grid = F.interpolate(keys.transpose(1, 2).reshape(b, c, g, g), size=latent, mode="bilinear", align_corners=False)
    modulation = F.conv2d(grid, sd["dimension_reduction_head_zeroconv.weight"], sd["dimension_reduction_head_zeroconv.bias"])
    return modulation, _linear(sd, "dimension_reduction_head_qformer_out", queries)


# ------------------------------------------------------------------------------------------------
def test_qformer_matches_the_official_equations(tiny):
    model, sd, dims = tiny
    states = torch.randn(2, 32, dims.llm_hidden, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours = model.qformer(states)
    assert ours.shape == (2, 77, dims.qformer_hidden)
    torch.testing.assert_close(ours, reference_qformer(sd, states), rtol=1e-4, atol=1e-5)


def test_bim_matches_the_official_equations(tiny):
    model, sd, dims = tiny
    g = torch.Generator().manual_seed(1)
    grid = VISION["image_size"] // VISION["patch_size"]
    clip = torch.randn(2, grid * grid, dims.vision_hidden, generator=g)
    cond = torch.randn(2, 77, dims.qformer_hidden, generator=g)
    with torch.no_grad():
        modulation, residual = model.bim(clip, cond, (8, 8))
    ref_mod, ref_res = reference_bim(sd, clip, cond, (8, 8))
    assert modulation.shape == (2, UNET["block_out_channels"][0], 8, 8) and residual.shape == cond.shape
    torch.testing.assert_close(modulation, ref_mod, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(residual, ref_res, rtol=1e-4, atol=1e-5)
    assert MODULATION_SCALE == 0.5


def test_unet_modulation_is_added_to_conv_in_for_every_guidance_copy_and_only_inside_the_context(tiny):
    model, _, _ = tiny
    g = torch.Generator().manual_seed(2)
    x = torch.randn(3, 8, 8, 8, generator=g)
    text = torch.randn(3, 77, UNET["cross_attention_dim"], generator=g)
    modulation = torch.randn(1, UNET["block_out_channels"][0], 8, 8, generator=g)
    seen = []
    with torch.no_grad():
        plain = model.unet(x, 10, encoder_hidden_states=text).sample
        with model.unet_modulation(modulation):
            # registered after SmartEdit's hook, this probe sees what the rest of the UNet consumes
            probe = model.unet.conv_in.register_forward_hook(lambda m, i, o: seen.append(o.clone()))
            try:
                modulated = model.unet(x, 10, encoder_hidden_states=text).sample
            finally:
                probe.remove()
        after = model.unet(x, 10, encoder_hidden_states=text).sample
        conv = model.unet.conv_in(x)
    assert not torch.allclose(plain, modulated)
    torch.testing.assert_close(after, plain)
    torch.testing.assert_close(seen[0], conv + modulation.repeat(3, 1, 1, 1))
    with torch.no_grad(), model.unet_modulation(torch.zeros_like(modulation)):
        torch.testing.assert_close(model.unet(x, 10, encoder_hidden_states=text).sample, plain)


# ------------------------------------------------------------------------------------------------
def test_added_token_ids_follow_smartedit_order(sp_file):
    tok = SmartEditTokenizer(sp_file)
    n = tok.base_vocab_size
    assert [tok.added[t] for t in ("<img>", "<im_start>", "<im_end>", "<img_0>", "<img_31>")] == [n, n + 1, n + 2, n + 3, n + 34]
    assert tok.vocab_size == n + len(ADDED_TOKENS) == n + 35
    assert tok.image_token_ids == list(range(n + 3, n + 35))


def test_encoding_splits_on_added_tokens_and_strips_their_whitespace_like_transformers_4_28(sp_file):
    tok = SmartEditTokenizer(sp_file)
    sp = tok.sp
    a = tok.added
    ids = tok.encode('description "<im_start> <img_0> <im_end>Remove the cup?" ASSISTANT:')
    assert ids == [tok.bos_id, *sp.encode('description "'), a["<im_start>"], a["<img_0>"], a["<im_end>"],
                   *sp.encode('Remove the cup?" ASSISTANT:')]
    # whitespace on both sides of an added token is eaten; each text piece gets its own "▁" prefix
    assert tok.encode("can generate <img>. The", add_bos=False) == [*sp.encode("can generate"), a["<img>"], *sp.encode(". The")]
    # <s> / </s> split the text but strip nothing
    assert tok.encode("a </s> b", add_bos=False) == [*sp.encode("a "), tok.eos_id, *sp.encode(" b")]
    assert "<img_0>" in tok.decode(ids) and "Remove" in tok.decode(ids)


def test_prompt_is_the_fixed_vicuna_v1_3_conversation():
    prompt = build_prompt("Remove the red cup.\n")
    assert prompt == (f"{SYSTEM_MESSAGE} USER: Could you produce an image based on the previous image and text "
                      f'description "<im_start> <img_0> <im_end>Remove the red cup."? ASSISTANT:')
    assert "[cap]" in DEFAULT_HUMAN_TEMPLATE and "\n" not in build_prompt("a\nb")
    with pytest.raises(ValueError):
        build_prompt("x", "no placeholder")


def test_official_layout_of_the_tiny_configuration_has_the_official_structure():
    dims = tiny_dims(400)
    layout = official_layout(dims)
    assert len(layout["embeddings_qformer"]) == 133 and len(layout["modulate"]) == 89
    assert len(layout["llm"]) == LLM["num_hidden_layers"] * 14 + 2
