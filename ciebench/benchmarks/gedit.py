"""GEdit-Bench: real user edit requests in English and Chinese, 11 task groups, judged VIEScore-style.

Rules as read in stepfun-ai/Step1X-Edit@570eba6 (`GEdit-Bench/test_gedit_score.py`,
`calculate_statistics.py`, `viescore/__init__.py`, `viescore/utils.py`, `viescore/mllm_tools/openai.py`):
- semantic consistency (SC): the prompt `_context_no_delimit`, `_prompts_0shot_two_image_edit_rule` and
  `_prompts_0shot_tie_rule_SC` joined by newlines, `<instruction>` replaced by the instruction; the judge
  sees the source and the output, the output first converted to RGB and resized to the source's size;
- perceptual quality (PQ): `_context_no_delimit` and `_prompts_0shot_rule_PQ` joined by a newline, on
  the resized output alone;
- the text goes before the images; images are sent as JPEG; model gpt-4.1, no temperature (the
  provider's default), max_tokens 1400;
- a reply's scores (a JSON object with a `score` list, between `||V^=^V||` delimiters or not) are
  reduced with min: SC = min(scores of the SC reply), PQ = min(scores of the PQ reply); per sample
  O = sqrt(SC x PQ); each of the 11 task groups averages its samples of one language; the overall is
  the unweighted mean of the 11 group means; the "intersection" subset repeats this on the samples
  whose `Intersection_exist` is true.

differs: where the official parser cannot read a verdict it asks once more and then substitutes a
random integer from 0 to 10 (`give_up_parsing`); ciebench never does that: the case is a judge error,
counted and retried on the next run, and never a score. Outputs that do not exist are skipped by the
script (not scored); here too, and they are counted as missing with coverage.
"""
from __future__ import annotations

import io
import json
import math
import re
from pathlib import Path
from typing import Any, Iterator

from PIL import Image, ImageOps

from ciebench.assets import PinnedAsset
from ciebench.cache import cache_root
from ciebench.io import atomic_write_bytes, sha256_bytes
from ciebench.status import Status

from .base import Benchmark, Case, CountingAggregator, Groups, JudgeCall
from .judging import jpeg_roundtrip

COMMIT = "570eba6ebda0c45c013983a483afbf2fd12bfcbc"
PROMPTS = PinnedAsset(
    name="gedit/vie_prompts.py",
    url=f"https://raw.githubusercontent.com/stepfun-ai/Step1X-Edit/{COMMIT}/GEdit-Bench/viescore/vie_prompts.py",
    sha256="010234af186eb0a70fcb99047cd32ad1da01bed59ca1a95a01335426417cf838",
    source=f"stepfun-ai/Step1X-Edit@{COMMIT}:GEdit-Bench/viescore/vie_prompts.py", licence="Apache-2.0",
    filename="vie_prompts.py")
GROUPS = ("background_change", "color_alter", "material_alter", "motion_change", "ps_human", "style_change",
          "subject-add", "subject-remove", "subject-replace", "text_change", "tone_transfer")
LANGUAGES = ("en", "cn")
SC, PQ = "semantics", "quality"
SC_PARTS = ("_context_no_delimit", "_prompts_0shot_two_image_edit_rule", "_prompts_0shot_tie_rule_SC")
PQ_PARTS = ("_context_no_delimit", "_prompts_0shot_rule_PQ")
DELIMITER = "||V^=^V||"


def parse_scores(reply: str) -> list[float] | None:
    """The `score` list of a VIEScore reply, or None when it cannot be read (never a guess).

    Accepted, in the official parser's order: JSON between two `||V^=^V||` delimiters; else the text
    from the first `{` to the last `}`; else a bare list `[a, b]` or a bare integer 0-10. A JSON object
    whose keys lack quotes is read after quoting them (the official `fix_json` also rewrites values;
    replies needing that are errors here). Every score must be a number from 0 to 10."""
    text = (reply or "").strip()
    if text.count(DELIMITER) == 2:
        body = text[text.find(DELIMITER) + len(DELIMITER):text.rfind(DELIMITER)]
    else:
        start, end = text.find("{"), text.rfind("}") + 1
        if start == -1 or end == 0:
            bracket = text[text.find("["):text.rfind("]") + 1] if "[" in text else ""
            if re.fullmatch(r"\[\d+, ?\d+\]", bracket):
                return _checked(json.loads(bracket))
            if re.fullmatch(r"\d+", text) and 0 <= int(text) <= 10:
                return [float(text)]
            return None
        body = text[start:end]
    body = body.strip().replace("\n", "")
    data = _json_object(body)
    if data is None or "score" not in data:
        return None
    scores = data["score"] if isinstance(data["score"], list) else [data["score"]]
    return _checked(scores)


def _json_object(body: str) -> dict | None:
    for candidate in (body, re.sub(r'(?<!")\b(\w+)\b(?!")\s*:', r'"\1":', body)):
        try:
            value = json.loads(candidate)
        except ValueError:
            continue
        return value if isinstance(value, dict) else None
    return None


def _checked(scores: Any) -> list[float] | None:
    if not isinstance(scores, list) or not scores:
        return None
    out = []
    for s in scores:
        if isinstance(s, bool) or not isinstance(s, (int, float)) or not 0 <= s <= 10:
            return None
        out.append(float(s))
    return out


def overall(sc: float | None, pq: float | None) -> float | None:
    return None if sc is None or pq is None else math.sqrt(sc * pq)


class GEditBench(Benchmark):
    name = "gedit"
    title = "GEdit-Bench"
    size = 606
    release_cases = 2 * 606  # each request is two cases, its English and its Chinese instruction
    categories = GROUPS
    languages = LANGUAGES
    licence = "MIT (data); Apache-2.0 (code)"
    needs = ("judge: gpt-4.1 or Qwen2.5-VL-72B-Instruct-AWQ (OpenAI-compatible, e.g. vLLM)",)
    hub_id = "stepfun-ai/GEdit-Bench"
    hub_revision = None  # not pinned: the hub revision could not be read offline; the snapshot's is recorded
    code = f"stepfun-ai/Step1X-Edit@{COMMIT}:GEdit-Bench/"
    headline = "GEdit-Bench-EN avg_overall"
    dimensions = (SC, PQ)
    score_scale = (0, 10)  # also read back from the official per-sample CSV
    judges = {"main": {"model": "gpt-4.1", "temperature": None, "max_tokens": 1400}}
    prompts = PROMPTS

    def cases(self, root: str | Path | None = None) -> Iterator[Case]:
        folder = Path(root) if root is not None else self.hub_folder()
        files = sorted(p for p in folder.rglob("*.parquet") if p.is_file())
        if not files:
            raise FileNotFoundError(f"{self.name}: no .parquet files under {folder} (the hub layout of "
                                    f"{self.hub_id})")
        import pyarrow.parquet as pq

        extracted = cache_root() / "benchmarks" / self.name
        for path in files:
            table = pq.ParquetFile(path)
            for batch in table.iter_batches(batch_size=32):
                for n, item in enumerate(batch.to_pylist()):
                    try:
                        yield self._case(item, extracted)
                    except (KeyError, TypeError, ValueError) as exc:
                        raise ValueError(f"{self.name}: {path} row {item.get('key', n)}: {exc}") from exc

    def _case(self, item: dict[str, Any], extracted: Path) -> Case:
        key, group, language = str(item["key"]), str(item["task_type"]), str(item["instruction_language"])
        if group not in GROUPS:
            raise ValueError(f"unknown task_type {group!r}")
        image = item["input_image"]
        data = image.get("bytes") if isinstance(image, dict) else None
        if not data:
            raise ValueError("input_image has no embedded bytes")
        # The judge and the editor read files: the embedded source is written once, by content.
        source = extracted / sha256_bytes(data)[:16] / f"{key}_SRCIMG.png"
        if not source.is_file():
            with Image.open(io.BytesIO(data)) as im:
                buf = io.BytesIO()
                im.save(buf, format="PNG")
            atomic_write_bytes(source, buf.getvalue())
        flags = {"intersection"} if _true(item.get("Intersection_exist")) else set()
        return Case(id=key, category=group, output_folder=f"fullset/{group}/{language}", images=(source,),
                    turns=(str(item["instruction"]),), language=language, categories=(group,),
                    flags=frozenset(flags))

    def judge_calls(self, case: Case, output: Path) -> list[JudgeCall]:
        return [JudgeCall(SC, "+".join(SC_PARTS), {"instruction": case.turns[0]}, (case.images[0], output),
                          text_first=True),
                JudgeCall(PQ, "+".join(PQ_PARTS), None, (output,), text_first=True)]

    def output_companions(self, case: Case) -> dict[str, Path]:
        """test_gedit_score.py skips any sample without `<key>_SRCIMG.png` beside `<key>.png` (the
        source as generate_image_example.py saves it: the dataset's `input_image` as PNG, which is what
        `_case` writes)."""
        return {f"{case.id}_SRCIMG.png": case.images[0]}

    def render_prompt(self, prompts: Any, call: JudgeCall, what: str) -> str:
        text = "\n".join(prompts.get(part) for part in call.prompt.split("+"))
        if call.variables is not None:  # the script's str.replace, not str.format
            text = text.replace("<instruction>", call.variables["instruction"])
        return text

    def judge_images(self, case: Case, call: JudgeCall) -> list[Image.Image]:
        with Image.open(case.images[0]) as src:
            source = ImageOps.exif_transpose(src).convert("RGB")
        with Image.open(call.images[-1]) as out:
            output = out.convert("RGB").resize(source.size)  # the script's resize: PIL's default filter
        # the official client sends JPEG at PIL's default quality
        return [jpeg_roundtrip(source), jpeg_roundtrip(output)] if call.dimension == SC else [jpeg_roundtrip(output)]

    def parse(self, dimension: str, reply: str) -> float | None:
        scores = parse_scores(reply)
        return None if scores is None else min(scores)

    def official_verdicts(self, path: Path) -> Iterator[dict[str, Any]]:
        """Rows of the script's per-sample CSV (`MODEL_combined_gpt_score.csv` or one group's file:
        source_image, edited_image, instruction, sementics_score, quality_score, intersection_exist,
        instruction_language); the group and key come from `.../fullset/GROUP/LANG/KEY.png`."""
        import pandas as pd

        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
        needed = {"edited_image", "sementics_score", "quality_score", "intersection_exist", "instruction_language"}
        if needed - set(frame.columns):
            raise ValueError(f"--verdicts {path}: missing columns {sorted(needed - set(frame.columns))}")
        for n, item in enumerate(frame.to_dict("records")):
            parts = Path(item["edited_image"]).parts
            group, key = parts[-3], Path(parts[-1]).stem
            dims = {SC: _number(item["sementics_score"]), PQ: _number(item["quality_score"])}
            ok = dims[SC] is not None and dims[PQ] is not None
            yield {"id": key, "category": group, "categories": [group], "language": item["instruction_language"],
                   "output_folder": f"fullset/{group}/{item['instruction_language']}",
                   "flags": ["intersection"] if _true(item["intersection_exist"]) else [],
                   "status": Status.OK if ok else Status.JUDGE_ERROR, "dims": dims, "source_row": n}

    def missing_verdict(self, case: Case) -> dict[str, float | None]:
        return {}  # the script skips a missing output: not scored, counted as missing here

    def aggregator(self) -> "GEditAggregator":
        return GEditAggregator()


def _number(value: Any) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _true(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes")
    return bool(value) and value == value  # NaN is not a flag


class GEditAggregator(CountingAggregator):
    """Per language and subset (fullset, intersection): the mean of SC, PQ and O per task group and
    the unweighted mean of the 11 group means (`avg_semantics`, `avg_quality`, `avg_overall`)."""

    def __init__(self):
        super().__init__()
        self.groups = Groups()
        self.languages: list[str] = []  # as the data spells them (the script's docs say cn, its flag zh)

    def add(self, row: dict[str, Any]) -> None:
        self.count(row)
        status = row["status"]
        dims = row.get("dims") or {}
        sc, pq = dims.get(SC), dims.get(PQ)
        if status != Status.OK or sc is None or pq is None:
            return
        self.scored += 1
        if row["language"] not in self.languages:
            self.languages.append(row["language"])
        subsets = ["fullset"] + (["intersection"] if "intersection" in (row.get("flags") or ()) else [])
        for subset in subsets:
            label = f"{row['language']}/{subset}/{row['category']}"
            self.groups.add(label, SC, sc)
            self.groups.add(label, PQ, pq)
            self.groups.add(label, "overall", overall(sc, pq))

    def _rows(self, language: str, subset: str) -> list[dict[str, Any]]:
        """The script's printout as rows: one per task group, then `Average` (the unweighted mean of the
        11 group means; undefined when a group has no sample, as the script's np.mean gives NaN)."""
        rows = []
        for g in GROUPS:
            label = f"{language}/{subset}/{g}"
            rows.append({"language": language, "subset": subset, "group": g,
                         "semantics": self.groups.mean(label, SC), "quality": self.groups.mean(label, PQ),
                         "overall": self.groups.mean(label, "overall"), "n": self.groups.count(label, SC)})
        average = {"language": language, "subset": subset, "group": "Average", "n": sum(r["n"] for r in rows)}
        for key in ("semantics", "quality", "overall"):
            values = [r[key] for r in rows]
            average[key] = None if any(v is None for v in values) else sum(values) / len(values)
        return rows + [average]

    def result(self) -> dict[str, Any]:
        languages = sorted(set(self.languages) | {"en"}, key=lambda l: (l != "en", l))
        rows = [r for lang in languages for subset in ("fullset", "intersection") for r in self._rows(lang, subset)]
        averages = {f"{r['language']}/{r['subset']}": {f"avg_{k}": r[k] for k in ("semantics", "quality", "overall")}
                    for r in rows if r["group"] == "Average"}
        return {
            "headline": {"name": "GEdit-Bench-EN avg_overall", "value": averages["en/fullset"]["avg_overall"]},
            "averages": averages,
            "official": rows,
            "ours": self.ours(),
        }
