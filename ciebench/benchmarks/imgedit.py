"""ImgEdit-Bench: the basic suite (9 edit types) and the understanding-grounded suite (UGE).

Rules as read in PKU-YuanGroup/ImgEdit@547185d (`Benchmark/Basic/basic_bench.py`,
`step1_get_avgscore.py`, `step2_typescore.py`, `Benchmark/UGE/UGE_bench.py`, `get_average_score.py`):
- basic: `basic_edit.json` maps a key to {id: source image path under the image root, prompt,
  edit_type}; the judge prompt is `prompts.json[edit_type]` with `<edit_prompt>` replaced by the
  instruction; UGE: `UGE_edit.json` and the module constant `prompt` of `UGE_bench.py`;
- outputs are `<key>.png` in one folder; the judge gets the text, then the source and the output as
  they are on disk (base64 of the file), model gpt-4o, no temperature, no max_tokens;
- a reply is read line by line: every line `name: N` with N all digits is a score; the item score is
  their mean rounded to 2 decimals (an item with none is left out); basic: the type score is the mean
  of its items rounded to 2 decimals; UGE: one mean over all items rounded to 2 decimals.

The basic script computes no overall: ciebench reports `Overall (ciebench)` = the unweighted mean of
the 9 type scores, rounded to 2 decimals, and says so. The paper is reported to use GPT-4.1 where the
scripts name gpt-4o: both are offered as judge configs (`--judge`), and the run records which was
used. The multi-turn suite is judged by people in the official protocol: not scored here.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Iterator

from ciebench.assets import PinnedAsset, resolve_asset
from ciebench.cache import cache_root
from ciebench.errors import EnvironmentProblem
from ciebench.status import Status

from .base import Benchmark, Case, CountingAggregator, Groups, JudgeCall, read_annotations

COMMIT = "547185d12c08267a862b94248576e1746e479937"
_RAW = f"https://raw.githubusercontent.com/PKU-YuanGroup/ImgEdit/{COMMIT}/Benchmark"


def _asset(name: str, path: str, sha256: str) -> PinnedAsset:
    return PinnedAsset(name=f"imgedit/{name}", url=f"{_RAW}/{path}", sha256=sha256,
                       source=f"PKU-YuanGroup/ImgEdit@{COMMIT}:Benchmark/{path}", filename=Path(path).name)


BASIC_PROMPTS = _asset("prompts.json", "Basic/prompts.json",
                       "f9468dc848776ee0a6c2e2c31e678c7224e9cb61b013747c8c52d4a05627b5a0")
BASIC_EDITS = _asset("basic_edit.json", "Basic/basic_edit.json",
                     "5ee9b7d61e918692416f79896300f738598c83adff8de737b25be4aaff72dc69")
UGE_PROMPTS = _asset("UGE_bench.py", "UGE/UGE_bench.py",
                     "f179b88b5f46d8acc2736d38af1ad4e0570a3d2d30148ca3ea02bf85f2960391")
UGE_EDITS = _asset("UGE_edit.json", "UGE/UGE_edit.json",
                   "807817d8765f8fc45397be9afbf638b00fad91e37c1d44fabd5103df73074d16")
EDIT_TYPES = ("replace", "add", "adjust", "remove", "style", "action", "extract", "background", "compose")
SCORE = "score"


def item_score(reply: str) -> float | None:
    """The scripts' `extract_scores_and_average`: the mean of every `name: N` line, to 2 decimals.
    differs: a criterion scored outside 1-5 is a ValueError (a judge error), where the scripts average
    it in."""
    scores = []
    for line in (reply or "").splitlines():
        parts = line.strip().split(": ")
        if len(parts) == 2 and parts[1].isdigit():
            if not 1 <= int(parts[1]) <= 5:
                raise ValueError(f"criterion {parts[0]!r} scored {parts[1]}, outside the 1-5 scale")
            scores.append(int(parts[1]))
    return round(sum(scores) / len(scores), 2) if scores else None


class _ImgEdit(Benchmark):
    edits: ClassVar[PinnedAsset]
    annotation_name: ClassVar[str] = ""
    # The suite's source-image folder inside the extracted Benchmark.tar (the folder users pass to the
    # official scripts as --origin_img_root): the annotation's `id`s are relative to it.
    tar_images: ClassVar[str] = ""
    licence = "not stated"
    hub_id = "sysuyy/ImgEdit"
    hub_revision = None  # not pinned: the hub revision could not be read offline
    hub_files = ("Benchmark.tar",)
    dimensions = (SCORE,)
    needs = ("judge: gpt-4o (scripts) or gpt-4.1 (paper), OpenAI-compatible VLM",
             "the source images: Benchmark.tar from the hub, or --benchmark-root DIR")
    judges = {"main": {"model": "gpt-4o", "temperature": None}}
    languages = ("en",)
    score_scale = (1, 5)  # the mean of 1-5 criteria

    def pinned_assets(self) -> tuple[Any, ...]:
        return (*super().pinned_assets(), self.edits)

    def cases(self, root: str | Path | None = None) -> Iterator[Case]:
        folder = Path(root) if root is not None else self._hub_images() / self.tar_images
        local = folder / self.annotation_name
        path = local if local.is_file() else resolve_asset(self.edits).path
        edits = read_annotations(path, self.name, dict)
        for key, item in edits.items():
            try:
                yield self._case(str(key), item, folder)
            except (KeyError, TypeError, ValueError) as exc:
                raise ValueError(f"{self.name}: {path} case {key}: {exc}") from exc

    def _case(self, key: str, item: dict[str, Any], folder: Path) -> Case:
        edit_type = str(item.get("edit_type") or "uge")
        return Case(id=key, category=edit_type, output_folder="", images=(folder / item["id"],),
                    turns=(str(item["prompt"]),), categories=(edit_type,))

    def _hub_images(self) -> Path:
        """Benchmark.tar from the hub, extracted once under the ciebench cache (`hub.unpacked`: the one
        archive rule, staged); its suites' images lie under Benchmark/ (`tar_images`)."""
        from .hub import unpacked

        target = cache_root() / "benchmarks" / "imgedit"
        if not (target / ".extracted").is_file():
            from huggingface_hub import hf_hub_download

            try:
                tar = hf_hub_download(self.hub_id, "Benchmark.tar", repo_type="dataset", revision=self.hub_revision)
            except Exception as exc:  # offline or missing: say where to get it instead
                raise EnvironmentProblem(f"cannot get Benchmark.tar of {self.hub_id} ({type(exc).__name__}: {exc}); "
                                        "extract it yourself and pass the source-image folder with --benchmark-root") from exc
            unpacked([Path(tar)], target)
        return target

    def judge_calls(self, case: Case, output: Path) -> list[JudgeCall]:
        return [JudgeCall(SCORE, case.category, {"edit_prompt": case.turns[0]}, (case.images[0], output),
                          text_first=True)]

    def parse(self, dimension: str, reply: str) -> float | None:
        return item_score(reply)

    def missing_verdict(self, case: Case) -> dict[str, float | None]:
        return {}  # the script has no rule; not scored, counted as missing


class ImgEditBasic(_ImgEdit):
    name = "imgedit"
    title = "ImgEdit-Bench (basic)"
    size = 737
    categories = EDIT_TYPES
    code = f"PKU-YuanGroup/ImgEdit@{COMMIT}:Benchmark/Basic/"
    headline = "Overall (ciebench: mean of the 9 type scores)"
    edits = BASIC_EDITS
    annotation_name = "basic_edit.json"
    tar_images = "Benchmark/singleturn"
    prompts = BASIC_PROMPTS

    def render_prompt(self, prompts: Any, call: JudgeCall, what: str) -> str:
        return prompts.get(call.prompt).replace("<edit_prompt>", call.variables["edit_prompt"])

    def aggregator(self) -> "ImgEditAggregator":
        return ImgEditAggregator(by_type=True)


class ImgEditUGE(_ImgEdit):
    name = "imgedit-uge"
    title = "ImgEdit-Bench (understanding-grounded)"
    size = 47
    categories = ("uge",)
    code = f"PKU-YuanGroup/ImgEdit@{COMMIT}:Benchmark/UGE/"
    headline = "UGE average"
    edits = UGE_EDITS
    annotation_name = "UGE_edit.json"

    def owns_verdict(self, row: dict[str, Any]) -> bool | None:
        return None  # a case's category is its annotation's edit_type when it has one ("uge" otherwise)
    tar_images = "Benchmark/hard"
    prompts = UGE_PROMPTS

    def judge_calls(self, case: Case, output: Path) -> list[JudgeCall]:
        return [JudgeCall(SCORE, "prompt", {"edit_prompt": case.turns[0]}, (case.images[0], output),
                          text_first=True)]

    def render_prompt(self, prompts: Any, call: JudgeCall, what: str) -> str:
        return prompts.get("prompt").replace("<edit_prompt>", call.variables["edit_prompt"])

    def aggregator(self) -> "ImgEditAggregator":
        return ImgEditAggregator(by_type=False)


class ImgEditAggregator(CountingAggregator):
    def __init__(self, by_type: bool):
        super().__init__()
        self.by_type = by_type
        self.groups = Groups()

    def add(self, row: dict[str, Any]) -> None:
        self.count(row)
        value = (row.get("dims") or {}).get(SCORE) if row["status"] == Status.OK else None
        if value is None:
            return
        self.scored += 1
        self.groups.add("all", SCORE, value)
        self.groups.add(row["category"], SCORE, value)

    def result(self) -> dict[str, Any]:
        def r2(v: float | None) -> float | None:
            return None if v is None else round(v, 2)

        rows: list[dict[str, Any]] = []
        if self.by_type:
            types = [t for t in EDIT_TYPES if t in self.groups.order] + \
                    [t for t in self.groups.order if t not in EDIT_TYPES and t != "all"]
            for t in types:
                rows.append({"edit_type": t, "score": r2(self.groups.mean(t, SCORE)), "n": self.groups.count(t, SCORE)})
            complete = all(t in self.groups.order for t in EDIT_TYPES)
            values = [r["score"] for r in rows if r["edit_type"] in EDIT_TYPES]
            overall = r2(sum(values) / len(values)) if complete else None
            rows.append({"edit_type": "Overall (ciebench)", "score": overall, "n": self.scored})
            headline = {"name": ImgEditBasic.headline, "value": overall}
        else:
            average = r2(self.groups.mean("all", SCORE))
            rows.append({"edit_type": "uge", "score": average, "n": self.scored})
            headline = {"name": ImgEditUGE.headline, "value": average}
        return {"headline": headline, "official": rows,
                "ours": self.ours()}
