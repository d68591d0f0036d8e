"""The CIELR chain fails soft (issue 12): rejected answers are asked again with the reason and the valid
values, a repeated label / an inexpressible or empty spatial request ends in a selection, long labels
run, every SSR stage sees the user's instruction, and prompts stay bounded. Tiny real models from the
offline hub cache, the reasoning LLM a scripted HTTP server on 127.0.0.1."""
from __future__ import annotations

import json
import re

import numpy as np
import pytest

from ciebench.cielr_ref.editor import CIELREditor
from ciebench.cielr_ref.reasoning import regions_prompt
from ciebench.cielr_ref.ssr import Detection, build_ssr
from ciebench.editor import EditRequest
from tests.support.fixtures_cielr import (OWL_ID, action, node, publish_cielr_models, regions_in, scene_image, stage_of, sufficient,
                                  tiny_editor_options)
from tests.support.llm_server import respond, serve_llm

pytestmark = pytest.mark.usefixtures("one_torch_thread")
OBJECTS = ["red square", "blue square", "wall"]
REJECTED = "YOUR PREVIOUS ANSWER WAS REJECTED"


@pytest.fixture(scope="module")
def server():
    with serve_llm() as s:
        yield s


@pytest.fixture(scope="module")
def editor(server):
    publish_cielr_models()
    ed = CIELREditor(**tiny_editor_options(server.base_url, concurrency=4))
    yield ed
    ed.close()


def script(**stages):
    """Scripted answers per stage: objects, a one-step plan copying the instruction, then the given
    functions (regions, request) -> answer; defaults: sufficient, smallest region, remove."""
    def answer(req):
        stage = stage_of(req.text)
        if stage == "objects":
            return stages.get("objects", lambda r, q: {"objects": OBJECTS})(None, req)
        if stage == "plan":
            instruction = req.text.split("<<<INSTRUCTION\n", 1)[1].split("\nINSTRUCTION>>>", 1)[0]
            return {"steps": [{"instruction": f"STEP-OF {instruction}", "edit_type": "remove"}]}
        defaults = {"sufficiency": lambda r, q: sufficient(),
                    "select": lambda r, q: {"region_ids": [min(r, key=lambda x: x["area"])["id"]], "reason": ""},
                    "action": lambda r, q: action("remove", "square")}
        fn = stages.get(stage, defaults.get(stage))
        return fn(regions_in(req.text), req) if fn else "unscripted"
    return answer


def run(server, editor, answer, instruction="MARK what is red?", sample="s"):
    server.reset(rules=True)
    server.on(then=respond(answer))
    res = editor.edit([EditRequest(sample, scene_image(), instruction, seed=0)])[0]
    trace = dict(res.trace)
    trace.pop("artifacts")
    json.dumps(trace)
    return res, trace


def test_invalid_region_id_succeeds_on_the_retry_that_carries_the_valid_ids(server, editor):
    def select(regions, req):
        if REJECTED not in req.text:
            return {"region_ids": [999], "reason": "a guess"}
        # this model can only answer once it is told which ids exist
        valid = json.loads(re.search(r"Valid region ids: (\[[0-9, ]*\])", req.text).group(1))
        return {"region_ids": [valid[0]], "reason": "from the feedback"}

    res, trace = run(server, editor, script(select=select))
    assert res.status == "ok", res.error
    sel = [e for e in trace["exchanges"] if e["stage"] == "select"]
    assert [e["status"] for e in sel] == ["rejected", "ok"]
    assert "999" in sel[0]["rejected"] and REJECTED not in sel[0]["prompt"]
    v1_ids = [r["id"] for r in trace["ssr_versions"][0]["regions"]]
    shown = json.loads(re.search(r"Valid region ids: (\[[0-9, ]*\])", sel[1]["prompt"]).group(1))
    assert shown == v1_ids  # all regions are listed at this size, so all ids are offered
    assert trace["steps"][0]["region_ids"] == [v1_ids[0]]
    assert trace["model_calls"]["feedback_retries"] == 1


def test_repeated_label_is_a_noop_update_then_selection(server, editor):
    lab_before = editor.labeller.stats.images
    res, trace = run(server, editor, script(sufficiency=lambda r, q: {
        "sufficient": False, "missing": "semantic", "new_labels": ["Wall", "red square"], "reason": "look again"}))
    assert res.status == "ok", res.error
    upd = trace["steps"][0]["updates"]
    assert upd == [{"kind": "semantic", "new_labels": [], "repeated": ["Wall", "red square"], "applied": False,
                    "fallback": "selection on the current SSR"}]
    assert editor.labeller.stats.images - lab_before == 1 and len(trace["ssr_versions"]) == 1
    assert [e["stage"] for e in trace["exchanges"]][-2:] == ["select", "action"]


SPATIAL = lambda r, q: {"sufficient": False, "missing": "spatial", "new_labels": [], "reason": "which one"}  # noqa: E731


def empty_relation(regions, _req):
    """"the rightmost region, if it is left of the leftmost one": a valid tree that selects nothing."""
    right = max(regions, key=lambda r: r["centroid"][0])
    left = min(regions, key=lambda r: r["centroid"][0])
    assert right["centroid"][0] > left["centroid"][0]
    return {"target": "x", "operator": node("relation", node("select", region_ids=[right["id"]]),
                                            node("select", region_ids=[left["id"]]), relation="left_of")}


def unsupported_relation(regions, _req):
    # a relation the schema does not know: the client rejects it (schema) on every attempt
    return {"target": "x", "operator": node("relation", node("select", region_ids=[regions[0]["id"]]),
                                            node("select", region_ids=[regions[1]["id"]]), relation="between")}


@pytest.mark.parametrize("spatial,why", [(unsupported_relation, "schema"), (empty_relation, "empty")])
def test_inexpressible_or_empty_spatial_request_falls_back_to_selection(server, editor, spatial, why):
    res, trace = run(server, editor, script(sufficiency=SPATIAL, spatial=spatial))
    assert res.status == "ok", res.error
    upd = trace["steps"][0]["updates"]
    assert len(upd) == 1 and upd[0]["kind"] == "spatial" and upd[0]["applied"] is False
    assert upd[0]["fallback"] == "selection on the current SSR"
    assert len(trace["ssr_versions"]) == 1 and trace["steps"][0]["ssr_version"] == 1
    spatial = [e for e in trace["exchanges"] if e["stage"] == "spatial"]
    if why == "empty":
        assert len(spatial) == 1 + editor.config.feedback_retries
        assert spatial[0]["rejected"] == "no candidate is left of the reference"
        assert "Allowed operators:" in spatial[1]["prompt"] and "relations:" in spatial[1]["prompt"]
    else:
        assert len(spatial) == 1 and spatial[0]["status"] == "error"
        assert spatial[0]["attempts"] == editor.config.llm.max_retries + 1
    assert [e["stage"] for e in trace["exchanges"]][-2:] == ["select", "action"]


def test_a_40_token_label_runs_with_the_query_cut_and_the_label_kept(server, editor):
    from transformers import AutoTokenizer

    long_label = " ".join(["big red shiny old"] * 10)
    tok = AutoTokenizer.from_pretrained(OWL_ID)
    assert len(tok(long_label, add_special_tokens=False)["input_ids"]) == 40  # far above OWLv2's 16

    res, trace = run(server, editor, script(objects=lambda r, q: {"objects": [long_label, *OBJECTS]}))
    assert res.status == "ok", res.error
    assert trace["ssr_versions"][0]["queried_labels"][0] == long_label  # the full label is kept
    sent = trace["labeller_truncated_queries"][long_label]
    assert len(tok(sent)["input_ids"]) <= 16 and long_label.startswith(sent.split(" ")[0])
    assert set(trace["labeller_truncated_queries"]) == {long_label}


def test_the_original_instruction_reaches_every_ssr_stage(server, editor):
    instruction = "MARK-ORIG Which fruit is rich in vitamin C? Take it away."
    calls = {"suff": 0}

    def suff(regions, req):  # first a spatial update, then sufficient
        calls["suff"] += 1
        return SPATIAL(regions, req) if calls["suff"] == 1 else sufficient()

    def spatial(regions, req):
        labelled = [r for r in regions if r.get("source") is None]
        return {"target": "leftmost", "operator": node("leftmost", node("select", region_ids=[labelled[0]["id"]]))}

    res, trace = run(server, editor, script(sufficiency=suff, spatial=spatial), instruction=instruction)
    assert res.status == "ok", res.error
    by_stage = {}
    for e in trace["exchanges"]:
        by_stage.setdefault(e["stage"], []).append(e["prompt"])
    assert {"sufficiency", "spatial", "select", "action"} <= set(by_stage)
    for stage in ("sufficiency", "spatial", "select", "action"):
        for prompt in by_stage[stage]:
            assert instruction in prompt, stage
            assert f"STEP-OF {instruction}" in prompt, stage  # and the plan's step, as planning is on


def test_prompt_lists_at_most_max_regions_largest_first():
    h, w = 20, 30
    segments = []
    for k in range(6):  # six disjoint strips of growing width: areas 1..6 columns of 5
        m = np.zeros((h, w), dtype=bool)
        m[:, 5 * k:5 * k + k + 1] = True
        segments.append(m)
    ssr = build_ssr(segments, [Detection("strip", (0, 0, 1, 1), 0.9)], None, merge_unknown=False)
    text, ids = regions_prompt(ssr, 2)
    rows = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    areas = {r.id: r.geometry.area for r in ssr.regions}
    largest = sorted(areas, key=lambda i: -areas[i])[:2]
    assert sorted(ids) == sorted(largest) and [r["id"] for r in rows] == sorted(largest)
    assert "and 4 smaller regions not listed" in text
    full, all_ids = regions_prompt(ssr, 40)
    assert all_ids == ssr.region_ids and "not listed" not in full
