"""WiseEdit: knowledge-aware editing in English and Chinese, some cases with several input images.

Rules as read in beepkh/WiseEdit@58cadba (`run_eval.py`, `statistic.py`, `Evaluation/evaluation_utils.py`,
`Evaluation/prompt_single.py`, `Evaluation/prompt_multi.py`):
- data: `WiseEdit/<Task>/<Subset>/<Subset>.csv` (Task: Awareness, Interpretation, Imagination) and
  `WiseEdit-Complex/<Subset>/<Subset>.csv`; the 11 subsets the script evaluates by default; a subset's
  trailing number is its count of input images (`input_1` ... paths relative to the dataset folder);
  `prompt` (English) and `promptcn` (Chinese) instruct the editor; the judge sees `prompt` for both
  languages; `hint` and `ref` (reference images) go to instruction following and knowledge fidelity;
- outputs: `<MODEL>/<Subset>/<cn|en>/<idx>.png`;
- metrics per task: Awareness and Interpretation DP, IF, VQ, KF; Imagination DP, IF, VQ, CF; Complex
  all five; each 1-10, one judge call per metric: the metric's prompt (the `_multi` variant when a
  case has several inputs; `prompt_visual_quality` for VQ) + "Editing instruction: ..." then labelled
  images ("Input image:" / "Input image #k:", "Edited image:"), then for IF and KF the hint (with the
  script's preamble) and "Reference image:"s; VQ sees only the text and "Image:" + the output; images
  shrunk to fit 512 x 512, JPEG quality 90; gpt-4o, no temperature, max_tokens 1000;
- a reply's score: the first `{...score...}` JSON object's `score` (1-10, else none); without one, the
  first of the script's patterns that matches (score: N, rating: N, N/10, N out of 10, a bare 1-10);
- aggregation per task, language and metric over the rows kept: a row (both languages) is dropped when
  any applicable metric in either language is 0 or empty; metric mean m -> max(0, (m - 1) / 9 x 100)
  rounded to 1 decimal; task score = mean of its metrics; basic overall (per language) = mean of the
  three basic task scores; complex overall = mean of its two languages.

differs: the script scores a failed judge call (after 5 tries) or a missing output 0 and then drops the
row from the averages silently; ciebench drops it the same way and reports it as `judge_error` or
`missing` with coverage. A subset without any score file is filled with ones by the script; here every
case is judged or reported, so that rule never applies (a task without kept rows is undefined, `-`).
The judge's hint preamble is read from the pinned `evaluation_utils.py`; the short image labels above
are the script's message format.
"""
from __future__ import annotations

import ast
import csv
import json
from pathlib import Path
from typing import Any, Iterator

from PIL import Image

from ciebench.assets import PinnedAsset
from ciebench.status import Status

from .base import Benchmark, Case, CountingAggregator, JudgeCall
from .judging import prepare_judge_image
from .prompts import PromptFileError

COMMIT = "58cadba788b56ee718724e27d64c2c76c297d046"
_RAW = f"https://raw.githubusercontent.com/beepkh/WiseEdit/{COMMIT}/Evaluation"


def _asset(filename: str, sha256: str) -> PinnedAsset:
    return PinnedAsset(name=f"wiseedit/{filename}", url=f"{_RAW}/{filename}", sha256=sha256,
                       source=f"beepkh/WiseEdit@{COMMIT}:Evaluation/{filename}", licence="Apache-2.0",
                       filename=filename)


PROMPTS = (_asset("prompt_single.py", "0d12af1f0df49977285496346f6e3f3f0e6594339a84d39648f908fea60e997d"),
           _asset("prompt_multi.py", "6acb8fb8cdc33b06fbe8ed74dfdc5c111ec135e1ff731254669be13d8cadbca6"),
           _asset("evaluation_utils.py", "fa5ba8b6c07e03c0a93aee79a334431dae8d3d69e4ab6ddc9f8cda111945df54"))
DP, IF, VQ, KF, CF = ("detail_preserving", "instruction_following", "visual_quality", "knowledge_fidelity",
                      "creative_fusion")
ABBR = {DP: "DP", IF: "IF", VQ: "VQ", KF: "KF", CF: "CF"}
TASK_METRICS = {"Awareness": (DP, IF, VQ, KF), "Interpretation": (DP, IF, VQ, KF), "Imagination": (DP, IF, VQ, CF),
                "WiseEdit_Complex": (DP, IF, VQ, KF, CF)}
BASIC_TASKS = ("Awareness", "Interpretation", "Imagination")
SUBSETS = ("Imagination_1", "Imagination_2", "Imagination_3", "Imagination_4", "Imagination_5", "Awareness_1",
           "Awareness_2", "Interpretation_1", "WiseEdit_Complex_2", "WiseEdit_Complex_3", "WiseEdit_Complex_4")
LANGUAGES = ("cn", "en")
SCORE_PATTERNS = (r"['\"]?\s*score\s*['\"]?\s*[:：]\s*(10|[1-9])\b", r"score\s*[:：]\s*(10|[1-9])\b",
                  r"rating\s*[:：]\s*(10|[1-9])\b", r"(10|[1-9])\s*/\s*10", r"(10|[1-9])\s+out\s+of\s+10",
                  r"\b(10|[1-9])\b")


def parse_score(reply: str) -> int | None:
    import re

    text = reply or ""
    match = re.search(r"\{[^{}]*score[^{}]*\}", text, re.DOTALL)
    if match:
        try:
            value = json.loads(match.group(0)).get("score")
            if value is not None:
                value = int(value)
                return value if 1 <= value <= 10 else None
        except (ValueError, TypeError, AttributeError):
            pass
    for pattern in SCORE_PATTERNS:
        found = re.search(pattern, text, re.IGNORECASE | re.DOTALL)
        if found:
            return int(found.group(1))
    return None


def hint_preamble(utils_source: str) -> str:
    """The text the script puts before a case's hint: the literal head of the f-string ending in
    `{hint}` inside `build_message_for_metric` (read with `ast`, never executed)."""
    tree = ast.parse(utils_source)
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef) and node.name == "build_message_for_metric":
            for inner in ast.walk(node):
                if (isinstance(inner, ast.JoinedStr) and len(inner.values) == 2
                        and isinstance(inner.values[0], ast.Constant)
                        and isinstance(inner.values[1], ast.FormattedValue)
                        and isinstance(inner.values[1].value, ast.Name) and inner.values[1].value.id == "hint"):
                    return inner.values[0].value
    raise PromptFileError("evaluation_utils.py: no hint preamble (an f-string ending in {hint}) in "
                          "build_message_for_metric")


def metric_prompt(metric: str, multi: bool) -> str:
    if metric == VQ:
        return "prompt_visual_quality"
    return f"prompt_{metric}_{'multi' if multi else 'single'}"


class WiseEdit(Benchmark):
    name = "wiseedit"
    title = "WiseEdit"
    size = 1220
    categories = ("Awareness", "Interpretation", "Imagination", "WiseEdit_Complex")
    languages = LANGUAGES
    licence = "Apache-2.0"
    needs = ("judge: gpt-4o (OpenAI-compatible VLM)",)
    hub_id = "123123chen/WiseEdit-Benchmark"
    hub_revision = None  # not pinned: the hub revision could not be read offline
    code = f"beepkh/WiseEdit@{COMMIT}:run_eval.py, statistic.py"
    headline = "basic_overall_en"
    dimensions = (DP, IF, VQ, KF, CF)
    judges = {"main": {"model": "gpt-4o", "temperature": None, "max_tokens": 1000}}
    prompts = PROMPTS

    def cases(self, root: str | Path | None = None) -> Iterator[Case]:
        folder = Path(root) if root is not None else self.hub_folder()
        for subset in SUBSETS:
            task = subset.rsplit("_", 1)[0]
            csv_path = (folder / "WiseEdit-Complex" / subset / f"{subset}.csv" if task == "WiseEdit_Complex"
                        else folder / "WiseEdit" / task / subset / f"{subset}.csv")
            if not csv_path.is_file():
                raise FileNotFoundError(f"{self.name}: {csv_path} does not exist (the WiseEdit-Benchmark layout)")
            with open(csv_path, encoding="utf-8-sig", newline="") as fh:
                rows = list(csv.DictReader(fh))
            for n, row in enumerate(rows):
                try:
                    yield from self._cases_of(row, task, subset, folder)
                except (KeyError, TypeError, ValueError) as exc:
                    raise ValueError(f"{self.name}: {csv_path} row {n + 2}: {exc}") from exc

    def _cases_of(self, row: dict[str, str], task: str, subset: str, folder: Path) -> Iterator[Case]:
        idx = (row.get("idx") or "").strip()
        if not idx:
            raise ValueError("empty idx")
        n_inputs = int(subset.rsplit("_", 1)[1])
        inputs = [(row.get(f"input_{i}") or "").strip() for i in range(1, n_inputs + 1)]
        images = tuple(folder / p for p in inputs if p)
        hint = (row.get("hint") or "").strip() or None
        refs = tuple(folder / p for p in _ref_paths(row.get("ref") or ""))
        for language in LANGUAGES:
            instruction = (row.get("prompt") if language == "en" else row.get("promptcn")) or ""
            yield Case(id=idx, category=task, output_folder=f"{subset}/{language}", images=images,
                       turns=(instruction.strip(),), language=language, subtask=subset, categories=(task,),
                       reference_text=hint, reference_images=refs,
                       judge_instruction=(row.get("prompt") or "").strip(),
                       flags=frozenset({"multi_image"} if len(images) > 1 else ()))

    def judge_calls(self, case: Case, output: Path) -> list[JudgeCall]:
        if not case.judge_instruction:
            raise ValueError(f"case {case.id} has no `prompt`: the script does not judge it")
        multi = len(case.images) > 1
        calls = []
        for metric in TASK_METRICS[case.category]:
            if metric == VQ:
                calls.append(JudgeCall(metric, metric_prompt(metric, multi), None, (output,), text_first=True))
                continue
            extras = case.reference_images if metric in (IF, KF) else ()
            calls.append(JudgeCall(metric, metric_prompt(metric, multi), {"instruction": case.judge_instruction or ""},
                                   (*case.images, output, *extras), text_first=True))
        return calls

    def render_prompt(self, prompts: Any, call: JudgeCall, what: str) -> str:
        base = prompts.get(call.prompt)
        if call.variables is None:  # visual quality: the prompt alone
            return base
        return base + "\n\n" + f"Editing instruction: {call.variables['instruction']}"

    def judge_images(self, case: Case, call: JudgeCall) -> list[Any]:
        """The labelled image sequence of the script's message (text parts in place)."""
        images = [self.judge_image(p, call) for p in call.images]
        if call.dimension == VQ:
            return ["Image:", images[0]]
        n = len(case.images)
        parts: list[Any] = []
        if n > 1:
            for k, im in enumerate(images[:n], start=1):
                parts += [f"Input image #{k}:", im]
        elif n == 1:
            parts += ["Input image:", images[0]]
        parts += ["Edited image:", images[n]]
        if call.dimension in (IF, KF):
            if case.reference_text:
                parts.append(self._hint_preamble + case.reference_text)
            for im in images[n + 1:]:
                parts += ["Reference image:", im]
        return parts

    _hint_preamble = ""  # set from the pinned evaluation_utils.py by `bind_prompts`

    def bind_prompts(self, prompts: Any) -> None:
        self._hint_preamble = hint_preamble(prompts.source_of("evaluation_utils.py"))

    def judge_image(self, path: Path, call: JudgeCall) -> Image.Image:
        """Fit within 512 x 512, RGB, JPEG quality 90 (the script's encode_image_to_base64)."""
        return prepare_judge_image(path, side=512, quality=90)

    def parse(self, dimension: str, reply: str) -> float | None:
        value = parse_score(reply)
        return None if value is None else float(value)

    def missing_verdict(self, case: Case) -> dict[str, float | None]:
        return {}  # the script scores 0, which drops the row: counted as missing here

    def aggregator(self) -> "WiseEditAggregator":
        return WiseEditAggregator()


def _ref_paths(raw: str) -> list[str]:
    """The script's reading of `ref`: a JSON list or string, else split on | or ;, else the value."""
    raw = raw.strip()
    if not raw:
        return []
    try:
        value = json.loads(raw)
        if isinstance(value, list):
            return [str(x).strip() for x in value if str(x).strip()]
        if isinstance(value, str):
            return [value.strip()]
    except ValueError:
        pass
    for sep in ("|", ";"):
        if sep in raw:
            return [p.strip() for p in raw.split(sep) if p.strip()]
    return [raw]


class WiseEditAggregator(CountingAggregator):
    """Pairs the two languages of each row (a row is kept only when both are fully scored), streaming:
    only rows still waiting for their other language are held."""

    def __init__(self):
        self.pending: dict[tuple[str, str], dict[str, Any]] = {}
        self.sums: dict[tuple[str, str, str], float] = {}
        self.counts: dict[tuple[str, str, str], int] = {}
        super().__init__()
        self.kept_rows = 0
        self.dropped_rows = 0

    def add(self, row: dict[str, Any]) -> None:
        self.count(row)
        key = (row.get("subtask") or row["output_folder"].split("/")[0], row["id"])
        other = self.pending.pop(key, None)
        if other is None:
            self.pending[key] = row
            return
        self._pair(row["category"], {r["language"]: r for r in (row, other)})

    def _pair(self, task: str, by_language: dict[str, dict[str, Any]]) -> None:
        metrics = TASK_METRICS[task]
        for language in LANGUAGES:
            r = by_language.get(language)
            dims = (r or {}).get("dims") or {}
            if r is None or r["status"] != Status.OK or any(not dims.get(m) for m in metrics):
                self.dropped_rows += 1
                return
        self.kept_rows += 1
        for language in LANGUAGES:
            dims = by_language[language]["dims"]
            for m in metrics:
                k = (task, language, m)
                self.sums[k] = self.sums.get(k, 0.0) + float(dims[m])
                self.counts[k] = self.counts.get(k, 0) + 1

    def result(self) -> dict[str, Any]:
        for (subset, _), row in list(self.pending.items()):  # a language never judged: the row is dropped
            self._pair(row["category"], {row["language"]: row})
        self.pending.clear()
        table: dict[str, float | None] = {}
        for task, metrics in TASK_METRICS.items():
            for language in LANGUAGES:
                values = []
                for m in metrics:
                    n = self.counts.get((task, language, m), 0)
                    v = None if n == 0 else round(max((self.sums[(task, language, m)] / n - 1.0) / 9.0 * 100.0, 0.0), 1)
                    table[f"{task}_{m}_{language}"] = v
                    values.append(v)
                table[f"{task}_overall_{language}"] = None if None in values else sum(values) / len(values)
        for language in LANGUAGES:
            basics = [table[f"{t}_overall_{language}"] for t in BASIC_TASKS]
            table[f"basic_overall_{language}"] = None if None in basics else sum(basics) / len(basics)
        cx = [table[f"WiseEdit_Complex_overall_{language}"] for language in LANGUAGES]
        table["WiseEdit_Complex_overall"] = None if None in cx else sum(cx) / 2.0
        rows = [{"-": k, "value": v} for k, v in table.items()]
        return {"headline": {"name": "basic_overall_en", "value": table["basic_overall_en"]},
                "official": rows,
                "ours": self.ours(scored=2 * self.kept_rows, rows_kept=self.kept_rows,
                                  rows_dropped=self.dropped_rows)}
