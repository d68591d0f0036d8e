"""Key conformance: the keys (and shapes) our SmartEdit modules expect are exactly those of the official
checkpoint files.

The expected lists are committed fixtures, tests/support/fixtures/smartedit_keys_{7b,13b}.txt, written by
tests/support/smartedit_layout.py from an account of the official architecture that does not import our
implementation: the released training script's split of the state dict into four files, the LLaMA
(transformers 4.28) + peft (< 0.7) LoRA naming, SmartEdit's BLIP-2 Q-Former and SAM two-way
transformer modules, and diffusers' SD 1.5 UNet with 8 input channels (see that module's docstring).
The 7B counts agree with the counts written in the official training script (133 / 686 / 450).

The models are built on the meta device with the official base configurations (LLaMA-7B/13B as in
Vicuna-1.1's config, CLIP ViT-L/14 at 224 px, the InstructPix2Pix UNet config), so no weights are
needed and the real sizes are checked.
"""
from __future__ import annotations

import pytest

pytest.importorskip("peft", reason="the SmartEdit baseline needs peft (extra: smartedit)")
pytest.importorskip("sentencepiece", reason="the SmartEdit baseline needs sentencepiece (extra: smartedit)")

import functools

import pytest

from ciebench.baselines.smartedit_modules import KeyMap, build_skeleton
from ciebench.baselines.smartedit_checkpoint import compare_keys
from tests.support.smartedit_layout import FIXTURE_FILES, FIXTURES, read_fixture, render_fixture

LLAMA = {"7b": dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32),
         "13b": dict(hidden_size=5120, intermediate_size=13824, num_hidden_layers=40, num_attention_heads=40)}
CLIP_VIT_L14 = dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                    image_size=224, patch_size=14, projection_dim=768)
IP2P_UNET = dict(act_fn="silu", attention_head_dim=8, block_out_channels=[320, 640, 1280, 1280],
                 center_input_sample=False, cross_attention_dim=768,
                 down_block_types=["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"], downsample_padding=1,
                 flip_sin_to_cos=True, freq_shift=0, in_channels=8, layers_per_block=2, mid_block_scale_factor=1,
                 norm_eps=1e-5, norm_num_groups=32, out_channels=4, sample_size=64,
                 up_block_types=["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3)
LORA = {"r": 8, "lora_alpha": 16, "target_modules": ["q_proj", "v_proj"], "lora_dropout": 0.05, "bias": "none"}


@functools.lru_cache(maxsize=None)
def official_skeleton(variant: str):
    from transformers import CLIPVisionConfig, LlamaConfig

    llm = LlamaConfig(vocab_size=32000, rms_norm_eps=1e-6, max_position_embeddings=2048, **LLAMA[variant])
    return build_skeleton(llm, CLIPVisionConfig(**CLIP_VIT_L14), IP2P_UNET, LORA, base_vocab_size=32000)


@pytest.fixture(params=["7b", "13b"])
def variant_model(request):
    return request.param, official_skeleton(request.param)


@pytest.mark.parametrize("variant", ["7b", "13b"])
def test_committed_fixture_is_the_documented_derivation(variant):
    name, dims, title = FIXTURE_FILES[variant]
    assert (FIXTURES / name).read_text(encoding="utf-8") == render_fixture(dims, title)


def test_fixture_counts_agree_with_the_official_training_script():
    layout = read_fixture(FIXTURES / "smartedit_keys_7b.txt")
    # "len(weight_to_save.keys())=133, len(weight_to_save_unet.keys())=686, len(weight_to_save_LLM.keys())=450"
    assert {p: len(k) for p, k in layout.items()} == {"llm": 450, "embeddings_qformer": 133, "modulate": 89, "unet": 686}
    assert len(read_fixture(FIXTURES / "smartedit_keys_13b.txt")["llm"]) == 40 * 14 + 2


def test_our_modules_expect_exactly_the_official_keys_and_shapes(variant_model):
    variant, model = variant_model
    fixture = read_fixture(FIXTURES / f"smartedit_keys_{variant}.txt")
    expected = model.checkpoint_state_shapes()
    layers = LLAMA[variant]["num_hidden_layers"]
    report, sources = compare_keys(fixture, expected, llm_head_dim=128)
    assert report.ok, report.summary()
    assert not report.missing and not report.unexpected and not report.shape_mismatches
    # every expected tensor comes from exactly one official key; only the per-layer rotary inv_freq and
    # the Q-Former's position ids (both recomputed, not learned) are left over
    assert len(sources) == len(expected)
    assert report.derived_checked == layers + 1
    assert sum(len(keys) for keys in fixture.values()) == len(expected) + layers + 1


def test_the_renames_are_the_documented_library_differences(variant_model):
    _, model = variant_model
    km = KeyMap(model.checkpoint_state_shapes())
    assert km("model.base_model.model.layers.3.self_attn.q_proj.weight") == \
        "model.base_model.model.layers.3.self_attn.q_proj.base_layer.weight"  # peft >= 0.7 naming
    assert km("model.base_model.model.layers.3.self_attn.k_proj.weight") == \
        "model.base_model.model.layers.3.self_attn.k_proj.weight"  # not a LoRA target: unchanged
    assert km("sd_qformer.embeddings.LayerNorm.weight") == "sd_qformer.layernorm.weight"
    assert km("sd_qformer.encoder.layer.2.crossattention.self.key.weight") == \
        "sd_qformer.encoder.layer.2.crossattention.attention.key.weight"
    assert km("modulate_transformer.layers.1.norm4.bias") == "modulate_transformer.layers.1.layer_norm4.bias"
    assert km("modulate_transformer.norm_final_attn.weight") == "modulate_transformer.layer_norm_final_attn.weight"
    assert km("unet.mid_block.attentions.0.proj_in.weight") == "unet.mid_block.attentions.0.proj_in.weight"


def test_the_report_names_missing_unexpected_and_misshapen_keys():
    model = official_skeleton("7b")
    fixture = read_fixture(FIXTURES / "smartedit_keys_7b.txt")
    del fixture["unet"]["unet.conv_out.bias"]
    fixture["modulate"]["modulate_head.extra"] = (3,)
    fixture["embeddings_qformer"]["sd_query_tokens"] = (1, 32, 768)
    fixture["llm"]["model.base_model.model.layers.0.self_attn.rotary_emb.inv_freq"] = (32,)
    report, _ = compare_keys(fixture, model.checkpoint_state_shapes(), llm_head_dim=128)
    assert not report.ok
    assert report.missing == ["unet.conv_out.bias"]
    assert report.unexpected == ["modulate:modulate_head.extra"]
    assert report.shape_mismatches == ["sd_query_tokens: file (1, 32, 768), model (1, 77, 768)"]
    assert len(report.derived_failed) == 1
    text = report.summary()
    assert "missing (1): unet.conv_out.bias" in text and "unexpected (1): modulate:modulate_head.extra" in text
