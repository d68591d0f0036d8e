"""What a registered benchmark is: its cases, how they are judged, and its official aggregation.

A benchmark is a frozen definition. `Benchmark.cases(root)` reads the official folder layout (or the
hub snapshot when `root` is None) and yields `Case`s one at a time; `judge_calls(case, output)` says
which judge questions a case gets (prompt, images, dimension); `Aggregator` folds per-case verdict rows
into the official numbers under their official names, in one pass with memory independent of the
number of cases.
"""
from __future__ import annotations

import glob
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Iterator

if TYPE_CHECKING:
    from PIL import Image

OUTPUT_SUFFIXES = ("png", "jpg", "jpeg")


@dataclass(frozen=True)
class Case:
    """One benchmark case, as its official annotation defines it. Images are paths, read when used."""

    id: str  # the official index (file stem of the output image)
    category: str  # official category; for RISEBench++ hybrid cases, the first listed category
    output_folder: str  # the output goes to images/<output_folder>/<id>.<png|jpg|jpeg>
    images: tuple[Path, ...]
    turns: tuple[str, ...]  # one instruction, or the instructions of a multi-turn case
    language: str = "en"
    subtask: str | None = None
    task_type: str | None = None
    reference_text: str | None = None
    reference_image: Path | None = None
    consistency_image: Path | None = None
    ground_truth_image: Path | None = None
    explanation: str | None = None
    categories: tuple[str, ...] = ()  # every listed category (hybrid cases list several)
    reference_images: tuple[Path, ...] = ()  # several reference images (WiseEdit)
    judge_instruction: str | None = None  # the instruction the judge sees, when it is not the editor's
    flags: frozenset[str] = frozenset()

    @property
    def instruction(self) -> str:
        """The instruction as the official judges see it: turns numbered "1. ...", one per line."""
        if len(self.turns) == 1:
            return self.turns[0]
        return "\n".join(f"{i + 1}. {t}" for i, t in enumerate(self.turns))

    @property
    def multi_turn(self) -> bool:
        return "multi_turn" in self.flags

    def data_files(self) -> tuple[Path, ...]:
        """Every file of the benchmark's own data this case reads (inputs, references, ground truth)."""
        optional = (self.reference_image, self.consistency_image, self.ground_truth_image)
        return (*self.images, *self.reference_images, *(p for p in optional if p is not None))


def require_data(benchmark: str, cases: Iterator[Case]) -> Iterator[Case]:
    """`cases`, each checked to have its data files: a file missing from the local copy of a benchmark is
    the benchmark's data error (FileNotFoundError naming the case and the file), never a case the
    editor failed (the scoring rules would give it the minimum)."""
    for case in cases:
        for path in case.data_files():
            if not path.is_file():
                raise FileNotFoundError(f"{benchmark}: case {case.output_folder}/{case.id}: its data file {path} "
                                        "is not there (an incomplete copy of the benchmark?)")
        yield case


@dataclass(frozen=True)
class JudgeCall:
    """One question to a judge: an official prompt filled with `variables`, and images in order."""

    dimension: str  # e.g. "ApprConsistency"
    prompt: str  # name of the official prompt (a module-level string in the pinned prompt file)
    variables: dict[str, str] | None  # None: the script sends the prompt without formatting it
    images: tuple[Path, ...]
    role: str = "main"  # which judge model: "main", or "quality" (RISEBench++ uses a second model for VP)
    text_first: bool = False  # the prompt text before the images, as some official scripts send it
    reply_rule: str = ""  # which of the official scripts' parsers reads the reply ("": the benchmark's one)


class Benchmark:
    """Base of every benchmark definition. Subclasses set the class attributes and implement `cases`."""

    name: ClassVar[str] = ""
    title: ClassVar[str] = ""
    size: ClassVar[int] = 0
    # the version of `parse`/`parse_reply`: raised when they read a reply differently (see `reread`)
    reply_parsing: ClassVar[str] = "1"
    # How many cases `cases()` yields for the whole official release (None: `size`; a benchmark with one
    # case per instruction language says so). A run with fewer has an incomplete headline.
    release_cases: ClassVar[int | None] = None
    categories: ClassVar[tuple[str, ...]] = ()
    licence: ClassVar[str] = "not stated"
    languages: ClassVar[tuple[str, ...]] = ("en",)  # instruction languages
    needs: ClassVar[tuple[str, ...]] = ()
    hub_id: ClassVar[str | None] = None
    hub_revision: ClassVar[str | None] = None
    hub_files: ClassVar[tuple[str, ...]] = ("*",)  # what the loader reads of the hub repository (glob patterns)
    code: ClassVar[str] = ""  # where the official rules live, e.g. "PhoenixZ810/RISEBench@<sha>:gpt_eval.py"
    headline: ClassVar[str] = ""  # official name of the headline number
    dimensions: ClassVar[tuple[str, ...]] = ()
    # "judge": cases + judge protocol + official aggregation (this package); "dataset": served by the
    # dataset pipeline (region metrics, IDCS) from the `--dataset` spec `dataset_for(root)`.
    # The official scripts' message order: the prompt text before the images (True) or after (False).
    text_first: ClassVar[bool] = False
    pipeline: ClassVar[str] = "judge"
    dataset_spec: ClassVar[str | None] = None
    # Official prompt file: pinned (`prompts`), or, where no byte-exact copy could be pinned, named by
    # `prompt_file` + `prompt_source` and taken from --judge-prompts with its sha256 recorded.
    prompts: ClassVar[Any] = None
    prompt_file: ClassVar[str] = "utils.py"
    prompt_source: ClassVar[str] = ""
    judges: ClassVar[dict[str, dict[str, Any]]] = {"main": {}}
    # Each dimension's score scale as the aggregation reads it (after `map_scores`). A value outside
    # it (NaN included) is a judge error, never a score: the official scripts check nothing, so a
    # judge's "Final Score: 10" on a 1-5 scale would reach the headline as a percentage above 100.
    # None: the benchmark's own parser checks (WiseEdit, whose 0 is a meaningful failure score).
    score_scale: ClassVar[tuple[float, float] | None] = None
    # Cases may carry a ground-truth image (`Case.ground_truth_image`): ciebench's region metrics run on
    # them (benchmarks/region.py), reported as ours beside the official numbers.
    ground_truth: ClassVar[bool] = False

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "title": self.title, "size": self.size, "categories": list(self.categories),
                "licence": self.licence, "languages": list(self.languages), "needs": list(self.needs), "hub_id": self.hub_id,
                "hub_revision": self.hub_revision, "code": self.code, "headline": self.headline}

    def expected_cases(self) -> int | None:
        """The number of cases a run over the whole official release has; None when the benchmark states
        no size (a plugin). A `--limit N` run is measured against it too: its N cases' headline is not
        the benchmark's, whatever was asked for."""
        return self.release_cases or self.size or None

    def dataset_for(self, root: str | None) -> str:
        """The `--dataset` spec of a benchmark served by the dataset pipeline."""
        spec = root or self.dataset_spec
        if not spec:
            raise ValueError(f"{self.name} needs its folder: --benchmark-root DIR")
        return spec

    def cases(self, root: str | Path | None = None) -> Iterator[Case]:
        raise NotImplementedError

    def pinned_assets(self) -> tuple[Any, ...]:
        """Every file of another project this benchmark fetches at a pinned commit (for prefetch and
        bundles): its judge prompts, plus what a benchmark adds (ImgEdit: its edit annotations)."""
        if self.prompts is None:
            return ()
        return self.prompts if isinstance(self.prompts, tuple) else (self.prompts,)

    def hub_folder(self) -> Path:
        """The benchmark's hub dataset repository as a local snapshot (downloaded once, then cached)."""
        from .hub import snapshot

        return snapshot(self.hub_id, self.hub_revision)

    def judge_calls(self, case: Case, output: Path) -> list[JudgeCall]:
        raise NotImplementedError

    def output_companions(self, case: Case) -> dict[str, Path]:
        """Files the official scoring script needs beside each output, {file name: the benchmark file
        to copy there}; a run writes them next to each output it writes (GEdit: `<key>_SRCIMG.png`)."""
        return {}

    def missing_verdict(self, case: Case) -> dict[str, float | None]:
        """Per-dimension scores for a case without an output image."""
        raise NotImplementedError

    def parse(self, dimension: str, reply: str) -> float | None:
        raise NotImplementedError

    def parse_many(self, dimension: str, reply: str) -> dict[str, float | None]:
        """Every score one reply carries (most prompts ask one dimension)."""
        return {dimension: self.parse(dimension, reply)}

    def parse_reply(self, call: JudgeCall, reply: str) -> dict[str, float | None]:
        """The scores of the reply to `call`: by `parse_many`, unless the benchmark's scripts read
        replies differently per call (`JudgeCall.reply_rule`)."""
        return self.parse_many(call.dimension, reply)

    def map_scores(self, case: Case, raw: dict[str, float | None]) -> dict[str, float | None]:
        """Parsed answers -> the scale the aggregation uses (identity unless a benchmark maps them)."""
        return raw

    def judge_image(self, path: Path, call: JudgeCall) -> "Image.Image":
        """A judge input as the official script sends it. Default: the file's pixels, RGB."""
        from PIL import Image

        with Image.open(path) as im:
            return im.convert("RGB")

    def bind_prompts(self, prompts: Any) -> None:
        """Called once with the loaded prompt set, for rules read from the pinned files themselves."""

    def render_prompt(self, prompts: Any, call: JudgeCall, what: str) -> str:
        """The text sent for `call`: the official prompt `call.prompt` of the pinned file, filled with
        `call.variables` (str.format rules). Benchmarks whose scripts build prompts otherwise override."""
        from .prompts import fill

        text = prompts.get(call.prompt)
        return fill(text, call.variables, what) if call.variables is not None else text

    def judge_images(self, case: Case, call: JudgeCall) -> list[Any]:
        """All images of `call` as the official script sends them: `judge_image` per image, unless a
        benchmark prepares one image from another (GEdit resizes the output to the source's size)."""
        return [self.judge_image(p, call) for p in call.images]

    def aggregator(self) -> "Aggregator":
        raise NotImplementedError

    def off_scale(self, dims: dict[str, float | None]) -> dict[str, str]:
        """{dimension: why} for each score outside `score_scale`."""
        if self.score_scale is None:
            return {}
        lo, hi = self.score_scale
        return {d: f"{self.name}: {d} scored {v!r}, outside the benchmark's {lo:g}-{hi:g} scale"
                for d, v in dims.items() if v is not None and not lo <= v <= hi}

    def checked_verdict(self, row: dict[str, Any]) -> dict[str, Any]:
        """`row` as the aggregation may read it: a judged case with an off-scale score has that score
        dropped and becomes a judge error. Verdicts read back from a file need it (an official table,
        or a verdicts.jsonl written before the check); the judge applies the same check when it runs."""
        from ciebench.status import Status

        if row.get("status") not in (Status.OK, Status.JUDGE_ERROR):
            return row
        row = self.reread(row)
        problems = self.off_scale(row.get("dims") or {})
        if not problems:
            return row
        error = "; ".join(e for e in (row.get("error"), *problems.values()) if e)
        return {**row, "dims": {**row["dims"], **dict.fromkeys(problems)}, "status": Status.JUDGE_ERROR, "error": error}

    def reread(self, row: dict[str, Any]) -> dict[str, Any]:
        """A judged row as today's reply parsers read its stored replies, for a row an older ciebench
        parsed differently (its `reply_parsing` is not this benchmark's): resumed and re-aggregated runs
        then use one reading for every case, without asking the judge again. Default: the row as it is."""
        return row

    def owns_verdict(self, row: dict[str, Any]) -> bool | None:
        """Whether a verdict row that names no benchmark (written before rows did, or read from an official
        table) can be one of this benchmark's: its category and every listed category are among
        `categories`. None: the benchmark cannot tell (its categories are read from the data)."""
        if not self.categories:
            return None
        return {row.get("category"), *(row.get("categories") or ())} <= set(self.categories)

    def verdict_row(self, case: Case, status: str, dims: dict[str, float | None], **extra: Any) -> dict[str, Any]:
        """The per-case record the aggregation reads (one line of verdicts.jsonl), naming the benchmark
        (`score --verdicts` refuses another's file) and the version of the reply parsers that made `dims`
        (`reply_parsing`, see `reread`)."""
        return {"benchmark": self.name, "id": case.id, "category": case.category, "categories": list(case.categories or (case.category,)),
                "output_folder": case.output_folder, "subtask": case.subtask, "task_type": case.task_type,
                "language": case.language, "flags": sorted(case.flags), "status": status, "dims": dims,
                "reply_parsing": self.reply_parsing, **extra}


class Aggregator:
    """Folds verdict rows (dicts from `Benchmark.verdict_row`) into the official summary, streaming."""

    def add(self, row: dict[str, Any]) -> None:
        raise NotImplementedError

    def result(self) -> dict[str, Any]:
        raise NotImplementedError


class CountingAggregator(Aggregator):
    """An aggregator that also counts cases per status and the cases it scored, for the `ours` block
    (coverage against every case, never only against what was scored)."""

    def __init__(self) -> None:
        self.status_counts: dict[str, int] = {}
        self.cases = 0
        self.scored = 0

    def count(self, row: dict[str, Any]) -> None:
        self.cases += 1
        self.status_counts[row["status"]] = self.status_counts.get(row["status"], 0) + 1

    def ours(self, scored: int | None = None, **extra: Any) -> dict[str, Any]:
        scored = self.scored if scored is None else scored
        return {"cases": self.cases, "scored": scored, "coverage": scored / self.cases if self.cases else None,
                "status_counts": dict(sorted(self.status_counts.items())), **extra}


@dataclass
class RunningMean:
    """Mean and count of the values added, skipping None (as pandas' mean skips NaN)."""

    total: float = 0.0
    n: int = 0
    rows: int = 0  # every add, None included

    def add(self, value: float | None) -> None:
        self.rows += 1
        if value is not None:
            self.total += float(value)
            self.n += 1

    @property
    def mean(self) -> float | None:
        return self.total / self.n if self.n else None


@dataclass
class Groups:
    """Running means keyed by (group label, column), in first-seen order."""

    cells: dict[tuple[str, str], RunningMean] = field(default_factory=dict)
    order: list[str] = field(default_factory=list)

    def add(self, label: str, column: str, value: float | None) -> None:
        key = (label, column)
        if key not in self.cells:
            self.cells[key] = RunningMean()
            if label not in self.order:
                self.order.append(label)
        self.cells[key].add(value)

    def mean(self, label: str, column: str) -> float | None:
        cell = self.cells.get((label, column))
        return cell.mean if cell else None

    def count(self, label: str, column: str) -> int:
        cell = self.cells.get((label, column))
        return cell.rows if cell else 0


def read_annotations(path: Path, benchmark: str, kind: type) -> Any:
    """A benchmark's annotation file: JSON holding a `kind` (list or dict) of cases. A file that cannot
    be read or holds something else is a ValueError naming the benchmark and the file."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ValueError(f"{benchmark}: cannot read {path}: {exc}") from exc
    if not isinstance(data, kind):
        raise ValueError(f"{benchmark}: {path} is not a JSON {'list' if kind is list else 'object'} of cases")
    return data


def percent(score: float | None) -> float | None:
    """The official percentage form of a 1-5 score: 25 (s - 1)."""
    return None if score is None else 25.0 * (score - 1.0)


def misnamed_output(folder: Path, stem: str) -> Path | None:
    """A file `<stem>.<suffix>` in `folder` whose suffix `find_output` does not read (`.PNG`, `.webp`): the
    official scripts would not read it either, so it stays unscored, but the missing verdict names it."""
    if not folder.is_dir():
        return None
    for path in sorted(folder.glob(f"{glob.escape(stem)}.*")):
        if path.stem == stem and path.suffix[1:] not in OUTPUT_SUFFIXES and path.is_file():
            return path
    return None


def find_output(folder: Path, stem: str) -> Path | None:
    """The output image in an official layout folder, trying the suffixes in the official order."""
    for suffix in OUTPUT_SUFFIXES:
        path = folder / f"{stem}.{suffix}"
        if path.is_file():
            return path
    return None
