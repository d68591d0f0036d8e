"""RISEBench (v1) and RISEBench++: loaders for the official layout, judge plans, official scoring.

Rules as read in PhoenixZ810/RISEBench (`gpt_eval.py` + `utils.py` for v1 at 5f22651;
`RISEBench++/gemini_eval.py` + `RISEBench++/utils.py` for ++ at 2902d8b). Deliberate differences from
the scripts are listed in docs/benchmarks.md; each is marked "differs:" below.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Iterator

from ciebench.assets import PinnedAsset
from ciebench.status import Status

from .base import Aggregator, Benchmark, Case, Groups, JudgeCall, RunningMean, percent, read_annotations

AC, IR, VP = "ApprConsistency", "Reasoning", "VisualPlausibility"
TEMPORAL, CAUSAL, SPATIAL, LOGICAL = "temporal_reasoning", "causal_reasoning", "spatial_reasoning", "logical_reasoning"
COUNTERFACTUAL, HYBRID = "counterfactual_reasoning", "hybrid_reasoning"
DISPLAY = {TEMPORAL: "Temporal", CAUSAL: "Causal", SPATIAL: "Spatial", LOGICAL: "Logical",
           COUNTERFACTUAL: "Counterfactual", HYBRID: "Hybrid"}
V1_SUBTASK_PREFIX = {TEMPORAL: "Temp", CAUSAL: "Causal", SPATIAL: "Spa", LOGICAL: "Logic"}

V1_COMMIT = "5f226519b25c005bb32fb83864bbd1845ab85c23"
PLUS_COMMIT = "2902d8bad63136b113a5eb8c95408a1383f5114c"
V1_PROMPTS = PinnedAsset(
    name="risebench/utils.py",
    url=f"https://raw.githubusercontent.com/PhoenixZ810/RISEBench/{V1_COMMIT}/utils.py",
    sha256="c8a693294768b7ceb355d98d3bc71f40c4fe51979a2e84ffc07f829764b676a3",
    source=f"PhoenixZ810/RISEBench@{V1_COMMIT}:utils.py", filename="utils.py")
PLUS_PROMPTS_URL = f"https://raw.githubusercontent.com/PhoenixZ810/RISEBench/{PLUS_COMMIT}/RISEBench%2B%2B/utils.py"
PLUS_PROMPTS_SOURCE = f"PhoenixZ810/RISEBench@{PLUS_COMMIT}:RISEBench++/utils.py"
# The v1 hub release (PhoenixZ/RISEBench): this annotation at the top, the images in data.zip, which
# unpacks to data/<category>_images/... (the official run is given `--input <release>/data`).
V1_HUB_ANNOTATION = "datav2_total_w_subtask.json"

# "Final Score" also matches the start of "Final Scores" (with no number after it), so that spelling is
# found only by the second pass, as in the scripts.
_FINAL_SCORE_PASSES = tuple(re.compile(r"\*?\*?" + word + r"\*?\*?:?\s*([\d*\s,\n]*)", re.IGNORECASE)
                            for word in ("Final Score", "Final Scores"))


def extract_final_score(reply: str) -> int | None:
    """The scripts' `extract(reply)[0]` (RISEBench v1 gpt_eval.py and RISEBench++ gemini_eval.py, copied
    by UniREditBench's eval script): the first number after the first "Final Score" match that has any;
    only when none has, the same over "Final Scores". So "Final Scores: 3 ... Final Score: 5" is 5.

    differs: the scripts concatenate every number of that match across the judge's replies and read
    them by position, which misplaces dimensions when a reply lists two numbers; here each reply
    gives its first number."""
    for pattern in _FINAL_SCORE_PASSES:
        for match in pattern.finditer(reply or ""):
            numbers = re.findall(r"\d+", match.group(1))
            if numbers:
                return int(numbers[0])
    return None


def case_score(dims: dict[str, float | None], logical: bool, consistency_free: bool) -> float | None:
    """The official per-case score (1-5 scale); None when a needed dimension has no score."""
    ir = dims.get(IR)
    if logical:
        ac = dims.get(AC)
        if ac is None or ir is None:
            return None
        score = 0.3 * ac + 0.7 * ir
    elif consistency_free:
        vp = dims.get(VP)
        if vp is None or ir is None:
            return None
        score = 0.8 * ir + 0.2 * vp
    else:
        ac, vp = dims.get(AC), dims.get(VP)
        if ac is None or ir is None or vp is None:
            return None
        score = 0.3 * ac + 0.5 * ir + 0.2 * vp
    if ir == 1:
        score = max(1.0, score * 0.5)
    return score


def case_complete(dims: dict[str, float | None], logical: bool, consistency_free: bool) -> int:
    """1 when every applicable dimension is 5 (the Accuracy numerator), else 0."""
    needed = (AC, IR) if logical else ((IR, VP) if consistency_free else (AC, IR, VP))
    return int(all(dims.get(d) == 5 for d in needed))


def _present(item: dict[str, Any], key: str) -> bool:
    value = item.get(key)
    return value is not None and not (isinstance(value, float) and math.isnan(value))


def _flag_true(item: dict[str, Any], key: str) -> bool:
    """differs: the intended rule, "flag present and true". v1's score formula treats a missing flag
    (NaN) as set; both scripts elsewhere treat any present value, even false, as set."""
    value = item.get(key)
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes")
    return bool(value) and not (isinstance(value, float) and math.isnan(value))


def plus_flags(item: dict[str, Any], categories: tuple[str, ...]) -> set[str]:
    """The RISEBench++ case flags its scoring reads: multi_turn (the column is present), logical (a
    logical case, or a multi-turn case listing the logical category), consistency_free."""
    multi_turn = _present(item, "multi_turn")
    flags = {"multi_turn"} if multi_turn else set()
    if (multi_turn and LOGICAL in categories) or (not multi_turn and categories[0] == LOGICAL):
        flags.add("logical")
    if _flag_true(item, "consistency_free"):
        flags.add("consistency_free")
    return flags


class _Rise(Benchmark):
    annotation_names: ClassVar[tuple[str, ...]] = ()
    dimensions = (AC, IR, VP)
    score_scale = (1, 5)  # after mapping: logical cases' 0/1 is 1 or 5
    needs = ("judge: OpenAI-compatible VLM",)
    licence = "not stated"

    def _annotation(self, root: Path) -> tuple[Path, Path]:
        """(annotation file, folder its image paths are relative to)."""
        if root.is_file():
            return root, root.parent
        for base in (root, root / "data"):
            for name in self.annotation_names:
                if (base / name).is_file():
                    return base / name, base
        raise FileNotFoundError(f"{self.name}: no {' or '.join(self.annotation_names)} in {root} or {root / 'data'}")

    def _root(self, root: str | Path | None) -> Path:
        return Path(root) if root is not None else self.hub_folder()

    def owns_verdict(self, row: dict[str, Any]) -> bool | None:
        # a RISEBench++ multi-turn case lists v1 categories but lies in hybrid_reasoning/, a folder v1 lacks
        return bool(super().owns_verdict(row)) and row.get("output_folder") in self.categories

    def cases(self, root: str | Path | None = None) -> Iterator[Case]:
        path, base = self._annotation(self._root(root))
        items = read_annotations(path, self.name, list)
        if path.name == V1_HUB_ANNOTATION:
            base = self._hub_images(base, items)
        for n, item in enumerate(items):
            try:
                yield self._case(item, base)
            except (KeyError, TypeError, ValueError) as exc:
                raise ValueError(f"{self.name}: {path} entry {n} ({item.get('index', '?')}): {exc}") from exc

    def _case(self, item: dict[str, Any], base: Path) -> Case:
        raise NotImplementedError

    def _hub_images(self, folder: Path, items: list[Any]) -> Path:
        """Where the hub release's image paths resolve: beside its annotation when they are there (a copy
        that keeps the annotation inside data/), else its data/ folder: data.zip unpacked in place, or
        unpacked once under the ciebench cache (`hub.archives_root`)."""
        from .hub import archives_root

        image = next((it["image"] for it in items if isinstance(it, dict) and isinstance(it.get("image"), str)), None)
        if image is not None and (folder / image).is_file():
            return folder
        return archives_root(folder, ("data.zip",), f"data/{image or ''}", self.name) / "data"

    def judge_calls(self, case: Case, output: Path) -> list[JudgeCall]:
        raise NotImplementedError

    judge_image_prep = "shrunk to fit 768x768 (never enlarged), RGB, JPEG (PIL default quality), decoded"

    def parse(self, dimension: str, reply: str) -> float | None:
        return extract_final_score(reply)

    def judge_image(self, path: Path, call: JudgeCall):
        from .judging import prepare_judge_image

        return prepare_judge_image(path)

    def map_scores(self, case: Case, raw: dict[str, float | None]) -> dict[str, float | None]:
        """Logical cases are judged 0/1 and mapped to 1 or 5 (4 min(x, 1) + 1)."""
        if "logical" not in case.flags:
            return raw
        return {k: (None if v is None else 4 * min(v, 1) + 1) for k, v in raw.items()}

    def missing_verdict(self, case: Case) -> dict[str, float | None]:
        """The RISEBench++ rule, used for both versions: the minimum on every applicable dimension.
        (differs for v1: its script aborts the whole run on a missing image.)"""
        if "logical" in case.flags:
            return {AC: 1, IR: 1}
        return {AC: None if "consistency_free" in case.flags else 1, IR: 1, VP: 1}

    def aggregator(self) -> "RiseAggregator":
        return RiseAggregator(plus=isinstance(self, RiseBenchPlus))


class RiseBench(_Rise):
    text_first = True  # gpt_eval.py: [text, image, ...] in every message
    name = "risebench"
    title = "RISEBench (v1)"
    size = 360
    categories = (TEMPORAL, CAUSAL, SPATIAL, LOGICAL)
    hub_id = "PhoenixZ/RISEBench"
    code = f"PhoenixZ810/RISEBench@{V1_COMMIT}:gpt_eval.py"
    headline = "Overall Accuracy"
    annotation_names = (V1_HUB_ANNOTATION, "data_total.json", "data_full.json", "data.json")
    judges = {"main": {"model": "gpt-4.1-2025-04-14", "temperature": 0.0}}
    prompts = V1_PROMPTS

    def _case(self, item: dict[str, Any], base: Path) -> Case:
        category = item["category"]
        if category not in self.categories:
            raise ValueError(f"unknown category {category!r}")
        flags = {"logical"} if category == LOGICAL else set()
        for key in ("reasoning_img", "reasoning_wo_ins"):
            if _present(item, key):
                flags.add(key)
        if _flag_true(item, "consistency_free"):
            flags.add("consistency_free")
        reference = item.get("reference_txt") if category == LOGICAL else item.get("reference")
        return Case(id=str(item["index"]), category=category, output_folder=category,
                    images=(base / item["image"],), turns=(item["instruction"],), subtask=item.get("subtask"),
                    reference_text=reference if _present(item, "reference_txt" if category == LOGICAL else "reference") else None,
                    reference_image=base / item["reference_img"] if _present(item, "reference_img") else None,
                    categories=(category,), flags=frozenset(flags))

    def judge_calls(self, case: Case, output: Path) -> list[JudgeCall]:
        v = {"instruct": case.instruction}
        ref = {**v, "reference": case.reference_text or ""}
        source = case.images[0]
        with_input = "reasoning_img" in case.flags
        if case.category in (TEMPORAL, CAUSAL):
            ir = JudgeCall(IR, "prompt_reasoning_w_input", ref, (source, output)) if with_input else \
                JudgeCall(IR, "prompt_reasoning", ref, (output,))
            calls = [JudgeCall(AC, "prompt_consist", v, (source, output)), ir,
                     JudgeCall(VP, "prompt_generation", None, (output,))]
        elif case.category == SPATIAL:
            first = case.reference_image or source  # the reference image replaces the source, for AC too
            if case.reference_image is not None:
                ir = JudgeCall(IR, "prompt_spatial_ref_img", v, (first, output))
            elif with_input:
                ir = JudgeCall(IR, "prompt_spatial_ref_w_input", ref, (first, output))
            else:
                ir = JudgeCall(IR, "prompt_spatial_ref", ref, (output,))
            calls = [JudgeCall(AC, "prompt_spatial_cons", v, (first, output)), ir,
                     JudgeCall(VP, "prompt_spatial_qual", None, (output,))]
        else:
            if case.reference_text is not None:
                calls = [JudgeCall(AC, "prompt_logical_cons_ans", ref, (source, output)),
                         JudgeCall(IR, "prompt_logical_txt", ref, (output,))]
            elif case.reference_image is not None:
                first = case.reference_image
                ir = JudgeCall(IR, "prompt_logical_img_wo_q", None, (first, output)) if "reasoning_wo_ins" in case.flags \
                    else JudgeCall(IR, "prompt_logical_img", v, (first, output))
                calls = [JudgeCall(AC, "prompt_logical_cons", v, (first, output)), ir]
            else:
                raise ValueError(f"logical case {case.id} has neither reference_txt nor reference_img")
        if "consistency_free" in case.flags:
            calls = [c for c in calls if c.dimension != AC]
        return calls


class RiseBenchPlus(_Rise):
    name = "risebench-plus"
    title = "RISEBench++"
    size = 1000
    categories = (TEMPORAL, CAUSAL, SPATIAL, LOGICAL, COUNTERFACTUAL, HYBRID)
    hub_id = "VisionXLab/RISEBench-plusplus"
    code = f"PhoenixZ810/RISEBench@{PLUS_COMMIT}:RISEBench++/gemini_eval.py"
    headline = "Overall Accuracy"
    languages = ("en", "zh")
    text_first = True  # gemini_eval.py: [text, image, ...] in every message
    annotation_names = ("overall_data.json",)
    # The script sets no temperature (the provider default applies): recorded as None.
    judges = {"main": {"model": "google/gemini-3-flash-preview", "temperature": None},
              "quality": {"model": "google/gemini-3.1-flash-lite", "temperature": None}}
    prompts = None  # no byte-exact copy to pin: --judge-prompts DIR holding this utils.py
    prompt_source = PLUS_PROMPTS_SOURCE

    def _case(self, item: dict[str, Any], base: Path) -> Case:
        raw_category = item["category"]
        categories = tuple(raw_category) if isinstance(raw_category, (list, tuple)) else (raw_category,)
        flags = plus_flags(item, categories)
        multi_turn = "multi_turn" in flags
        if _present(item, "reasoning_img"):
            flags.add("reasoning_img")
        images = item["image"] if isinstance(item["image"], (list, tuple)) else [item["image"]]
        instruction = item["instruction"]
        turns = tuple(instruction) if isinstance(instruction, (list, tuple)) else (instruction,)
        language = item.get("language") or item.get("lang") or ("zh" if re.search(r"[\u4e00-\u9fff]", "".join(turns)) else "en")
        return Case(id=str(item["index"]), category=categories[0], categories=categories,
                    output_folder=HYBRID if multi_turn else categories[0],
                    images=tuple(base / p for p in images), turns=turns, language=language,
                    subtask=item.get("subcategory"), task_type=item.get("task_type"),
                    reference_text=item.get("reference_txt") if _present(item, "reference_txt") else None,
                    reference_image=base / item["reference_img"] if _present(item, "reference_img") else None,
                    consistency_image=base / item["consistency_img"] if _present(item, "consistency_img") else None,
                    flags=frozenset(flags))

    def judge_calls(self, case: Case, output: Path) -> list[JudgeCall]:
        v = {"instruct": case.instruction}
        ref = {**v, "reference": case.reference_text or ""}
        source = case.images[0]
        cons_image = case.consistency_image or source  # ++: AC and VP compare with this, never the reference
        with_input = "reasoning_img" in case.flags
        logical = "logical" in case.flags
        if logical:
            if case.reference_image is not None:
                ac = JudgeCall(AC, "prompt_logical_cons", v, (cons_image, output))
                ir = JudgeCall(IR, "prompt_logical_ref_img", v, (case.reference_image, output))
            elif with_input:
                ac = JudgeCall(AC, "prompt_logical_cons_ans", ref, (cons_image, output))
                ir = JudgeCall(IR, "prompt_logical_ref_txt_w_input", ref, (source, output))
            else:
                ac = JudgeCall(AC, "prompt_logical_cons_ans", ref, (cons_image, output))
                ir = JudgeCall(IR, "prompt_logical_ref_txt", {"reference": case.reference_text or ""}, (output,))
            calls = [ac, ir]
        else:
            spatial = case.category == SPATIAL and not case.multi_turn
            family = "spatial" if spatial else "general"
            if case.reference_image is not None and case.category != COUNTERFACTUAL:
                ir = JudgeCall(IR, f"prompt_{family}_ref_img", v, (case.reference_image, output))
            elif with_input:
                ir = JudgeCall(IR, f"prompt_{family}_ref_txt_w_input", ref, (source, output))
            else:
                ir = JudgeCall(IR, f"prompt_{family}_ref_txt", ref, (output,))
            if spatial:
                quality = "prompt_spatial_qual"
            else:
                quality = "prompt_counterfactual_qual" if COUNTERFACTUAL in case.categories else "prompt_general_qual"
            calls = [JudgeCall(AC, f"prompt_{family}_cons", v, (cons_image, output)), ir,
                     JudgeCall(VP, quality, None, (cons_image, output), role="quality")]
        if "consistency_free" in case.flags:
            calls = [c for c in calls if c.dimension != AC]
        return calls


@dataclass
class _Cell:
    score: RunningMean
    complete: RunningMean


class RiseAggregator(Aggregator):
    """The official summary table, streaming. Rows of status "unsupported" get the missing-output rule
    in the official table (the script would give them the minimum) and are left out of the
    `supported_only` table."""

    def __init__(self, plus: bool):
        self.plus = plus
        self.tables = {"official": Groups(), "supported_only": Groups()}
        self.status_counts: dict[str, int] = {}
        self.sq = {"official": [0.0, 0.0, 0]}  # sum, sum of squares, n of case scores (for a CI)

    def add(self, row: dict[str, Any]) -> None:
        status = row["status"]
        self.status_counts[status] = self.status_counts.get(status, 0) + 1
        flags = set(row.get("flags") or ())
        logical, cf = "logical" in flags, "consistency_free" in flags
        # A case whose replies could not all be parsed has no scores at all, as in the scripts (its
        # score is left out of the means; it counts as not accurate).
        dims = {} if status == Status.JUDGE_ERROR else row["dims"]
        score = case_score(dims, logical, cf)
        complete = case_complete(dims, logical, cf)
        for name, table in self.tables.items():
            if name == "supported_only" and status == Status.UNSUPPORTED:
                continue
            for label in self._labels(row, flags):
                table.add(label, "score", score)
                table.add(label, "complete", complete)
                for dim in (AC, IR, VP):
                    table.add(label, dim, dims.get(dim))
        if score is not None:
            s = self.sq["official"]
            s[0] += score
            s[1] += score * score
            s[2] += 1

    def _labels(self, row: dict[str, Any], flags: set[str]) -> list[str]:
        labels = ["Overall"]
        category = row["category"]
        if self.plus:
            if "multi_turn" in flags:
                labels.append("Hybrid")
            else:
                labels.append(DISPLAY.get(category, category))
                sub = row.get("subtask")
                labels.append(f"subcategory/{category}/{'nan' if sub is None else sub}")
                labels.append(f"task_type/{category}/{'nan' if sub is None else sub}/"
                              f"{'nan' if row.get('task_type') is None else row.get('task_type')}")
        else:
            labels.append(DISPLAY.get(category, category))
            if row.get("subtask") is not None:
                labels.append(f"{V1_SUBTASK_PREFIX.get(category, category)}-{row['subtask']}")
        return labels

    def _table(self, g: Groups) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = []

        def add(label: str, score: float | None, accuracy: float | None) -> None:
            rows.append({"-": label, "Score-Origin": score, "Score-Percentage": percent(score), "Accuracy": accuracy})

        add("Overall", g.mean("Overall", "score"), g.mean("Overall", "complete"))
        if self.plus:
            add("Overall_Reasoning", g.mean("Overall", IR), None)
            add("Overall_ApprConsistency", g.mean("Overall", AC), None)
            add("Overall_VisualPlausibility", g.mean("Overall", VP), None)
            cats = [l for l in g.order if l in DISPLAY.values() and l != "Hybrid"]
            for label in cats:
                add(label, g.mean(label, "score"), g.mean(label, "complete"))
                add(f"{label}_Reasoning", g.mean(label, IR), None)
                add(f"{label}_Consistency", g.mean(label, AC), None)
                if label != "Logical":
                    add(f"{label}_Quality", g.mean(label, VP), None)
            if "Hybrid" in g.order:
                add("Hybrid", g.mean("Hybrid", "score"), g.mean("Hybrid", "complete"))
                add("Hybrid_Reasoning", g.mean("Hybrid", IR), None)
                add("Hybrid_ApprConsistency", g.mean("Hybrid", AC), None)
                add("Hybrid_Quality", g.mean("Hybrid", VP), None)
            for prefix in ("subcategory/", "task_type/"):
                for label in g.order:
                    if label.startswith(prefix):
                        add(label, g.mean(label, "score"), g.mean(label, "complete"))
        else:
            order = ("Temporal", "Causal", "Spatial", "Logical")
            for label in order:
                add(label, g.mean(label, "score"), g.mean(label, "complete"))
            add("Overall_Reasoning", g.mean("Overall", IR), None)
            add("Overall_ApprConsistency", g.mean("Overall", AC), None)
            add("Overall_VisualPlausibility_total", g.mean("Overall", VP), None)
            for label in order:
                add(f"{label}_Reasoning", g.mean(label, IR), None)
                add(f"{label}_Consistency", g.mean(label, AC), None)
                if label != "Logical":
                    add(f"{label}_Quality", g.mean(label, VP), None)
            for label in g.order:
                if "-" in label:
                    add(label, g.mean(label, "score"), g.mean(label, "complete"))
        return rows

    def result(self) -> dict[str, Any]:
        official = self.tables["official"]
        n = official.count("Overall", "complete")
        k = round((official.mean("Overall", "complete") or 0.0) * n)
        total, squares, m = self.sq["official"]
        mean = total / m if m else None
        score_ci = None
        if m > 1:
            sd = math.sqrt(max(0.0, (squares - m * mean * mean) / (m - 1)))
            score_ci = [mean - 1.96 * sd / math.sqrt(m), mean + 1.96 * sd / math.sqrt(m)]
        accuracy = official.mean("Overall", "complete")
        return {
            "headline": {"name": "Overall Accuracy", "value": accuracy, "ci95": wilson(k, n)},
            "official": self._table(official),
            "supported_only": self._table(self.tables["supported_only"]),
            "ours": {"cases": n, "status_counts": dict(sorted(self.status_counts.items())),
                     "scored": m, "coverage": (m / n) if n else None, "overall_score_ci95": score_ci},
        }


def wilson(k: int, n: int, z: float = 1.96) -> list[float] | None:
    if n == 0:
        return None
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return [max(0.0, centre - half), min(1.0, centre + half)]
