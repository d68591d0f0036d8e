"""The CIELR editor end to end on CPU: tiny random-weight SAM 2.1 / OWLv2 / Depth Anything V2 / SD
inpainting models loaded by their real hub ids from a temporary offline hub cache, and the reasoning
LLM served by a real HTTP server on 127.0.0.1 that replays scripted answers."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ciebench.cielr_ref.editor import CIELRConfig, CIELREditor
from ciebench.cielr_ref.executor import dilate
from ciebench.editor import EditRequest
from ciebench.registry import get_editor_class
from tests.support.fixtures_cielr import (action, node, publish_cielr_models, regions_in, scene_image, stage_of, sufficient)
from tests.support.llm_server import json_reply, raw, respond, serve_llm

DILATION = 3
OBJECTS = ["red square", "blue square", "wall"]


@pytest.fixture(scope="module")
def server():
    with serve_llm() as s:
        yield s


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def editor(server):
    publish_cielr_models()
    ed = CIELREditor(
        llm=dict(base_url=server.base_url, api_key_env=None, model="scripted", max_retries=2, backoff_base_s=0.01,
                 backoff_max_s=0.05, timeout_s=10.0, concurrency=4),
        llm_cache=False, points_per_side=4, crop_n_layers=0, mask_threshold=1.0, pred_iou_thresh=0.0,
        stability_score_thresh=0.0, resolution=32, steps=1, dilation_px=DILATION, merge_unknown=False)
    yield ed
    ed.close()


class Script:
    """Scripted CIELR answers keyed by a marker in the step text: plan -> steps; per stage, a function
    (regions, request) -> answer."""

    def __init__(self, plans: dict[str, list[dict]], **stages):
        self.plans, self.stages = plans, stages

    def __call__(self, req):
        stage = stage_of(req.text)
        if stage == "objects":
            return {"objects": OBJECTS}
        if stage == "plan":
            for marker, steps in self.plans.items():
                if marker in req.text:
                    return {"steps": steps}
            return "no plan"
        fn = self.stages.get(stage)
        if fn is None:
            return "no answer scripted"
        return fn(regions_in(req.text), req)


def run(server, editor, script, requests):
    server.reset(rules=True)
    server.on(then=respond(script))
    return editor.edit(requests)


def artifacts(result) -> tuple[dict, dict]:
    trace = dict(result.trace)
    arts = trace.pop("artifacts")
    json.dumps(trace)  # the trace is JSON-serialisable once the artifacts are taken out
    return trace, {k: np.asarray(v, dtype=bool) for k, v in arts.items()}


def region_mask(trace: dict, arts: dict, version: int, region_id: int) -> np.ndarray:
    """A region's mask through the trace's reference (unchanged masks are written once)."""
    ssr = next(v for v in trace["ssr_versions"] if v["version"] == version)
    return arts[next(r for r in ssr["regions"] if r["id"] == region_id)["mask"]]


def changed(result, source: Image.Image) -> np.ndarray:
    return (np.asarray(result.image) != np.asarray(source)).any(axis=-1)


def smallest(regions, _req):
    return {"region_ids": [min(regions, key=lambda r: r["area"])["id"]], "reason": "smallest"}


# -------------------------------------------------------------------------------------- selection
def test_selecting_region_k_changes_only_its_dilated_mask(server, editor):
    src = scene_image()
    script = Script({"MARK-SEL": [{"instruction": "MARK-SEL remove the green bar", "edit_type": "remove"}]},
                    sufficiency=lambda r, q: sufficient(), select=smallest,
                    action=lambda r, q: action("remove", "green bar"))
    res = run(server, editor, script, [EditRequest("s1", src, "What is green? MARK-SEL remove it.", seed=3)])[0]
    assert res.status == "ok", res.error
    trace, arts = artifacts(res)
    k = trace["steps"][0]["region_ids"][0]
    region = arts[f"ssr_v1_region_{k}.png"]
    band = dilate(region, DILATION)
    diff = changed(res, src)
    assert diff.any() and not (diff & ~band).any()
    assert band.mean() < 0.5  # region k is a proper part of the image: the check means something
    assert np.array_equal(arts["step1_mask.png"], region)
    calls = trace["model_calls"]
    assert calls["segmenter"] == 1 and calls["labeller"] == 1 and calls["depth"] == 1 and calls["inpaint"] == 1
    assert calls["vlm_calls"] == 1 and calls["llm_calls"] == 4
    stages = [e["stage"] for e in trace["exchanges"]]
    assert stages == ["objects", "plan", "sufficiency", "select", "action"]
    assert trace["exchanges"][0]["images"] == 1 and "TASK: OBJECT LIST" in trace["exchanges"][0]["prompt"]
    assert trace["objects"] == OBJECTS and trace["ssr_versions"][0]["queried_labels"] == OBJECTS
    assert trace["steps"][0]["action"]["explicit"] == "remove the green bar"
    assert trace["steps"][0]["prompt"] == editor.config.remove_prompt
    # The schema went out as response_format and every request was well formed.
    assert not server.problems
    assert all(r.response_format["type"] == "json_schema" for r in server.requests)


def test_models_load_once_and_segment_once_per_sample(server, editor):
    seg, lab, dep, ex = editor.segmenter, editor.labeller, editor.depth_model, editor.executor
    before = seg.stats.images
    script = Script({"MARK-TWO": [{"instruction": "MARK-TWO remove the square", "edit_type": "remove"}]},
                    sufficiency=lambda r, q: sufficient(), select=smallest,
                    action=lambda r, q: action("remove", "square"))
    reqs = [EditRequest(f"t{i}", scene_image(i), f"MARK-TWO number {i}", seed=i) for i in range(3)]
    results = run(server, editor, script, reqs)
    assert [r.status for r in results] == ["ok"] * 3
    assert (editor.segmenter, editor.labeller, editor.depth_model, editor.executor) == (seg, lab, dep, ex)
    assert seg.stats.images - before == 3
    for r in results:
        assert artifacts(r)[0]["model_calls"]["segmenter"] == 1


# -------------------------------------------------------------------------------------- updates
def test_semantic_update_reruns_only_the_labeller(server, editor):
    src = scene_image()
    seg_before, lab_before = editor.segmenter.stats.images, editor.labeller.stats.images

    def suff(regions, req):
        if "green bar" not in req.text.split("Labels already searched for:")[1].split("\n")[0]:
            return {"sufficient": False, "missing": "semantic", "new_labels": ["green bar"], "reason": "not labelled"}
        return sufficient()

    def select(regions, req):
        hits = [r["id"] for r in regions if r["label"] == "green bar"]
        # whether a random tiny detector gives "green bar" a box depends on the library's init
        return {"region_ids": hits[:1] or [regions[0]["id"]], "reason": "the bar"}

    script = Script({"MARK-SEM": [{"instruction": "MARK-SEM remove the green bar", "edit_type": "remove"}]},
                    sufficiency=suff, select=select, action=lambda r, q: action("remove", "green bar"))
    res = run(server, editor, script, [EditRequest("sem", src, "MARK-SEM which is green?", seed=0)])[0]
    trace, arts = artifacts(res)
    assert res.status == "ok", res.error
    assert editor.segmenter.stats.images - seg_before == 1  # segmentation reused by the update
    assert editor.labeller.stats.images - lab_before == 2  # version 1 and the semantic update
    assert trace["model_calls"]["segmenter"] == 1 and trace["model_calls"]["labeller"] == 2
    v1, v2 = trace["ssr_versions"]
    assert (v1["version"], v2["version"], v2["update"]) == (1, 2, "semantic")
    assert v2["queried_labels"] == OBJECTS + ["green bar"] and v1["n_segments"] == v2["n_segments"]
    assert trace["steps"][0]["updates"] == [{"kind": "semantic", "new_labels": ["green bar"], "ssr_version": 2}]
    assert trace["steps"][0]["ssr_version"] == 2
    # with the default limit of 2 SSR versions, no sufficiency check runs on version 2
    assert [e["stage"] for e in trace["exchanges"]].count("sufficiency") == 1
    k = trace["steps"][0]["region_ids"][0]
    assert not (changed(res, src) & ~dilate(region_mask(trace, arts, 2, k), DILATION)).any()


def test_spatial_update_uses_a_safe_operator(server, editor):
    src = scene_image()
    tree = node("leftmost", node("select", label="red square"))

    def select(regions, req):
        made = [r["id"] for r in regions if r.get("source") == "operator"]
        return {"region_ids": made, "reason": "the operator's region"}

    script = Script({"MARK-SPA": [{"instruction": "MARK-SPA remove the leftmost red square", "edit_type": "remove"}]},
                    sufficiency=lambda r, q: {"sufficient": False, "missing": "spatial", "new_labels": [],
                                              "reason": "which one"},
                    spatial=lambda r, q: {"target": "leftmost red square", "operator": tree},
                    select=select, action=lambda r, q: action("remove", "leftmost red square"))
    res = run(server, editor, script, [EditRequest("spa", src, "MARK-SPA the left one", seed=0)])[0]
    assert res.status == "ok", res.error
    trace, arts = artifacts(res)
    upd = trace["steps"][0]["updates"][0]
    assert upd["kind"] == "spatial" and upd["operator"] == tree
    assert upd["description"] == "leftmost(select(label='red square'))"
    v2 = trace["ssr_versions"][1]
    made = v2["regions"][-1]
    assert made["source"] == "operator" and made["id"] == upd["region_id"] and made["label"] == "leftmost red square"
    # The region is the leftmost "red square" instance of version 1, computed here independently.
    from ciebench.cielr_ref.ssr import Geometry

    v1 = trace["ssr_versions"][0]
    red = [r for r in v1["regions"] if r["label"] == "red square"][0]
    assert set(made["instance_indices"]) <= set(red["instance_indices"])
    mask = region_mask(trace, arts, 2, made["id"])
    # a new mask gets its own file; one equal to an earlier region's mask (a one-instance region, which
    # depends on the random tiny models) refers to that file
    v1_masks = [arts[r["mask"]] for r in v1["regions"]]
    assert made["mask"] == f"ssr_v2_region_{made['id']}.png" or any(np.array_equal(mask, m) for m in v1_masks)
    assert all(r["mask"].startswith("ssr_v1_") for r in v2["regions"][:-1])  # unchanged ones are not rewritten
    assert Geometry.of(mask, None).centroid[0] <= Geometry.of(region_mask(trace, arts, 1, red["id"]), None).centroid[0] + 1e-6
    assert not (changed(res, src) & ~dilate(mask, DILATION)).any()
    assert trace["model_calls"]["labeller"] == 1 and trace["model_calls"]["segmenter"] == 1


# -------------------------------------------------------------------------------------- safety
def test_injected_code_is_data_not_instructions(server, editor, tmp_path):
    sentinel = tmp_path / "pwned"
    payload = f"__import__('os').system('touch {sentinel}'); $(touch {sentinel}); `rm -rf {tmp_path}`"
    src = scene_image()
    evil_action = dict(action("replace", payload, new_object=payload), code=f"open('{sentinel}', 'w')")
    evil_operator = {"target": payload, "operator": {"op": "python", "code": payload}}
    script = Script(
        {"MARK-INJ": [{"instruction": f"MARK-INJ replace the square. {payload}", "edit_type": "replace"}]},
        sufficiency=lambda r, q: {"sufficient": False, "missing": "spatial", "new_labels": [], "reason": payload},
        spatial=lambda r, q: {"target": payload, "operator": node("largest", node("select", label="wall"))},
        select=lambda r, q: {"region_ids": [r[-1]["id"]], "reason": payload},
        action=lambda r, q: action("replace", payload, new_object=payload))
    server.reset(rules=True)
    # The first spatial and action answers smuggle code (an unknown operator, an extra field): both are
    # rejected by the schema and retried.
    server.on(where=lambda q: stage_of(q.text) == "spatial", then=[json_reply(evil_operator)], repeat=False)
    server.on(where=lambda q: stage_of(q.text) == "action", then=[json_reply(evil_action)], repeat=False)
    server.on(then=respond(script))
    res = editor.edit([EditRequest("inj", src, f"MARK-INJ {payload}", seed=0)])[0]
    assert res.status == "ok", res.error
    trace, arts = artifacts(res)
    assert not sentinel.exists() and tmp_path.exists()
    act = trace["steps"][0]["action"]
    assert set(act) == {"action", "target", "new_object", "color", "explicit"}
    assert act["action"] == "replace" and act["target"].startswith("__import__") and act["color"] is None
    assert trace["steps"][0]["prompt"] == act["new_object"]  # the text only ever reaches the text encoder
    by_stage = {e["stage"]: e for e in trace["exchanges"]}
    assert by_stage["spatial"]["attempts"] == 2 and by_stage["action"]["attempts"] == 2
    # the trace says what the kept answer was sampled with: the retry's decoding, as the server received it
    sent = [q.body for q in server.requests if stage_of(q.text) == "action" and "MARK-INJ" in q.text]
    assert len(sent) == 2 and sent[0]["seed"] != sent[1]["seed"]
    assert (by_stage["action"]["temperature"], by_stage["action"]["seed"]) == (sent[1]["temperature"], sent[1]["seed"])
    assert by_stage["action"]["finish_reason"] == "stop" and by_stage["action"]["response_format"]
    k = trace["steps"][0]["region_ids"][0]
    assert not (changed(res, src) & ~dilate(region_mask(trace, arts, 2, k), DILATION)).any()


def test_malformed_replies_fail_the_sample_and_the_batch_goes_on(server, editor):
    script = Script({"MARK-OK": [{"instruction": "MARK-OK remove the square", "edit_type": "remove"}],
                     "MARK-BAD": [{"instruction": "MARK-BAD remove the square", "edit_type": "remove"}]},
                    sufficiency=lambda r, q: sufficient(), select=smallest,
                    action=lambda r, q: action("remove", "square"))
    server.reset(rules=True)
    server.on(where=lambda q: stage_of(q.text) == "select" and "MARK-BAD" in q.text, then=raw('{"region_ids": [1,'))
    server.on(where=lambda q: stage_of(q.text) == "action" and "MARK-BAD" in q.text, then=json_reply({"nope": 1}))
    server.on(then=respond(script))
    bad, ok = editor.edit([EditRequest("bad", scene_image(), "MARK-BAD x", seed=0),
                           EditRequest("ok", scene_image(), "MARK-OK y", seed=0)])
    assert ok.status == "ok" and ok.image is not None
    assert bad.status == "error" and bad.image is None
    assert bad.error.startswith("select: ") and "after 3 attempts" in bad.error
    trace = dict(bad.trace)
    trace.pop("artifacts")
    assert trace["failed_stage"] == "select" and trace["exchanges"][-1]["status"] == "error"
    assert server.count_where("MARK-BAD") >= 1 + 1 + 3  # plan, sufficiency, three select attempts
    assert [e["stage"] for e in trace["exchanges"]] == ["objects", "plan", "sufficiency", "select"]


def test_multi_step_instructions_apply_in_order(server, editor):
    src = scene_image()

    def select(regions, req):
        want = "blue square" if "STEP-B" in req.text else "red square"
        return {"region_ids": [r["id"] for r in regions if r["label"] == want][:1] or [regions[0]["id"]],
                "reason": want}

    def act(regions, req):
        if "STEP-B" in req.text:
            return action("replace", "blue square", new_object="a yellow ball")
        return action("remove", "red square")

    script = Script({"MARK-MULTI": [{"instruction": "MARK-MULTI STEP-A remove the red square", "edit_type": "remove"},
                                    {"instruction": "MARK-MULTI STEP-B replace the blue square", "edit_type": "replace"}]},
                    sufficiency=lambda r, q: sufficient(), select=select, action=act)
    res = run(server, editor, script, [EditRequest("multi", src, "MARK-MULTI do both", seed=5)])[0]
    assert res.status == "ok", res.error
    trace, arts = artifacts(res)
    steps = trace["steps"]
    assert [s["edit_type"] for s in steps] == ["remove", "replace"]
    assert trace["model_calls"]["inpaint"] == 2 and trace["model_calls"]["segmenter"] == 1
    assert [s["execution"]["seed"] for s in steps] == [5, 6]
    union = dilate(arts["step1_mask.png"], DILATION) | dilate(arts["step2_mask.png"], DILATION)
    assert not (changed(res, src) & ~union).any()
    assert steps[1]["prompt"] == "a yellow ball"


def test_same_seed_same_image_other_seed_other_image(server, editor):
    script = Script({"MARK-DET": [{"instruction": "MARK-DET replace the square", "edit_type": "replace"}]},
                    sufficiency=lambda r, q: sufficient(), select=smallest,
                    action=lambda r, q: action("replace", "square", new_object="a cat"))
    a = run(server, editor, script, [EditRequest("d", scene_image(), "MARK-DET", seed=7)])[0]
    b = run(server, editor, script, [EditRequest("d", scene_image(), "MARK-DET", seed=7)])[0]
    c = run(server, editor, script, [EditRequest("d", scene_image(), "MARK-DET", seed=8)])[0]
    assert a.status == b.status == c.status == "ok", [a.error, b.error, c.error]
    assert np.array_equal(np.asarray(a.image), np.asarray(b.image))
    # same reasoning (scripted answers), same region: only the inpainting noise differs
    mask = lambda r: np.asarray(r.trace["artifacts"]["step1_mask.png"], dtype=bool)  # noqa: E731
    assert np.array_equal(mask(a), mask(c))
    assert not np.array_equal(np.asarray(a.image), np.asarray(c.image))


# -------------------------------------------------------------------------------------- config
def test_registry_presets_and_description():
    cls = get_editor_class("cielr")
    assert cls is CIELREditor
    paper = CIELRConfig(**cls.presets["paper"])
    assert paper.sam_model == "facebook/sam2.1-hiera-large" and paper.points_per_side == 16
    assert paper.labeller_model == "google/owlv2-large-patch14-ensemble" and paper.label_threshold == 0.1
    assert paper.inpaint_model == "stabilityai/stable-diffusion-2-inpainting" and paper.max_ssr_versions == 2
    assert paper.llm.model == "qwen-max" and paper.vlm_config.model == "qwen-vl-max"
    lite = CIELRConfig(**cls.presets["lite"])
    assert lite.llm.backend == "transformers" and "Depth-Anything-V2-Small-hf" in lite.depth_model
    assert len(lite.downloads()) == 5 and hash(lite) == hash(CIELRConfig(**cls.presets["lite"]))
    desc = CIELREditor(**cls.presets["lite"]).describe()
    json.dumps(desc)
    assert desc["config"]["llm"]["model"] == "Qwen/Qwen2.5-VL-3B-Instruct" and desc["downloads"]
    with pytest.raises(ValueError):
        CIELRConfig(segmenter="nope")
    with pytest.raises(ValueError):
        CIELRConfig(llm={"model": "m", "api_key_env": "sk-not-a-name"})


def test_segment_anything_backend_runs_a_tiny_sam():
    torch = pytest.importorskip("torch")
    pytest.importorskip("segment_anything")
    from functools import partial

    from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

    from ciebench.cielr_ref.segmenters import AMGParams, SegmentAnythingSegmenter

    torch.manual_seed(0)
    enc = ImageEncoderViT(img_size=64, patch_size=16, embed_dim=32, depth=1, num_heads=2, out_chans=16,
                          norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), window_size=0, global_attn_indexes=())
    sam = Sam(enc, PromptEncoder(embed_dim=16, image_embedding_size=(4, 4), input_image_size=(64, 64), mask_in_chans=4),
              MaskDecoder(num_multimask_outputs=3, transformer=TwoWayTransformer(depth=1, embedding_dim=16, mlp_dim=32,
                                                                                 num_heads=2),
                          transformer_dim=16, iou_head_depth=1, iou_head_hidden_dim=16))
    with torch.no_grad():
        sam.mask_decoder.output_hypernetworks_mlps[0].layers[-1].weight.mul_(1e3)
    seg = SegmentAnythingSegmenter(model=sam, params=AMGParams(points_per_side=4, crop_n_layers=0, pred_iou_thresh=0.0,
                                                               stability_score_thresh=0.0))
    masks = seg.segment([scene_image()])[0]
    assert isinstance(masks, list) and all(m.shape == (90, 120) and m.dtype == bool for m in masks)
    assert seg.stats.images == 1 and seg.describe()["backend"] == "segment-anything"
    with pytest.raises(ValueError, match="sam1_checkpoint"):
        SegmentAnythingSegmenter()


def test_sd15_inpainting_is_selectable(server):
    from tests.support.fixtures_cielr import SD15_ID, publish_sd15_inpaint

    publish_sd15_inpaint()
    from ciebench.cielr_ref.executor import InpaintExecutor, InpaintJob, InpaintParams

    ex = InpaintExecutor(SD15_ID, InpaintParams(resolution=32, steps=1, dilation_px=2, feather=False))
    mask = np.zeros((90, 120), dtype=bool)
    mask[40:50, 40:60] = True
    out = ex.run([InpaintJob("x", scene_image(), mask, "a dog", seed=1), InpaintJob("y", scene_image(), mask & False, "a")])
    assert out[0].error is None and out[1].error == "execution: the region to edit is empty"
    diff = changed(out[0], scene_image())
    assert not (diff & ~dilate(mask, 2)).any()
    assert Path(ex.model_id).name == "stable-diffusion-inpainting"
