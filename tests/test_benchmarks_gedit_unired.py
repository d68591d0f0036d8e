"""GEdit-Bench and UniREditBench on generated fixtures in their official layouts, with a scripted judge
on 127.0.0.1 and stand-in prompt files (marker strings only: nothing of the official prompts is here).
Every aggregate is checked against an independent implementation of the official formula below."""
from __future__ import annotations

import hashlib
import io
import json
import math
import re
import statistics
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image
from typer.testing import CliRunner

from ciebench.assets import PinnedAsset
from ciebench.benchmarks import get_benchmark
from ciebench.benchmarks import prompts as prompt_module
from ciebench.benchmarks.gedit import GROUPS, GEditBench, parse_scores
from ciebench.benchmarks.unireditbench import UniREditBench
from ciebench.cli import app
from tests.support.llm_server import respond, serve_llm

runner = CliRunner()


def pin_stand_in(monkeypatch, tmp_path, cls, filename: str, constants: dict[str, str]) -> None:
    folder = tmp_path / f"prompts-{cls.name}"
    folder.mkdir(parents=True)
    path = folder / filename
    path.write_text("raise SystemExit('parsed, never run')\n" + "".join(f"{k} = {v!r}\n" for k, v in constants.items()))
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    monkeypatch.setenv("CIEBENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(cls, "prompts", PinnedAsset(name=f"{cls.name}/{filename}", url=path.as_uri(), sha256=digest,
                                                    source="stand-in", filename=filename))
    prompt_module._load.cache_clear()


def judge_file(tmp_path: Path, server) -> Path:
    path = tmp_path / "judge.json"
    path.write_text(json.dumps({"model": "scripted", "base_url": server.base_url, "max_retries": 0,
                                "concurrency": 1}))
    return path


def red_of(image: Image.Image) -> int:
    return int(round(np.asarray(image.convert("RGB"), dtype=np.float64)[..., 0].mean()))


def png(colour, size=(40, 32)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, format="PNG")
    return buf.getvalue()


# -------------------------------------------------------------------------------------------- GEdit
GEDIT_PROMPTS = {"_context_no_delimit": "CTX", "_prompts_0shot_two_image_edit_rule": "TWO-IMAGE-RULE",
                 "_prompts_0shot_tie_rule_SC": "SC-RULE for <instruction> {not a format field}",
                 "_prompts_0shot_rule_PQ": "PQ-RULE"}


def make_gedit(root: Path) -> list[dict]:
    """One English case per task group (two for color_alter), two Chinese cases; red = 10 + 7 k."""
    rows, k = [], 0
    plan = [(g, "en") for g in GROUPS] + [("color_alter", "en"), ("subject-add", "cn"), ("text_change", "cn")]
    for group, language in plan:
        rows.append({"key": f"{k:04d}", "task_type": group, "instruction": f"edit number {k}",
                     "instruction_language": language, "Intersection_exist": k % 3 == 0,
                     "input_image": {"bytes": png((10 + 7 * k, 5, 5)), "path": None}})
        k += 1
    root.mkdir(parents=True)
    image_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    schema = pa.schema([("key", pa.string()), ("task_type", pa.string()), ("instruction", pa.string()),
                        ("instruction_language", pa.string()), ("Intersection_exist", pa.bool_()),
                        ("input_image", image_type)])
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), root / "train-00000-of-00001.parquet")
    return rows


def gedit_replies(k: int) -> tuple[str, str, list[int], list[int]]:
    """The SC and PQ replies for case k, and the score lists they carry."""
    sc = [(k * 3) % 11, (k * 5 + 2) % 11]
    pq_ = [10 - k % 4, 7 + k % 3]
    sc_reply = f"Reasoning...\n||V^=^V||\n{{\"score\": {sc}, \"reasoning\": \"...\"}}\n||V^=^V||"
    pq_reply = f"```json\n{{\n\"score\": {pq_},\n\"reasoning\": \"fine\"\n}}\n```"
    return sc_reply, pq_reply, sc, pq_


def gedit_expected(rows: list[dict], scored: set[str]) -> dict:
    """The official statistics, written out: O = sqrt(min(SC) * min(PQ)) per sample; mean per group
    and language; the average is the plain mean over the 11 groups."""
    out = {}
    for language in ("en", "cn"):
        for subset in ("fullset", "intersection"):
            per = {g: [] for g in GROUPS}
            for k, r in enumerate(rows):
                if r["instruction_language"] != language or r["key"] not in scored:
                    continue
                if subset == "intersection" and not r["Intersection_exist"]:
                    continue
                _, _, sc, pq_ = gedit_replies(k)
                per[r["task_type"]].append((min(sc), min(pq_), math.sqrt(min(sc) * min(pq_))))
            means = {g: tuple(statistics.fmean(v[i] for v in per[g]) for i in range(3)) if per[g] else None
                     for g in GROUPS}
            avg = None if any(m is None for m in means.values()) else \
                tuple(statistics.fmean(means[g][i] for g in GROUPS) for i in range(3))
            out[(language, subset)] = (means, avg)
    return out


class GEditJudge:
    def __init__(self, rows, unparsable: set[str] = frozenset()):
        self.by_red = {10 + 7 * k: (k, r) for k, r in enumerate(rows)}
        self.unparsable = unparsable
        self.seen: list[tuple[str, str, list[str], str]] = []

    def __call__(self, req):
        red = red_of(req.images()[-1])  # JPEG moves colours a little: the nearest case
        k, row = self.by_red[min(self.by_red, key=lambda r: abs(r - red))]
        kinds = [part["type"] for part in req.body["messages"][-1]["content"]]
        dimension = "SC" if req.text.startswith("CTX\nTWO-IMAGE-RULE\nSC-RULE") else "PQ"
        self.seen.append((row["key"], dimension, kinds, req.text))
        if row["key"] in self.unparsable:
            return "I cannot score this."
        sc_reply, pq_reply, _, _ = gedit_replies(k)
        return sc_reply if dimension == "SC" else pq_reply


def test_gedit_parser_follows_the_official_order_and_never_guesses():
    assert parse_scores('x ||V^=^V|| {"score": [4, 7], "reasoning": "r"} ||V^=^V|| y') == [4, 7]
    assert parse_scores('text {"score": 6, "reasoning": "r"} more') == [6]
    assert parse_scores("[3, 8]") == [3, 8] and parse_scores("9") == [9]
    assert parse_scores('{score: [5, 2]}') == [5, 2]  # unquoted keys are repaired
    for bad in ("no json here", "", '{"score": [11]}', '{"score": []}', '{"reasoning": "none"}', "12"):
        assert parse_scores(bad) is None, bad
    assert GEditBench().parse("semantics", '{"score": [6, 2, 9]}') == 2  # min over the list


def test_gedit_evaluate_score_and_official_statistics(tmp_path, monkeypatch):
    pin_stand_in(monkeypatch, tmp_path, GEditBench, "vie_prompts.py", GEDIT_PROMPTS)
    root = tmp_path / "gedit"
    rows = make_gedit(root)
    judge = GEditJudge(rows, unparsable={"0011"})
    out = tmp_path / "run"
    with serve_llm() as server:
        server.on(then=respond(judge))
        args = ["evaluate", "--benchmark", "gedit", "--benchmark-root", str(root), "--editor", "identity",
                "--out", str(out), "--judge", str(judge_file(tmp_path, server))]
        result = runner.invoke(app, args)
        assert result.exit_code == 0, result.output
        summary = json.loads((out / "summary.json").read_text())
        # the official layout: results/METHOD/fullset/TASK/LANG/KEY.png
        assert (out / "images" / "fullset" / "subject-add" / "cn" / f"{12:04d}.png").is_file()
        # beside each output the source as test_gedit_score.py needs it (it skips a sample without one):
        # KEY_SRCIMG.png, the dataset's input_image as PNG (generate_image_example.py's save)
        for row in rows:
            folder = out / "images" / "fullset" / row["task_type"] / row["instruction_language"]
            with Image.open(folder / f"{row['key']}_SRCIMG.png") as src, \
                    Image.open(io.BytesIO(row["input_image"]["bytes"])) as given:
                assert src.format == "PNG" and np.array_equal(np.asarray(src.convert("RGB")),
                                                              np.asarray(given.convert("RGB")))
        scored = {r["key"] for r in rows} - {"0011"}
        expected = gedit_expected(rows, scored)
        for (language, subset), (means, avg) in expected.items():
            table = [r for r in summary["official"] if r["language"] == language and r["subset"] == subset]
            for group in GROUPS:
                got = next(r for r in table if r["group"] == group)
                if means[group] is None:
                    assert got["overall"] is None
                else:
                    assert (got["semantics"], got["quality"], got["overall"]) == pytest.approx(means[group]), group
            average = next(r for r in table if r["group"] == "Average")
            if avg is None:
                assert average["overall"] is None  # a group without samples: undefined, never a number
            else:
                assert (average["semantics"], average["quality"], average["overall"]) == pytest.approx(avg)
        assert summary["headline"]["value"] == pytest.approx(expected[("en", "fullset")][1][2])
        # an unreadable verdict is a judge error: counted, never a (random) score
        assert summary["ours"]["status_counts"] == {"judge_error": 1, "ok": len(rows) - 1}
        # judge inputs as the script sends them: text first; SC sees source + output, PQ the output
        sc_calls = [s for s in judge.seen if s[1] == "SC"]
        assert all(kinds == ["text", "image_url", "image_url"] for _, _, kinds, _ in sc_calls)
        assert all(kinds == ["text", "image_url"] for _, d, kinds, _ in judge.seen if d == "PQ")
        assert ("0003", "SC", ["text", "image_url", "image_url"],
                "CTX\nTWO-IMAGE-RULE\nSC-RULE for edit number 3 {not a format field}") in judge.seen
        n = server.count
        # re-scoring the run folder as a published output set gives the same numbers (cache: no calls)
        rescored = runner.invoke(app, ["score", "--benchmark", "gedit", "--benchmark-root", str(root),
                                       "--predictions", str(out / "images"), "--out", str(tmp_path / "rescored"),
                                       "--judge", str(judge_file(tmp_path, server))])
        assert rescored.exit_code == 0, rescored.output
        again = json.loads((tmp_path / "rescored" / "summary.json").read_text())
        assert again["official"] == summary["official"]
        # a run folder an earlier ciebench finished has no KEY_SRCIMG.png: resuming it writes them
        for src in (out / "images").rglob("*_SRCIMG.png"):
            src.unlink()
        before = (out / "verdicts.jsonl").read_text()
        assert runner.invoke(app, args).exit_code == 0
        # nothing edited or judged again but the judge error, retried as always
        appended = [json.loads(line) for line in (out / "verdicts.jsonl").read_text()[len(before):].splitlines()
                    if line.strip()]
        assert {row["id"] for row in appended} <= {"0011"}
        assert len(list((out / "images").rglob("*_SRCIMG.png"))) == len(rows)


def test_gedit_missing_outputs_are_counted_not_scored(tmp_path, monkeypatch):
    pin_stand_in(monkeypatch, tmp_path, GEditBench, "vie_prompts.py", GEDIT_PROMPTS)
    root = tmp_path / "gedit"
    rows = make_gedit(root)
    outputs = tmp_path / "results" / "method"
    for k, r in enumerate(rows):
        if r["key"] in ("0001", "0012"):
            continue  # not produced
        target = outputs / "fullset" / r["task_type"] / r["instruction_language"] / f"{r['key']}.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(png((10 + 7 * k, 5, 5), size=(80, 64)))  # another size: resized to the source's
    judge = GEditJudge(rows)
    with serve_llm() as server:
        server.on(then=respond(judge))
        result = runner.invoke(app, ["score", "--benchmark", "gedit", "--benchmark-root", str(root),
                                     "--predictions", str(outputs), "--out", str(tmp_path / "scored"),
                                     "--judge", str(judge_file(tmp_path, server))])
        assert result.exit_code == 0, result.output
        for req in server.requests:
            assert all(im.size == (40, 32) for im in req.images())
    summary = json.loads((tmp_path / "scored" / "summary.json").read_text())
    assert summary["ours"]["status_counts"] == {"missing": 2, "ok": len(rows) - 2}
    assert summary["ours"]["coverage"] == pytest.approx((len(rows) - 2) / len(rows))
    expected = gedit_expected(rows, {r["key"] for r in rows} - {"0001", "0012"})
    got = next(r for r in summary["official"] if r["language"] == "en" and r["subset"] == "fullset"
               and r["group"] == "Average")
    assert got["overall"] == pytest.approx(expected[("en", "fullset")][1][2])


# -------------------------------------------------------------------------------------- UniREdit
UNIRED_PROMPTS = {"prompt_consist": "CONSIST instr=<{instruct}> {{literal}}",
                  "prompt_reasoning_w_ref_image": "REASON instr=<{instruct}> ref=<{reference}>",
                  "prompt_generation": "QUALITY {not formatted}"}
UNIRED_RAW = {  # per case: (AC, R, VP) the judge answers; None: no "Final Score" in the reply
    ("real_world_a", "1"): (5, 5, 5),
    ("real_world_a", "2"): (3, 1, 4),
    ("game_world_b", "1"): (4, 5, 2),
    ("game_world_b", "2"): (5, 5, None),
    ("real_world_c", "1"): (2, 3, 5),
}


def make_unired(root: Path) -> list[dict]:
    items = []
    for k, (name, idx) in enumerate(UNIRED_RAW):
        root.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (40, 32), (10 + 7 * k, 5, 5)).save(root / f"src_{k}.png")
        Image.new("RGB", (40, 32), (0, 200, 10 + k)).save(root / f"gt_{k}.png")
        item = {"original_image_path": f"src_{k}.png", "reference_image_path": f"gt_{k}.png",
                "instruction": f"do thing {k}", "name": name, "idx": int(idx), "reference_effect": f"effect {k}"}
        if name.startswith("game"):
            item["rules"] = f"RULES OF GAME {k}"
        items.append(item)
    (root / "data.json").write_text(json.dumps(items))
    return items


def unired_expected(keys) -> dict:
    """score = 0.3 AC + 0.5 R + 0.2 VP, accuracy = all three 5; cases without all three are dropped."""
    def block(ks):
        full = [UNIRED_RAW[k] for k in ks if None not in UNIRED_RAW[k]]
        scores = [0.3 * a + 0.5 * r + 0.2 * v for a, r, v in full]
        acc = [1.0 if (a, r, v) == (5, 5, 5) else 0.0 for a, r, v in full]
        return (statistics.fmean(scores), statistics.fmean(acc)) if full else (None, None)
    out = {"Overall": block(keys)}
    for name in sorted({n for n, _ in keys}):
        out[f"Class-{name}"] = block([k for k in keys if k[0] == name])
    return out


def test_unireditbench_reference_image_rules_and_official_table(tmp_path, monkeypatch):
    pin_stand_in(monkeypatch, tmp_path, UniREditBench, "utils.py", UNIRED_PROMPTS)
    root = tmp_path / "UniREditBench"
    items = make_unired(root)
    by_red = {10 + 7 * k: (it["name"], str(it["idx"])) for k, it in enumerate(items)}
    seen = []

    def judge(req):
        red = red_of(req.images()[-1])
        key = by_red[min(by_red, key=lambda r: abs(r - red))]
        dim = 0 if req.text.startswith("CONSIST") else 1 if req.text.startswith("REASON") else 2
        seen.append((key, dim, req.text, [im.getpixel((0, 0)) for im in req.images()],
                     [p["type"] for p in req.body["messages"][-1]["content"]]))
        value = UNIRED_RAW[key][dim]
        return "No verdict." if value is None else f"Step by step...\n**Final Score**: {value}"

    out = tmp_path / "run"
    with serve_llm() as server:
        server.on(then=respond(judge))
        result = runner.invoke(app, ["evaluate", "--benchmark", "unireditbench", "--benchmark-root", str(root),
                                     "--editor", "identity", "--out", str(out),
                                     "--judge", str(judge_file(tmp_path, server))])
        assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    expected = unired_expected(list(UNIRED_RAW))
    for label, (score, acc) in expected.items():
        r = next(r for r in summary["official"] if r["-"] == label)
        assert r["Score-Origin"] == pytest.approx(score) and r["Accuracy"] == pytest.approx(acc), label
        assert r["Score-Percentage"] == pytest.approx(25 * (score - 1))
    assert summary["headline"]["value"] == pytest.approx(expected["Overall"][1])
    assert summary["ours"]["scored"] == 4 and summary["ours"]["status_counts"] == {"judge_error": 1, "ok": 4}
    # the reasoning judge sees source, ground truth, output (in that order), text first
    reason = [s for s in seen if s[1] == 1]
    for (name, idx), _, text, pixels, kinds in reason:
        k = list(UNIRED_RAW).index((name, idx))
        assert kinds == ["text", "image_url", "image_url", "image_url"]
        assert abs(pixels[1][1] - 200) <= 3 and pixels[0][1] < 30  # the ground truth in the middle (JPEG)
        assert f"ref=<effect {k}>" in text
    # game rules go before the instruction, for every prompt
    game = [s for s in seen if s[0] == ("game_world_b", "1") and s[1] == 0][0]
    assert game[2] == "CONSIST instr=<RULES OF GAME 2\ndo thing 2> {literal}"
    quality = [s for s in seen if s[1] == 2][0]
    assert quality[2] == "QUALITY {not formatted}" and len(quality[3]) == 1
    assert (out / "images" / "game_world_b" / "2.png").is_file()


def test_the_published_judges_are_the_defaults(monkeypatch):
    from ciebench.benchmarks.session import judge_configs

    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    g = judge_configs(GEditBench(), None)["main"]
    assert (g.model, g.temperature, g.max_tokens, g.key_env) == ("gpt-4.1", None, 1400, "OPENAI_API_KEY")
    u = judge_configs(UniREditBench(), None)["main"]
    assert (u.model, u.temperature, u.max_tokens) == ("gpt-4.1-2025-04-14", 0.0, 4096)


def test_benchmarks_lists_the_new_ones():
    result = runner.invoke(app, ["benchmarks"])
    assert result.exit_code == 0, result.output
    for name in ("gedit", "unireditbench", "imgedit", "imgedit-uge", "wiseedit"):
        assert f"\n{name} " in "\n" + result.output
        assert get_benchmark(name).licence
    assert "languages: en, cn" in result.output and "languages: cn, en" in result.output


# ---------------------------------------------------------------------------------------- ImgEdit
def make_imgedit(root: Path, n_per_type: int = 2) -> dict[str, dict]:
    from ciebench.benchmarks.imgedit import EDIT_TYPES

    edits, k = {}, 0
    for t in EDIT_TYPES:
        for j in range(n_per_type):
            rel = f"{t}/{k:06d}.jpg"
            (root / t).mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (40, 32), (10 + 7 * k, 5, 5)).save(root / rel, quality=95)
            edits[str(1000 + k)] = {"id": rel, "prompt": f"{t} edit {k}", "edit_type": t}
            k += 1
    (root / "basic_edit.json").write_text(json.dumps(edits))
    return edits


def imgedit_reply(k: int) -> tuple[str, list[int]]:
    scores = [1 + k % 5, 1 + (k * 2) % 5, 1 + (k * 3 + 1) % 5]
    text = (f"Brief reasoning: fine.\nPrompt Compliance: {scores[0]}\nVisual Naturalness: {scores[1]}\n"
            f"Physical & Detail Coherence: {scores[2]}\nNote: 5 is best")
    return text, scores


def test_imgedit_basic_type_scores_and_overall(tmp_path, monkeypatch):
    from ciebench.benchmarks.imgedit import EDIT_TYPES, ImgEditBasic, item_score

    prompts = {t: f"RULES FOR {t.upper()} editing instruction is : <edit_prompt>." for t in EDIT_TYPES}
    folder = tmp_path / "prompts-imgedit"
    folder.mkdir()
    path = folder / "prompts.json"
    path.write_text(json.dumps(prompts))
    monkeypatch.setenv("CIEBENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(ImgEditBasic, "prompts", PinnedAsset(name="imgedit/prompts.json", url=path.as_uri(),
                                                             sha256=hashlib.sha256(path.read_bytes()).hexdigest(),
                                                             source="stand-in", filename="prompts.json"))
    prompt_module._load.cache_clear()
    root = tmp_path / "imgedit"
    edits = make_imgedit(root)
    keys = list(edits)
    by_red = {10 + 7 * k: k for k in range(len(keys))}
    seen = []

    def judge(req):
        red = red_of(req.images()[-1])
        k = by_red[min(by_red, key=lambda r: abs(r - red))]
        seen.append((keys[k], req.text, [p["type"] for p in req.body["messages"][-1]["content"]]))
        return "I refuse to use the format." if k == 3 else imgedit_reply(k)[0]

    outputs = tmp_path / "edited_images"
    outputs.mkdir()
    for k, key in enumerate(keys):
        if k != 5:  # one output missing
            Image.new("RGB", (40, 32), (10 + 7 * k, 5, 5)).save(outputs / f"{key}.png")
    with serve_llm() as server:
        server.on(then=respond(judge))
        result = runner.invoke(app, ["score", "--benchmark", "imgedit", "--benchmark-root", str(root),
                                     "--predictions", str(outputs), "--out", str(tmp_path / "scored"),
                                     "--judge", str(judge_file(tmp_path, server))])
        assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "scored" / "summary.json").read_text())
    # independent: item = round(mean of the three, 2); type = round(mean of items, 2); overall = our
    # documented mean of the 9 type scores
    per_type: dict[str, list[float]] = {}
    for k, key in enumerate(keys):
        if k in (3, 5):
            continue
        per_type.setdefault(edits[key]["edit_type"], []).append(round(statistics.fmean(imgedit_reply(k)[1]), 2))
    for t in EDIT_TYPES:
        got = next(r for r in summary["official"] if r["edit_type"] == t)
        assert got["score"] == round(statistics.fmean(per_type[t]), 2), t
    overall = round(statistics.fmean(round(statistics.fmean(v), 2) for v in per_type.values()), 2)
    assert summary["headline"]["value"] == overall
    assert summary["ours"]["status_counts"] == {"judge_error": 1, "missing": 1, "ok": len(keys) - 2}
    key0 = keys[0]
    assert (key0, f"RULES FOR REPLACE editing instruction is : replace edit 0.", ["text", "image_url", "image_url"]) in seen
    assert item_score("Score: 4\nOther: x\nA: 2") == 3.0 and item_score("no scores") is None
    assert item_score("A: 4.5\nB: 3") == 3.0  # "4.5" is not all digits: the script skips it


def test_imgedit_uge_average(tmp_path, monkeypatch):
    from ciebench.benchmarks.imgedit import ImgEditUGE

    pin_stand_in(monkeypatch, tmp_path, ImgEditUGE, "UGE_bench.py", {"prompt": "UGE RULES: <edit_prompt>."})
    root = tmp_path / "uge"
    root.mkdir()
    edits = {}
    for k in range(4):
        Image.new("RGB", (40, 32), (10 + 7 * k, 5, 5)).save(root / f"{k:09d}.jpg")
        edits[str(k + 1)] = {"id": f"{k:09d}.jpg", "prompt": f"think then edit {k}"}
    (root / "UGE_edit.json").write_text(json.dumps(edits))
    by_red = {10 + 7 * k: k for k in range(4)}
    answers = {0: "Overall: 5", 1: "Overall: 2", 2: "Overall: 4", 3: "Overall: 3"}

    def judge(req):
        red = red_of(req.images()[-1])
        assert req.text.startswith("UGE RULES: think then edit")
        return answers[by_red[min(by_red, key=lambda r: abs(r - red))]]

    with serve_llm() as server:
        server.on(then=respond(judge))
        result = runner.invoke(app, ["evaluate", "--benchmark", "imgedit-uge", "--benchmark-root", str(root),
                                     "--editor", "identity", "--out", str(tmp_path / "run"),
                                     "--judge", str(judge_file(tmp_path, server))])
        assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["headline"]["value"] == round((5 + 2 + 4 + 3) / 4, 2)
    assert (tmp_path / "run" / "images" / "1.png").is_file()  # the official flat layout: <key>.png


def test_published_verdict_tables_reaggregate_without_a_judge(tmp_path):
    import csv as csv_module

    rows = []
    for k, group in enumerate(GROUPS * 2):
        sc, pq_ = (k * 3) % 11, 1 + k % 10
        rows.append({"source_image": f"r/m/fullset/{group}/en/{k}_SRCIMG.png", "edited_image": f"r/m/fullset/{group}/en/{k}.png",
                     "instruction": "x", "sementics_score": sc, "quality_score": pq_,
                     "intersection_exist": str(k % 2 == 0), "instruction_language": "en"})
    path = tmp_path / "m_combined_gpt_score.csv"
    with open(path, "w", newline="") as fh:
        writer = csv_module.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    result = runner.invoke(app, ["score", "--benchmark", "gedit", "--verdicts", str(path), "--out", str(tmp_path / "re")])
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "re" / "summary.json").read_text())
    per = {g: [math.sqrt(r["sementics_score"] * r["quality_score"]) for r in rows if f"/{g}/" in r["edited_image"]]
           for g in GROUPS}
    assert summary["headline"]["value"] == pytest.approx(statistics.fmean(statistics.fmean(v) for v in per.values()))
    # UniREditBench's judge table
    table = tmp_path / "m_judge.csv"
    table.write_text("name,idx,ApprConsistency,Reasoning,VisualPlausibility\na,1,5,5,5\na,2,3,4,2\nb,1,4,,5\n")
    result = runner.invoke(app, ["score", "--benchmark", "unireditbench", "--verdicts", str(table), "--out",
                                 str(tmp_path / "re2")])
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "re2" / "summary.json").read_text())
    overall = next(r for r in summary["official"] if r["-"] == "Overall")
    assert overall["Score-Origin"] == pytest.approx((5.0 + 0.9 + 2.0 + 0.4) / 2) and overall["Accuracy"] == 0.5


def _tar(path: Path, members: dict[str, bytes]) -> Path:
    import tarfile

    with tarfile.open(path, "w") as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


def test_imgedit_benchmark_tar_is_extracted_within_the_archive_limits(tmp_path, monkeypatch):
    """Benchmark.tar goes through the one archive rule: a bomb (over the file-count and byte limits) or a
    member climbing out is refused naming the archive, and leaves no half-extracted folder behind; a good
    archive is extracted once."""
    import huggingface_hub

    from ciebench.benchmarks.imgedit import ImgEditBasic
    from ciebench.errors import DataError

    monkeypatch.setenv("CIEBENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("CIEBENCH_MAX_EXTRACT_FILES", "2")
    monkeypatch.setenv("CIEBENCH_MAX_EXTRACT_BYTES", "1000")
    served: list[Path] = []
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", lambda *a, **k: str(served[-1]))
    target = tmp_path / "cache" / "benchmarks" / "imgedit"
    served.append(_tar(tmp_path / "bomb.tar", {f"Benchmark/f{i}.bin": b"\0" * 100_000 for i in range(5)}))
    with pytest.raises(DataError, match="bomb.tar"):
        ImgEditBasic()._hub_images()
    assert not target.exists()
    served.append(_tar(tmp_path / "climb.tar", {"../../outside.txt": b"x"}))
    with pytest.raises(DataError, match="climb.tar"):
        ImgEditBasic()._hub_images()
    assert not target.exists() and not (tmp_path / "outside.txt").exists()
    served.append(_tar(tmp_path / "good.tar", {"Benchmark/singleturn/a.png": b"png bytes"}))
    assert ImgEditBasic()._hub_images() == target
    assert (target / "Benchmark" / "singleturn" / "a.png").read_bytes() == b"png bytes"
    served.append(tmp_path / "never-read.tar")  # extracted once: not fetched again
    assert ImgEditBasic()._hub_images() == target


def test_imgedit_hub_cases_point_at_the_images_of_benchmark_tar(tmp_path, monkeypatch):
    """Without --benchmark-root, ImgEdit's cases resolve against Benchmark.tar's suite folders as
    users of the official scripts pass them (--origin_img_root .../Benchmark/singleturn for the basic
    suite, .../Benchmark/hard for UGE): every case reads the bytes the tar holds for it."""
    import huggingface_hub

    from ciebench.benchmarks.imgedit import ImgEditBasic, ImgEditUGE

    monkeypatch.setenv("CIEBENCH_CACHE", str(tmp_path / "cache"))
    basic = {"1082": {"id": "animal/000342021.jpg", "prompt": "smooth the shell", "edit_type": "adjust"},
             "7": {"id": "style/000000007.jpg", "prompt": "as a watercolour", "edit_type": "style"}}
    uge = {"1": {"id": "000029784.jpg", "prompt": "remove the lemon slice"}}
    members = {f"Benchmark/singleturn/{v['id']}": f"basic {k}".encode() for k, v in basic.items()}
    members.update({f"Benchmark/hard/{v['id']}": f"uge {k}".encode() for k, v in uge.items()})
    tar = _tar(tmp_path / "Benchmark.tar", members)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", lambda *a, **k: str(tar))
    for cls, edits, folder in ((ImgEditBasic, basic, "singleturn"), (ImgEditUGE, uge, "hard")):
        path = tmp_path / cls.annotation_name
        path.write_text(json.dumps(edits))
        monkeypatch.setattr(cls, "edits", PinnedAsset(name=f"imgedit/{path.name}", url=path.as_uri(),
                                                      sha256=hashlib.sha256(path.read_bytes()).hexdigest(),
                                                      source="stand-in", filename=path.name))
        cases = list(cls().cases(None))
        assert sorted(c.id for c in cases) == sorted(edits)
        for case in cases:
            assert case.images[0].read_bytes() == members[f"Benchmark/{folder}/{edits[case.id]['id']}"]


def test_unireditbench_reads_its_zipped_images(tmp_path, monkeypatch):
    """The hub release is data.json + original_image.zip + reference_image.zip, to be unzipped in place
    (the official README): not unzipped, the zips are unpacked once under the cache and every case reads
    the bytes they hold; unzipped in place, the folder itself is read."""
    import zipfile

    monkeypatch.setenv("CIEBENCH_CACHE", str(tmp_path / "cache"))
    build = tmp_path / "build"
    items = make_unired(build)
    hub = tmp_path / "hub"
    hub.mkdir()
    packed: dict[str, bytes] = {}
    for zip_name, key, prefix in (("original_image.zip", "original_image_path", "original_image"),
                                  ("reference_image.zip", "reference_image_path", "reference_image")):
        with zipfile.ZipFile(hub / zip_name, "w") as zf:
            for item in items:
                member = f"{prefix}/{item[key]}"
                packed[member] = (build / item[key]).read_bytes()
                zf.writestr(member, packed[member])
                item[key] = member
    (hub / "data.json").write_text(json.dumps(items))
    monkeypatch.setattr(UniREditBench, "hub_folder", lambda self: hub)
    for root in (hub, None):
        cases = list(UniREditBench().cases(root))
        assert len(cases) == len(items)
        for case, item in zip(cases, items):
            assert case.images[0].read_bytes() == packed[item["original_image_path"]]
            assert case.ground_truth_image.read_bytes() == packed[item["reference_image_path"]]
    for zip_name in ("original_image.zip", "reference_image.zip"):
        with zipfile.ZipFile(hub / zip_name) as zf:
            zf.extractall(hub)
    assert next(UniREditBench().cases(hub)).images[0] == hub / items[0]["original_image_path"]
