"""WiseEdit on a generated fixture in its official layout: bilingual cases, several input images,
hints and reference images, labelled judge messages, and the official statistics, checked against an
independent implementation of `statistic.py`'s rules written here."""
from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from ciebench import EditRequest, EditResult, Editor
from ciebench.assets import PinnedAsset
from ciebench.benchmarks import prompts as prompt_module
from ciebench.benchmarks.wiseedit import (SUBSETS, TASK_METRICS, WiseEdit, hint_preamble, parse_score)
from ciebench.cli import app
from tests.support.llm_server import respond, serve_llm

runner = CliRunner()
SINGLE = ("prompt_detail_preserving_single", "prompt_instruction_following_single", "prompt_visual_quality",
          "prompt_knowledge_fidelity_single", "prompt_creative_fusion_single")
MULTI = ("prompt_detail_preserving_multi", "prompt_instruction_following_multi", "prompt_knowledge_fidelity_multi",
         "prompt_creative_fusion_multi")
UTILS = '''raise SystemExit("parsed, never run")
def build_message_for_metric(metric, instruction, hint=None):
    if hint:
        text = ("STAND-IN HINT PREAMBLE: "
                "expected result follows.\\n"
                f"{hint}")
    return text
'''


class LangEditor(Editor):
    """Returns the first input with green = 60 (cn) or 160 (en), so the judge can tell the language;
    fails on case Awareness_1/2 in English."""

    name = "lang-stamp"
    supports = frozenset({"multi_image"})

    def edit(self, requests: list[EditRequest]) -> list[EditResult]:
        out = []
        for r in requests:
            if r.sample_id == "2" and r.meta.get("category") == "Awareness" and r.language == "en" \
                    and len(r.images) == 1:
                out.append(EditResult(image=None, status="failed", error="scripted failure"))
                continue
            a = np.asarray(r.images[0].convert("RGB")).copy()
            a[..., 1] = 60 if r.language == "cn" else 160
            out.append(EditResult(image=Image.fromarray(a)))
        return out


def pin(monkeypatch, tmp_path) -> None:
    folder = tmp_path / "prompts"
    folder.mkdir()
    (folder / "prompt_single.py").write_text("".join(f"{n} = 'PROMPT:{n}'\n" for n in SINGLE))
    (folder / "prompt_multi.py").write_text("".join(f"{n} = 'PROMPT:{n}'\n" for n in MULTI))
    (folder / "evaluation_utils.py").write_text(UTILS)
    assets = tuple(PinnedAsset(name=f"wiseedit/{f}", url=(folder / f).as_uri(),
                               sha256=hashlib.sha256((folder / f).read_bytes()).hexdigest(), source="stand-in",
                               filename=f) for f in ("prompt_single.py", "prompt_multi.py", "evaluation_utils.py"))
    monkeypatch.setenv("CIEBENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(WiseEdit, "prompts", assets)
    prompt_module._load.cache_clear()


def make_wiseedit(root: Path) -> dict[tuple[str, str], dict]:
    """One row per subset (two for Awareness_1); the first input of case k has red 10 + 7 k."""
    cases, k = {}, 0
    for subset in SUBSETS:
        task, n = subset.rsplit("_", 1)
        folder = root / ("WiseEdit-Complex" if task == "WiseEdit_Complex" else f"WiseEdit/{task}") / subset
        folder.mkdir(parents=True)
        rows = []
        for idx in (["1", "2"] if subset == "Awareness_1" else ["1"]):
            inputs = []
            for i in range(int(n)):
                rel = f"imgs/{subset}_{idx}_{i}.png"
                (root / "imgs").mkdir(exist_ok=True)
                colour = (10 + 7 * k, 0, 0) if i == 0 else (0, 0, 40 + 9 * i)
                Image.new("RGB", (600, 400), colour).save(root / rel)
                inputs.append(rel)
            ref = json.dumps(["imgs/ref.png"]) if subset == "Awareness_2" else ""
            row = {"idx": idx, "prompt": f"english {subset} {idx}", "promptcn": f"中文 {subset} {idx}",
                   "hint": f"hint for {subset}" if task != "Imagination" else "", "ref": ref,
                   **{f"input_{i + 1}": p for i, p in enumerate(inputs)}}
            rows.append(row)
            cases[(subset, idx)] = {"k": k, "task": task, "n": int(n), **row}
            k += 1
        with open(folder / f"{subset}.csv", "w", encoding="utf-8-sig", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    Image.new("RGB", (30, 30), (250, 250, 0)).save(root / "imgs" / "ref.png")
    return cases


def score_of(k: int, language: str, metric: str) -> int:
    return 1 + (k * 3 + (2 if language == "cn" else 5) + len(metric)) % 10


def expected_table(cases, dropped: set[tuple[str, str]]) -> dict[str, float | None]:
    """statistic.py, written out: sums per (task, lang, metric) over kept rows, mean -> (m-1)/9*100,
    clipped at 0, rounded to 1 decimal; task = mean of metrics; basic = mean of 3 tasks; complex = mean
    of both languages."""
    sums, counts = {}, {}
    for key, c in cases.items():
        if key in dropped:
            continue
        for lang in ("cn", "en"):
            for m in TASK_METRICS[c["task"]]:
                sums[(c["task"], lang, m)] = sums.get((c["task"], lang, m), 0) + score_of(c["k"], lang, m)
                counts[(c["task"], lang, m)] = counts.get((c["task"], lang, m), 0) + 1
    out = {}
    for task, metrics in TASK_METRICS.items():
        for lang in ("cn", "en"):
            vals = [round(max((sums[(task, lang, m)] / counts[(task, lang, m)] - 1) / 9 * 100, 0), 1) for m in metrics]
            out[f"{task}_overall_{lang}"] = sum(vals) / len(vals)
            for m, v in zip(metrics, vals):
                out[f"{task}_{m}_{lang}"] = v
    for lang in ("cn", "en"):
        out[f"basic_overall_{lang}"] = sum(out[f"{t}_overall_{lang}"] for t in ("Imagination", "Awareness",
                                                                                "Interpretation")) / 3
    out["WiseEdit_Complex_overall"] = (out["WiseEdit_Complex_overall_cn"] + out["WiseEdit_Complex_overall_en"]) / 2
    return out


def test_wiseedit_end_to_end_official_statistics(tmp_path, monkeypatch):
    pin(monkeypatch, tmp_path)
    root = tmp_path / "WiseEdit-Benchmark"
    cases = make_wiseedit(root)
    by_red = {c["k"] * 7 + 10: key for key, c in cases.items()}
    seen = []

    def judge(req):
        content = req.body["messages"][-1]["content"]
        text = content[0]["text"]
        metric = next(m for m in ("detail_preserving", "instruction_following", "visual_quality",
                                  "knowledge_fidelity", "creative_fusion") if m in text)
        edited_at = next(i for i, p in enumerate(content) if p.get("text") in ("Edited image:", "Image:"))
        pixels = req.images()
        out_index = sum(1 for p in content[:edited_at + 1] if p["type"] == "image_url")
        edited = np.asarray(pixels[out_index].convert("RGB"), dtype=float)
        red, green = edited[..., 0].mean(), edited[..., 1].mean()
        key = by_red[min(by_red, key=lambda r: abs(r - red))]
        language = "cn" if green < 110 else "en"
        seen.append((key, language, metric, [p.get("text", "<img>") for p in content], len(pixels),
                     [im.size for im in pixels]))
        if key == ("Imagination_3", "1") and language == "cn" and metric == "creative_fusion":
            return "I will not give a number."
        return f'Analysis...\n{{"score": {score_of(cases[key]["k"], language, metric)}, "reason": "ok"}}'

    out = tmp_path / "run"
    with serve_llm() as server:
        server.on(then=respond(judge))
        judge_cfg = tmp_path / "judge.json"
        judge_cfg.write_text(json.dumps({"model": "scripted", "base_url": server.base_url, "max_retries": 0}))
        result = runner.invoke(app, ["evaluate", "--benchmark", "wiseedit", "--benchmark-root", str(root),
                                     "--editor", "tests.test_benchmarks_wiseedit:LangEditor", "--out", str(out),
                                     "--judge", str(judge_cfg)])
        assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    dropped = {("Awareness_1", "2"), ("Imagination_3", "1")}  # a failed edit; an unreadable verdict
    expected = expected_table(cases, dropped)
    table = {r["-"]: r["value"] for r in summary["official"]}
    for key, value in expected.items():
        assert table[key] == pytest.approx(value), key
    assert summary["headline"]["value"] == pytest.approx(expected["basic_overall_en"])
    assert summary["ours"]["rows_dropped"] == 2 and summary["ours"]["rows_kept"] == len(cases) - 2
    # outputs in the official layout <Subset>/<lang>/<idx>.png
    assert (out / "images" / "WiseEdit_Complex_4" / "cn" / "1.png").is_file()
    # labelled messages: several inputs numbered; hint and reference image for IF/KF only; VQ alone
    multi = [s for s in seen if s[0] == ("WiseEdit_Complex_3", "1") and s[2] == "knowledge_fidelity"][0]
    assert multi[3][:8] == ["PROMPT:prompt_knowledge_fidelity_multi\n\nEditing instruction: english WiseEdit_Complex_3 1",
                            "Input image #1:", "<img>", "Input image #2:", "<img>", "Input image #3:", "<img>",
                            "Edited image:"]
    assert multi[3][9] == "STAND-IN HINT PREAMBLE: expected result follows.\nhint for WiseEdit_Complex_3"
    ref = [s for s in seen if s[0] == ("Awareness_2", "1") and s[2] == "instruction_following"][0]
    assert ref[3][-2:] == ["Reference image:", "<img>"] and ref[4] == 4
    vq = [s for s in seen if s[2] == "visual_quality"][0]
    assert vq[3] == ["PROMPT:prompt_visual_quality", "Image:", "<img>"]
    dp = [s for s in seen if s[0] == ("Awareness_1", "1") and s[2] == "detail_preserving"][0]
    assert "Reference image:" not in dp[3] and not any("HINT" in t for t in dp[3])
    # the judge instruction is the English prompt for both languages (as the script sends it)
    assert any(s[1] == "cn" and "english Awareness_1 1" in s[3][0] for s in seen)
    # images shrunk to fit 512 x 512
    assert all(max(size) <= 512 for s in seen for size in s[5])


def test_wiseedit_score_parser_and_hint_rule():
    assert parse_score('x {"score": 7, "reason": "r"} y') == 7
    assert parse_score('{"score": 12, "reason": "r"}') is None  # out of range in JSON: none, no fallback
    assert parse_score("Rating: 4") == 4 and parse_score("I give it 8/10") == 8 and parse_score("nothing") is None
    assert hint_preamble(UTILS) == "STAND-IN HINT PREAMBLE: expected result follows.\n"
