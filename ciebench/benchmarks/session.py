"""`ciebench evaluate|score --benchmark NAME` for judge-scored benchmarks: generate, judge, aggregate."""
from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from ciebench import outdir
from ciebench.editor import Editor
from ciebench.errors import OutputConflict, UsageError
from ciebench.io import atomic_write_json
from ciebench.llm.client import LLMConfig
from ciebench.metrics.timing import StageTimer

from .base import Benchmark, Case, require_data
from .judging import BenchJudge
from .prompts import PromptSet, load_prompts, load_unpinned
from .region import RegionOptions, run_region
from .run import (aggregate, case_key, generate, judge_cases, latest_verdicts, mark_completeness, prepare_run,
                  write_summary)


@dataclass
class BenchOptions:
    root: str | None = None  # the benchmark's folder in its official layout (None: hub snapshot)
    limit: int | None = None
    judge: str | None = None  # None: the published judges; else a JSON/YAML file of LLMConfig fields per role
    judge_prompts: str | None = None  # a folder holding the official prompt file
    overwrite: bool = False
    retry_failed: bool = False
    progress: bool = True
    # ciebench's region metrics on cases with a ground-truth image (None: off); see benchmarks/region.py
    region: RegionOptions | None = field(default_factory=RegionOptions)
    # A time.perf_counter() reading summary.json's `timing` counts from, the time before the call being
    # its stage `startup` (`ciebench score --benchmark`: its process's start); None: from the call.
    timing_since: float | None = None


def judge_configs(benchmark: Benchmark, spec: str | None) -> dict[str, LLMConfig]:
    """One LLM config per judge role. Default: the published judge models, reached through
    $OPENAI_BASE_URL (as the RISEBench++ script does) with the key in $OPENAI_API_KEY."""
    roles = benchmark.judges
    if spec is None:
        base = os.environ.get("OPENAI_BASE_URL") or None
        # temperature None: none is sent, as scripts that set none (the provider's default applies).
        # The key in $OPENAI_API_KEY goes to $OPENAI_BASE_URL too: the user set both for this purpose.
        return {role: LLMConfig(model=j.get("model"), base_url=base, api_key_env="OPENAI_API_KEY",
                                temperature=j.get("temperature"), max_tokens=j.get("max_tokens", 4096),
                                response_format="none")
                for role, j in roles.items()}
    path = Path(spec)
    if not path.is_file():
        raise ValueError(f"--judge {spec}: for a benchmark, give a JSON or YAML file of LLM settings "
                         "(model, base_url, ...), optionally per role: {\"main\": {...}, \"quality\": {...}}")
    text = path.read_text(encoding="utf-8")
    if path.suffix in (".yaml", ".yml"):
        import yaml

        data = yaml.safe_load(text)
    else:
        data = json.loads(text)
    if not isinstance(data, dict):
        raise ValueError(f"--judge {spec}: expected a mapping")
    per_role = data if set(data) & set(roles) and all(isinstance(v, dict) for v in data.values()) else {r: data for r in roles}
    configs = {}
    for role in roles:
        fields = {"max_tokens": 4096, "response_format": "none", **(per_role.get(role) or per_role.get("main") or {})}
        try:
            configs[role] = LLMConfig.from_dict(fields)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"--judge {spec}: role {role}: {exc}") from exc
    return configs


def prompt_set(benchmark: Benchmark, local_dir: str | None) -> PromptSet:
    if benchmark.prompts is not None:
        return load_prompts(benchmark.prompts, local_dir)
    if not local_dir:
        raise UsageError(f"{benchmark.name}: its prompt file is not pinned by sha256; pass --judge-prompts DIR holding "
                         f"{benchmark.prompt_file} from {benchmark.prompt_source} (its sha256 is recorded as unverified)")
    return load_unpinned(Path(local_dir) / benchmark.prompt_file, benchmark.prompt_source,
                         f"{benchmark.name}/{benchmark.prompt_file}")


def _cases(benchmark: Benchmark, options: BenchOptions, keys: set[str] | None = None):
    """The cases this call covers (--benchmark-root, --limit); each one's `case_key` is added to `keys`
    as it is read, so the summary can count exactly these cases (see `_finish`)."""
    cases = benchmark.cases(options.root)
    if options.limit is not None:
        cases = (c for n, c in zip(range(options.limit), cases))
    cases = require_data(benchmark.name, cases)
    return cases if keys is None else _noting(cases, keys)


def _noting(cases: Iterator[Case], keys: set[str]) -> Iterator[Case]:
    for case in cases:
        keys.add(case_key(case))
        yield case


def _count(benchmark: Benchmark, options: BenchOptions) -> int:
    return sum(1 for _ in _cases(benchmark, options))


def _judge(benchmark: Benchmark, options: BenchOptions, out: Path) -> BenchJudge:
    return BenchJudge(benchmark, prompt_set(benchmark, options.judge_prompts), judge_configs(benchmark, options.judge),
                      cache_dir=out / ".llm-cache")


def judge_identity(judge: BenchJudge) -> dict[str, Any]:
    """What decides the verdicts: models, decoding, prompts (not endpoint, timeouts or concurrency)."""
    return {"prompts_sha256": judge.prompts.asset.sha256,
            **({"more_prompts_sha256": [a.sha256 for a in judge.prompts.more]} if judge.prompts.more else {}),
            "roles": {role: {"model": c.config.model, "temperature": c.config.temperature,
                             "max_tokens": c.config.max_tokens, "seed": c.config.seed}
                      for role, c in sorted(judge.clients.items())}}


def check_judge(out: Path, judge: BenchJudge) -> None:
    """Verdicts in one folder come from one judge: record it, or refuse a different one."""
    path = out / "judge.json"
    identity = judge_identity(judge)
    if path.exists() and (out / "verdicts.jsonl").exists():
        old = json.loads(path.read_text())
        if old != identity:
            raise OutputConflict(f"the verdicts in {out} were made by another judge ({old} != {identity}); "
                                 f"delete {out / 'verdicts.jsonl'} to judge again, or use another --out")
    atomic_write_json(path, identity)


@contextlib.contextmanager
def _output_folder(out: Path):
    """A new or empty folder, or this command's own earlier output (never someone else's files), held by
    one process at a time (see ciebench.outdir)."""
    outdir.claim(out, "benchmark")
    with outdir.lock(out):
        outdir.clean_stale_temp(out, ("images", "turns", "records"))
        yield


def evaluate(benchmark: Benchmark, editor: Editor, out: Path, options: BenchOptions) -> dict[str, Any]:
    out = Path(out)
    total = _count(benchmark, options)  # reads the data first: a missing dataset is reported before anything else
    with _output_folder(out):
        return _evaluate(benchmark, editor, out, options, total)


def _evaluate(benchmark: Benchmark, editor: Editor, out: Path, options: BenchOptions, total: int) -> dict[str, Any]:
    judge = _judge(benchmark, options, out)
    spec = {"benchmark": benchmark.name, "root": str(Path(options.root).resolve()) if options.root else None,
            "hub_revision": benchmark.hub_revision, "limit": options.limit, "editor": editor.describe()}
    prepare_run(out, spec, options.overwrite)
    check_judge(out, judge)
    stats = generate(benchmark, editor, _cases(benchmark, options), out, retry_failed=options.retry_failed,
                     progress=options.progress, total=total)
    timer = StageTimer(options.timing_since)  # scoring only, as a dataset run's (each edit's time is in its record)
    keys: set[str] = set()
    with timer.stage("judge"):
        counts = judge_cases(benchmark, _cases(benchmark, options, keys), out, out, judge, records=out,
                             progress=options.progress, total=total)
    header = {"run": {"editor": editor.describe(), "generation": stats.__dict__, "judging": counts},
              "judge": judge.provenance()}
    return _finish(benchmark, options, out, out, header, total, timer, keys)


def _finish(benchmark: Benchmark, options: BenchOptions, predictions: Path, out: Path, header: dict[str, Any],
            total: int, timer: StageTimer, keys: set[str]) -> dict[str, Any]:
    """The official aggregation, plus ciebench's region metrics under `ours.region` (never in the official
    table or headline), then summary.json with the run's per-stage `timing`. Both count only the cases of
    this call (`keys`): rows an earlier call left in --out for other cases (a full score, then `--limit 3`
    into the same folder) stay in the files but would otherwise be counted under this call's label."""
    with timer.stage("summary"):
        result = mark_completeness(benchmark, aggregate(benchmark, latest_verdicts(out / "verdicts.jsonl", keys)),
                                   options.limit)
    if options.region is not None and not benchmark.ground_truth:
        result["ours"] = {**(result.get("ours") or {}), "region": {
            "status": "not_applicable", "reason": f"{benchmark.name} carries no ground-truth images or masks"}}
    elif options.region is not None:
        try:
            counts, block = run_region(benchmark, _cases(benchmark, options), predictions, out, options.region,
                                       progress=options.progress, total=total, timer=timer, keys=keys)
            header["run"]["region_metrics"] = counts
        except (OSError, RuntimeError) as exc:  # e.g. LPIPS weights not available offline: the official numbers stay
            block = {"status": "error", "reason": f"region metrics did not run: {type(exc).__name__}: {exc}; rows "
                                                  "finished so far are kept and a rerun resumes them"}
        result["ours"] = {**(result.get("ours") or {}), "region": block}
    return write_summary(benchmark, out, result, {**header, "timing": timer.report()})


def score(benchmark: Benchmark, predictions: Path, out: Path, options: BenchOptions) -> dict[str, Any]:
    """Judge a folder of outputs in the benchmark's official layout (outputs/MODEL/images/CATEGORY/INDEX.ext)."""
    out = Path(out)
    timer = StageTimer(options.timing_since)  # per-stage seconds, into summary.json "timing"
    with timer.stage("index"):  # the benchmark's cases
        total = _count(benchmark, options)
    with _output_folder(out):
        with timer.stage("load"):  # the judge: its configuration and official prompts
            judge = _judge(benchmark, options, out)
            check_judge(out, judge)
        keys: set[str] = set()
        with timer.stage("judge"):
            counts = judge_cases(benchmark, _cases(benchmark, options, keys), Path(predictions), out, judge,
                                 progress=options.progress, total=total)
        header = {"predictions": str(Path(predictions).resolve()), "run": {"judging": counts},
                  "judge": judge.provenance()}
        return _finish(benchmark, options, Path(predictions), out, header, total, timer, keys)


def reaggregate(benchmark: Benchmark, verdicts: Path, out: Path, timing_since: float | None = None) -> dict[str, Any]:
    """The official numbers from a verdict file alone (no judge call). `timing_since`: as `BenchOptions`'."""
    from .verdicts import read_verdict_file

    out = Path(out)
    timer = StageTimer(timing_since)
    with timer.stage("read"):
        rows = read_verdict_file(benchmark, Path(verdicts))
    with _output_folder(out):
        with timer.stage("summary"):
            result = mark_completeness(benchmark, aggregate(benchmark, rows))
        return write_summary(benchmark, out, result, {"verdicts": str(Path(verdicts).resolve()),
                                                      "timing": timer.report()})
