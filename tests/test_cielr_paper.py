"""The `paper` preset (issue 12): release settings, the edit type from a separate call instead of a plan,
Big-LaMa removal through the real loading path (a tiny TorchScript stand-in with the same call,
pinned by sha256 and served from file://), exact paste-back, the `sd-whole` back end and the two
ablations end to end. Tiny real models from the offline hub cache; a scripted LLM on 127.0.0.1."""
from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from ciebench.cielr_ref.editor import PRESETS, CIELRConfig, CIELREditor
from ciebench.editor import EditRequest
from ciebench.errors import IntegrityError
from tests.support.fixtures_cielr import (action, publish_cielr_models, publish_sd15_inpaint, regions_in, scene_image, stage_of,
                                  sufficient, tiny_editor_options)
from tests.support.llm_server import respond, serve_llm

pytestmark = pytest.mark.usefixtures("one_torch_thread")
OBJECTS = ["red square", "blue square", "wall"]
FILL = (0.25, 0.5, 0.75)  # what the LaMa stand-in paints into the hole


def lama_standin(path) -> str:
    """A TorchScript module with Big-LaMa's call: (image (1,3,H,W) in [0,1], mask (1,1,H,W)) ->
    (1,3,H,W); it fills the hole with FILL and keeps the rest. Returns the file's sha256."""
    import torch

    class Standin(torch.nn.Module):
        def forward(self, image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
            assert image.shape[2] % 8 == 0 and image.shape[3] % 8 == 0
            fill = torch.tensor([0.25, 0.5, 0.75], dtype=image.dtype).view(1, 3, 1, 1)
            return image * (1 - mask) + fill * mask

    torch.jit.save(torch.jit.script(Standin()), str(path))
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def server():
    with serve_llm() as s:
        yield s


@pytest.fixture(scope="module")
def lama(tmp_path_factory):
    path = tmp_path_factory.mktemp("lama") / "big-lama.pt"
    return path.as_uri(), lama_standin(path)


def paper_editor(server, lama, **over) -> CIELREditor:
    url, sha = lama
    opts = {**PRESETS["paper"], **tiny_editor_options(server.base_url, concurrency=4)}
    # the tiny models need the scripted LLM, small thresholds and a small resolution; everything the
    # paper preset decides about the method stays as the preset sets it:
    opts.update(vlm=None, plan=False, removal="lama", stability_score_offset=0.7, crop_n_points_downscale_factor=2,
                use_m2m=True, dilation_px=0, feather=False, lama_url=url, lama_sha256=sha)
    opts.update(over)
    return CIELREditor(**opts)


def answers(kind="remove", select=None, onestep=None):
    def answer(req):
        stage = stage_of(req.text)
        regions = regions_in(req.text)
        if stage == "objects":
            return {"objects": OBJECTS}
        if stage == "classify":
            return {"edit_type": kind}
        if stage == "sufficiency":
            return sufficient()
        if stage == "select":
            return {"region_ids": [(select or min)(regions, key=lambda r: r["area"])["id"]], "reason": ""}
        if stage == "action":
            return action(kind, "square", new_object="a cat" if kind == "replace" else None)
        if stage == "onestep":
            r = min(regions, key=lambda x: x["area"])
            return {"edit_type": kind, "region_ids": [r["id"]], "target": "square",
                    "new_object": "a cat" if kind == "replace" else None, "color": None, "explicit": f"{kind} it"}
        return "unscripted"
    return answer


def run(server, editor, answer, instruction="MARK which one is red? remove it"):
    server.reset(rules=True)
    server.on(then=respond(answer))
    src = scene_image()
    res = editor.edit([EditRequest("p", src, instruction, seed=1)])[0]
    trace = dict(res.trace)
    arts = {k: np.asarray(v, dtype=bool) for k, v in trace.pop("artifacts").items()}
    json.dumps(trace)
    return src, res, trace, arts


def changed(res, src):
    return (np.asarray(res.image) != np.asarray(src)).any(axis=-1)


def test_paper_preset_values():
    c = CIELRConfig(**PRESETS["paper"])
    assert (c.plan, c.ablation, c.removal) == (False, "none", "lama")
    assert (c.stability_score_offset, c.crop_n_points_downscale_factor, c.use_m2m) == (0.7, 2, True)
    assert (c.dilation_px, c.feather) == (0, False)  # paste back exactly the selected mask
    assert (c.points_per_side, c.pred_iou_thresh, c.stability_score_thresh, c.crop_n_layers, c.box_nms_thresh) == \
        (16, 0.7, 0.92, 1, 0.7)
    assert c.sam_model == "facebook/sam2.1-hiera-large" and c.labeller_model == "google/owlv2-large-patch14-ensemble"
    assert c.inpaint_model == "stabilityai/stable-diffusion-2-inpainting" and c.max_ssr_versions == 2
    assert c.llm.model == "qwen-max" and c.vlm_config.model == "qwen-vl-max"
    assert any("Big-LaMa" in d for d in c.downloads())
    default = CIELRConfig()
    assert (default.plan, default.removal, default.use_m2m, default.stability_score_offset) == (True, "sd-crop", False, 1.0)
    with pytest.raises(ValueError, match="removal"):
        CIELRConfig(removal="opencv")
    with pytest.raises(ValueError, match="ablation"):
        CIELRConfig(ablation="no_reasoning")
    with pytest.raises(ValueError, match="use_m2m"):
        CIELRConfig(segmenter="segment-anything", use_m2m=True)


def test_paper_removal_with_lama_changes_exactly_the_mask(server, lama):
    publish_cielr_models()
    ed = paper_editor(server, lama)
    try:
        src, res, trace, arts = run(server, ed, answers("remove"))
    finally:
        ed.close()
    assert res.status == "ok", res.error
    assert [e["stage"] for e in trace["exchanges"]] == ["objects", "classify", "sufficiency", "select", "action"]
    assert trace["plan"] == [{"instruction": "MARK which one is red? remove it", "edit_type": "remove"}]
    mask = arts["step1_mask.png"]
    diff = changed(res, src)
    assert mask.any() and not (diff & ~mask).any()  # nothing outside the selected mask changes
    out = np.asarray(res.image)
    expected = np.rint(np.array(FILL) * 255).astype(np.uint8)  # the stand-in's fill, pasted on the mask
    assert (out[mask] == expected).all()
    assert trace["model_calls"]["removal"] == 1 and trace["model_calls"].get("inpaint", 0) == 0
    removal = trace["models"]["removal"]
    assert removal["backend"] == "lama-torchscript" and removal["checkpoint"]["verified"] is True
    assert removal["checkpoint"]["sha256"] == lama[1] and removal["checkpoint"]["origin"] in ("download", "cache")
    seg = trace["models"]["segmenter"]["params"]
    assert (seg["stability_score_offset"], seg["crop_n_points_downscale_factor"], seg["use_m2m"]) == (0.7, 2, True)
    assert trace["steps"][0]["prompt"] == ""  # LaMa takes no prompt; none is recorded


def test_lama_pin_mismatch_is_refused(lama, tmp_path, monkeypatch):
    from ciebench.cielr_ref.lama import LamaRemover

    monkeypatch.setenv("CIEBENCH_CACHE", str(tmp_path / "cache"))
    with pytest.raises(IntegrityError):
        LamaRemover(url=lama[0], sha256="0" * 64)


def test_paper_replace_pastes_back_only_the_mask(server, lama):
    ed = paper_editor(server, lama)
    try:
        src, res, trace, arts = run(server, ed, answers("replace", select=max), instruction="MARK swap it for a cat")
    finally:
        ed.close()
    assert res.status == "ok", res.error
    assert trace["model_calls"]["inpaint"] == 1 and trace["model_calls"]["removal"] == 0
    diff = changed(res, src)
    assert diff.any() and not (diff & ~arts["step1_mask.png"]).any()


@pytest.mark.parametrize("ablation,stages", [
    ("no_update", ["objects", "classify", "select", "action"]),
    ("no_chain", ["objects", "onestep"]),
])
def test_ablations_run_end_to_end(server, lama, ablation, stages):
    ed = paper_editor(server, lama, ablation=ablation)
    try:
        src, res, trace, arts = run(server, ed, answers("remove"))
    finally:
        ed.close()
    assert res.status == "ok", res.error
    assert [e["stage"] for e in trace["exchanges"]] == stages
    assert len(trace["ssr_versions"]) == 1 and trace["settings"]["ablation"] == ablation
    mask = arts["step1_mask.png"]
    assert not (changed(res, src) & ~mask).any() and changed(res, src).any()


def test_sd_whole_removal_inpaints_the_whole_image_with_the_fixed_prompt(server, lama):
    sd15 = publish_sd15_inpaint()
    ed = paper_editor(server, lama, removal="sd-whole", sd_whole_model=sd15)
    try:
        src, res, trace, arts = run(server, ed, answers("remove"))
    finally:
        ed.close()
    assert res.status == "ok", res.error
    step = trace["steps"][0]
    assert step["prompt"] == "white wall" and step["execution"]["crop_box"] == [0, 0, 120, 90]
    assert not (changed(res, src) & ~arts["step1_mask.png"]).any()


def test_removal_back_ends_are_declared_and_the_declared_pin_is_what_the_remover_loads(lama, tmp_path, monkeypatch):
    """prefetch / bundles / doctor see what `_load` builds for removal: Big-LaMa's pinned file (or the
    local copy in lama_dir), or the sd-whole pipeline; bundled, the remover finds that file in the bundle."""
    from ciebench.bundle import write_bundle
    from ciebench.cielr_ref.lama import BIG_LAMA, LamaRemover
    from ciebench.prefetch import Configuration, Plan, _plan_asset, download

    def removal(**over):
        return [r for r in CIELREditor(**{**PRESETS["paper"], **over}).required_assets() if r.used_by.endswith("removal")]

    [paper] = removal()
    assert (paper.kind, paper.url, paper.asset.sha256) == ("asset", BIG_LAMA.url, BIG_LAMA.sha256)
    [local] = removal(lama_dir=str(tmp_path))
    assert (local.kind, local.ref) == ("local", str(tmp_path / "big-lama.pt"))
    [whole] = removal(removal="sd-whole", sd_whole_model="org/inpaint", safety_checker=False)
    assert (whole.kind, whole.ref, whole.layout, whole.skip) == ("hub", "org/inpaint", "diffusers", ("safety_checker",))
    assert removal(removal="sd-crop") == []  # the executor's own pipeline, declared as inpainting
    url, sha = lama
    [req] = removal(lama_url=url, lama_sha256=sha)
    monkeypatch.setenv("CIEBENCH_CACHE", str(tmp_path / "cache"))
    planned = Plan(Configuration(), [req])
    _plan_asset(req, True, planned)
    bundle = tmp_path / "bundle"
    write_bundle(download(planned, progress=False), bundle, progress=False)
    monkeypatch.setenv("CIEBENCH_CACHE", str(bundle / "ciebench"))
    remover = LamaRemover(url=url, sha256=sha)
    assert remover.resolved.origin == "cache" and remover.resolved.path.is_relative_to(bundle)


def test_editor_close_frees_its_shared_local_llm(monkeypatch):
    """One local model per canonical (model, device, dtype): the editor's and the judge's spellings
    meet in one instance, and closing the editor leaves it to the judge alone."""
    import gc

    from ciebench.llm import LLMConfig, client as client_mod, local_backend, local_models

    loads = []

    class FakeModel:  # stands in for a loaded transformers model
        def __init__(self, model, revision, device, dtype):
            loads.append((model, device, dtype))

    monkeypatch.setattr(local_backend, "LocalModel", FakeModel)
    local_models.release_all()
    import torch

    cuda = torch.cuda.is_available()
    # the editor names its device and an explicit dtype; the judge leaves both to the defaults
    editor_cfg = LLMConfig(backend="transformers", model="tiny/chat", device="cuda" if cuda else "cpu",
                           dtype="bfloat16" if cuda else "float32", api_key_env=None)
    judge_cfg = LLMConfig(backend="transformers", model="tiny/chat", api_key_env=None)
    ed_client, judge_client = client_mod.make_client(editor_cfg), client_mod.make_client(judge_cfg)
    a, b = ed_client._backend.load(), judge_client._backend.load()
    assert a is b and len(loads) == 1
    del a, b
    ed_client._backend._model = judge_client._backend._model = None
    held = judge_client._backend.load()  # the judge keeps one
    del ed_client
    gc.collect()
    assert len(local_models.loaded()) == 1
    del held, judge_client
    gc.collect()
    assert local_models.loaded() == []  # nobody holds it: freed


def test_m2m_refines_each_mask_from_its_point_and_own_logits():
    """SAM 2's m2m pass, batched over masks, equals one single-mask decoder call per mask with the
    point and that mask's low-res logits as prompt (the release's refine step, done one at a time)."""
    import torch

    from ciebench.cielr_ref.segmenters import AMGParams, Sam2Segmenter
    from tests.support.fixtures_cielr import SAM_ID

    publish_cielr_models()
    seg = Sam2Segmenter(SAM_ID, AMGParams(points_per_side=4, crop_n_layers=0, pred_iou_thresh=0.0,
                                          stability_score_thresh=0.0, mask_threshold=1.0, use_m2m=True))
    inputs = seg.processor(images=[scene_image()], return_tensors="pt")
    with torch.inference_mode():
        emb = seg.model.get_image_embeddings(inputs["pixel_values"])
        pts = torch.tensor([[10.0, 20.0], [40.0, 30.0], [55.0, 50.0]])
        first = seg.model(image_embeddings=emb, input_points=pts[None, :, None, :],
                          input_labels=torch.ones((1, 3, 1), dtype=torch.int64), multimask_output=True)
        low = first.pred_masks[0, :, 0].float()  # the first of the three masks of each point
        batched, iou = seg._refine(emb, pts, low)
        for i in range(3):
            one = seg.model(image_embeddings=emb, input_points=pts[None, i:i + 1, None, :],
                            input_labels=torch.ones((1, 1, 1), dtype=torch.int64),
                            input_masks=low[i:i + 1, None], multimask_output=False)
            assert torch.allclose(batched[i], one.pred_masks[0, 0, 0].float(), atol=1e-4)
            assert torch.allclose(iou[i], one.iou_scores[0, 0, 0].float(), atol=1e-4)
    assert not torch.allclose(batched, low)  # the mask prompt changed the prediction
    masks = seg.segment([scene_image()])[0]
    assert masks and all(m.shape == (90, 120) and m.dtype == bool for m in masks)
