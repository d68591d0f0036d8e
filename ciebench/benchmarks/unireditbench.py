"""UniREditBench: reasoning-based editing over real-world and game-world scenes, judged against a
textual and a ground-truth image reference.

Rules as read in Maplebb/UniREditBench@a7015c5 (`eval/gpt_eval_uniredit.py`, `eval/utils.py`):
- data: `data.json`, a list of cases with `original_image_path`, `reference_image_path` (the
  ground-truth image), `instruction`, `rules` (game-world cases only), `name` (the evaluation
  dimension), `idx`, `reference_effect` (the textual reference); outputs at `OUTPUT/<name>/<idx>.png`;
- game rules are prepended to the instruction: `rules + "\\n" + instruction`, for every prompt;
- three judge calls, text before images: appearance consistency `prompt_consist` (source, output),
  reasoning `prompt_reasoning_w_ref_image` with the instruction and `reference_effect` (source,
  ground truth, output), visual plausibility `prompt_generation` (output); images shrunk to fit
  768 x 768, JPEG, detail high; gpt-4.1-2025-04-14 at temperature 0, max_tokens 4096;
- a reply's score is the first number after the first "Final Score" that has one (then "Final
  Scores"); score = 0.3 AC + 0.5 R + 0.2 VP (no halving); accuracy = share of cases with all three 5;
  reported overall, per dimension, and per `name`, with the percentage form 25 (s - 1).

differs: the script drops a case whose output or any dimension is missing from both score and
accuracy (a NaN that pandas skips); ciebench drops it the same way from the official numbers, and
reports it as missing with coverage. The script finds outputs only as .png; .jpg and .jpeg are
accepted too.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

from ciebench.assets import PinnedAsset
from ciebench.status import Status

from .base import Benchmark, Case, CountingAggregator, Groups, JudgeCall, percent, read_annotations
from .rise import extract_final_score  # the same `extract` as RISEBench's scripts

COMMIT = "a7015c5c2d17aecb1a5af4af1b234c357d86cc7d"
PROMPTS = PinnedAsset(
    name="unireditbench/utils.py",
    url=f"https://raw.githubusercontent.com/Maplebb/UniREditBench/{COMMIT}/eval/utils.py",
    sha256="2823400b1cc083fcaa86aa37c35f0fa7dc8b8af520f3c1de045547896dd76870",
    source=f"Maplebb/UniREditBench@{COMMIT}:eval/utils.py", licence="Apache-2.0", filename="utils.py")
AC, R, VP = "ApprConsistency", "Reasoning", "VisualPlausibility"
ARCHIVES = ("original_image.zip", "reference_image.zip")


def case_score(dims: dict[str, float | None]) -> float | None:
    ac, r, vp = dims.get(AC), dims.get(R), dims.get(VP)
    if ac is None or r is None or vp is None:
        return None
    return 0.3 * ac + 0.5 * r + 0.2 * vp


def case_complete(dims: dict[str, float | None]) -> int | None:
    values = [dims.get(d) for d in (AC, R, VP)]
    if any(v is None for v in values):
        return None
    return int(all(v == 5 for v in values))


class UniREditBench(Benchmark):
    name = "unireditbench"
    title = "UniREditBench"
    size = 2700
    categories = ()  # the 18 evaluation dimensions (`name`) are read from the data
    languages = ("en",)
    licence = "Apache-2.0"
    needs = ("judge: gpt-4.1-2025-04-14 (OpenAI-compatible VLM)",)
    score_scale = (1, 5)
    hub_id = "maplebb/UniREditBench"
    hub_revision = None  # not pinned: the hub revision could not be read offline; the snapshot's is recorded
    code = f"Maplebb/UniREditBench@{COMMIT}:eval/gpt_eval_uniredit.py"
    headline = "Overall Accuracy"
    dimensions = (AC, R, VP)
    judges = {"main": {"model": "gpt-4.1-2025-04-14", "temperature": 0.0, "max_tokens": 4096}}
    prompts = PROMPTS
    ground_truth = True  # reference_image_path: the expected output of every case

    def cases(self, root: str | Path | None = None) -> Iterator[Case]:
        from .hub import archives_root

        folder = Path(root) if root is not None else self.hub_folder()
        path = folder if folder.is_file() else folder / "data.json"
        items = read_annotations(path, self.name, list)
        # The release ships its images as original_image.zip and reference_image.zip beside data.json,
        # to be unzipped there (the official README): read them unzipped in place, else unpacked once.
        first = items[0] if items and isinstance(items[0], dict) else {}
        base = archives_root(path.parent, ARCHIVES, str(first.get("original_image_path") or ""), self.name)
        for n, item in enumerate(items):
            try:
                yield self._case(item, base)
            except (KeyError, TypeError, ValueError, AttributeError) as exc:
                where = item.get("idx", "?") if isinstance(item, dict) else "?"
                raise ValueError(f"{self.name}: {path} entry {n} (idx {where}): {exc}") from exc

    def _case(self, item: dict[str, Any], base: Path) -> Case:
        name, idx = str(item["name"]), str(item["idx"])
        instruction = str(item["instruction"])
        rules = item.get("rules") or ""
        if isinstance(rules, str) and rules:  # game-world cases: the rules go before the instruction
            instruction = rules + "\n" + instruction
        return Case(id=idx, category=name, output_folder=name, images=(base / item["original_image_path"],),
                    turns=(instruction,), categories=(name,),
                    reference_text=str(item.get("reference_effect") or ""),
                    ground_truth_image=base / item["reference_image_path"],
                    flags=frozenset({"game"} if rules else ()))

    def judge_calls(self, case: Case, output: Path) -> list[JudgeCall]:
        if case.ground_truth_image is None or not case.ground_truth_image.is_file():
            raise ValueError(f"case {case.id}: ground-truth image {case.ground_truth_image} not found")
        v = {"instruct": case.turns[0]}
        source = case.images[0]
        return [JudgeCall(AC, "prompt_consist", v, (source, output), text_first=True),
                JudgeCall(R, "prompt_reasoning_w_ref_image", {**v, "reference": case.reference_text or ""},
                          (source, case.ground_truth_image, output), text_first=True),
                JudgeCall(VP, "prompt_generation", None, (output,), text_first=True)]

    def judge_image(self, path: Path, call: JudgeCall):
        from .judging import prepare_judge_image

        return prepare_judge_image(path)  # fit 768 x 768, JPEG, as the script's encode_image_to_base64

    def parse(self, dimension: str, reply: str) -> float | None:
        value = extract_final_score(reply)
        return None if value is None else float(value)

    def official_verdicts(self, path: Path) -> Iterator[dict[str, Any]]:
        """Rows of the script's per-case judge table (`MODEL_judge.xlsx`, or a CSV export of it:
        name, idx, ApprConsistency, Reasoning, VisualPlausibility)."""
        import pandas as pd

        frame = pd.read_excel(path) if path.suffix == ".xlsx" else pd.read_csv(path)
        needed = {"name", "idx", AC, R, VP}
        if needed - set(frame.columns):
            raise ValueError(f"--verdicts {path}: missing columns {sorted(needed - set(frame.columns))}")
        for n, item in enumerate(frame.to_dict("records")):
            dims = {d: (None if pd.isna(item[d]) else float(item[d])) for d in (AC, R, VP)}
            name = str(item["name"])
            yield {"id": str(item["idx"]), "category": name, "categories": [name], "output_folder": name,
                   "flags": [], "status": Status.OK if None not in dims.values() else Status.JUDGE_ERROR, "dims": dims,
                   "source_row": n}

    def missing_verdict(self, case: Case) -> dict[str, float | None]:
        return {AC: None, R: None, VP: None}  # dropped from the official numbers, counted as missing

    def aggregator(self) -> "UniREditAggregator":
        return UniREditAggregator()


class UniREditAggregator(CountingAggregator):
    """The script's table: Overall (score, percentage, accuracy), the mean of each dimension, and one
    row per evaluation dimension (`Class-<name>`), each mean skipping cases without a score."""

    def __init__(self):
        super().__init__()
        self.groups = Groups()

    def add(self, row: dict[str, Any]) -> None:
        self.count(row)
        # A case with any unparsed reply has no scores at all, as in the script (all three None).
        dims = {} if row["status"] == Status.JUDGE_ERROR else row.get("dims") or {}
        score, complete = case_score(dims), case_complete(dims)
        if score is not None:
            self.scored += 1
        for label in ("Overall", f"Class-{row['category']}"):
            self.groups.add(label, "score", score)
            self.groups.add(label, "complete", complete)
            for d in (AC, R, VP):
                self.groups.add(label, d, dims.get(d))

    def result(self) -> dict[str, Any]:
        g = self.groups
        rows: list[dict[str, Any]] = []

        def add(label: str, score: float | None, accuracy: float | None) -> None:
            rows.append({"-": label, "Score-Origin": score, "Score-Percentage": percent(score), "Accuracy": accuracy})

        add("Overall", g.mean("Overall", "score"), g.mean("Overall", "complete"))
        add("Overall_Reasoning", g.mean("Overall", R), None)
        add("Overall_ApprConsistency", g.mean("Overall", AC), None)
        add("Overall_VisualPlausibility", g.mean("Overall", VP), None)
        for label in sorted(l for l in g.order if l.startswith("Class-")):  # pandas groupby sorts by name
            add(label, g.mean(label, "score"), g.mean(label, "complete"))
        return {
            "headline": {"name": "Overall Accuracy", "value": g.mean("Overall", "complete")},
            "official": rows,
            "ours": self.ours(),
        }
