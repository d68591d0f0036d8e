"""RISEBench and RISEBench++ end to end on generated fixture folders in the official layouts, with a
scripted judge server; the official numbers are checked against an independent implementation of
the published formula written here."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from ciebench.assets import PinnedAsset
from ciebench.benchmarks import get_benchmark
from ciebench.benchmarks import prompts as prompt_module
from ciebench.benchmarks.rise import RiseBench
from ciebench.cli import app
from ciebench.editor import EditResult
from ciebench.registry import RegistryError
from ciebench.status import Status
from tests.support.fixtures_benchmarks import (PLUS_PROMPT_NAMES, V1_PROMPT_NAMES, ScriptedJudge, StampEditor, make_rise_plus, make_rise_v1, write_prompt_file)
from tests.support.llm_server import reply, respond, serve_llm

runner = CliRunner()
AC, IR, VP = "ApprConsistency", "Reasoning", "VisualPlausibility"


# ------------------------------------------------------------------ the independent reference formula
def ref_case(raw: dict, logical: bool, cf: bool) -> tuple[float | None, int, dict]:
    """Score (1-5), complete (0/1) and the mapped dimensions of one case, from the judge's raw answers
    (logical: 0/1 answers mapped to 1/5). Written from the published rules, not from the code."""
    if logical:
        dims = {AC: 5 if raw[AC] >= 1 else 1, IR: 5 if raw[IR] >= 1 else 1}
        s = 0.3 * dims[AC] + 0.7 * dims[IR]
        complete = dims[AC] == 5 and dims[IR] == 5
    elif cf:
        dims = {IR: raw[IR], VP: raw[VP]}
        s = 0.8 * dims[IR] + 0.2 * dims[VP]
        complete = dims[IR] == 5 and dims[VP] == 5
    else:
        dims = {AC: raw[AC], IR: raw[IR], VP: raw[VP]}
        s = 0.3 * dims[AC] + 0.5 * dims[IR] + 0.2 * dims[VP]
        complete = dims[AC] == 5 and dims[IR] == 5 and dims[VP] == 5
    if dims[IR] == 1:
        s = s / 2 if s / 2 > 1 else 1.0
    return s, int(complete), dims


def ref_summary(cases: list[tuple[str, str, dict, bool, bool]]) -> dict:
    """cases: (id, group label, raw answers or None for a missing output, logical, cf) ->
    {label: (mean score, accuracy)} plus 'Overall', with missing outputs at the minimum."""
    per: dict[str, list] = {}
    for _id, label, raw, logical, cf in cases:
        if raw is None:
            raw = {AC: 0, IR: 0} if logical else {AC: 1, IR: 1, VP: 1}
        s, c, _ = ref_case(raw, logical, cf)
        for key in ("Overall", label):
            per.setdefault(key, []).append((s, c))
    return {k: (sum(s for s, _ in v) / len(v), sum(c for _, c in v) / len(v)) for k, v in per.items()}


def row(table: list[dict], label: str) -> dict:
    return next(r for r in table if r["-"] == label)


# --------------------------------------------------------------------------------------- fixtures
@pytest.fixture()
def v1_prompts(tmp_path, monkeypatch):
    """A stand-in v1 prompt file served from file://, pinned by its own sha256."""
    path = write_prompt_file(tmp_path / "v1prompts", V1_PROMPT_NAMES)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    monkeypatch.setenv("CIEBENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(RiseBench, "prompts", PinnedAsset(name="risebench/utils.py", url=path.as_uri(),
                                                          sha256=digest, source="stand-in", filename="utils.py"))
    prompt_module._load.cache_clear()
    return path


def judge_file(tmp_path: Path, server) -> Path:
    path = tmp_path / "judge.json"
    path.write_text(json.dumps({"model": "scripted", "base_url": server.base_url, "api_key_env": None,
                                "max_retries": 0, "concurrency": 1}))
    return path


V1_RAW = {  # the judge's answers per case (logical cases answer 0/1)
    "temporal_reasoning_1": {AC: 5, IR: 5, VP: 5},      # all 5: complete
    "temporal_reasoning_2": {AC: 2, IR: 4, VP: 3},      # consistency-free: AC never asked
    "causal_reasoning_1": {AC: 4, IR: 1, VP: 5},        # IR = 1: halved (0.3*4+0.5+1 = 2.7 -> 1.35)
    "spatial_reasoning_1": {AC: 3, IR: 1, VP: 1},       # halved below 1 -> 1
    "spatial_reasoning_2": {AC: 5, IR: 3, VP: 4},       # no flag: the full formula
    "logical_reasoning_1": {AC: 1, IR: 1},
    "logical_reasoning_2": {AC: 1, IR: 0},              # IR maps to 1: halved
    "logical_reasoning_3": {AC: 0, IR: 1},
}


def v1_expected(items, missing=()):
    cases = []
    for it in items:
        logical = it["category"] == "logical_reasoning"
        cf = it.get("consistency_free") is True
        label = {"temporal_reasoning": "Temporal", "causal_reasoning": "Causal", "spatial_reasoning": "Spatial",
                 "logical_reasoning": "Logical"}[it["category"]]
        cases.append((it["index"], label, None if it["index"] in missing else V1_RAW[it["index"]], logical, cf))
    return ref_summary(cases)


# ------------------------------------------------------------------------------------------ tests
def test_registry_lists_benchmarks_and_suggests_names():
    result = runner.invoke(app, ["benchmarks"])
    assert result.exit_code == 0, result.output
    for name in ("ciebench", "reason-edit", "risebench", "risebench-plus", "kris"):
        assert f"\n{name} " in "\n" + result.output
    with pytest.raises(RegistryError, match="risebench-plus"):
        get_benchmark("risebench-pluss")


def test_prompt_file_is_parsed_not_executed(tmp_path):
    path = write_prompt_file(tmp_path, ("prompt_consist", "prompt_generation"))
    found = prompt_module.extract_string_constants(path.read_text())
    assert set(found) == {"prompt_consist", "prompt_generation"}
    text = prompt_module.fill(found["prompt_consist"], {"instruct": "x"}, "t")
    assert text == "PROMPT:prompt_consist instruct=<x> literal {braces}"
    with pytest.raises(prompt_module.PromptFileError, match="unsupported field"):
        prompt_module.fill("{instruct.__class__}", {"instruct": "x"}, "t")
    with pytest.raises(prompt_module.PromptFileError, match="needs 'reference'"):
        prompt_module.fill("{reference}", {"instruct": "x"}, "t")


def test_risebench_v1_identity_end_to_end_and_resume(tmp_path, v1_prompts):
    root = tmp_path / "rise"
    items, colours = make_rise_v1(root)
    judge = ScriptedJudge(V1_RAW, colours)
    out = tmp_path / "run"
    with serve_llm() as server:
        server.on(then=respond(judge))
        args = ["evaluate", "--benchmark", "risebench", "--benchmark-root", str(root), "--editor", "identity",
                "--out", str(out), "--judge", str(judge_file(tmp_path, server))]
        result = runner.invoke(app, args)
        assert result.exit_code == 0, result.output
        summary = json.loads((out / "summary.json").read_text())
        expected = v1_expected(items)
        assert summary["headline"]["name"] == "Overall Accuracy"
        assert summary["headline"]["value"] == pytest.approx(expected["Overall"][1])
        for label, (score, acc) in expected.items():
            r = row(summary["official"], label)
            assert r["Score-Origin"] == pytest.approx(score) and r["Accuracy"] == pytest.approx(acc), label
            assert r["Score-Percentage"] == pytest.approx(25 * (score - 1))
        # consistency-free: no AC question; the flag set to false and a missing flag both ask AC
        asked = {(case, p) for case, p, _, _ in judge.seen}
        assert not any(c == "temporal_reasoning_2" and p == "prompt_consist" for c, p in asked)
        assert ("causal_reasoning_1", "prompt_consist") in asked and ("spatial_reasoning_2", "prompt_spatial_cons") in asked
        # the reference image replaces the source (spatial AC/IR with reference_img get 2 images)
        assert ("spatial_reasoning_1", "prompt_spatial_ref_img", 2) in {(c, p, n) for c, p, n, _ in judge.seen}
        # judge inputs: JPEG-decoded, never enlarged
        for req in server.requests:
            for im in req.images():
                assert max(im.size) <= 768 and im.size == (40, 32)
        assert (out / "official_scores.csv").read_text().startswith("-,Score-Origin,Score-Percentage,Accuracy")
        assert (out / "images" / "logical_reasoning" / "logical_reasoning_3.png").is_file()
        n_requests = server.count
        # resume: nothing is edited or judged again
        again = runner.invoke(app, args)
        assert again.exit_code == 0, again.output
        assert server.count == n_requests
        assert json.loads((out / "summary.json").read_text())["official"] == summary["official"]


def test_risebench_score_predictions_missing_output_and_verdicts(tmp_path, v1_prompts):
    root = tmp_path / "rise"
    items, colours = make_rise_v1(root)
    model = tmp_path / "outputs" / "model-x"
    for it in items:  # the official output layout, as jpg, one output missing
        if it["index"] == "logical_reasoning_3":
            continue
        dest = model / "images" / it["category"] / f"{it['index']}.jpg"
        dest.parent.mkdir(parents=True, exist_ok=True)
        Image.open(root / it["image"]).convert("RGB").save(dest, quality=100)
    judge = ScriptedJudge(V1_RAW, colours)
    with serve_llm() as server:
        server.on(then=respond(judge))
        out = tmp_path / "scored"
        result = runner.invoke(app, ["score", "--benchmark", "risebench", "--benchmark-root", str(root),
                                     "--predictions", str(model), "--out", str(out),
                                     "--judge", str(judge_file(tmp_path, server))])
        assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    expected = v1_expected(items, missing={"logical_reasoning_3"})
    assert summary["ours"]["status_counts"] == {"missing": 1, "ok": 7}
    assert row(summary["official"], "Overall")["Score-Origin"] == pytest.approx(expected["Overall"][0])
    assert row(summary["official"], "Logical")["Accuracy"] == pytest.approx(expected["Logical"][1])
    # re-aggregation from the verdict file alone reproduces every official row
    again = tmp_path / "again"
    result = runner.invoke(app, ["score", "--benchmark", "risebench", "--verdicts", str(out / "verdicts.jsonl"),
                                 "--out", str(again)])
    assert result.exit_code == 0, result.output
    assert json.loads((again / "summary.json").read_text())["official"] == summary["official"]
    # each run's summary accounts for its time per stage, as a dataset run's does
    assert set(summary["timing"]["stages"]) == {"index", "load", "judge", "summary"}
    assert set(json.loads((again / "summary.json").read_text())["timing"]["stages"]) == {"read", "summary"}


def test_a_limit_score_into_a_full_scores_folder_counts_only_its_own_cases(tmp_path, v1_prompts):
    """`score --limit 3` into the --out of a full score: the verdicts of the other five cases stay in the
    folder, but the summary, labelled "(--limit 3)", covers exactly the three cases, as a fresh
    `--limit 3` score does."""
    root = tmp_path / "rise"
    items, colours = make_rise_v1(root)
    model = tmp_path / "outputs" / "model-x"
    for it in items:
        dest = model / "images" / it["category"] / f"{it['index']}.png"
        dest.parent.mkdir(parents=True, exist_ok=True)
        Image.open(root / it["image"]).convert("RGB").save(dest)
    out = tmp_path / "scored"
    with serve_llm() as server:
        server.on(then=respond(ScriptedJudge(V1_RAW, colours)))

        def score(folder, *extra):
            result = runner.invoke(app, ["score", "--benchmark", "risebench", "--benchmark-root", str(root),
                                         "--predictions", str(model), "--out", str(folder),
                                         "--judge", str(judge_file(tmp_path, server)), *extra])
            assert result.exit_code == 0, result.output
            return json.loads((folder / "summary.json").read_text())

        assert score(out)["ours"]["cases"] == 8
        limited = score(out, "--limit", "3")
        fresh = score(tmp_path / "fresh", "--limit", "3")
    assert limited["run"]["judging"] == {"resumed": 3}  # nothing judged again: the three verdicts are final
    assert limited["ours"]["cases"] == 3 and limited["ours"]["status_counts"] == {"ok": 3}
    assert "over 3 of the 360" in limited["headline"]["incomplete"] and "(--limit 3)" in limited["headline"]["incomplete"]
    expected = v1_expected(items[:3])  # the reference formula over the first three cases alone
    assert limited["headline"]["value"] == pytest.approx(expected["Overall"][1])
    for label, (score_, acc) in expected.items():
        r = row(limited["official"], label)
        assert (r["Score-Origin"], r["Accuracy"]) == pytest.approx((score_, acc)), label
    for key in ("headline", "official", "supported_only"):
        assert limited[key] == fresh[key], key
    assert limited["ours"] == fresh["ours"]


def test_an_output_saved_under_another_suffix_is_missing_but_named(tmp_path, v1_prompts, caplog):
    """Outputs saved as `.PNG` or `.webp` are not read (the official scripts read .png/.jpg/.jpeg only), so
    their cases stay `missing` at the minimum; but each verdict names the file and the suffixes read, and
    the command warns once with the number of such cases."""
    root = tmp_path / "rise"
    items, colours = make_rise_v1(root)
    model = tmp_path / "outputs" / "model-x"
    odd = {"spatial_reasoning_2": "PNG", "logical_reasoning_3": "webp"}
    for it in items:
        dest = model / "images" / it["category"] / f"{it['index']}.{odd.get(it['index'], 'png')}"
        dest.parent.mkdir(parents=True, exist_ok=True)
        Image.open(root / it["image"]).convert("RGB").save(dest, format="WEBP" if dest.suffix == ".webp" else "PNG")
    out = tmp_path / "scored"
    with serve_llm() as server, caplog.at_level("WARNING", logger="ciebench.benchmarks"):
        server.on(then=respond(ScriptedJudge(V1_RAW, colours)))
        result = runner.invoke(app, ["score", "--benchmark", "risebench", "--benchmark-root", str(root),
                                     "--predictions", str(model), "--out", str(out),
                                     "--judge", str(judge_file(tmp_path, server))])
        assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["ours"]["status_counts"] == {"missing": 2, "ok": 6}
    assert row(summary["official"], "Overall")["Score-Origin"] == pytest.approx(
        v1_expected(items, missing=set(odd))["Overall"][0])
    for case_id, suffix in odd.items():
        (verdict,) = _verdict_lines(out, case_id)
        assert verdict["status"] == "missing"
        assert f"{case_id}.{suffix} is there" in verdict["error"] and ".png, .jpg, .jpeg" in verdict["error"]
    warnings = [r.getMessage() for r in caplog.records if "suffix that is not read" in r.getMessage()]
    assert len(warnings) == 1 and warnings[0].startswith("2 case(s)")


class FlakyEditor(StampEditor):
    """Fails one case while `failing` names it (a transient error, e.g. out of GPU memory)."""

    name = "flaky"
    failing: str | None = None

    def edit(self, requests):
        return [EditResult.failure("CUDA out of memory") if r.sample_id == FlakyEditor.failing else out
                for r, out in zip(requests, super().edit(requests))]


def _verdict_lines(out, case_id):
    return [json.loads(x) for x in (out / "verdicts.jsonl").read_text().splitlines() if f'"{case_id}"' in x]


def test_retry_failed_judges_the_regenerated_output(tmp_path, v1_prompts, monkeypatch):
    """A failed edit is scored `missing` (the minimum); once --retry-failed regenerates it, its verdict is
    made for the new image: the official table equals that of a run whose edit never failed."""
    root = tmp_path / "rise"
    items, colours = make_rise_v1(root)
    judge = ScriptedJudge(V1_RAW, colours)
    out = tmp_path / "run"
    monkeypatch.setattr(FlakyEditor, "failing", "spatial_reasoning_2")
    with serve_llm() as server:
        server.on(then=respond(judge))
        args = ["evaluate", "--benchmark", "risebench", "--benchmark-root", str(root), "--editor",
                "tests.test_benchmarks_rise:FlakyEditor", "--out", str(out), "--judge", str(judge_file(tmp_path, server))]
        assert runner.invoke(app, args).exit_code == 0
        first = json.loads((out / "summary.json").read_text())
        assert first["ours"]["status_counts"] == {"missing": 1, "ok": 7}
        assert row(first["official"], "Overall")["Score-Origin"] == pytest.approx(
            v1_expected(items, missing={"spatial_reasoning_2"})["Overall"][0])
        monkeypatch.setattr(FlakyEditor, "failing", None)
        judge.seen.clear()
        result = runner.invoke(app, [*args, "--retry-failed"])
        assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    assert {c for c, *_ in judge.seen} == {"spatial_reasoning_2"}  # only the regenerated case is judged
    assert summary["run"]["judging"] == {"resumed": 7, "ok": 1}
    assert summary["ours"]["status_counts"] == {"ok": 8}
    expected = v1_expected(items)  # as if the edit had never failed
    assert summary["headline"]["value"] == pytest.approx(expected["Overall"][1])
    for label, (score, acc) in expected.items():
        r = row(summary["official"], label)
        assert (r["Score-Origin"], r["Accuracy"]) == pytest.approx((score, acc)), label
    image = out / "images" / "spatial_reasoning" / "spatial_reasoning_2.png"
    lines = _verdict_lines(out, "spatial_reasoning_2")
    assert [(v["status"], v["image_sha256"]) for v in lines] == [
        ("missing", None), ("ok", hashlib.sha256(image.read_bytes()).hexdigest())]


def test_a_judge_error_is_asked_again_not_answered_from_the_cache(tmp_path, v1_prompts):
    """A reply no parser can read is a judge error; the LLM cache keeps it like any decodable reply. The
    rerun that judges the case again sends its calls to the judge (the cache would repeat the same text),
    the fresh answer replaces the cached one, and the case is scored as if the judge had answered well."""
    root = tmp_path / "rise"
    items, colours = make_rise_v1(root)
    judge = ScriptedJudge(V1_RAW, colours)
    out = tmp_path / "run"
    with serve_llm() as server:
        # the first request about spatial_reasoning_2 (whatever its dimension) gets an unusable reply, once
        server.on(where=lambda req: colours.case_of(req.images()[-1]) == "spatial_reasoning_2",
                  then=reply("I cannot score this."), repeat=False)
        server.on(then=respond(judge))
        args = ["evaluate", "--benchmark", "risebench", "--benchmark-root", str(root), "--editor", "identity",
                "--out", str(out), "--judge", str(judge_file(tmp_path, server))]
        assert runner.invoke(app, args).exit_code == 0
        first = json.loads((out / "summary.json").read_text())
        assert first["ours"]["status_counts"] == {"judge_error": 1, "ok": 7}
        sent = server.count
        judge.seen.clear()
        result = runner.invoke(app, args)  # a plain resume retries judge errors (docs/benchmarks.md)
        assert result.exit_code == 0, result.output
        # its three questions (AC, IR, VP: no consistency flag) reach the judge again, and nothing else
        assert server.count - sent == 3 and {c for c, *_ in judge.seen} == {"spatial_reasoning_2"}
        summary = json.loads((out / "summary.json").read_text())
        assert summary["run"]["judging"] == {"resumed": 7, "ok": 1}
        assert summary["ours"]["status_counts"] == {"ok": 8}
        expected = v1_expected(items)  # as if the judge had answered well the first time
        assert summary["headline"]["value"] == pytest.approx(expected["Overall"][1])
        for label, (score, acc) in expected.items():
            r = row(summary["official"], label)
            assert (r["Score-Origin"], r["Accuracy"]) == pytest.approx((score, acc)), label
        # a case judged for the first time still takes the cache, which now holds the good answer
        (out / "verdicts.jsonl").unlink()
        sent = server.count
        assert runner.invoke(app, args).exit_code == 0
        assert server.count == sent
        assert json.loads((out / "summary.json").read_text())["ours"]["status_counts"] == {"ok": 8}


def test_rescoring_judges_an_added_or_replaced_prediction(tmp_path, v1_prompts):
    """`score --predictions` again into the same --out: a prediction added since (its verdict was
    `missing`) and one replaced by another image (its `ok` verdict was made for the old file) are judged
    again; unchanged ones are not."""
    root = tmp_path / "rise"
    items, colours = make_rise_v1(root)
    model = tmp_path / "outputs" / "model-x"
    source = {it["index"]: root / it["image"] for it in items}

    def put(case_id, from_case):
        it = next(i for i in items if i["index"] == case_id)
        dest = model / "images" / it["category"] / f"{case_id}.png"
        dest.parent.mkdir(parents=True, exist_ok=True)
        Image.open(source[from_case]).convert("RGB").save(dest)

    for it in items:
        if it["index"] != "logical_reasoning_3":
            put(it["index"], it["index"])
    judge = ScriptedJudge(V1_RAW, colours)
    out = tmp_path / "scored"
    with serve_llm() as server:
        server.on(then=respond(judge))
        args = ["score", "--benchmark", "risebench", "--benchmark-root", str(root), "--predictions", str(model),
                "--out", str(out), "--judge", str(judge_file(tmp_path, server))]
        assert runner.invoke(app, args).exit_code == 0
        put("logical_reasoning_3", "logical_reasoning_3")  # the missing output, added
        put("spatial_reasoning_2", "causal_reasoning_1")    # another image: the judge answers causal_reasoning_1's scores
        judge.seen.clear()
        result = runner.invoke(app, args)
        assert result.exit_code == 0, result.output
    assert sorted(c for c, *_ in judge.seen) == sorted(["logical_reasoning_3"] * 2 + ["causal_reasoning_1"] * 3)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["run"]["judging"] == {"resumed": 6, "ok": 2} and summary["ours"]["status_counts"] == {"ok": 8}
    cases = []
    for it in items:
        logical = it["category"] == "logical_reasoning"
        label = {"temporal_reasoning": "Temporal", "causal_reasoning": "Causal", "spatial_reasoning": "Spatial",
                 "logical_reasoning": "Logical"}[it["category"]]
        raw = V1_RAW["causal_reasoning_1" if it["index"] == "spatial_reasoning_2" else it["index"]]
        cases.append((it["index"], label, raw, logical, it.get("consistency_free") is True))
    expected = ref_summary(cases)
    for label, (score, acc) in expected.items():
        r = row(summary["official"], label)
        assert (r["Score-Origin"], r["Accuracy"]) == pytest.approx((score, acc)), label


class BadOutputs(StampEditor):
    """Returns its input, as the kind of array an editor with a bug returns for some cases."""

    name = "bad-outputs"
    BAD = {"temporal_reasoning_1": lambda a: a.astype(np.float32),                 # 0..255 floats
           "spatial_reasoning_1": lambda a: np.full(a.shape, np.nan, np.float32),
           "spatial_reasoning_2": lambda a: a.astype(np.int32) + 250,             # red 297: wraps around to 41
           "logical_reasoning_1": lambda a: a.astype(np.float64) / 255.0}         # valid: [0, 1] floats

    def edit(self, requests):
        out = []
        for r, result in zip(requests, super().edit(requests)):
            key = r.sample_id if r.sample_id != "hybrid_reasoning_1" or r.meta.get("turn") != 1 else "temporal_reasoning_1"
            bad = self.BAD.get(key)
            if key == "causal_reasoning_1":  # an image API that declined: its own status, as in dataset runs
                out.append(EditResult(status=Status.REFUSED, error="content policy"))
                continue
            out.append(EditResult(image=bad(np.asarray(r.images[0], dtype=np.uint8))) if bad else result)
        return out


def test_out_of_range_outputs_get_a_status_not_clipping(tmp_path):
    """The dataset runner's rule for benchmark runs too: final and intermediate turn outputs outside
    [0, 1] (float) or [0, 255] (integer), or NaN, are recorded as out_of_range / invalid with no image,
    never clipped, zeroed or wrapped into a scored image; a bad turn ends its case before the next turn."""
    from ciebench.benchmarks.run import generate

    items, _ = make_rise_plus(tmp_path / "riseplus")
    bench = get_benchmark("risebench-plus")
    cases = {c.id: c for c in bench.cases(tmp_path / "riseplus")}
    out = tmp_path / "run"
    StampEditor.calls.clear()
    stats = generate(bench, BadOutputs(), cases.values(), out, progress=False)

    def record(case_id):
        case = cases[case_id]
        return json.loads((out / "records" / case.output_folder / f"{case_id}.json").read_text())

    expected = {"temporal_reasoning_1": "out_of_range", "spatial_reasoning_1": "invalid",
                "spatial_reasoning_2": "out_of_range", "hybrid_reasoning_1": "out_of_range",
                "causal_reasoning_1": "refused"}
    for case_id, status in expected.items():
        rec = record(case_id)
        assert rec["status"] == status and rec["image_sha256"] is None, case_id
        assert case_id in rec["error"] and ("nothing was" in rec["error"] or "NaN" in rec["error"]
                                            or "content policy" in rec["error"])
        assert not (out / "images" / cases[case_id].output_folder / f"{case_id}.png").exists()
    assert stats.failed == 5 and stats.generated == len(cases) - 5
    # floats in [0, 1] are accepted: the written image is round(255 x), here the input itself
    source = np.asarray(Image.open(cases["logical_reasoning_1"].images[0]).convert("RGB"))
    written = np.asarray(Image.open(out / "images" / "logical_reasoning" / "logical_reasoning_1.png"))
    assert record("logical_reasoning_1")["status"] == "ok" and np.array_equal(written, source)
    # the bad second turn of three: recorded with its status, never fed to turn 3
    turns = record("hybrid_reasoning_1")["turns"]
    assert [t["status"] for t in turns] == ["ok", "out_of_range"] and "turn 2/3" in record("hybrid_reasoning_1")["error"]
    assert turns[0]["image"] and "image" not in turns[1]
    assert [c[3] for c in StampEditor.calls if c[0] == "hybrid_reasoning_1"] == [0, 1]
    # a retry (--retry-failed) takes them again, as any failed edit
    from ciebench.benchmarks.run import _done

    assert not _done(out, cases["spatial_reasoning_2"], retry_failed=True)


# The official `extract(reply)[0]` (RISEBench gpt_eval.py and RISEBench++ gemini_eval.py; UniREditBench's
# script has the same function), worked by hand: pass 1 takes the first "Final Score" match followed by
# a number ("Final Score" also matches inside "Final Scores", with no number after it); only if none
# has one, pass 2 does the same for "Final Scores".
FINAL_SCORE_CASES = [
    ("Final Scores: 3\nreasoning ...\nFinal Score: 5", 5),  # pass 1 wins although "Final Scores" comes first
    ("Final Scores: 2, 5", 2),                              # pass 2: its first number
    ("**Final Score:** 4", 4),
    ("**Final Score**: 3\nFinal Score: 5", 3),              # the first match with a number
    ("Final Score: no\nFinal Score: 3", 3),                 # a match without a number is passed over
    ("Final Score:\n\n4", 4),                               # newlines belong to the number's span
    ("Final Score: 4/5", 4),
    ("final score : 4", None),                              # a space before the colon ends the match
    ("the final score is high", None),
]


@pytest.mark.parametrize("name", ["risebench", "risebench-plus", "unireditbench"])
def test_final_score_extraction_follows_the_scripts_two_passes(name):
    """One rule, one function for RISEBench v1, RISEBench++ and UniREditBench."""
    bench = get_benchmark(name)
    for reply, expected in FINAL_SCORE_CASES:
        assert bench.parse("Reasoning", reply) == expected, reply


def test_risebench_official_judge_table_reaggregation(tmp_path):
    """The official per-case table (MODEL_judge.xlsx as CSV): mapped dimensions, flag columns."""
    rows = [("temporal_reasoning_1", "temporal_reasoning", 5, 5, 5, ""), ("temporal_reasoning_2", "temporal_reasoning", "", 4, 3, "True"),
            ("causal_reasoning_1", "causal_reasoning", 4, 1, 5, ""), ("logical_reasoning_1", "logical_reasoning", 5, 5, "", "")]
    path = tmp_path / "m_judge.csv"
    path.write_text("index,category,subtask,ApprConsistency,Reasoning,VisualPlausibility,consistency_free\n" +
                    "\n".join(f"{i},{c},S,{a},{r},{v},{f}" for i, c, a, r, v, f in rows) + "\n")
    result = runner.invoke(app, ["score", "--benchmark", "risebench", "--verdicts", str(path), "--out", str(tmp_path / "o")])
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "o" / "summary.json").read_text())
    scores = [5.0, 0.8 * 4 + 0.2 * 3, max(1.0, (0.3 * 4 + 0.5 * 1 + 0.2 * 5) / 2), 5.0]
    assert row(summary["official"], "Overall")["Score-Origin"] == pytest.approx(sum(scores) / 4)
    assert summary["headline"]["value"] == pytest.approx(2 / 4)


PLUS_RAW = {
    "temporal_reasoning_1": {AC: 5, IR: 5, VP: 5},
    "causal_reasoning_1": {AC: 3, IR: 4, VP: 4},        # multi-image, reference image, consistency image
    "spatial_reasoning_1": {AC: 1, IR: 5, VP: 5},       # consistency-free: complete without AC
    "spatial_reasoning_2": {AC: 4, IR: 1, VP: 2},       # flag false: full formula, halved
    "logical_reasoning_1": {AC: 1, IR: 0},
    "counterfactual_reasoning_1": {AC: 5, IR: 2, VP: 5},
    "hybrid_reasoning_1": {AC: 4, IR: 5, VP: 5},        # 3 turns
    "hybrid_reasoning_2": {AC: 1, IR: 1},               # 4 turns, logical hybrid
}


def plus_expected(items, unsupported=()):
    cases = []
    for it in items:
        cats = it["category"] if isinstance(it["category"], list) else [it["category"]]
        multi = bool(it.get("multi_turn"))
        logical = "logical_reasoning" in cats if multi else cats[0] == "logical_reasoning"
        label = "Hybrid" if multi else {"temporal_reasoning": "Temporal", "causal_reasoning": "Causal",
                                        "spatial_reasoning": "Spatial", "logical_reasoning": "Logical",
                                        "counterfactual_reasoning": "Counterfactual"}[cats[0]]
        raw = None if it["index"] in unsupported else PLUS_RAW[it["index"]]
        cases.append((it["index"], label, raw, logical, it.get("consistency_free") is True))
    return ref_summary(cases)


def _plus_run(tmp_path, editor: str, monkeypatch):
    monkeypatch.setenv("CIEBENCH_CACHE", str(tmp_path / "cache"))
    root = tmp_path / "riseplus"
    items, colours = make_rise_plus(root)
    prompts = write_prompt_file(tmp_path / "pp", PLUS_PROMPT_NAMES).parent
    judge = ScriptedJudge(PLUS_RAW, colours)
    out = tmp_path / f"run-{editor.split(':')[-1]}"
    with serve_llm() as server:
        server.on(then=respond(judge))
        result = runner.invoke(app, ["evaluate", "--benchmark", "risebench-plus", "--benchmark-root", str(root),
                                     "--editor", editor, "--out", str(out), "--judge-prompts", str(prompts),
                                     "--judge", str(judge_file(tmp_path, server))])
    assert result.exit_code == 0, result.output
    return items, judge, out, json.loads((out / "summary.json").read_text())


def test_risebench_plus_multi_image_multi_turn(tmp_path, monkeypatch):
    StampEditor.calls.clear()
    items, judge, out, summary = _plus_run(tmp_path, "tests.support.fixtures_benchmarks:StampEditor", monkeypatch)
    expected = plus_expected(items)
    assert summary["headline"]["value"] == pytest.approx(expected["Overall"][1])
    for label in ("Overall", "Temporal", "Causal", "Spatial", "Logical", "Counterfactual", "Hybrid"):
        r = row(summary["official"], label)
        assert (r["Score-Origin"], r["Accuracy"]) == pytest.approx(expected[label]), label
    assert row(summary["official"], "subcategory/spatial_reasoning/Layout")["Score-Origin"] == pytest.approx(
        (0.8 * 5 + 0.2 * 5 + max(1.0, (0.3 * 4 + 0.5 * 1 + 0.2 * 2) / 2)) / 2)
    # multi-image: the editor got both inputs; multi-turn: every turn ran in order, outputs recorded
    assert ("causal_reasoning_1", 2, "合并两张图", -1) in StampEditor.calls
    turns = [c for c in StampEditor.calls if c[0] == "hybrid_reasoning_2"]
    assert [c[2] for c in turns] == ["first", "second", "third", "fourth"] and [c[3] for c in turns] == [0, 1, 2, 3]
    for case, n in (("hybrid_reasoning_1", 3), ("hybrid_reasoning_2", 4)):
        files = sorted(p.name for p in (out / "turns" / "hybrid_reasoning" / case).iterdir())
        assert files == [f"turn_{k}.png" for k in range(1, n + 1)]
        record = json.loads((out / "records" / "hybrid_reasoning" / f"{case}.json").read_text())
        assert [t["turn"] for t in record["turns"]] == list(range(1, n + 1))
    # judges: the numbered turns reach the prompt; VP goes to the quality role with (consistency image, output)
    hybrid_text = next(t for c, p, _, t in judge.seen if c == "hybrid_reasoning_1" and p == "prompt_general_ref_txt")
    assert "1. turn one\n2. turn two\n3. turn three" in hybrid_text
    assert ("causal_reasoning_1", "prompt_general_qual", 2) in {(c, p, n) for c, p, n, _ in judge.seen}
    assert not any(c == "spatial_reasoning_1" and p.endswith("_cons") for c, p, _, _ in judge.seen)


def test_verdicts_of_another_benchmark_are_refused_not_published_under_its_name(tmp_path, monkeypatch, caplog):
    """`score --benchmark B --verdicts FILE` with RISEBench++ verdicts: refused for risebench and kris, naming
    both benchmarks, with nothing written; rows an older ciebench wrote (no benchmark name) are refused by
    their categories and folders (v1 has no counterfactual_reasoning, nor hybrid_reasoning/, where a
    multi-turn case listing only v1 categories lies). The right benchmark still gets the run's numbers."""
    from ciebench.benchmarks.unireditbench import UniREditBench
    from ciebench.benchmarks.verdicts import read_verdict_file

    _, _, out, summary = _plus_run(tmp_path, "tests.support.fixtures_benchmarks:StampEditor", monkeypatch)
    named = out / "verdicts.jsonl"
    rows = [json.loads(line) for line in named.read_text().splitlines()]
    assert {r["benchmark"] for r in rows} == {"risebench-plus"}
    unnamed, hybrid = tmp_path / "older.jsonl", tmp_path / "hybrid.jsonl"
    unnamed.write_text("".join(json.dumps({k: v for k, v in r.items() if k != "benchmark"}) + "\n" for r in rows))
    hybrid.write_text("".join(json.dumps({k: v for k, v in r.items() if k != "benchmark"}) + "\n"
                              for r in rows if r["output_folder"] == "hybrid_reasoning"))

    def reaggregate(bench, path, name):
        return runner.invoke(app, ["score", "--benchmark", bench, "--verdicts", str(path), "--out", str(tmp_path / name)])

    for n, (bench, path, says) in enumerate([
            ("risebench", named, "made for benchmark 'risebench-plus'"), ("kris", named, "made for benchmark 'risebench-plus'"),
            ("risebench", unnamed, "is not a case of risebench"), ("kris", unnamed, "is not a case of kris"),
            ("risebench", hybrid, "folder 'hybrid_reasoning') is not a case of risebench")]):
        result = reaggregate(bench, path, f"refused{n}")
        assert result.exit_code != 0, (bench, path, result.output)
        assert says in " ".join(result.output.split()) and bench in result.output, result.output
        assert not (tmp_path / f"refused{n}" / "summary.json").exists()
    for n, path in enumerate((named, unnamed)):
        result = reaggregate("risebench-plus", path, f"again{n}")
        assert result.exit_code == 0, result.output
        again = json.loads((tmp_path / f"again{n}" / "summary.json").read_text())
        assert (again["headline"], again["official"]) == (summary["headline"], summary["official"])
    # a benchmark whose categories come from its data cannot tell: it warns, with the number of rows
    with caplog.at_level("WARNING", logger="ciebench.benchmarks"):
        list(read_verdict_file(UniREditBench(), unnamed))
    assert f"{len(rows)} row(s) name no benchmark" in caplog.text


def test_risebench_plus_unsupported_cases(tmp_path, monkeypatch):
    items, judge, out, summary = _plus_run(tmp_path, "tests.support.fixtures_benchmarks:SingleEditor", monkeypatch)
    unsupported = {"causal_reasoning_1", "hybrid_reasoning_1", "hybrid_reasoning_2"}
    assert summary["ours"]["status_counts"] == {"ok": 5, "unsupported": 3}
    assert summary["run"]["generation"]["unsupported"] == 3 and summary["run"]["generation"]["failed"] == 0
    assert not {c for c, *_ in judge.seen} & unsupported  # never judged
    for case in unsupported:
        folder = "hybrid_reasoning" if case.startswith("hybrid") else "causal_reasoning"
        assert json.loads((out / "records" / folder / f"{case}.json").read_text())["status"] == "unsupported"
    # official table: the official rule for a case without output (the minimum); supported-only: left out
    expected = plus_expected(items, unsupported=unsupported)
    assert row(summary["official"], "Overall")["Score-Origin"] == pytest.approx(expected["Overall"][0])
    supported = plus_expected([it for it in items if it["index"] not in unsupported])
    assert row(summary["supported_only"], "Overall")["Score-Origin"] == pytest.approx(supported["Overall"][0])
    assert not any(r["-"] == "Hybrid" for r in summary["supported_only"])


def test_aggregation_parity_on_written_verdicts():
    """Per-dimension verdicts written here (every rule: halving with and without the floor,
    consistency-free, logical, missing output, an unparsable judge reply) -> the official table."""
    from ciebench.benchmarks.run import aggregate

    bench = get_benchmark("risebench-plus")
    rows = []

    def add(i, category, dims, flags=(), status="ok", multi=False):
        rows.append({"id": f"c{i}", "category": category, "output_folder": "hybrid_reasoning" if multi else category,
                     "subtask": "s", "task_type": "t", "flags": sorted(set(flags) | ({"multi_turn"} if multi else set())),
                     "status": status, "dims": dims})

    add(0, "temporal_reasoning", {AC: 5, IR: 5, VP: 5})
    add(1, "temporal_reasoning", {AC: 4, IR: 1, VP: 5})                          # 2.7 halved -> 1.35
    add(2, "causal_reasoning", {AC: 2, IR: 1, VP: 1})                            # 1.3 halved -> floor 1
    add(3, "spatial_reasoning", {IR: 5, VP: 5}, flags={"consistency_free"})      # complete without AC
    add(4, "logical_reasoning", {AC: 5, IR: 5}, flags={"logical"})
    add(5, "logical_reasoning", {AC: 5, IR: 1}, flags={"logical"})               # 0.3*5 + 0.7*1 = 2.2 halved -> 1.1
    add(6, "counterfactual_reasoning", {AC: 1, IR: 1, VP: 1}, status="missing")  # the minimum -> 1
    add(7, "causal_reasoning", {AC: 5, IR: None, VP: 5}, status="judge_error")   # no score, not accurate
    add(8, "temporal_reasoning", {AC: 3, IR: 4, VP: 2}, multi=True)              # hybrid: 3.3
    result = aggregate(bench, iter(rows))
    scores = [5.0, 1.35, 1.0, 5.0, 5.0, 1.1, 1.0, 3.3]
    overall = row(result["official"], "Overall")
    assert overall["Score-Origin"] == pytest.approx(sum(scores) / len(scores))
    assert overall["Accuracy"] == pytest.approx(3 / 9)  # the unscored case counts in the denominator
    assert row(result["official"], "Causal")["Score-Origin"] == pytest.approx(1.0)
    assert row(result["official"], "Causal")["Accuracy"] == pytest.approx(0.0)
    assert row(result["official"], "Hybrid")["Score-Origin"] == pytest.approx(3.3)
    assert row(result["official"], "Logical")["Score-Percentage"] == pytest.approx(25 * ((5.0 + 1.1) / 2 - 1))
    assert row(result["official"], "Overall_ApprConsistency")["Score-Origin"] == pytest.approx((5 + 4 + 2 + 5 + 5 + 1 + 3) / 7)
    assert result["ours"]["status_counts"] == {"judge_error": 1, "missing": 1, "ok": 7}


def test_leaderboard_tables_per_benchmark_and_gallery(tmp_path, monkeypatch):
    StampEditor.calls.clear()
    _, _, run_a, sa = _plus_run(tmp_path, "tests.support.fixtures_benchmarks:StampEditor", monkeypatch)
    _, _, run_b, sb = _plus_run(tmp_path, "tests.support.fixtures_benchmarks:SingleEditor", monkeypatch)
    other = tmp_path / "other"  # a run of another benchmark (its summary only): never mixed in
    other.mkdir()
    (other / "summary.json").write_text(json.dumps({"benchmark": {"name": "risebench"}, "headline": {
        "name": "Overall Accuracy", "value": 0.5}, "official": [{"-": "Overall", "Score-Origin": 3.0,
        "Score-Percentage": 50.0, "Accuracy": 0.5}, {"-": "Temporal", "Score-Origin": 3.0, "Score-Percentage": 50.0,
        "Accuracy": 0.5}], "ours": {"status_counts": {"ok": 2}}}))
    board = tmp_path / "board"
    result = runner.invoke(app, ["leaderboard", str(run_a), str(run_b), str(other), "--out", str(board)])
    assert result.exit_code == 0, result.output
    import pandas as pd

    plus = pd.read_csv(board / "benchmark__risebench-plus.csv")
    assert list(plus.columns[:2]) == ["run", "Overall Accuracy"] and len(plus) == 2
    assert list(plus["Overall Accuracy"]) == sorted([sa["headline"]["value"], sb["headline"]["value"]], reverse=True)
    assert len(pd.read_csv(board / "benchmark__risebench.csv")) == 1
    cats = pd.read_csv(board / "benchmark__risebench-plus__categories.csv")
    assert {"Temporal", "Causal", "Spatial", "Logical", "Counterfactual", "Hybrid"} <= set(cats["category"])
    page = (board / "gallery" / "risebench-plus" / "index.html").read_text()
    block = page.split("<h3>hybrid_reasoning/hybrid_reasoning_2</h3>")[1].split("<div class='case'>")[0]
    assert all(f"turn {k}</figcaption>" in block for k in (1, 2, 3, 4)) and "unsupported" in block
    causal = page.split("<h3>causal_reasoning/causal_reasoning_1</h3>")[1].split("<div class='case'>")[0]
    assert "input 1</figcaption>" in causal and "input 2</figcaption>" in causal


def test_interrupted_benchmark_run_resumes(tmp_path, monkeypatch):
    StampEditor.calls.clear()
    items, judge, out, first = _plus_run(tmp_path, "tests.support.fixtures_benchmarks:StampEditor", monkeypatch)
    # simulate a kill: one multi-turn case never recorded, the verdict file torn mid-line
    (out / "records" / "hybrid_reasoning" / "hybrid_reasoning_1.json").unlink()
    verdicts = (out / "verdicts.jsonl").read_bytes()
    (out / "verdicts.jsonl").write_bytes(verdicts[: len(verdicts) - 40])
    (out / "summary.json").unlink()
    StampEditor.calls.clear()
    judge.seen.clear()
    with serve_llm() as server:
        server.on(then=respond(judge))
        result = runner.invoke(app, ["evaluate", "--benchmark", "risebench-plus", "--benchmark-root",
                                     str(tmp_path / "riseplus"), "--editor", "tests.support.fixtures_benchmarks:StampEditor",
                                     "--out", str(out), "--judge-prompts", str(tmp_path / "pp"),
                                     "--judge", str(judge_file(tmp_path, server))])
    assert result.exit_code == 0, result.output
    assert {c[0] for c in StampEditor.calls} == {"hybrid_reasoning_1"} and len(StampEditor.calls) == 3
    assert {c for c, *_ in judge.seen} == {items[-1]["index"]}  # only the torn last verdict is judged again
    again = json.loads((out / "summary.json").read_text())
    assert again["official"] == first["official"]


# A perfect answer for every v1 case (logical cases answer 1 on their 0/1 scale): every case is accurate.
V1_PERFECT = {k: ({AC: 1, IR: 1} if k.startswith("logical") else {AC: 5, IR: 5, VP: 5}) for k in V1_RAW}


def test_missing_input_image_is_a_data_error_not_the_editors_failure(tmp_path, v1_prompts):
    """A source image absent from the local copy stops evaluate and score before anything runs, naming
    the case and the file: scored, it would be a missing output given the minimum (0.875, not 1.0)."""
    root = tmp_path / "rise"
    items, colours = make_rise_v1(root)
    lost = root / "temporal_reasoning_images" / "1.png"
    lost.unlink()
    model = tmp_path / "preds"
    for it in items:
        dest = model / "images" / it["category"] / f"{it['index']}.png"
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(b"not read")
    with serve_llm() as server:
        server.on(then=respond(ScriptedJudge(V1_PERFECT, colours)))
        judge = str(judge_file(tmp_path, server))
        for command in (["evaluate", "--editor", "identity"], ["score", "--predictions", str(model)]):
            out = tmp_path / command[0]
            result = runner.invoke(app, [*command, "--benchmark", "risebench", "--benchmark-root", str(root),
                                         "--out", str(out), "--judge", judge])
            assert result.exit_code == 3, result.output  # a data error
            assert "temporal_reasoning_1" in result.output and str(lost) in result.output
            assert not (out / "summary.json").exists()
        assert server.count == 0


def test_unreadable_input_image_is_left_out_never_given_the_minimum(tmp_path, v1_prompts):
    """A source image that is there but cannot be decoded: the case is an input_error in its record and
    its verdict, never `missing` with the benchmark minimum; every other case is perfect, so the
    official numbers over them are exactly 1.0 (by hand: 7 accurate cases of 7)."""
    root = tmp_path / "rise"
    items, colours = make_rise_v1(root)
    (root / "temporal_reasoning_images" / "1.png").write_bytes(b"not an image")
    out = tmp_path / "run"
    with serve_llm() as server:
        server.on(then=respond(ScriptedJudge(V1_PERFECT, colours)))
        result = runner.invoke(app, ["evaluate", "--benchmark", "risebench", "--benchmark-root", str(root),
                                     "--editor", "identity", "--out", str(out),
                                     "--judge", str(judge_file(tmp_path, server))])
    assert result.exit_code == 0, result.output
    record = json.loads((out / "records" / "temporal_reasoning" / "temporal_reasoning_1.json").read_text())
    assert record["status"] == Status.INPUT_ERROR and "temporal_reasoning_1" in record["error"]
    verdict = _verdict_lines(out, "temporal_reasoning_1")[-1]
    assert verdict["status"] == Status.INPUT_ERROR and verdict["dims"] == {}
    summary = json.loads((out / "summary.json").read_text())
    assert summary["headline"]["value"] == pytest.approx(1.0)
    assert row(summary["official"], "Temporal")["Accuracy"] == pytest.approx(1.0)
    assert summary["ours"]["cases"] == 7 and summary["ours"]["input_errors"] == 1
    assert Status.MISSING not in summary["ours"]["status_counts"]
    # and the headline says it covers fewer cases than RISEBench v1's 360
    assert summary["ours"]["expected_cases"] == 360
    assert "7 of the 360 cases" in summary["headline"]["incomplete"]
    assert "1 with an unreadable input image" in summary["headline"]["incomplete"]


def test_limit_run_is_incomplete_and_partial_and_another_judge_gets_its_own_table(tmp_path, v1_prompts, monkeypatch):
    """The fixture's 8 cases taken as the whole release. A --limit 3 run is legal (exit 0), but its
    headline covers 3 of the 8 cases: incomplete, with a warning, and partial on the board, where its
    perfect 1.0 sits beside the full run's 0.25 (by hand from V1_RAW: temporal_reasoning_1 and
    logical_reasoning_1 are the only accurate cases of 8) marked so. A full run judged by another model
    is ranked in a table of its own."""
    monkeypatch.setattr(RiseBench, "release_cases", 8)
    root = tmp_path / "rise"
    items, colours = make_rise_v1(root)

    def run(name: str, answers: dict, *extra: str, model: str = "scripted"):
        out = tmp_path / name
        with serve_llm() as server:
            server.on(then=respond(ScriptedJudge(answers, colours)))
            judge = judge_file(tmp_path, server)
            judge.write_text(judge.read_text().replace('"scripted"', json.dumps(model)))
            result = runner.invoke(app, ["evaluate", "--benchmark", "risebench", "--benchmark-root", str(root),
                                         "--editor", "identity", "--out", str(out), "--judge", str(judge), *extra])
        assert result.exit_code == 0, result.output
        return out, json.loads((out / "summary.json").read_text()), result.output

    limited, summary, output = run("limited", V1_PERFECT, "--limit", "3")
    assert summary["ours"]["cases"] == 3 and summary["ours"]["expected_cases"] == 8
    assert "3 of the 8 cases" in summary["headline"]["incomplete"] and "--limit 3" in summary["headline"]["incomplete"]
    assert "warning: incomplete headline" in output
    full, summary, output = run("full", V1_RAW)
    assert summary["headline"]["value"] == pytest.approx(0.25) and "incomplete" not in summary["headline"]
    other, _, _ = run("other", V1_PERFECT, model="another-judge")

    board = tmp_path / "board"
    result = runner.invoke(app, ["leaderboard", str(limited), str(full), str(other), "--out", str(board), "--no-gallery"])
    assert result.exit_code == 0, result.output
    import pandas as pd

    tables = {p.name: pd.read_csv(p) for p in board.glob("benchmark__*.csv") if not p.name.endswith("__categories.csv")}
    assert sorted(tables) == ["benchmark__risebench__judge-another-judge.csv", "benchmark__risebench__judge-scripted.csv"]
    scripted = tables["benchmark__risebench__judge-scripted.csv"]
    assert list(scripted["run"]) == ["identity (limited)", "identity (full)"]
    assert list(scripted["partial"]) == [True, False] and list(scripted["judge"]) == ["scripted", "scripted"]
    assert list(tables["benchmark__risebench__judge-another-judge.csv"]["run"]) == ["identity (other)"]


def _v1_hub_release(tmp_path: Path) -> tuple[Path, list, object]:
    """RISEBench v1 as PhoenixZ/RISEBench ships it: datav2_total_w_subtask.json at the top and the images
    in data.zip, whose members are data/<category>_images/... (not unpacked)."""
    import zipfile

    build = tmp_path / "build"
    items, colours = make_rise_v1(build / "data")
    hub = tmp_path / "hub"
    hub.mkdir()
    (build / "data" / "data_total.json").rename(hub / "datav2_total_w_subtask.json")
    with zipfile.ZipFile(hub / "data.zip", "w") as zf:
        for path in sorted((build / "data").rglob("*.png")):
            zf.write(path, path.relative_to(build).as_posix())
    return hub, items, colours


def test_risebench_v1_reads_its_hub_release(tmp_path, v1_prompts, monkeypatch):
    """The hub release loads as the folder, as its annotation file and as the hub snapshot: every image
    resolves to the bytes data.zip holds for data/<image>; data.zip is unpacked once, under the cache."""
    import zipfile

    hub, items, colours = _v1_hub_release(tmp_path)
    with zipfile.ZipFile(hub / "data.zip") as zf:
        packed = {name: zf.read(name) for name in zf.namelist()}
    monkeypatch.setattr(RiseBench, "hub_folder", lambda self: hub)
    for root in (hub, hub / "datav2_total_w_subtask.json", None):
        cases = list(RiseBench().cases(root))
        assert [c.id for c in cases] == [it["index"] for it in items]
        for case, item in zip(cases, items):
            assert case.images[0].read_bytes() == packed[f"data/{item['image']}"]
            if "reference_img" in item:
                assert case.reference_image.read_bytes() == packed[f"data/{item['reference_img']}"]
        assert str(cases[0].images[0]).startswith(str(tmp_path / "cache"))
    assert len(list((tmp_path / "cache" / "benchmarks" / "risebench").iterdir())) == 1  # unpacked once
    # the same release unpacked in place, as the official instructions do: read from there
    with zipfile.ZipFile(hub / "data.zip") as zf:
        zf.extractall(hub)
    assert next(RiseBench().cases(hub)).images[0] == hub / "data" / items[0]["image"]
    # end to end: the official numbers of the fixture (by hand, v1_expected)
    out = tmp_path / "run"
    with serve_llm() as server:
        server.on(then=respond(ScriptedJudge(V1_RAW, colours)))
        result = runner.invoke(app, ["evaluate", "--benchmark", "risebench", "--editor", "identity", "--out", str(out),
                                     "--judge", str(judge_file(tmp_path, server))])
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["headline"]["value"] == pytest.approx(v1_expected(items)["Overall"][1])
