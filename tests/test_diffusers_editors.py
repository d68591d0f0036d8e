"""The diffusers editors through the real `from_pretrained(hub id)` path, offline, with tiny pipelines."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from ciebench.cli import app
from ciebench.editor import EditRequest
from ciebench.editor_config import build_editor
from ciebench.spec import RunSpec

from tests.support.fixtures_diffusers_editors import (FLUX2_KLEIN_4B, FLUX_KONTEXT, LONGCAT_EDIT, QWEN_EDIT, QWEN_EDIT_2509,
                                         QWEN_EDIT_2511, SD_IMG2IMG, SD_IMG2IMG_FLAGGING,
                                         diffusers_editor_hub,  # noqa: F401
                                         small_working_area)  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_torch_thread", "small_working_area")
runner = CliRunner()

# editor -> (hub id, table entry, options a CPU test adds to the table's settings)
BUILTINS = {
    "qwen-image-edit": (QWEN_EDIT_2511, "qwen-image-edit-2511", {"steps": 2}),
    "flux-kontext": (FLUX_KONTEXT, "flux-kontext-dev", {"steps": 2, "auto_resize": False, "max_area": 64 * 64}),
    "flux2-klein": (FLUX2_KLEIN_4B, "flux2-klein-4b", {"steps": 2, "max_area": 96 * 96}),  # sides >= 64
    "longcat-image-edit": (LONGCAT_EDIT, "longcat-image-edit", {"steps": 2}),
}


def _pairs(options: dict) -> list[str]:
    return [f"{k}={v}" for k, v in options.items()]


def _args(options: dict) -> list[str]:
    return [x for pair in _pairs(options) for x in ("--editor-arg", pair)]


def _table(entry: str) -> dict:
    """The settings table read straight from the packaged JSON (independent of the editor's loader)."""
    from importlib import resources

    raw = json.loads(resources.files("ciebench.data").joinpath("diffusers_editors.json").read_text())["models"][entry]
    return {"pipeline": raw["pipeline"], "model_id": raw["model_id"], **{k: v["value"] for k, v in raw["settings"].items()}}


@pytest.mark.parametrize("editor", list(BUILTINS))
def test_builtin_editor_runs_end_to_end_and_records_the_table(editor, tmp_path: Path, diffusers_editor_hub):
    hub_id, entry, options = BUILTINS[editor]
    diffusers_editor_hub(hub_id)
    run = tmp_path / editor
    result = runner.invoke(app, ["evaluate", "--editor", editor, "--dataset", "mini", "--out", str(run), "--limit", "1",
                                 "--metrics", "psnr,mse", *_args(options)])
    assert result.exit_code == 0, result.output + repr(result.exception)
    records = [json.loads(p.read_text()) for p in sorted((run / "records").glob("*.json"))]
    assert len(records) == 1 and records[0]["status"] == "ok", records
    spec = json.loads((run / "spec.json").read_text())
    config = spec["editor"]["config"]
    expected = {**_table(entry), **options, "model": entry}
    assert {k: config[k] for k in expected} == expected
    unset = set(config) - set(expected) - {"offload", "vae_tiling", "quantization"}
    assert all(config[k] is None for k in unset), {k: config[k] for k in unset}
    trace = json.loads(next((run / "traces").glob("*.json")).read_text())
    assert trace["model_id"] == hub_id and trace["pipeline"] == expected["pipeline"]
    with Image.open(next((run / "images").glob("*.png"))) as im:
        assert im.size == (512, 512)  # resized back to the source


@pytest.mark.parametrize("editor", list(BUILTINS))
def test_same_seed_same_image_other_seed_other_image(editor, diffusers_editor_hub):
    hub_id, _, options = BUILTINS[editor]
    diffusers_editor_hub(hub_id)
    source = Image.fromarray(np.random.default_rng(0).integers(0, 255, (72, 96, 3), dtype=np.uint8))
    ed = build_editor(editor, _pairs(options))
    a, b, c = ed.edit([EditRequest("x", source, "make it blue", seed=s) for s in (5, 5, 6)])
    assert a.image.size == source.size
    assert np.array_equal(np.asarray(a.image), np.asarray(b.image))
    assert not np.array_equal(np.asarray(a.image), np.asarray(c.image))


def test_kontext_batches_samples_and_matches_one_by_one(diffusers_editor_hub):
    diffusers_editor_hub(FLUX_KONTEXT)
    ed = build_editor("flux-kontext", _pairs(BUILTINS["flux-kontext"][2]))
    assert ed.config.batch is True
    rng = np.random.default_rng(1)
    requests = [EditRequest(str(i), Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)), f"edit {i}", seed=i)
                for i in range(2)]
    calls = []
    pipe = ed._pipeline()
    original = type(pipe).__call__
    type(pipe).__call__ = lambda self, *a, **k: (calls.append(k["prompt"]), original(self, *a, **k))[1]
    try:
        batched = ed.edit(requests)
    finally:
        type(pipe).__call__ = original
    single = [ed.edit([r])[0] for r in requests]
    assert calls == [["edit 0", "edit 1"]]  # one pipeline call for both samples
    for x, y in zip(batched, single):
        assert np.abs(np.asarray(x.image, dtype=int) - np.asarray(y.image, dtype=int)).max() <= 2


def test_kontext_generates_at_the_training_resolution_nearest_the_source_aspect(diffusers_editor_hub):
    """BFL's reference (black-forest-labs/flux, sampling.prepare_kontext) generates at the preferred
    Kontext resolution whose aspect ratio is nearest the input's; diffusers' FluxKontextPipeline, given
    no height/width, makes a square image (diffusers issue #11886) that would be stretched back to the
    source. Expected sizes picked by hand from BFL's list (w/h: 1456x720 = 2.02 nearest 2:1; 1184x880
    = 1.345 nearest 4:3)."""
    from ciebench.baselines.diffusers_editors import FluxKontextEditor, working_size

    assert working_size((192, 96), "kontext", None, 16) == (1456, 720)
    assert working_size((96, 192), "kontext", None, 16) == (720, 1456)
    assert working_size((800, 600), "kontext", None, 16) == (1184, 880)
    assert working_size((600, 800), "kontext", None, 16) == (880, 1184)
    assert working_size((333, 333), "kontext", None, 16) == (1024, 1024)
    # max_area caps it: sqrt(65536 / (1456 * 720)) = 0.25003 -> 364.04, 180.02 -> multiples of 16
    assert working_size((192, 96), "kontext", 256 * 256, 16) == (352, 176)
    assert working_size((192, 96), "kontext", 4096 * 4096, 16) == (1456, 720)  # never enlarged

    diffusers_editor_hub(FLUX_KONTEXT)
    table = FluxKontextEditor(steps=1)  # the table's settings: no max_area, _auto_resize on
    assert table.config.resolution_policy == "kontext" and table.config.max_area is None
    out = table.edit([EditRequest("w", Image.new("RGB", (192, 96), (120, 30, 200)), "make it red", seed=0)])[0]
    assert out.trace["working_size"] == [1456, 720] and out.image.size == (192, 96)
    # a small max_area (as the CPU tests run it) keeps the training resolution's aspect ratio:
    # sqrt(4096 / (720 * 1456)) = 0.0625 -> 45, 91 -> 32, 80 (the pipeline does not refit it to a square)
    small = FluxKontextEditor(steps=1, max_area=64 * 64, auto_resize=False)
    out = small.edit([EditRequest("t", Image.new("RGB", (96, 192), (120, 30, 200)), "make it red", seed=0)])[0]
    assert out.trace["working_size"] == [32, 80] and out.image.size == (96, 192)


def test_presets_select_table_entries_and_a_changed_setting_changes_the_config_hash(diffusers_editor_hub):
    from ciebench.baselines.diffusers_editors import QwenImageEditEditor

    base = build_editor("qwen-image-edit", preset="base")
    assert base.config.pipeline == "QwenImageEditPipeline" and base.config.model_id == QWEN_EDIT
    assert base.config.steps == _table("qwen-image-edit")["steps"] and base.config.guidance_scale is None
    assert build_editor("qwen-image-edit", preset="2509").config.model_id == QWEN_EDIT_2509
    assert build_editor("flux2-klein", preset="9b").config.model_id == "black-forest-labs/FLUX.2-klein-9B"

    def config_hash(editor) -> str:
        return RunSpec(editor=editor.describe(), dataset={}, seeds=(0,), protocol={}, metrics=(), judge=None).editor_config_hash

    default = QwenImageEditEditor()
    assert config_hash(default) == config_hash(QwenImageEditEditor())
    assert config_hash(default) != config_hash(QwenImageEditEditor(steps=41))
    assert config_hash(default) != config_hash(QwenImageEditEditor(negative_prompt="blurry"))
    # the hash covers the values actually used, so a table edit changes it too
    edited = dataclasses.replace(default.config, true_cfg_scale=5.0)
    assert config_hash(default) != config_hash(QwenImageEditEditor(config=edited))


def test_the_qwen_base_preset_runs_its_own_pipeline_class(diffusers_editor_hub):
    diffusers_editor_hub(QWEN_EDIT)
    ed = build_editor("qwen-image-edit", ["steps=2"], preset="base")
    out = ed.edit([EditRequest("a", Image.new("RGB", (70, 50), (10, 200, 10)), "remove the green", seed=1)])[0]
    assert out.status == "ok" and out.image.size == (70, 50) and out.trace["pipeline"] == "QwenImageEditPipeline"


def test_generic_diffusers_editor_runs_a_class_without_a_builtin_entry(tmp_path: Path, diffusers_editor_hub):
    diffusers_editor_hub(SD_IMG2IMG)
    run = tmp_path / "img2img"
    options = {"pipeline": "StableDiffusionImg2ImgPipeline", "model_id": SD_IMG2IMG, "steps": 2, "strength": 0.75,
               "resolution_policy": "area", "max_area": 64 * 64, "multiple_of": 64, "batch": True}
    result = runner.invoke(app, ["evaluate", "--editor", "diffusers", "--dataset", "mini", "--out", str(run),
                                 "--limit", "2", "--batch-size", "2", "--metrics", "psnr", *_args(options)])
    assert result.exit_code == 0, result.output + repr(result.exception)
    config = json.loads((run / "spec.json").read_text())["editor"]["config"]
    assert {k: config[k] for k in options} == options and config["guidance_scale"] is None  # pipeline default
    trace = json.loads(next((run / "traces").glob("*.json")).read_text())
    assert trace["working_size"] == [64, 64]


def test_outputs_the_safety_checker_flags_are_refusals_never_black_edits(diffusers_editor_hub):
    """A checkpoint's safety checker replaces a flagged output with a black image and says so in
    `nsfw_content_detected`; that sample is refused (no image, the checker named), per sample of a batch."""
    import torch

    diffusers_editor_hub(SD_IMG2IMG_FLAGGING)
    ed = build_editor("diffusers", ["pipeline=StableDiffusionImg2ImgPipeline", f"model_id={SD_IMG2IMG_FLAGGING}",
                                    "steps=2", "strength=0.5", "resolution_policy=source", "max_area=4096",
                                    "multiple_of=8", "batch=true"])
    rng = np.random.default_rng(0)
    requests = [EditRequest(i, Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)), "make it red", seed=1)
                for i in ("a", "b")]
    for out in ed.edit(requests):  # the tiny checker flags everything
        assert out.status == "refused" and out.image is None
        assert "safety checker (StableDiffusionSafetyChecker) flagged" in out.error and out.trace["working_size"] == [64, 64]

    def flag_second(clip_input, images):  # the checker's contract: black the flagged image, one flag per image
        images[1] = torch.zeros_like(images[1])
        return images, [False, True]

    ed._pipeline().safety_checker.forward = flag_second
    kept, refused = ed.edit(requests)
    assert kept.status == "ok" and np.asarray(kept.image).max() > 0 and kept.image.size == (64, 64)
    assert refused.status == "refused" and refused.image is None and refused.error.startswith("sample b:")


def test_clear_errors_for_bad_settings(diffusers_editor_hub):
    from ciebench.baselines.diffusers_editors import DiffusersEditor, DiffusersEditorError, working_size

    with pytest.raises(DiffusersEditorError, match="pipeline=CLASS and model_id=HUB_ID"):
        DiffusersEditor()
    with pytest.raises(DiffusersEditorError, match="no entry 'nope'"):
        DiffusersEditor(model="nope")
    with pytest.raises(DiffusersEditorError, match="needs max_area"):
        DiffusersEditor(pipeline="X", model_id="a/b", resolution_policy="area")
    diffusers_editor_hub(SD_IMG2IMG)
    ed = DiffusersEditor(pipeline="StableDiffusionImg2ImgPipeline", model_id=SD_IMG2IMG, true_cfg_scale=4.0)
    with pytest.raises(DiffusersEditorError, match="takes no 'true_cfg_scale'"):
        ed.edit([EditRequest("a", Image.new("RGB", (64, 64)), "x")])
    with pytest.raises(DiffusersEditorError, match="needs --device cuda"):
        DiffusersEditor(pipeline="StableDiffusionImg2ImgPipeline", model_id=SD_IMG2IMG, offload="model")._pipeline()
    with pytest.raises(DiffusersEditorError, match="has no pipeline class"):
        DiffusersEditor(pipeline="NoSuchPipeline", model_id=SD_IMG2IMG)._pipeline()
    # resolution policies, against hand-computed sizes
    assert working_size((800, 600), "area", 1024 * 1024, 16) == (1168, 880)  # sqrt(1048576/480000)=1.478
    assert working_size((800, 600), "source", 1024 * 1024, 16) == (800, 592)
    assert working_size((4000, 3000), "source", 1024 * 1024, 16) == (1168, 880)
    assert working_size((800, 600), "pipeline", None, 16) is None


def test_quantization_without_bitsandbytes_is_a_clear_error(diffusers_editor_hub):
    pytest.importorskip("diffusers.quantizers")
    try:
        import bitsandbytes  # noqa: F401
        pytest.skip("bitsandbytes is installed here")
    except ImportError:
        pass
    from ciebench.baselines.diffusers_editors import DiffusersEditor, DiffusersEditorError

    diffusers_editor_hub(SD_IMG2IMG)
    with pytest.raises(DiffusersEditorError, match="quantization=bnb-nf4 needs bitsandbytes"):
        DiffusersEditor(pipeline="StableDiffusionImg2ImgPipeline", model_id=SD_IMG2IMG, quantization="bnb-nf4")._pipeline()


@pytest.mark.parametrize("quantization", ["none", "bnb-nf4", "bnb-int8"])
@pytest.mark.parametrize("offload", ["none", "model", "sequential"])
def test_without_offload_the_whole_pipeline_goes_to_the_device_quantised_or_not(quantization, offload, monkeypatch,
                                                                               diffusers_editor_hub):
    """`from_pretrained` with a bitsandbytes config puts the quantised modules on the GPU and leaves the
    others (the VAE) on the CPU, so without offload `pipe.to(device)` must run for every quantisation
    (diffusers 0.42 `DiffusionPipeline.to` moves or skips bitsandbytes modules itself); with offload the
    offload hooks place the components and `pipe.to` must not run. No bitsandbytes or GPU here: the
    quantisation config is a marker and the pipeline's placement calls are recorded."""
    import diffusers
    from ciebench.baselines.diffusers_editors import DiffusersEditor

    diffusers_editor_hub(SD_IMG2IMG)
    calls: list[tuple] = []
    load = diffusers.StableDiffusionImg2ImgPipeline.from_pretrained.__func__

    def from_pretrained(cls, *args, quantization_config=None, **kwargs):
        calls.append(("load", quantization_config))
        pipe = load(cls, *args, **kwargs)
        pipe.to = lambda device: calls.append(("to", device))
        pipe.enable_model_cpu_offload = lambda device: calls.append(("model offload", device))
        pipe.enable_sequential_cpu_offload = lambda device: calls.append(("sequential offload", device))
        return pipe

    monkeypatch.setattr(diffusers.StableDiffusionImg2ImgPipeline, "from_pretrained", classmethod(from_pretrained))
    monkeypatch.setattr(DiffusersEditor, "_quantization",
                        lambda self, dtype: None if self.config.quantization == "none" else f"marker {self.config.quantization}")
    ed = DiffusersEditor(pipeline="StableDiffusionImg2ImgPipeline", model_id=SD_IMG2IMG, quantization=quantization,
                         offload=offload)
    ed.device = "cuda"  # what `--device cuda` sets before the first edit loads the pipeline
    ed._pipeline()
    ed.to("cuda:1")  # a later move follows the same rule
    marker = None if quantization == "none" else f"marker {quantization}"
    placed = [("to", "cuda"), ("to", "cuda:1")] if offload == "none" else [(f"{offload} offload", "cuda")]
    assert calls == [("load", marker), *placed]


def test_editors_command_lists_licence_download_and_memory_per_preset():
    result = runner.invoke(app, ["editors"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    klein = next(l for l in lines if "4b: black-forest-labs/FLUX.2-klein-4B" in l)
    assert "licence Apache-2.0" in klein and "download 16.0 GB (estimate)" in klein and "GPU memory ~13 GB" in klein
    assert not klein.rstrip().endswith("(estimate)")  # the 4B card states its memory: not an estimate
    assert any("9b: black-forest-labs/FLUX.2-klein-9B" in l and "Non-Commercial" in l for l in lines)
    assert any(l.startswith("cielr") and "track: agentic" in l for l in lines)


@pytest.mark.parametrize("editor", ["qwen-image-edit", "flux2-klein"])
def test_multi_image_cases_reach_the_pipeline_as_reference_images(editor, diffusers_editor_hub):
    """Qwen-Image-Edit-2509/2511 and FLUX.2 [klein] read a list `image` as the reference images of one
    prompt: a case with two inputs sends both, the source first, and the second input changes the
    result (same seed); single-image pipelines do not declare multi_image; such pipelines refuse to
    batch samples (a batch would be taken as references)."""
    from ciebench.baselines.diffusers_editors import DiffusersEditorError
    from ciebench.turns import MULTI_IMAGE, unsupported_reason

    hub_id, _, options = BUILTINS[editor]
    diffusers_editor_hub(hub_id)
    ed = build_editor(editor, _pairs(options))
    assert MULTI_IMAGE in ed.supports and unsupported_reason(ed, 2, 1) is None
    assert MULTI_IMAGE in ed.describe()["supports"]
    rng = np.random.default_rng(3)
    source, ref_a, ref_b = (Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)) for _ in range(3))
    calls = []
    pipe = ed._pipeline()
    original = type(pipe).__call__
    type(pipe).__call__ = lambda self, *a, **k: (calls.append(k["image"]), original(self, *a, **k))[1]
    try:
        with_a = ed.edit([EditRequest("m", source, "combine them", seed=4, images=[source, ref_a])])[0]
        with_b = ed.edit([EditRequest("m", source, "combine them", seed=4, images=[source, ref_b])])[0]
    finally:
        type(pipe).__call__ = original
    assert with_a.status == "ok" and with_a.image.size == source.size
    assert isinstance(calls[0], list) and len(calls[0]) == 2
    assert np.array_equal(np.asarray(calls[0][0]), np.asarray(source))
    assert np.array_equal(np.asarray(calls[0][1]), np.asarray(ref_a))
    assert not np.array_equal(np.asarray(with_a.image), np.asarray(with_b.image))
    with pytest.raises(DiffusersEditorError, match="cannot batch samples"):
        build_editor(editor, _pairs({**options, "batch": True}))


@pytest.mark.parametrize("source_size, expected", [((64, 64), (64, 64)), ((256, 128), (96, 32))])
def test_qwen_plus_multi_image_output_follows_the_source(source_size, expected, diffusers_editor_hub):
    """QwenImageEditPlusPipeline sizes its output from the LAST of several images (diffusers
    `image[-1].size`); a multi-image case must come out at the size the pipeline picks for the source
    alone, not at the tall reference's aspect ratio. Expected by hand from the pipeline's rule under
    this file's shrunk area (4096 pixels): width sqrt(4096 * r) and height width / r, each rounded to
    a multiple of 32: r = 1 -> 64 x 64; r = 2 -> 90.5, 45.3 -> 96 x 32 (the tall reference alone,
    r = 0.5, would give 32 x 96)."""
    hub_id, _, options = BUILTINS["qwen-image-edit"]
    diffusers_editor_hub(hub_id)
    ed = build_editor("qwen-image-edit", _pairs(options))
    source = Image.new("RGB", source_size, (200, 10, 10))
    reference = Image.new("RGB", (64, 128), (10, 200, 10))
    single = ed.edit([EditRequest("s", source, "edit", seed=0)])[0]
    multi = ed.edit([EditRequest("m", source, "combine them", seed=0, images=[source, reference])])[0]
    assert single.trace["working_size"] == list(expected)
    assert multi.trace["working_size"] == list(expected) and multi.image.size == source_size


def test_single_image_pipelines_do_not_declare_multi_image():
    from ciebench.turns import MULTI_IMAGE

    for editor in ("flux-kontext", "longcat-image-edit"):
        assert MULTI_IMAGE not in build_editor(editor, _pairs(BUILTINS[editor][2])).supports
    assert MULTI_IMAGE not in build_editor("qwen-image-edit", ["steps=2"], None, "base").supports  # first release


def test_every_editor_declares_its_pipeline_repo_for_prefetch_doctor_and_provenance():
    """What `from_pretrained` reads is declared: the table's hub id (read from the packaged JSON) at the
    configured revision, in the diffusers layout; the generic editor its own model_id."""
    from ciebench.registry import get_editor_class

    for editor in BUILTINS:
        for preset, options in (get_editor_class(editor).presets or {"": {}}).items():
            ed = build_editor(editor, ["revision=v1.0"], preset=preset or None)
            reqs = [(r.kind, r.ref, r.revision, r.layout) for r in ed.required_assets()]
            assert reqs == [("hub", _table(options.get("model", ed.config.model))["model_id"], "v1.0", "diffusers")]
    generic = build_editor("diffusers", ["pipeline=StableDiffusionImg2ImgPipeline", f"model_id={SD_IMG2IMG}"])
    assert [(r.ref, r.revision, r.layout) for r in generic.required_assets()] == [(SD_IMG2IMG, None, "diffusers")]


def test_a_pipeline_saved_in_a_folder_is_declared_as_that_folder(tmp_path: Path):
    saved = tmp_path / "my-pipeline"
    saved.mkdir()
    editor = build_editor("diffusers", ["pipeline=StableDiffusionImg2ImgPipeline", f"model_id={saved}"])
    assert [(r.kind, r.ref) for r in editor.required_assets()] == [("local", str(saved))]
