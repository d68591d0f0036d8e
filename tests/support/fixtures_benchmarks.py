"""Generated fixture benchmarks in the official layouts, stand-in prompt files, a scripted judge and
test editors. Nothing here is copied from the official repositories: the prompt files hold only
marker strings with the official prompt *names* and placeholders."""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
from PIL import Image

from ciebench import EditRequest, EditResult, Editor
from ciebench.benchmarks.kris import TASKS

V1_PROMPT_NAMES = ("prompt_consist", "prompt_reasoning", "prompt_reasoning_w_input", "prompt_generation",
                   "prompt_spatial_ref", "prompt_spatial_ref_img", "prompt_spatial_ref_w_input", "prompt_spatial_qual",
                   "prompt_spatial_cons", "prompt_logical_cons_ans", "prompt_logical_cons", "prompt_logical_txt",
                   "prompt_logical_img", "prompt_logical_img_wo_q")
PLUS_PROMPT_NAMES = ("prompt_general_cons", "prompt_general_ref_txt", "prompt_general_ref_img",
                     "prompt_general_ref_txt_w_input", "prompt_general_qual", "prompt_counterfactual_qual",
                     "prompt_spatial_ref_txt", "prompt_spatial_ref_img", "prompt_spatial_ref_txt_w_input",
                     "prompt_spatial_qual", "prompt_spatial_cons", "prompt_logical_cons", "prompt_logical_cons_ans",
                     "prompt_logical_ref_img", "prompt_logical_ref_txt_w_input", "prompt_logical_ref_txt")
I, R = ("instruct",), ("instruct", "reference")
FIELDS = {  # the placeholders each official prompt is formatted with (None: sent without formatting)
    "prompt_consist": I, "prompt_reasoning": R, "prompt_reasoning_w_input": R, "prompt_generation": None,
    "prompt_spatial_ref": R, "prompt_spatial_ref_img": I, "prompt_spatial_ref_w_input": R,
    "prompt_spatial_qual": None, "prompt_spatial_cons": I, "prompt_logical_cons_ans": R, "prompt_logical_cons": I,
    "prompt_logical_txt": R, "prompt_logical_img": I, "prompt_logical_img_wo_q": None,
    "prompt_general_cons": I, "prompt_general_ref_txt": R, "prompt_general_ref_img": I,
    "prompt_general_ref_txt_w_input": R, "prompt_general_qual": None, "prompt_counterfactual_qual": None,
    "prompt_spatial_ref_txt": R, "prompt_spatial_ref_txt_w_input": R, "prompt_logical_ref_img": I,
    "prompt_logical_ref_txt_w_input": R, "prompt_logical_ref_txt": ("reference",),
}


def write_prompt_file(folder: Path, names: tuple[str, ...]) -> Path:
    """A Python file of `NAME = "..."` strings: `PROMPT:<name>` plus the placeholders, and a line that
    must not be executed (the loader parses, never runs)."""
    lines = ["raise SystemExit('this file must be parsed, not executed')"]
    for name in names:
        fields = FIELDS[name]
        if fields is None:  # never formatted by the scripts: braces stay as written
            body = f"PROMPT:{name} literal {{{{braces}}}}"
        else:
            body = f"PROMPT:{name} " + " ".join(f"{f}=<{{{f}}}>" for f in fields) + " literal {{braces}}"
        lines.append(f"{name} = {body!r}")
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "utils.py"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


class Colours:
    """Fixture images are uniform colours. The first input image of case k has red = 20 + 9 k (other
    images use green-only colours), so the judge can tell which case an output (the last image of
    every judge call) belongs to, even after the official JPEG preparation."""

    def __init__(self):
        self.cases: list[str] = []
        self.others = 0

    def first(self, path: Path, case_id: str) -> str:
        self.cases.append(case_id)
        return self._write(path, (20 + 9 * (len(self.cases) - 1), 0, 0))

    def other(self, path: Path) -> str:
        self.others += 1
        return self._write(path, (0, 30 + 5 * self.others, 200))

    @staticmethod
    def _write(path: Path, colour) -> str:
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (40, 32), colour).save(path)
        return path.name

    def case_of(self, image: Image.Image) -> str:
        r = np.asarray(image.convert("RGB"), dtype=np.float64)[..., 0].mean()
        k = int(round((r - 20) / 9))
        if not 0 <= k < len(self.cases):
            raise AssertionError(f"image with mean red {r:.1f} is no case's output")
        return self.cases[k]


def make_rise_v1(root: Path) -> tuple[list[dict], Colours]:
    """A RISEBench v1 folder: data_total.json + <category>_images/. Covers reasoning_img, reference_img,
    logical text and image references, consistency-free true and false, a missing flag."""
    items, colours = [], Colours()

    def add(index, category, n, **extra):
        rel = f"{category}_images/{n}.png"
        colours.first(root / rel, index)
        item = {"index": index, "category": category, "instruction": f"edit for case {index}", "image": rel,
                "subtask": extra.pop("subtask", "Sub A")}
        if "reference_img" in extra:
            ref = f"{category}_images/{n}_ref.png"
            colours.other(root / ref)
            extra["reference_img"] = ref
        item.update(extra)
        items.append(item)

    add("temporal_reasoning_1", "temporal_reasoning", 1, reference="old banana")
    add("temporal_reasoning_2", "temporal_reasoning", 2, reference="tree", reasoning_img=1, consistency_free=True)
    add("causal_reasoning_1", "causal_reasoning", 1, reference="broken egg", consistency_free=False, subtask="Sub B")
    add("spatial_reasoning_1", "spatial_reasoning", 1, reference="assembled", reference_img="x")
    add("spatial_reasoning_2", "spatial_reasoning", 2, reference="arranged")
    add("logical_reasoning_1", "logical_reasoning", 1, reference_txt="answer 7")
    add("logical_reasoning_2", "logical_reasoning", 2, reference_img="x")
    add("logical_reasoning_3", "logical_reasoning", 3, reference_txt="answer 9")
    (root / "data_total.json").write_text(json.dumps(items, indent=1), encoding="utf-8")
    return items, colours


def make_rise_plus(root: Path) -> tuple[list[dict], Colours]:
    """A RISEBench++ folder: data/overall_data.json + images; multi-image, multi-turn (incl. logical
    hybrid), counterfactual, consistency_img, reference_img, Chinese instructions."""
    data, colours = root / "data", Colours()

    def first(rel: str, case: str) -> str:
        colours.first(data / rel, case)
        return rel

    def other(rel: str) -> str:
        colours.other(data / rel)
        return rel

    items = [
        {"index": "temporal_reasoning_1", "category": "temporal_reasoning", "subcategory": "Life", "task_type": "aging",
         "instruction": "make it older", "image": [first("temporal_reasoning_images/1.png", "temporal_reasoning_1")],
         "reference_txt": "older"},
        {"index": "causal_reasoning_1", "category": "causal_reasoning", "subcategory": "State", "task_type": "melt",
         "instruction": "合并两张图", "image": [first("causal_reasoning_images/1_1.png", "causal_reasoning_1"),
                                          other("causal_reasoning_images/1_2.png")],
         "consistency_img": other("causal_reasoning_images/1_cons.png"),
         "reference_img": other("causal_reasoning_images/1_ref.png")},
        {"index": "spatial_reasoning_1", "category": "spatial_reasoning", "subcategory": "Layout", "task_type": "arrange",
         "instruction": "arrange it", "image": [first("spatial_reasoning_images/1.png", "spatial_reasoning_1")],
         "reference_txt": "arranged", "reasoning_img": "yes", "consistency_free": True},
        {"index": "spatial_reasoning_2", "category": "spatial_reasoning", "subcategory": "Layout", "task_type": "view",
         "instruction": "rotate it", "image": [first("spatial_reasoning_images/2.png", "spatial_reasoning_2")],
         "reference_txt": "rotated", "consistency_free": False},
        {"index": "logical_reasoning_1", "category": "logical_reasoning", "subcategory": "Puzzle", "task_type": "sudoku",
         "instruction": "solve it", "image": [first("logical_reasoning_images/1.png", "logical_reasoning_1")],
         "reference_txt": "42"},
        {"index": "counterfactual_reasoning_1", "category": "counterfactual_reasoning", "subcategory": "Physics",
         "task_type": "no-gravity", "instruction": "without gravity",
         "image": [first("counterfactual_reasoning_images/1.png", "counterfactual_reasoning_1")],
         "reference_txt": "floating"},
        {"index": "hybrid_reasoning_1", "category": ["temporal_reasoning", "causal_reasoning"], "multi_turn": True,
         "instruction": ["turn one", "turn two", "turn three"],
         "image": [first("hybrid_reasoning_images/1.png", "hybrid_reasoning_1")], "reference_txt": "after three edits"},
        {"index": "hybrid_reasoning_2", "category": ["logical_reasoning", "spatial_reasoning"], "multi_turn": True,
         "instruction": ["first", "second", "third", "fourth"],
         "image": [first("hybrid_reasoning_images/2.png", "hybrid_reasoning_2")], "reference_txt": "solved"},
    ]
    (data / "overall_data.json").write_text(json.dumps(items, ensure_ascii=False, indent=1), encoding="utf-8")
    return items, colours


PROMPT_RE = re.compile(r"PROMPT:(\w+)")


class ScriptedJudge:
    """Answers each judge request from a table {case id: {dimension: score}}: the dimension from the
    stand-in prompt's name, the case from the colour of the last image (the output)."""

    def __init__(self, table: dict[str, dict[str, int]], colours: Colours):
        self.table = table
        self.colours = colours
        self.seen: list[tuple[str, str, int, str]] = []  # (case, prompt, number of images, text)

    @staticmethod
    def dimension(prompt: str) -> str:
        if prompt.endswith("_cons") or prompt in ("prompt_consist", "prompt_logical_cons_ans"):
            return "ApprConsistency"
        if prompt.endswith("_qual") or prompt == "prompt_generation":
            return "VisualPlausibility"
        return "Reasoning"

    def __call__(self, request) -> str:
        prompt = PROMPT_RE.search(request.text).group(1)
        case = self.colours.case_of(request.images()[-1])
        self.seen.append((case, prompt, len(request.image_urls), request.text))
        score = self.table[case][self.dimension(prompt)]
        return f"Reasoning about the edit.\n**Final Score:** **{score}**"


class StampEditor(Editor):
    """Supports several images and turns; returns its first input image unchanged (so outputs keep the
    case colour), recording what it was given."""

    name = "stamp"
    supports = frozenset({"multi_image", "multi_turn"})
    calls: list[tuple[str, int, str, int]] = []  # (sample id, n images, instruction, turn)

    def edit(self, requests: list[EditRequest]) -> list[EditResult]:
        out = []
        for r in requests:
            StampEditor.calls.append((r.sample_id, len(r.images), r.instruction, r.meta.get("turn", -1)))
            out.append(EditResult(image=r.images[0].copy()))
        return out


class SingleEditor(StampEditor):
    """The same editor without multi-image or multi-turn support."""

    name = "single"
    supports = frozenset()


KRIS_FIELDS = {"prompt_consist": I, "prompt_quality": None, "prompt_instruction_following": I,
               "prompt_abnormal_instruction_following": ("instruct", "explanation"),
               "prompt_view_instruction_following": I, "prompt_consist_temporal": ("N", "instruct"),
               "prompt_instruction_temporal": ("N", "instruct"), "prompt_consist_multi": I,
               "prompt_instruction_multi": I, "prompt_dual_evaluation": ("instruct", "explanation")}
FIELDS.update(KRIS_FIELDS)


def make_kris(root: Path) -> tuple[dict[str, dict], Colours]:
    """A KRIS_Bench folder (<task>/annotation.json + images) with one family each: common, anomaly
    (explanation), viewpoint (gt image), temporal (3 frames), multi-element (3 refs), knowledge; every
    other task folder is there with no case (the loader requires all of them)."""
    base, colours = root / "KRIS_Bench", Colours()
    tasks: dict[str, dict] = {}

    def add(task, key, names, **extra):
        folder = base / task
        colours.first(folder / names[0], f"{task}/{key}")
        for name in names[1:]:
            colours.other(folder / name)
        if "gt_img" in extra:
            colours.other(folder / extra["gt_img"])
        entry = {"ori_img": names if len(names) > 1 else names[0], "ins_en": f"do it, case {task}/{key}",
                 "explain_en": extra.pop("explain_en", "")}
        entry.update(extra)
        tasks.setdefault(task, {})[key] = entry

    add("count_change", "1", ["1.png"])
    add("count_change", "2", ["2.png"])
    add("anomaly_correction", "1", ["1.png"], explain_en="the clock has 13 hours")
    add("viewpoint_change", "1", ["1.png"], gt_img="1_gt.png")
    add("temporal_prediction", "3", ["3-1.png", "3-2.png", "3-4.png"], gt_img="3-3.png")
    add("multi-element_composition", "1", ["1-1.png", "1-2.png", "1-3.png"])
    add("chemistry", "1", ["1.png"], explain_en="iron rusts")
    add("chemistry", "2", ["2.png"], explain_en="copper turns green")
    for task in TASKS:
        (base / task).mkdir(parents=True, exist_ok=True)
        (base / task / "annotation.json").write_text(json.dumps(tasks.get(task, {}), indent=1), encoding="utf-8")
    return tasks, colours


class KrisJudge:
    """Answers KRIS judge requests with JSON scores from a table {"task/id": {key: score}}."""

    KEY = {"prompt_consist": "consistency_score", "prompt_consist_temporal": "consistency_score",
           "prompt_consist_multi": "consistency_score", "prompt_quality": "quality_score"}

    def __init__(self, table: dict[str, dict[str, int]], colours: Colours):
        self.table, self.colours = table, colours
        self.seen: list[tuple[str, str, int, str]] = []
        self.requests: list = []

    def __call__(self, request) -> str:
        prompt = PROMPT_RE.search(request.text).group(1)
        match = re.search(r"case (\S+?)>", request.text)
        case = match.group(1) if match else self.colours.case_of(request.images()[-1])
        self.seen.append((case, prompt, len(request.image_urls), request.text))
        self.requests.append((prompt, request))
        scores = self.table[case]
        if prompt == "prompt_dual_evaluation":
            return json.dumps({"instruction_score": scores["instruction_score"], "instruction_reasoning": "ok",
                               "knowledge_score": scores["knowledge_score"], "knowledge_reasoning": "ok"})
        key = self.KEY.get(prompt, "instruction_score")
        return "Looking at it.\n" + json.dumps({key: scores[key], "reasoning": "fine"})
