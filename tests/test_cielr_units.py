"""CIELR building blocks without models: SSR, label assignment, operators, paste-back, validation."""
from __future__ import annotations

import dataclasses
import json

import jsonschema
import numpy as np
import pytest

from ciebench.cielr_ref import operators
from ciebench.cielr_ref.executor import dilate, model_size, paste, paste_weights, plan_crop
from ciebench.cielr_ref.reasoning import (ACTION_SCHEMA, PLAN_SCHEMA, SELECT_SCHEMA, SPATIAL_SCHEMA,
                                          SUFFICIENCY_SCHEMA, _check_action, _check_select, _check_sufficiency,
                                          clean_text)
from ciebench.cielr_ref.segmenters import crop_boxes, masks_to_boxes, point_grid
from ciebench.cielr_ref.ssr import (UNKNOWN, Detection, Geometry, assign_labels, box_mask_overlap, build_ssr,
                                    overlap_matrix, relabel)
from tests.support.fixtures_cielr import node

H, W = 40, 60


def rect(x0, y0, x1, y1, h=H, w=W):
    m = np.zeros((h, w), dtype=bool)
    m[y0:y1, x0:x1] = True
    return m


@pytest.fixture
def scene():
    """Three cups (left, middle, right; the right one nearest), a table under them, a handle inside the
    left cup, and a depth map that grows to the left (left = far)."""
    segs = [rect(0, 30, 60, 40),      # 0 table
            rect(2, 6, 12, 26),       # 1 left cup
            rect(25, 12, 33, 26),     # 2 middle cup (lowest)
            rect(45, 2, 58, 28),      # 3 right cup (largest cup)
            rect(3, 10, 6, 14)]       # 4 handle of the left cup (inside it)
    dets = [Detection("table", (0, 29, 60, 40), 0.9), Detection("cup", (1, 5, 13, 27), 0.8),
            Detection("cup", (24, 11, 34, 27), 0.7), Detection("cup", (44, 1, 59, 29), 0.6),
            Detection("cup", (2, 9, 7, 15), 0.5)]
    depth = np.tile(np.linspace(1.0, 0.0, W, dtype=np.float32), (H, 1))
    return build_ssr(segs, dets, depth, queried_labels=["table", "cup"])


# ------------------------------------------------------------------------------------------ SSR
def test_overlap_is_the_released_formula_and_vectorised():
    m = rect(0, 0, 10, 10)
    box = (5, 5, 15, 15)  # 25 px of the mask inside a 100 px box; mask 100 px
    assert box_mask_overlap(m, box) == pytest.approx(25 / (100 + 100 - 25))
    assert box_mask_overlap(m, (20, 20, 30, 30)) == 0.0
    assert box_mask_overlap(m, (-5, -5, 100, 100)) == pytest.approx(100 / (W * H))  # box clipped to the image
    rng = np.random.default_rng(0)
    segs = [rng.random((H, W)) > 0.7 for _ in range(4)]
    boxes = rng.uniform(-5, 65, size=(6, 4))
    boxes[:, 2:] = np.maximum(boxes[:, 2:], boxes[:, :2])
    fast = overlap_matrix(segs, boxes)
    slow = np.array([[box_mask_overlap(s, b) for b in boxes] for s in segs])
    np.testing.assert_allclose(fast, slow)


def test_best_overlap_assignment_unknown_and_merge(scene):
    labels = assign_labels([rect(0, 0, 5, 5), rect(50, 30, 60, 40)], [Detection("a", (0, 0, 5, 5), 0.2),
                                                                    Detection("b", (0, 0, 6, 6), 0.9)])
    assert labels[0] == ("a", 1.0)  # exact box beats the higher-scored looser one
    assert labels[1] == (UNKNOWN, 0.0)
    assert [r.label for r in scene.regions] == ["cup", "table"]  # same labels merged, largest first
    cup = scene.regions[0]
    assert cup.id == 1 and sorted(cup.instances) == [1, 2, 3, 4]
    g = cup.geometry
    assert g.bbox == (2, 2, 58, 28) and g.area == int(cup.mask.sum())
    assert g.area_fraction == pytest.approx(g.area / (H * W))
    summary = scene.summary()[0]
    assert set(summary) == {"id", "label", "bbox", "area", "centroid", "depth", "instances"}
    assert summary["instances"] == 4 and 0 <= summary["depth"] <= 1


def test_geometry_median_and_centroid_depth():
    depth = np.arange(H * W, dtype=np.float32).reshape(H, W) / (H * W)
    m = rect(10, 10, 20, 20)
    g = Geometry.of(m, depth)
    assert g.centroid == pytest.approx((14.5, 14.5))
    assert g.median_depth == pytest.approx(float(np.median(depth[10:20, 10:20])))
    assert g.centroid_depth == pytest.approx(float(depth[14, 14]))  # round(14.5) -> 14 (banker's rounding)


def test_semantic_update_reuses_segments(scene):
    v2 = relabel(scene, [Detection("mug", (44, 1, 59, 29), 0.9)], ["table", "cup", "mug"], "test")
    assert v2.version == 2 and v2.update == "semantic"
    assert all(a is b for a, b in zip(v2.segments, scene.segments)) and v2.depth is scene.depth
    assert "mug" in v2.labels and UNKNOWN in v2.labels


def test_trace_artifacts_are_one_bit_pngs_named_by_version(scene):
    desc, arts = scene.to_trace()
    json.dumps(desc)
    assert sorted(arts) == ["ssr_v1_region_1.png", "ssr_v1_region_2.png"]
    assert all(im.mode == "1" and im.size == (W, H) for im in arts.values())
    assert np.array_equal(np.asarray(arts["ssr_v1_region_2.png"]), scene.regions[1].mask)
    assert desc["regions"][1]["mask"] == "ssr_v1_region_2.png"


def test_after_edit_drops_removed_instances_and_adds_replacements(scene):
    left = scene.segments[1]
    after = scene.after_edit(left, "remove", "left cup")
    cup = after.region(1)
    where = after.regions[-1]  # a removal leaves an addressable region (issue 12)
    assert where.label == "where the left cup was" and where.source == "edited" and np.array_equal(where.mask, left)
    assert 1 not in cup.instances and 4 not in cup.instances  # the handle went with its cup
    assert after.version == scene.version and not (cup.mask & left).any()
    replaced = scene.after_edit(left, "replace", "vase")
    assert replaced.regions[-1].label == "vase" and replaced.regions[-1].source == "edited"
    assert np.array_equal(replaced.regions[-1].mask, left)


# ------------------------------------------------------------------------------------------ operators
def sel(label=None, ids=()):
    return node("select", label=label, region_ids=ids)


@pytest.mark.parametrize("op,expected", [("leftmost", 1), ("rightmost", 3), ("largest", 3), ("smallest", 2),
                                         ("topmost", 3), ("bottommost", 2), ("nearest", 3), ("farthest", 1)])
def test_superlatives_pick_one_instance(scene, op, expected):
    res = operators.evaluate(node(op, sel("cup")), scene)
    assert np.array_equal(res.mask & ~scene.segments[4], scene.segments[expected] & ~scene.segments[4])
    assert expected in res.instances


def test_nested_parts_are_folded_into_their_object(scene):
    res = operators.evaluate(node("leftmost", sel("cup")), scene)
    assert res.instances == [1, 4]  # the handle is inside the left cup: one part, not a separate "cup"
    assert res.description == "leftmost(select(label='cup'))"


def test_nth_union_intersection_relation(scene):
    s = scene.segments
    assert operators.evaluate(node("nth", sel("cup"), side="left", n=2), scene).instances == [2]
    assert operators.evaluate(node("nth", sel("cup"), side="right", n=1), scene).instances == [3]
    assert operators.evaluate(node("nth", sel("cup"), side="near", n=3), scene).instances == [1, 4]
    u = operators.evaluate(node("union", node("leftmost", sel("cup")), node("rightmost", sel("cup"))), scene)
    assert np.array_equal(u.mask, s[1] | s[3] | s[4])
    inter = operators.evaluate(node("intersection", sel(ids=[1]), node("leftmost", sel("cup"))), scene)
    assert np.array_equal(inter.mask, s[1] | s[4])
    assert operators.check(node("intersection", sel("cup"), sel("table")), scene) == "the intersection is empty"
    left_of = operators.evaluate(node("relation", sel("cup"), node("rightmost", sel("cup")), relation="left_of"), scene)
    assert left_of.instances == [1, 2, 4]
    above = operators.evaluate(node("relation", sel("cup"), sel(ids=[2]), relation="above"), scene)
    assert set(above.instances) == {1, 2, 3, 4}  # every cup stands above the table (region 2)
    near = operators.evaluate(node("relation", sel("cup"), node("leftmost", sel("cup")), relation="nearest_to"), scene)
    assert near.instances == [2]  # the middle cup is the closest to the left cup


def test_an_intersection_region_stays_its_pixels_in_later_selections_and_steps():
    # a cup standing half on a table: "the part of the cup on the table" is 10 x 10 = 100 pixels, not the
    # 200-pixel cup nor the 1200-pixel table, in every later use of the region
    table, cup = rect(0, 20, 60, 40), rect(20, 10, 30, 30)
    ssr = build_ssr([table, cup], [Detection("table", (0, 20, 60, 40), 0.9), Detection("cup", (20, 10, 30, 30), 0.9)],
                    None, queried_labels=["table", "cup"])
    part = operators.evaluate(node("intersection", sel("cup"), sel("table")), ssr)
    assert int(part.mask.sum()) == 100 and part.instances == []  # pixels of two segments, neither of them whole
    ssr2, rid = ssr.with_region(part.mask, "part of the cup on the table", part.description, part.instances)
    again = operators.evaluate(sel(ids=[rid]), ssr2)
    assert np.array_equal(again.mask, table & cup)  # selected by id: its own pixels, not cup | table
    # the next step of a plan, after an edit of the cup's upper 60 % (20 of the region's 100 pixels)
    after = ssr2.after_edit(rect(20, 10, 30, 22), "remove", "cup")
    assert np.array_equal(after.region(rid).mask, table & cup)
    # after an edit of the region itself it is gone (a region "where the cup part was" replaces it), never
    # rebuilt from the whole table
    edited = ssr2.after_edit(part.mask, "replace", "saucer")
    assert rid not in edited.region_ids and np.array_equal(edited.regions[-1].mask, table & cup)
    # an intersection that is exactly the segments its operands share still stands for them
    whole = operators.evaluate(node("intersection", sel("cup"), sel(ids=[ssr.regions[1].id])), ssr)
    assert whole.instances == [1] and np.array_equal(whole.mask, cup)


@pytest.mark.parametrize("tree,problem", [
    (node("select", label="sofa"), "no region is labelled 'sofa'"),
    (node("select", region_ids=[99]), "region id 99 does not exist"),
    (node("nth", sel("cup"), side="left", n=9), "only 3 candidates"),
    (node("leftmost"), "exactly 1 argument"),
    ({"op": "python", "code": "__import__('os').system('id')"}, "unknown operator 'python'"),
    ("os.system('id')", "must be an object"),
])
def test_invalid_trees_are_rejected_not_run(scene, tree, problem):
    assert problem in operators.check(tree, scene)


def test_spatial_schema_rejects_code_and_extra_fields():
    v = jsonschema.Draft202012Validator(SPATIAL_SCHEMA)
    good = {"target": "left cup", "operator": node("leftmost", sel("cup"))}
    assert not list(v.iter_errors(good))
    bad = {"target": "x", "operator": dict(node("leftmost", sel("cup")), code="import os")}
    assert list(v.iter_errors(bad))
    assert list(v.iter_errors({"target": "x", "operator": node("exec")}))
    for schema in (PLAN_SCHEMA, SUFFICIENCY_SCHEMA, SELECT_SCHEMA, ACTION_SCHEMA, SPATIAL_SCHEMA):
        jsonschema.Draft202012Validator.check_schema(schema)


# ------------------------------------------------------------------------------------------ validation
def test_answers_are_validated_against_the_ssr(scene):
    assert _check_select({"region_ids": [7], "reason": ""}, scene).startswith("region ids [7] do not exist")
    assert _check_select({"region_ids": [], "reason": ""}, scene)
    assert _check_select({"region_ids": [2], "reason": ""}, scene) is None
    # issue 12: labels searched already are a no-op update in the chain, not a rejected answer
    assert _check_sufficiency({"sufficient": False, "missing": "semantic", "new_labels": ["Cup"], "reason": ""}) is None
    assert _check_sufficiency({"sufficient": False, "missing": "semantic", "new_labels": [" "], "reason": ""})
    assert _check_sufficiency({"sufficient": True, "missing": "spatial", "new_labels": [], "reason": ""})
    assert _check_action({"action": "remove", "target": "cup", "new_object": None, "color": None,
                          "explicit": "x"}, "replace")
    assert _check_action({"action": "replace", "target": "cup", "new_object": " ", "color": None,
                          "explicit": "x"}, "replace") == '"replace" needs "new_object"'
    assert clean_text("a\x00b\n\tc " + "x" * 500, 10) == "a b c xxxx"


# ------------------------------------------------------------------------------------------ execution
def test_paste_back_is_byte_exact_outside_the_dilated_region():
    rng = np.random.default_rng(1)
    src = rng.integers(0, 256, size=(H, W, 3), dtype=np.uint8)
    region = rect(20, 10, 30, 20)
    for feather in (True, False):
        weights = paste_weights(region, 4, feather)
        box = plan_crop(dilate(region, 4), 32, 1.5)
        x0, y0, x1, y1 = box
        gen = rng.integers(0, 256, size=(y1 - y0, x1 - x0, 3), dtype=np.uint8)
        out = paste(src, gen, weights, box)
        band = dilate(region, 4)
        assert np.array_equal(out[~band], src[~band])
        assert np.array_equal(out[region], gen[region[y0:y1, x0:x1]])
        assert (weights[band] > 0).all() and (weights[~band] == 0).all()
        if feather:
            ring = band & ~region
            assert (weights[ring] < 1).all()


def test_crop_plan_and_model_size():
    region = rect(50, 30, 58, 38, h=100, w=200)
    x0, y0, x1, y1 = plan_crop(region, 64, 1.5)
    assert x0 <= 50 and y0 <= 30 and x1 >= 58 and y1 >= 38 and (x1 - x0, y1 - y0) == (64, 64)
    assert plan_crop(rect(0, 0, 200, 100, h=100, w=200), 512, 1.5) == (0, 0, 200, 100)
    assert model_size(200, 100, 512, 64) == (512, 256)
    assert model_size(300, 100, 512, 64)[0] == 512 and model_size(300, 100, 512, 64)[1] % 64 == 0


# ------------------------------------------------------------------------------------------ segmenter geometry
def test_amg_grid_crops_and_boxes():
    import torch

    g = point_grid(4)
    assert g.shape == (16, 2) and float(g.min()) == pytest.approx(0.125) and float(g.max()) == pytest.approx(0.875)
    crops = crop_boxes(120, 90, 1, 512 / 1500)
    assert crops[0] == ((0, 0, 120, 90), 0) and len(crops) == 5
    assert all(c[2] <= 120 and c[3] <= 90 for c, _ in crops)
    m = torch.zeros((2, 10, 12), dtype=torch.bool)
    m[0, 2:5, 3:8] = True
    assert masks_to_boxes(m).tolist() == [[3, 2, 7, 4], [0, 0, 0, 0]]


class FakeSam2:
    """A stand-in for `Sam2Model`'s decoder call: every prompt gives a 128x128 square in a 256x256
    low-res frame, with the predicted IoU `first` on the first (multimask) pass and `refined` on the
    m2m pass (a mask prompt given). It counts the masks the m2m pass is asked to refine."""

    def __init__(self, first: float, refined: float):
        self.first, self.refined, self.refined_masks = first, refined, 0

    @staticmethod
    def _square(n):
        import torch

        x = torch.full((n, 256, 256), -20.0)
        x[:, 64:192, 64:192] = 20.0
        return x

    def __call__(self, image_embeddings, input_points, input_labels, multimask_output=True, input_masks=None):
        import types

        import torch

        if input_masks is None:  # first pass: (1, points, 3, h, w)
            n = input_points.shape[1]
            return types.SimpleNamespace(pred_masks=self._square(n * 3).reshape(1, n, 3, 256, 256),
                                         iou_scores=torch.full((1, n, 3), self.first))
        n = input_points.shape[0]  # m2m pass: (masks, 1, 1, h, w)
        self.refined_masks += n
        return types.SimpleNamespace(pred_masks=self._square(n).reshape(n, 1, 1, 256, 256),
                                     iou_scores=torch.full((n, 1, 1), self.refined))


def fake_segmenter(model, **params):
    import torch

    from ciebench.cielr_ref.segmenters import AMGParams, Sam2Segmenter

    seg = Sam2Segmenter.__new__(Sam2Segmenter)  # no checkpoint: only the generator's logic runs
    seg.params = AMGParams(**params)
    seg.device, seg.dtype, seg.input_size, seg.model = "cpu", torch.float32, 1024, model
    return seg


@pytest.mark.parametrize("first, refined, kept", [(0.5, 0.95, 12), (0.95, 0.5, 0)])
def test_m2m_refines_every_first_pass_mask_and_filters_only_the_refined(first, refined, kept):
    """SAM 2's generator with use_m2m (sam2/automatic_mask_generator.py, _process_batch) refines all
    points x 3 first-pass masks and applies the IoU and stability filters to the refined masks only:
    2x2 points give 12 masks; a first pass below the IoU threshold (0.5 < 0.7) must not stop a
    confident refined mask (0.95, a crisp square: stability 1), and a confident first pass does not
    save a refined mask that fails."""
    import torch

    model = FakeSam2(first, refined)
    seg = fake_segmenter(model, points_per_side=2, crop_n_layers=0, use_m2m=True, stability_score_offset=0.7)
    masks, scores, boxes = seg._crop_masks([torch.zeros(1)], (0, 0, 64, 64), 0, 64, 64)
    assert model.refined_masks == 12
    assert len(masks) == kept and torch.allclose(scores, torch.full((kept,), refined))


def test_stability_at_the_threshold_is_kept():
    """SAM and SAM 2 keep stability >= stability_score_thresh. Logits: 3 pixels above +offset, 1 more
    above -offset only: stability 3/4 = 0.75, exactly the threshold."""
    import torch

    seg = fake_segmenter(None, stability_score_thresh=0.75, stability_score_offset=1.0, pred_iou_thresh=0.0)
    low = torch.full((1, 8, 8), -5.0)
    low[0, 0, :3] = 5.0
    low[0, 0, 3] = 0.5
    binary, scores = seg._filter(low, torch.tensor([0.9]), 8, 8)
    assert len(binary) == 1 and binary[0].sum() == 4  # thresholded at 0: the 3 + 1 positive pixels
    seg = fake_segmenter(None, stability_score_thresh=0.76, stability_score_offset=1.0, pred_iou_thresh=0.0)
    assert len(seg._filter(low, torch.tensor([0.9]), 8, 8)[0]) == 0


# -------------------------------------------------------------------------------------- components and settings
def test_builtin_components_follow_their_protocols():
    """Every built-in component has each method its protocol declares, with the same parameters in the
    same order (extra trailing parameters only with defaults)."""
    import inspect

    from ciebench.cielr_ref import components
    from ciebench.cielr_ref.depth import DepthEstimator
    from ciebench.cielr_ref.executor import InpaintExecutor
    from ciebench.cielr_ref.labeller import Owlv2Labeller
    from ciebench.cielr_ref.lama import LamaRemover
    from ciebench.cielr_ref.segmenters import Sam2Segmenter, SegmentAnythingSegmenter
    from ciebench.llm import LLMClient

    implementations = {components.Segmenter: (Sam2Segmenter, SegmentAnythingSegmenter),
                       components.Labeller: (Owlv2Labeller,), components.DepthModel: (DepthEstimator,),
                       components.Inpainter: (InpaintExecutor, LamaRemover), components.Reasoner: (LLMClient,)}
    methods = {components.Segmenter: ("segment", "describe"), components.Labeller: ("detect", "describe"),
               components.DepthModel: ("estimate", "describe"), components.Inpainter: ("run", "describe"),
               components.Reasoner: ("complete",)}
    for protocol, classes in implementations.items():
        for cls in classes:
            for name in methods[protocol]:
                declared = list(inspect.signature(getattr(protocol, name)).parameters.values())
                actual = list(inspect.signature(getattr(cls, name)).parameters.values())
                assert [p.name for p in actual[:len(declared)]] == [p.name for p in declared], (cls, name)
                assert all(p.default is not inspect.Parameter.empty for p in actual[len(declared):]), (cls, name)
    assert isinstance(getattr(LLMClient, "model_id"), property)


def test_the_chain_settings_are_the_configs_and_the_removal_prompt_is_the_back_ends():
    from ciebench.cielr_ref.editor import CIELREditor
    from ciebench.cielr_ref.reasoning import Settings

    options = dict(max_objects=7, max_steps=2, max_ssr_versions=1, min_overlap=0.25, merge_unknown=False,
                   negative_prompt="blurry", plan=False, ablation="no_update", feedback_retries=0,
                   max_regions_in_prompt=5, remove_prompt="empty room", remove_negative_prompt="chair")
    expected = Settings(max_objects=7, max_steps=2, max_ssr_versions=1, max_labels=64, min_overlap=0.25,
                        merge_unknown=False, remove_prompt="empty room", remove_negative_prompt="chair",
                        negative_prompt="blurry", plan=False, ablation="no_update", feedback_retries=0,
                        max_regions_in_prompt=5)
    assert CIELREditor(**options).settings() == expected
    lama = CIELREditor(**options, removal="lama").settings()
    assert (lama.remove_prompt, lama.remove_negative_prompt) == ("", "")
    whole = CIELREditor(**options, removal="sd-whole", sd_whole_prompt="white wall").settings()
    assert (whole.remove_prompt, whole.remove_negative_prompt) == ("white wall", "")
    with pytest.raises(dataclasses.FrozenInstanceError):
        expected.max_objects = 8  # a spec that decides results stays as built
