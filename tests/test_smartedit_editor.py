"""The `smartedit` editor end to end on CPU: tiny random-weight stand-ins of every official repo are
published in the temporary offline hub cache (tests/support/smartedit_tiny.py), `prepare` assembles them, and
`SmartEditEditor.edit` / `ciebench evaluate` run the real loading and inference code."""
from __future__ import annotations

import pytest

pytest.importorskip("peft", reason="the SmartEdit baseline needs peft (extra: smartedit)")
pytest.importorskip("sentencepiece", reason="the SmartEdit baseline needs sentencepiece (extra: smartedit)")

import io  # noqa: E402
import json
import shutil
from pathlib import Path

import numpy as np  # noqa: E402
import torch
from PIL import Image
from typer.testing import CliRunner

from ciebench.baselines.smartedit import SmartEditConfig, SmartEditEditor
from ciebench.baselines.smartedit_checkpoint import MANIFEST, PreparedWeights, read_sharded, save_sharded
from ciebench.baselines.smartedit_prepare import prepare_weights
from ciebench.baselines.smartedit_sources import SmartEditWeightsError, Sources, default_weights_dir
from ciebench.cli import app
from ciebench.editor import EditRequest
from tests.support.smartedit_layout import official_layout
from tests.support.smartedit_tiny import publish_tiny_smartedit

pytestmark = pytest.mark.usefixtures("one_torch_thread")

FAST = dict(steps=4, resolution=64)
runner = CliRunner()


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """Tiny hub repos + $CIEBENCH_CACHE in a temporary folder; the default preparation made once."""
    root = tmp_path_factory.mktemp("smartedit-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CIEBENCH_CACHE", str(root))
        info = publish_tiny_smartedit("7b")
        folder = prepare_weights("7b")
        yield {"root": root, "folder": folder, **info}


@pytest.fixture(scope="module")
def editor(cache):
    ed = SmartEditEditor(**FAST)
    yield ed
    ed.close()


def _image(w: int, h: int, seed: int = 0) -> Image.Image:
    return Image.fromarray((np.random.default_rng(seed).random((h, w, 3)) * 255).astype(np.uint8))


def _request(seed: int = 7, size=(80, 60), instruction="Remove the red cup on the left.") -> EditRequest:
    return EditRequest(sample_id="s", image=_image(*size), instruction=instruction, seed=seed)


def _png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


# ------------------------------------------------------------------------------------------------
def test_prepare_converts_the_official_pickles_checks_keys_and_records_provenance(cache):
    folder: Path = cache["folder"]
    assert folder == default_weights_dir(Sources.for_variant("7b"))
    manifest = json.loads((folder / MANIFEST).read_text())
    assert manifest["check"]["ok"] and manifest["check"]["derived_checked"] == 2 + 1
    assert manifest["check"]["files"] == {part: len(keys) for part, keys in official_layout(cache["dims"]).items()}
    assert manifest["check"]["files"]["llm"] == 2 * 14 + 2 and manifest["check"]["files"]["embeddings_qformer"] == 133
    assert len(manifest["unpickled_with_weights_only"]) == 4
    assert manifest["converted"]["llm"]["dtypes"] == {"bfloat16": 29, "float32": 1}  # as stored: bf16 LLaMA, fp32 embedding
    assert not list(folder.rglob("*.bin")) and list((folder / "smartedit").glob("llm-*.safetensors"))
    assert manifest["files"]["smartedit/llm"]["commit"] and manifest["files"]["llava_delta"][0]["repo"] == \
        "liuhaotian/LLaVA-Lightning-7B-delta-v1-1"
    # the delta's index says which shards hold the embedding (1) and the LM head + projector (2)
    assert sorted(r["file"] for r in manifest["files"]["llava_delta"]) == ["pytorch_model-00001-of-00002.bin",
                                                                           "pytorch_model-00002-of-00002.bin"]
    llava = read_sharded(folder / "llava", "llava_base")
    assert llava["model.embed_tokens.weight"].shape == (cache["base_vocab"], 64)
    assert set(manifest["llava_checks"]) == {"embed_rows_max_abs_diff_smartedit_vs_llava",
                                             "mm_projector_max_abs_diff_smartedit_vs_llava"}


def test_loaded_values_follow_the_official_loader(editor, cache):
    """Embedding and LM head: LLaVA-1.1 rows (LLaMA base + delta, fp16 sum) for the base vocabulary, SmartEdit's
    rows for the 35 added tokens; everything else, LoRA included, straight from SmartEdit's files."""
    import torch
    from huggingface_hub import hf_hub_download
    from transformers import LlamaForCausalLM

    repos, v = cache["repos"], cache["base_vocab"]
    load = lambda repo, name: torch.load(hf_hub_download(repo, name), map_location="cpu", weights_only=True)  # noqa: E731
    delta = {**load(repos["llava"], "pytorch_model-00001-of-00002.bin"), **load(repos["llava"], "pytorch_model-00002-of-00002.bin")}
    base = LlamaForCausalLM.from_pretrained(repos["llama"]).state_dict()
    llm = load(repos["smartedit"], "LLM-15000/adapter_model.bin")
    eq = load(repos["smartedit"], "embeddings_qformer/checkpoint-15000_embeddings_qformer.bin")
    model = editor._load().model
    embed, head = model.llm.get_input_embeddings().weight, model.lm_head.weight
    for ours, key, official in ((embed, "model.embed_tokens.weight", llm["model.base_model.model.embed_tokens.weight"]),
                                (head, "lm_head.weight", eq["lm_head.weight"])):
        merged = (delta[key][:v].half() + base[key][:v].half()).float()
        assert torch.equal(ours[:v], merged)
        assert torch.equal(ours[v:], official[v:].float())
    attn = model.llm.layers[1].self_attn
    prefix = "model.base_model.model.layers.1.self_attn."
    assert torch.equal(attn.v_proj.lora_B["default"].weight, llm[prefix + "v_proj.lora_B.default.weight"].float())
    assert torch.equal(attn.q_proj.base_layer.weight, llm[prefix + "q_proj.weight"].float())
    assert attn.q_proj.scaling["default"] == 16 / 8
    assert torch.equal(model.sd_qformer.layernorm.weight, eq["sd_qformer.embeddings.LayerNorm.weight"])
    assert torch.equal(model.mm_projector.weight, eq["mm_projector.weight"])


def test_prepare_is_idempotent_and_refuses_to_mix_sources(cache):
    folder = cache["folder"]
    before = (folder / MANIFEST).read_bytes()
    assert prepare_weights("7b") == folder
    assert (folder / MANIFEST).read_bytes() == before
    with pytest.raises(SmartEditWeightsError, match="other sources"):
        prepare_weights("7b", out_dir=folder, llama_base_repo="someone/else")


def test_edit_runs_end_to_end_and_returns_the_source_size(editor):
    requests = [_request(size=(80, 60)), _request(seed=3, size=(33, 47), instruction="Make the dog blue.")]
    results = editor.edit(requests)
    assert [r.status for r in results] == ["ok", "ok"], [r.error for r in results]
    for req, res in zip(requests, results):
        assert res.image.size == req.image.size and res.image.mode == "RGB"
        native = res.trace["artifacts"]["smartedit_native.png"]
        assert native.size == (64, 64) and res.trace["native_size"] == [64, 64]
        assert res.trace["llm_generated_text"].count("<img_") == 32 + 1  # 32 states kept, one more sampled
        assert set(res.timings) == {"llm_seconds", "diffusion_seconds"}
        assert res.trace["weights"]["smartedit"].startswith("TencentARC/SmartEdit-7B@")
        json.dumps({k: v for k, v in res.trace.items() if k != "artifacts"})  # JSON-serialisable
        assert np.isfinite(np.asarray(res.image, dtype=np.float32)).all()


def test_same_seed_same_output_different_seed_different_output(editor, cache):
    first = editor.edit([_request(seed=11)])[0]
    again = editor.edit([_request(seed=11)])[0]
    assert _png(first.image) == _png(again.image)
    fresh = SmartEditEditor(**FAST)  # a new instance loads everything again: still identical
    try:
        assert _png(fresh.edit([_request(seed=11)])[0].image) == _png(first.image)
    finally:
        fresh.close()
    other = editor.edit([_request(seed=12)])[0]
    assert _png(other.image) != _png(first.image)
    # the instruction reaches the image through the LLM, Q-Former and BIM
    changed = editor.edit([_request(seed=11, instruction="Change the white car to a black car.")])[0]
    assert _png(changed.image) != _png(first.image)


@pytest.mark.parametrize("llm_dtype, diffusion_dtype", [("float32", "float16"), ("bfloat16", "bfloat16")])
def test_half_precision_paths_run_and_stay_close_to_float32(editor, llm_dtype, diffusion_dtype):
    """The GPU settings (official: float32 LLM + float16 UNet/VAE; `lite`: bfloat16 LLM), exercised on CPU."""
    reference = np.asarray(editor.edit([_request(seed=21)])[0].image, dtype=np.float32)
    ed = SmartEditEditor(llm_dtype=llm_dtype, diffusion_dtype=diffusion_dtype, **FAST)
    try:
        result = ed.edit([_request(seed=21)])[0]
    finally:
        ed.close()
    assert result.status == "ok" and ed.describe()["config"]["diffusion_dtype"] == diffusion_dtype
    if _cpu_noise_depends_on_dtype(getattr(torch, diffusion_dtype)):
        pytest.skip(f"this PyTorch ({torch.__version__}) draws another CPU random stream for {diffusion_dtype} than "
                    "for float32 from the same seed, so the two paths start from different noise")
    assert np.abs(np.asarray(result.image, dtype=np.float32) - reference).mean() < 8.0


def _cpu_noise_depends_on_dtype(dtype) -> bool:
    """PyTorch 2.8 (not 2.14) has a vectorised CPU normal sampler for float32 only: other dtypes get
    another stream from the same seed."""
    def draw(dt):
        return torch.randn(64, generator=torch.Generator().manual_seed(0), dtype=dt).float()
    return bool((draw(torch.float32) - draw(dtype)).abs().max() > 0.1)


def test_sampled_decoding_is_seeded_by_the_request(cache):
    ed = SmartEditEditor(temperature=0.7, steps=2, resolution=64)
    try:
        a, b, c = ed.edit([_request(seed=5), _request(seed=5), _request(seed=6)])
        assert a.trace["llm_generated_text"] == b.trace["llm_generated_text"] and _png(a.image) == _png(b.image)
        assert _png(c.image) != _png(a.image)
    finally:
        ed.close()


def test_stopping_before_32_image_tokens_is_a_clear_per_sample_failure(editor, monkeypatch):
    editor.edit([_request()])  # loaded
    tok = editor._parts.tokenizer
    # the tiny LLM emits <img_0> then <img_1>: make <img_1> the end-of-sequence token
    monkeypatch.setattr(tok, "eos_id", tok.added["<img_1>"])
    result = editor.edit([_request()])[0]
    assert result.status == "error" and result.error == \
        "the LLM produced 1 of 32 image tokens before stopping"
    assert result.trace["llm_generated_text"] == "<img_0> <img_1>" and result.image is None


def test_defaults_are_the_official_settings_and_are_recorded_in_the_config():
    ed = SmartEditEditor()
    cfg = ed.describe()["config"]
    assert (cfg["steps"], cfg["guidance_scale"], cfg["image_guidance_scale"], cfg["resolution"]) == (100, 7.5, 1.5, 256)
    assert cfg["temperature"] == 0.0 and cfg["max_new_tokens"] == 512 and cfg["llm_dtype"] == "float32"
    assert cfg["smartedit_repo"] == "TencentARC/SmartEdit-7B" and cfg["llama_base_repo"] == "huggyllama/llama-7b"
    assert SmartEditEditor(**SmartEditEditor.presets["13b"]).config.smartedit_repo == "TencentARC/SmartEdit-13B"
    assert SmartEditEditor(**SmartEditEditor.presets["lite"]).config.llm_dtype == "bfloat16"
    for bad in (dict(variant="70b"), dict(llm_dtype="int8"), dict(resolution=100), dict(temperature=-1)):
        with pytest.raises(ValueError):
            SmartEditEditor(**bad)
    assert SmartEditConfig().to_dict()["conversation_template"].endswith("[cap]?")


def _tamper(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    state = read_sharded(dst / "smartedit", "modulate")
    del state["modulate_head.bias"]
    state["modulate_head.extra"] = state["modulate_head.weight"][:1].clone()
    for old in (dst / "smartedit").glob("modulate-*.safetensors"):
        old.unlink()
    save_sharded(state, dst / "smartedit", "modulate", {"format": "pt"})
    return dst


def test_strict_loading_names_missing_and_unexpected_keys(cache, tmp_path):
    bad = _tamper(cache["folder"], tmp_path / "bad")
    ed = SmartEditEditor(weights_dir=str(bad), prepare_if_missing=False, **FAST)
    with pytest.raises(SmartEditWeightsError) as err:
        ed.edit([_request()])
    text = str(err.value)
    assert "missing (1): modulate_head.bias" in text and "unexpected (1): modulate:modulate_head.extra" in text
    result = runner.invoke(app, ["baselines", "smartedit", "check", str(bad)])
    assert result.exit_code == 1 and "modulate_head.extra" in result.output
    assert PreparedWeights(bad).sources == Sources.for_variant("7b")


def test_missing_preparation_is_an_error_when_not_allowed_to_prepare(cache, tmp_path):
    ed = SmartEditEditor(weights_dir=str(tmp_path / "nothing"), prepare_if_missing=False, **FAST)
    with pytest.raises(SmartEditWeightsError, match="baselines smartedit prepare"):
        ed.edit([_request()])


def test_cli_prepare_and_check(cache, tmp_path):
    out = tmp_path / "prepared"
    result = runner.invoke(app, ["baselines", "smartedit", "prepare", "--variant", "7b", "--out", str(out)])
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert (out / MANIFEST).exists() and f"weights_dir={out}" in result.output
    result = runner.invoke(app, ["baselines", "smartedit", "check", str(out)])
    assert result.exit_code == 0 and "ok:" in result.output


def test_cli_prepare_reports_an_unknown_variant_as_a_usage_error(cache, tmp_path):
    # issue 17 §4: a bad option value exits 2 (ExitCode.USAGE) in every command, as in `evaluate`
    result = runner.invoke(app, ["baselines", "smartedit", "prepare", "--variant", "70b", "--out", str(tmp_path / "x")])
    assert result.exit_code == 2 and "unknown SmartEdit variant '70b'" in result.output


def test_cli_evaluate_with_the_smartedit_editor(cache, tmp_path):
    from ciebench.registry import EDITORS

    name = "smartedit" if "smartedit" in EDITORS.names() else "ciebench.baselines.smartedit:SmartEditEditor"
    run = tmp_path / "run"
    result = runner.invoke(app, ["evaluate", "--editor", name, "--dataset", "mini",
                                 "--limit", "1", "--out", str(run), "--protocol", "smartedit", "--metrics", "psnr,mse,ssim",
                                 "--editor-arg", "steps=2", "--editor-arg", "resolution=64"])
    assert result.exit_code == 0, result.output + repr(result.exception)
    records = [json.loads(p.read_text()) for p in (run / "records").glob("*.json")]
    assert [r["status"] for r in records] == ["ok"]
    spec = json.loads((run / "spec.json").read_text())
    assert spec["editor"]["config"]["steps"] == 2 and spec["editor"]["config"]["guidance_scale"] == 7.5
    assert list((run / "traces").rglob("smartedit_native.png"))
