"""KRIS-Bench end to end on a generated KRIS_Bench folder with a scripted judge; the per-dimension means,
(s - 1) x 25 mapping and overall are checked against an independent computation."""
from __future__ import annotations

import json
import re

import pytest
from typer.testing import CliRunner

from ciebench.benchmarks import get_benchmark
from ciebench.benchmarks.kris import TASKS, materialise_rows
from ciebench.cli import app
from tests.support.fixtures_benchmarks import KRIS_FIELDS, KrisJudge, make_kris, write_prompt_file
from tests.support.llm_server import respond, serve_llm

runner = CliRunner()
VC, IF, VQ, KP = "consistency_score", "instruction_score", "quality_score", "knowledge_score"

TABLE = {
    "count_change/1": {VC: 5, IF: 4, VQ: 3},
    "count_change/2": {VC: 2, IF: 1, VQ: 5},
    "anomaly_correction/1": {VC: 4, IF: 4, VQ: 4},
    "viewpoint_change/1": {VC: 3, IF: 2, VQ: 5},
    "temporal_prediction/3": {VC: 1, IF: 3, VQ: 2},
    "multi-element_composition/1": {VC: 5, IF: 5, VQ: 5},
    "chemistry/1": {VC: 4, IF: 2, VQ: 3, KP: 1},
    "chemistry/2": {VC: 5, IF: 3, VQ: 4, KP: 5},
}
TYPES = {"count_change": "Factual Knowledge", "anomaly_correction": "Factual Knowledge",
         "viewpoint_change": "Factual Knowledge", "temporal_prediction": "Factual Knowledge",
         "multi-element_composition": "Procedural Knowledge", "chemistry": "Conceptual Knowledge"}


def expected(cases: dict) -> dict:
    """{group: (score on 0-100, {dim: mean 1-5})}: dims are averaged over a group's cases that have them;
    a group's score is the mean of its dimension means after (s - 1) * 25."""
    groups: dict[str, dict[str, list]] = {}
    for key, dims in cases.items():
        task = key.split("/")[0]
        for group in ("Overall", TYPES[task], task):
            for dim, value in dims.items():
                groups.setdefault(group, {}).setdefault(dim, []).append(value)
    out = {}
    for group, dims in groups.items():
        means = {d: sum(v) / len(v) for d, v in dims.items()}
        out[group] = (sum((m - 1) * 25 for m in means.values()) / len(means), means)
    return out


def _kris_run(tmp_path, monkeypatch):
    monkeypatch.setenv("CIEBENCH_CACHE", str(tmp_path / "cache"))
    _, colours = make_kris(tmp_path / "data")
    prompts = write_prompt_file(tmp_path / "kp", tuple(KRIS_FIELDS)).parent
    (prompts / "prompts.py").write_text((prompts / "utils.py").read_text())
    judge = KrisJudge(TABLE, colours)
    out = tmp_path / "run"
    with serve_llm() as server:
        server.on(then=respond(judge))
        cfg = tmp_path / "judge.json"
        cfg.write_text(json.dumps({"model": "scripted", "base_url": server.base_url, "api_key_env": None,
                                   "max_retries": 0}))
        result = runner.invoke(app, ["evaluate", "--benchmark", "kris", "--benchmark-root", str(tmp_path / "data"),
                                     "--editor", "tests.support.fixtures_benchmarks:StampEditor", "--out", str(out),
                                     "--judge", str(cfg), "--judge-prompts", str(prompts)])
    assert result.exit_code == 0, result.output
    return judge, out, result.output


def test_kris_end_to_end(tmp_path, monkeypatch):
    judge, out, _ = _kris_run(tmp_path, monkeypatch)
    summary = json.loads((out / "summary.json").read_text())
    exp = expected(TABLE)
    assert summary["headline"]["name"] == "Overall Score"
    assert summary["headline"]["value"] == pytest.approx(exp["Overall"][0])
    for row in summary["official"]:
        score, means = exp[row["-"]]
        assert row["Score"] == pytest.approx(score), row["-"]
        assert row["Visual Consistency (1-5)"] == pytest.approx(means[VC])
        assert row["Knowledge Plausibility"] == (pytest.approx((means[KP] - 1) * 25) if KP in means else None)
    assert summary["judge"]["prompts"]["verified"] is False  # the unpinned prompt file is recorded as such
    # ciebench's region metrics (ours): cases without gt_img are not applicable, never a number
    lines = (out / "region_metrics.jsonl").read_text().splitlines()
    region = {f"{r['output_folder']}/{r['id']}": r for r in map(json.loads, lines)}
    assert region["count_change/1"]["status"] == "not_applicable" and "psnr" not in region["count_change/1"]
    assert "no ground-truth image" in region["count_change/1"]["reason"]
    assert region["viewpoint_change/1"]["status"] == "ok"
    # temporal: gt_img is the missing frame of several inputs, no single source to preserve
    assert region["temporal_prediction/3"]["status"] == "not_applicable"
    assert "several input images" in region["temporal_prediction/3"]["reason"]
    assert summary["ours"]["region"]["status_counts"] == {"not_applicable": 7, "ok": 1}
    seen = {(c, p): (n, t) for c, p, n, t in judge.seen}
    # per-family judge inputs
    assert seen[("viewpoint_change/1", "prompt_view_instruction_following")][0] == 3  # source, output, ground truth
    assert seen[("temporal_prediction/3", "prompt_consist_temporal")][0] == 4  # 3 frames + the prediction
    assert "N=<3>" in seen[("temporal_prediction/3", "prompt_instruction_temporal")][1]
    assert seen[("multi-element_composition/1", "prompt_instruction_multi")][0] == 4
    assert "explanation=<the clock has 13 hours>" in seen[("anomaly_correction/1", "prompt_abnormal_instruction_following")][1]
    assert "explanation=<iron rusts>" in seen[("chemistry/1", "prompt_dual_evaluation")][1]
    assert seen[("count_change/1", "prompt_quality")][0] == 1
    # the temporal judge sees the prediction at frame 3's place: frames 1, 2, the prediction, frame 4
    # (the test editor returns frame 1, so images 0 and 2 share a colour and 1 and 3 do not)
    request = next(r for p, r in judge.requests if p == "prompt_consist_temporal")
    reds = [round(sum(px[0] for px in im.convert("RGB").getdata()) / (im.width * im.height)) for im in request.images()]
    assert reds[0] == reds[2] and reds[1] != reds[0] and reds[3] != reds[0]


def _parts(request) -> list[str]:
    """The message content as the judge server receives it: text parts by their text, images as <img>."""
    return [p["text"] if p["type"] == "text" else "<img>" for p in request.body["messages"][-1]["content"]]


def test_kris_judge_messages_follow_the_official_layout(tmp_path, monkeypatch):
    """Each call's message, in order, as the official scripts (mercurystraw/Kris_Bench@2114fec) build it:
    the prompt text first, then every image after its label; the temporal script's images JPEG-encoded
    at quality 85, the others' the files' own pixels."""
    import numpy as np
    from PIL import Image

    judge, out, _ = _kris_run(tmp_path, monkeypatch)
    sent = {}
    for prompt, request in judge.requests:
        match = re.search(r"case (\S+?)>", request.text)
        case = match.group(1) if match else judge.colours.case_of(request.images()[-1])
        sent[(case, prompt)] = request
    img = "<img>"
    original, edited = "This is the original image:", "This is the edited image:"
    expected = {
        # metrics_common.py / metrics_knowledge.py: evaluate_with_gpt(prompt, original, edited)
        ("count_change/1", "prompt_consist"): [original, img, edited, img],
        ("count_change/1", "prompt_instruction_following"): [original, img, edited, img],
        ("count_change/1", "prompt_quality"): [edited, img],  # no original image: its label is left out too
        ("anomaly_correction/1", "prompt_abnormal_instruction_following"): [original, img, edited, img],
        ("chemistry/1", "prompt_dual_evaluation"): [original, img, edited, img],
        ("chemistry/1", "prompt_quality"): [edited, img],
        # metrics_view_change.py: the ground truth third
        ("viewpoint_change/1", "prompt_view_instruction_following"):
            [original, img, edited, img, "This is the ground truth image:", img],
        # metrics_temporal_prediction.py: frames 1, 2, 4 given, frame 3 predicted, in frame order
        ("temporal_prediction/3", "prompt_consist_temporal"):
            ["Frame 1 (Reference):", img, "Frame 2 (Reference):", img, "Frame 3 (Generated):", img,
             "Frame 4 (Reference):", img],
        ("temporal_prediction/3", "prompt_quality"): ["This is the image to evaluate:", img],
        # metrics_multi_element.py
        ("multi-element_composition/1", "prompt_instruction_multi"):
            ["Reference Image 1:", img, "Reference Image 2:", img, "Reference Image 3:", img, "Predicted Image:", img],
        ("multi-element_composition/1", "prompt_quality"): ["This is the image to evaluate:", img],
    }
    for key, tail in expected.items():
        parts = _parts(sent[key])
        assert parts[0].startswith(f"PROMPT:{key[1]}"), (key, parts)  # the prompt text comes first
        assert parts[1:] == tail, key
    # pixels: the temporal script re-encodes every image (its quality call's too) as JPEG quality 85
    def jpeg85(path):
        import io

        buf = io.BytesIO()
        Image.open(path).convert("RGB").save(buf, format="JPEG", quality=85)
        return np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))

    def received(request):
        return [np.asarray(im.convert("RGB")) for im in request.images()]

    output = out / "images" / "temporal_prediction" / "3.png"
    assert np.array_equal(received(sent[("temporal_prediction/3", "prompt_quality")])[0], jpeg85(output))
    frames = tmp_path / "data" / "KRIS_Bench" / "temporal_prediction"
    consist = received(sent[("temporal_prediction/3", "prompt_consist_temporal")])
    for got, path in zip(consist, [frames / "3-1.png", frames / "3-2.png", output, frames / "3-4.png"]):
        assert np.array_equal(got, jpeg85(path))
    # the other scripts send the files as they are
    common = received(sent[("count_change/1", "prompt_consist")])
    assert np.array_equal(common[1], np.asarray(Image.open(out / "images" / "count_change" / "1.png").convert("RGB")))


def test_kris_rows_materialise_as_the_official_layout(tmp_path):
    """The hub path: rows as the mirror holds them (images embedded) become the folder layout."""
    from PIL import Image

    rows = [{"category": "chemistry", "image_id": "7", "ori_images": [Image.new("RGB", (8, 8), (1, 2, 3))],
             "ori_img": ["7.png"], "ins_en": "rust it", "explain_en": "iron oxide", "gt_image": None},
            {"category": "temporal_prediction", "image_id": "2", "ori_img": ["2-1.png", "2-2.png", "2-3.png"],
             "ori_images": [Image.new("RGB", (8, 8), (i, i, i)) for i in range(3)], "ins_en": "predict frame 4",
             "explain_en": "", "gt_image": Image.new("RGB", (8, 8)), "gt_img": "2-4.png"}]
    root = materialise_rows(rows, tmp_path / "kris")
    for task in TASKS:  # the loader requires every task folder: the others, without cases
        if not (root / task).is_dir():
            (root / task).mkdir()
            (root / task / "annotation.json").write_text("{}")
    cases = list(get_benchmark("kris").cases(root))
    assert [(c.category, c.id, len(c.images)) for c in cases] == [("temporal_prediction", "2", 3), ("chemistry", "7", 1)]
    assert cases[1].explanation == "iron oxide" and cases[0].ground_truth_image.name == "2-4.png"
    assert Image.open(cases[0].images[2]).getpixel((0, 0)) == (2, 2, 2)


def test_kris_copy_without_a_task_folder_is_refused_naming_it(tmp_path, monkeypatch):
    """A local copy that lost a task folder (the release has 20: mercurystraw/Kris_Bench KRIS_Bench/*/annotation.json)
    would give a smaller benchmark (its Conceptual Knowledge
    row gone) with no warning: the loader refuses it, naming the missing task."""
    import shutil

    monkeypatch.setenv("CIEBENCH_CACHE", str(tmp_path / "cache"))
    make_kris(tmp_path / "data")
    shutil.rmtree(tmp_path / "data" / "KRIS_Bench" / "chemistry")
    with pytest.raises(FileNotFoundError, match=r"1 of the 20 task folders.*chemistry"):
        next(get_benchmark("kris").cases(tmp_path / "data"))
    result = runner.invoke(app, ["evaluate", "--benchmark", "kris", "--benchmark-root", str(tmp_path / "data"),
                                 "--editor", "identity", "--out", str(tmp_path / "run"), "--metrics", "none"])
    assert result.exit_code == 3 and "chemistry" in result.output, result.output


def test_kris_run_smaller_than_the_release_is_marked_incomplete(tmp_path, monkeypatch):
    """8 cases of KRIS-Bench's 1267 (the paper's total): the summary records the expected number and
    the headline says it is incomplete; the leaderboard marks the run partial."""
    _, out, output = _kris_run(tmp_path, monkeypatch)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["ours"]["cases"] == 8 and summary["ours"]["expected_cases"] == 1267
    assert "8 of the 1267 cases" in summary["headline"]["incomplete"]
    assert "warning: incomplete headline" in output
    board = tmp_path / "board"
    lb = runner.invoke(app, ["leaderboard", str(out), "--out", str(board)])
    assert lb.exit_code == 0, lb.output
    assert "partial: the run's headline covers fewer cases" in (board / "benchmarks.md").read_text()
    assert "True" in (board / "benchmark__kris.csv").read_text().splitlines()[1]


def test_kris_replies_are_read_by_the_parser_of_their_familys_script(tmp_path):
    """mercurystraw/Kris_Bench@2114fec: metrics_common.py reads "consistency score 4" (colon optional) before
    the lone-digit fallback; metrics_temporal_prediction.py and metrics_multi_element.py call the same
    extractor without that pattern; metrics_knowledge.py needs the colon, stops at a JSON null, and reads the
    dual reply's scores only from its JSON object or from "instruction score: n" / "knowledge score: n".
    Expected values are what those scripts return for each reply."""
    make_kris(tmp_path)
    bench = get_benchmark("kris")
    cases = {case.category: case for case in bench.cases(tmp_path / "KRIS_Bench")}

    def read(task, dimension, reply):
        calls = [c for c in bench.judge_calls(cases[task], tmp_path / "out.png") if c.dimension == dimension]
        return bench.parse_reply(calls[0], reply)

    multi = "Reference Image 1 and Reference Image 2 are both represented.\nConsistency score: 4"
    assert read("multi-element_composition", "consistency_score", multi) == {"consistency_score": 1}
    assert read("count_change", "consistency_score", multi) == {"consistency_score": 4}
    temporal = "Frame 3 continues the motion correctly. Instruction score: 5"
    assert read("temporal_prediction", "instruction_score", temporal) == {"instruction_score": 3}
    assert read("temporal_prediction", "quality_score", "Looks 2 good. quality score: 5") == {"quality_score": 2}
    knowledge = [c for c in cases if c in ("abstract_reasoning", "mathematics", "practical_knowledge", "medicine",
                                           "rule-based_reasoning", "biology", "geography", "chemistry",
                                           "humanities", "physics")][0]
    no_colon = "Consistency score 3 - most of the scene is kept (about 4/5 of the objects)."
    assert read(knowledge, "consistency_score", no_colon) == {"consistency_score": 4}
    assert read("count_change", "consistency_score", no_colon) == {"consistency_score": 3}
    null = '{"consistency_score": null, "reasoning": "n/a"} consistency_score: 2'
    assert read(knowledge, "consistency_score", null) == {"consistency_score": None}
    assert read("count_change", "consistency_score", null) == {"consistency_score": 2}
    # the dual reply: an object that does not parse is passed over for the colon patterns, and nothing else
    dual = '{"instruction_score": 4, "knowledge_score": 3,} Instruction score: 5, Knowledge score: 2'
    assert read(knowledge, "dual", dual) == {"instruction_score": 5, "knowledge_score": 2}
    assert read(knowledge, "dual", '{"instruction_score": 4, "knowledge_score": null}') == \
        {"instruction_score": 4, "knowledge_score": None}
    assert read(knowledge, "dual", "instruction 4/5, knowledge 3/5") == {"instruction_score": None, "knowledge_score": None}


def test_verdicts_an_older_ciebench_parsed_are_read_again_from_their_replies():
    """A verdicts.jsonl row written before each family got its script's parser (no `reply_parsing`) holds
    metrics_common's reading; aggregation (resume, `score --verdicts`) reads its stored replies again, so one
    run never mixes two readings. One multi-element case: VC 1 (the script's lone-digit fallback), IF 4,
    VQ 4 -> Overall ((1-1) + (4-1) + (4-1)) * 25 / 3 = 50.0, not the 75.0 its old dims give."""
    from ciebench.benchmarks.run import aggregate

    bench = get_benchmark("kris")
    task = "multi-element_composition"
    old = {"id": "1", "category": task, "categories": [task], "output_folder": task, "subtask": None,
           "task_type": None, "language": None, "flags": [], "status": "ok", "error": None,
           "dims": {"consistency_score": 4, "instruction_score": 4, "quality_score": 4},
           "replies": {"consistency_score": "Reference Image 1 and Reference Image 2 are both represented.\n"
                                            "Consistency score: 4",
                       "instruction_score": "Instruction score: 4", "quality_score": "quality score: 4"}}
    assert aggregate(bench, [old])["headline"]["value"] == 50.0
    # a row of today's parsers is taken as it is (its dims are what they read)
    assert aggregate(bench, [{**old, "reply_parsing": bench.reply_parsing}])["headline"]["value"] == 75.0
    # a reply that now yields no score makes the case a judge error, left out as the scripts leave it
    unreadable = {**old, "replies": {**old["replies"], "consistency_score": "Looks consistent."}}
    assert aggregate(bench, [unreadable])["headline"]["value"] is None
