"""KRIS-Bench: loader for the official folder layout, per-family judge plans, and the aggregation the
paper reports.

Rules as read in mercurystraw/Kris_Bench@2114fec (metrics_common.py, metrics_knowledge.py,
metrics_view_change.py, metrics_temporal_prediction.py, metrics_multi_element.py). The repository ships
no aggregation script: the per-dimension means, the (s - 1) x 25 mapping and the overall follow the
paper (and the knowledge-type grouping lmms-eval derived from it), not code. The repository's prompt
module (`ReasonEdit.prompts` / `utils/prompts.py`) is not part of the snapshot we could read, so the
prompt file is not pinned: pass it with --judge-prompts (its sha256 is recorded as unverified).
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Iterator

from ciebench.status import Status

from .base import Aggregator, Benchmark, Case, Groups, JudgeCall, percent, read_annotations

VC, IF, VQ, KP = "consistency_score", "instruction_score", "quality_score", "knowledge_score"
DIM_NAMES = {VC: "Visual Consistency", IF: "Instruction Following", VQ: "Visual Quality", KP: "Knowledge Plausibility"}

# Task folders as the data names them (the scripts use older names for four of them: object_count,
# daily_life, rule_reasoning, view_pair).
COMMON = ("count_change", "color_change", "anomaly_correction", "position_movement", "size_adjustment",
          "part_completion", "multi-instruction_execution")
KNOWLEDGE = ("abstract_reasoning", "mathematics", "practical_knowledge", "medicine", "rule-based_reasoning",
             "biology", "geography", "chemistry", "humanities", "physics")
VIEWPOINT, TEMPORAL, MULTI_ELEMENT = "viewpoint_change", "temporal_prediction", "multi-element_composition"
TASKS = COMMON + (VIEWPOINT, TEMPORAL, MULTI_ELEMENT) + KNOWLEDGE

# Knowledge types of the paper (grouping as lmms-eval's port derives it from the paper).
KNOWLEDGE_TYPE = {
    **{t: "Factual Knowledge" for t in ("count_change", "color_change", "size_adjustment", "part_completion",
                                        "anomaly_correction", "position_movement", VIEWPOINT, TEMPORAL)},
    **{t: "Conceptual Knowledge" for t in ("practical_knowledge", "humanities", "biology", "chemistry",
                                           "geography", "mathematics", "medicine", "physics")},
    **{t: "Procedural Knowledge" for t in ("abstract_reasoning", "rule-based_reasoning",
                                           "multi-instruction_execution", MULTI_ELEMENT)},
}
_FRAME = re.compile(r"(\d+)-(\d+)")


def reply_rule(task: str) -> str:
    """The parser of the official script that scores `task` (see `extract_score`)."""
    if task in (TEMPORAL, MULTI_ELEMENT):
        return BARE_RULE
    return KNOWLEDGE_RULE if task in KNOWLEDGE else COMMON_RULE


def dimensions_for(task: str) -> tuple[str, ...]:
    return (VC, IF, VQ, KP) if task in KNOWLEDGE else (VC, IF, VQ)


def _frame(path: Path) -> int:
    match = _FRAME.search(path.name)
    return int(match.group(2)) if match else 0


def temporal_frames(case: Case) -> list[tuple[str, Path | None]]:
    """The temporal script's frames in frame order, the prediction (None) at its place among the
    references: (the label the script sends before the image, image). A stable sort, references
    first, as the script's list.sort."""
    n = target_frame([p.name for p in case.images])
    frames = [(_frame(p), "Reference", p) for p in case.images] + [(n, "Generated", None)]
    return [(f"Frame {f} ({kind}):", p) for f, kind, p in sorted(frames, key=lambda frame: frame[0])]


def target_frame(names: list[str]) -> int:
    """The frame a temporal case asks for: the one of 1-4 missing from the input names "<id>-<frame>"."""
    frames = {int(m.group(2)) for m in (_FRAME.search(Path(n).name) for n in names) if m}
    missing = {1, 2, 3, 4} - frames
    return missing.pop() if len(missing) == 1 else (max(frames) + 1 if frames else 1)


# How each official script reads a one-score reply. metrics_common.py (common tasks; view change imports
# it): a JSON object holding the key (null or not an integer: read on), then "key score[:] n", "n/5",
# "n out of 5", the first lone 1-5. metrics_temporal_prediction.py and metrics_multi_element.py call the
# same extractor without the "key score" pattern. metrics_knowledge.py (consistency and quality of the
# knowledge tasks): a JSON object that parses decides (null: no score), "key score: n" needs its colon.
COMMON_RULE, BARE_RULE, KNOWLEDGE_RULE = "common", "bare", "knowledge"
_DEFAULT_PATTERNS = (r"([1-5])\s*/\s*5", r"([1-5])\s+out\s+of\s+5", r"\b([1-5])\b")
_NOT_READ = object()


def _json_object(reply: str, key: str) -> dict[str, Any] | None:
    """The first {...} holding `key`, parsed; None when there is none or it does not parse."""
    match = re.search(r"\{[^{}]*" + re.escape(key) + r"[^{}]*\}", reply, re.DOTALL)
    if not match:
        return None
    try:
        data = json.loads(match.group(0))
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


def _json_score(reply: str, key: str) -> Any:
    """The integer under `key` in the reply's JSON object, None where it says null, else `_NOT_READ`."""
    data = _json_object(reply, key)
    if data is None:
        return _NOT_READ
    value = data.get(key)
    if value is None:
        return None
    try:
        return int(value)
    except (ValueError, TypeError):
        return _NOT_READ


def extract_score(reply: str, key: str, rule: str = COMMON_RULE) -> int | None:
    """A one-score reply read as the official script of its task family reads it (`rule`, above)."""
    reply = reply or ""
    value = _json_score(reply, key)
    if isinstance(value, int) or (value is None and rule == KNOWLEDGE_RULE):
        return value
    stem = key.split("_")[0]
    keyed = {COMMON_RULE: (stem + r"[_\s]*score\s*[:：]?\s*([1-5])",),
             KNOWLEDGE_RULE: (stem + r"[_\s]*score\s*[:：]\s*([1-5])",), BARE_RULE: ()}[rule]
    for pattern in keyed + _DEFAULT_PATTERNS:
        m = re.search(pattern, reply, re.IGNORECASE | re.DOTALL)
        if m:
            return int(m.group(1))
    return None


class KrisBench(Benchmark):
    name = "kris"
    title = "KRIS-Bench"
    size = 1267
    reply_parsing = "2"  # 2: each family's own script's parser (1 read every reply with metrics_common's)
    categories = TASKS
    licence = "not stated"
    needs = ("judge: OpenAI-compatible VLM (published: gpt-4o)", "prompt file via --judge-prompts (not pinned)",
             "multi_image editor for temporal_prediction and multi-element_composition")
    hub_id = "wukeming11/kris-bench"  # a mirror; the official repository names no hub id
    code = "mercurystraw/Kris_Bench@2114fec9afadbabf5964032cf7d0b5e3074243a2"
    headline = "Overall Score"
    dimensions = (VC, IF, VQ, KP)
    score_scale = (1, 5)
    judges = {"main": {"model": "gpt-4o", "temperature": None}}
    # Every metrics_*.py sends the prompt text first, then each image after a short label (judge_images).
    text_first = True
    prompts = None
    ground_truth = True  # gt_img: the expected output, where a case has one
    prompt_file = "prompts.py"
    prompt_source = "mercurystraw/Kris_Bench: the prompt module its metrics_*.py import (ReasonEdit.prompts / utils/prompts.py)"

    def cases(self, root: str | Path | None = None) -> Iterator[Case]:
        base = self._root(root)
        if base.is_file() and base.suffix == ".parquet":
            base = materialise_rows(_parquet_rows(base), base.with_suffix(".kris"))
        if (base / "KRIS_Bench").is_dir():
            base = base / "KRIS_Bench"
        # Every task or none: a copy lacking a task would give a smaller benchmark's numbers, and its
        # category and knowledge-type rows would simply vanish.
        absent = [t for t in TASKS if not (base / t / "annotation.json").is_file()]
        if absent:
            raise FileNotFoundError(f"kris: {base} lacks {len(absent)} of the {len(TASKS)} task folders "
                                    f"(<task>/annotation.json): {', '.join(absent)}")
        for task in TASKS:
            path = base / task / "annotation.json"
            annotations = read_annotations(path, "kris", dict)
            for key, entry in annotations.items():
                try:
                    yield self._case(task, str(key), entry, base / task)
                except (KeyError, TypeError) as exc:
                    raise ValueError(f"kris: {path} entry {key}: missing field {exc}") from exc

    def _root(self, root: str | Path | None) -> Path:
        if root is not None:
            return Path(root)
        return materialise_hub(self.hub_id, self.hub_revision)

    def _case(self, task: str, key: str, entry: dict[str, Any], folder: Path) -> Case:
        originals = entry["ori_img"]
        originals = list(originals) if isinstance(originals, (list, tuple)) else [originals]
        # The annotation files use ins_en / explain_en; the scripts read instruction / explain: follow the data.
        instruction = entry.get("ins_en") or entry.get("instruction") or ""
        explanation = entry.get("explain_en") or entry.get("explain") or ""
        flags = {"knowledge"} if task in KNOWLEDGE else set()
        gt = entry.get("gt_img")
        return Case(id=key, category=task, output_folder=task, images=tuple(folder / n for n in originals),
                    turns=(instruction,), subtask=KNOWLEDGE_TYPE.get(task), explanation=explanation,
                    ground_truth_image=folder / gt if gt else None, categories=(task,), flags=frozenset(flags))

    def judge_calls(self, case: Case, output: Path) -> list[JudgeCall]:
        task, v = case.category, {"instruct": case.instruction}
        source = case.images[0]
        rule = reply_rule(task)
        quality = JudgeCall(VQ, "prompt_quality", None, (output,), reply_rule=rule)
        if task == TEMPORAL:
            ordered = tuple(output if p is None else p for _, p in temporal_frames(case))
            vt = {"N": str(target_frame([p.name for p in case.images])), **v}
            return [JudgeCall(VC, "prompt_consist_temporal", vt, ordered, reply_rule=rule),
                    JudgeCall(IF, "prompt_instruction_temporal", vt, ordered, reply_rule=rule), quality]
        if task == MULTI_ELEMENT:
            refs = (*case.images, output)
            return [JudgeCall(VC, "prompt_consist_multi", v, refs, reply_rule=rule),
                    JudgeCall(IF, "prompt_instruction_multi", v, refs, reply_rule=rule), quality]
        calls = [JudgeCall(VC, "prompt_consist", v, (source, output), reply_rule=rule)]
        if task in KNOWLEDGE:
            calls.append(JudgeCall("dual", "prompt_dual_evaluation", {**v, "explanation": case.explanation or ""},
                                   (source, output)))
        elif task == VIEWPOINT:
            if case.ground_truth_image is None:
                raise ValueError(f"viewpoint case {case.id} has no gt_img")
            calls.append(JudgeCall(IF, "prompt_view_instruction_following", v, (source, output, case.ground_truth_image)))
        elif task == "anomaly_correction":
            # differs: the script tests for "abnormality_correction", a name no data folder has, so its
            # anomaly cases get the plain prompt; the explanation-aware prompt is the intended one.
            calls.append(JudgeCall(IF, "prompt_abnormal_instruction_following",
                                   {**v, "explanation": case.explanation or ""}, (source, output)))
        else:
            calls.append(JudgeCall(IF, "prompt_instruction_following", v, (source, output)))
        return calls + [quality]

    judge_image_prep = ("file pixels, RGB (temporal_prediction: every image of its three calls, JPEG quality 85, "
                        "decoded); each image after its script's label")

    def parse(self, dimension: str, reply: str) -> float | None:
        return extract_score(reply, dimension)

    def parse_reply(self, call: JudgeCall, reply: str) -> dict[str, float | None]:
        """Each family's script reads its replies its own way (`reply_rule`, `extract_dual`)."""
        if call.dimension == "dual":
            return {IF: extract_dual(reply, IF), KP: extract_dual(reply, KP)}
        return {call.dimension: extract_score(reply, call.dimension, call.reply_rule or COMMON_RULE)}

    def reread(self, row: dict[str, Any]) -> dict[str, Any]:
        """A row parsed before reply_parsing 2, read again from its stored replies by its family's parser."""
        replies = row.get("replies")
        if row.get("reply_parsing") == self.reply_parsing or not isinstance(replies, dict) or not replies:
            return row
        rule = reply_rule(row.get("category", ""))
        dims: dict[str, float | None] = {}
        for dimension, text in replies.items():
            if text is None:  # the call failed: no score, as when it was judged
                dims.update({IF: None, KP: None} if dimension == "dual" else {dimension: None})
            else:
                dims.update(self.parse_reply(JudgeCall(dimension, "", None, (), reply_rule=rule), text))
        missing = [d for d, v in dims.items() if v is None]
        status = Status.JUDGE_ERROR if missing else Status.OK
        errors = [row["error"]] if row.get("error") and None in replies.values() else []  # a failed call's own
        if missing:
            errors.append(f"kris case {row.get('id')}: no score for {', '.join(missing)} in the judge's replies "
                          f"(read again by reply parsing {self.reply_parsing})")
        error = "; ".join(errors) or None
        return {**row, "dims": dims, "status": status, "error": error, "reply_parsing": self.reply_parsing}

    def judge_images(self, case: Case, call: JudgeCall) -> list[Any]:
        """The script's message after the prompt text: each image after its label, in order. Labels per
        script: metrics_temporal_prediction.py "Frame N (Reference|Generated):" (frame order) and, for
        quality, "This is the image to evaluate:"; metrics_multi_element.py "Reference Image k:" then
        "Predicted Image:", and the same quality label; metrics_common.py, metrics_knowledge.py and
        metrics_view_change.py "This is the original image:", "This is the edited image:" (view change:
        then "This is the ground truth image:"), quality with the edited image's label only. The
        temporal script re-encodes every image, the prediction's quality call included, as JPEG quality
        85; the others send the files' bytes (here their pixels)."""
        labels = self._labels(case, call)
        if len(labels) != len(call.images):
            raise ValueError(f"kris case {case.id} ({call.dimension}): {len(call.images)} images for labels {labels}")
        if case.category == TEMPORAL:
            from .judging import prepare_judge_image

            images = [prepare_judge_image(p, side=0, quality=85) for p in call.images]
        else:
            images = [self.judge_image(p, call) for p in call.images]
        return [part for label, image in zip(labels, images) for part in (label, image)]

    @staticmethod
    def _labels(case: Case, call: JudgeCall) -> list[str]:
        family = case.category if case.category in (TEMPORAL, MULTI_ELEMENT) else "common"
        if call.dimension == VQ:
            return ["This is the edited image:" if family == "common" else "This is the image to evaluate:"]
        if family == TEMPORAL:
            return [label for label, _ in temporal_frames(case)]
        if family == MULTI_ELEMENT:
            return [f"Reference Image {k}:" for k in range(1, len(case.images) + 1)] + ["Predicted Image:"]
        return ["This is the original image:", "This is the edited image:", "This is the ground truth image:"][:len(call.images)]

    def missing_verdict(self, case: Case) -> dict[str, float | None]:
        """The scripts skip a case without output (no metrics entry): no scores, counted as missing."""
        return {}

    def aggregator(self) -> "KrisAggregator":
        return KrisAggregator()


def extract_dual(reply: str, key: str) -> int | None:
    """The knowledge scripts' dual reply: the JSON object holding instruction_score decides both scores
    when it parses and both are integers or null; else "instruction score: n" / "knowledge score: n"
    (colon required), and nothing else."""
    data = _json_object(reply or "", IF)
    if data is not None:
        try:
            values = {k: None if data.get(k) is None else int(data.get(k)) for k in (IF, KP)}
            return values[key]
        except (ValueError, TypeError):
            pass
    m = re.search(key.split("_")[0] + r"[_\s]*score\s*[:：]\s*([1-5])", reply or "", re.IGNORECASE)
    return int(m.group(1)) if m else None


class KrisAggregator(Aggregator):
    """Per-dimension means (1-5 and (s - 1) x 25) per task, knowledge type and overall; a group's score
    is the mean of its applicable dimension means on the 0-100 scale (the paper's reporting)."""

    def __init__(self) -> None:
        self.groups = Groups()
        self.status_counts: dict[str, int] = {}

    def add(self, row: dict[str, Any]) -> None:
        status = row["status"]
        self.status_counts[status] = self.status_counts.get(status, 0) + 1
        if status != Status.OK:
            # missing / unsupported: no scores (the scripts skip them); a judge error has none either,
            # so every dimension mean covers the same cases and coverage counts only scored ones
            return
        task = row["category"]
        labels = ["Overall", KNOWLEDGE_TYPE.get(task, "Other"), task]
        for dim in dimensions_for(task):
            value = row["dims"].get(dim)
            for label in labels:
                self.groups.add(label, dim, value)

    def _row(self, label: str) -> dict[str, Any]:
        out: dict[str, Any] = {"-": label}
        means = []
        for dim in (VC, IF, VQ, KP):
            mean = self.groups.mean(label, dim)
            out[DIM_NAMES[dim]] = percent(mean)
            out[f"{DIM_NAMES[dim]} (1-5)"] = mean
            if mean is not None:
                means.append(percent(mean))
        out["Score"] = sum(means) / len(means) if means else None
        out["n"] = self.groups.count(label, VC)
        return out

    def result(self) -> dict[str, Any]:
        order = ["Overall"] + [k for k in ("Factual Knowledge", "Conceptual Knowledge", "Procedural Knowledge")
                               if k in self.groups.order] + [t for t in TASKS if t in self.groups.order]
        table = [self._row(label) for label in order]
        overall = table[0]["Score"] if table else None
        scored = self.groups.count("Overall", VC)
        total = sum(self.status_counts.values())
        return {"headline": {"name": "Overall Score", "value": overall, "ci95": None},
                "official": table,
                "ours": {"cases": total, "status_counts": dict(sorted(self.status_counts.items())),
                         "scored": scored, "coverage": scored / total if total else None,
                         "note": "aggregation follows the KRIS-Bench paper; the repository ships no aggregation script"}}


def _parquet_rows(path: Path) -> Iterator[dict[str, Any]]:
    import datasets

    yield from datasets.Dataset.from_parquet(str(path))


def materialise_hub(hub_id: str | None, revision: str | None) -> Path:
    """The hub copy as the official folder layout, written once under the cache."""
    import datasets

    from ciebench.cache import cache_root

    target = cache_root() / "benchmarks" / "kris" / (revision or "main")
    if (target / "complete").is_file():
        return target
    try:
        rows = datasets.load_dataset(hub_id, revision=revision, split="train")
    except Exception as exc:  # offline or missing: name the way out
        raise FileNotFoundError(f"cannot load {hub_id}@{revision or 'main'} ({type(exc).__name__}: {exc}); "
                                "pass the KRIS_Bench folder with --benchmark-root") from exc
    return materialise_rows(rows, target)


def materialise_rows(rows, target: Path) -> Path:
    """Rows (category, image_id, ori_images [PIL], ori_img names, gt_image / gt_img, ins_en, explain_en:
    the fields lmms-eval reads from the mirror) written as <task>/annotation.json + image files."""
    from ciebench.io import atomic_write_json, atomic_write_text

    annotations: dict[str, dict[str, Any]] = {}
    for n, row in enumerate(rows):
        task, key = str(row["category"]), str(row.get("image_id") or row.get("id") or n)
        names = row.get("ori_img") or [f"{key}-{i}.png" for i in range(len(row["ori_images"]))]
        names = [names] if isinstance(names, str) else list(names)
        for name, image in zip(names, row["ori_images"]):
            _save(image, target / task / name)
        entry = {"ori_img": names if len(names) > 1 else names[0], "ins_en": row.get("ins_en") or "",
                 "explain_en": row.get("explain_en") or ""}
        if row.get("gt_image") is not None:
            gt_name = row.get("gt_img") or f"{key}-gt.png"
            _save(row["gt_image"], target / task / gt_name)
            entry["gt_img"] = gt_name
        annotations.setdefault(task, {})[key] = entry
    for task, entries in annotations.items():
        atomic_write_json(target / task / "annotation.json", entries)
    atomic_write_text(target / "complete", "ok\n")
    return target


def _save(image: Any, path: Path) -> None:
    import io

    from PIL import Image

    from ciebench.io import atomic_write_bytes

    if isinstance(image, dict):
        image = Image.open(io.BytesIO(image["bytes"]))
    buf = io.BytesIO()
    image.convert("RGB").save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue())
