"""The judge inside `ciebench score` / `evaluate`: opened before any region scoring (so a bad judge
config, an unknown protocol or prompts that fail their sha256 stop the run at once), then judging the
readable predictions with verdicts streamed to ``judge_verdicts.jsonl`` as they arrive, and the
summary annotated with the protocol, failure classes and judge noise."""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from ciebench.errors import UsageError
from ciebench.status import VerdictStatus

from .cost import Budget

log = logging.getLogger(__name__)

VERDICTS_FILE = "judge_verdicts.jsonl"


@dataclass(frozen=True)
class JudgeRunOptions:
    """How the judge runs in a scoring run (the judge config says who judges)."""

    protocol: str | None = None  # overrides the judge config's protocol (idcs-v1, idcs-paper)
    passes: int = 1  # independent verdicts per sample; the sample's score is their median
    prompts_dir: str | None = None  # local copies of a pinned protocol's files (--judge-prompts)
    max_cost: float | None = None  # USD; stop issuing calls before exceeding it (--max-cost)
    allow_unverified_prompts: bool = False  # accept local prompt files whose sha256 differs (recorded)
    canaries: str = "day"  # re-judge the calibrated canaries: once a UTC day, every run, or off
    canary_set: str | None = None  # "mini" (default) or a folder made by `ciebench judge freeze`
    canary_threshold: float = 0.9
    batch: bool = False  # send the judge calls through the provider's Batch API (/v1/files, /v1/batches)
    batch_poll_s: float = 30.0

    def __post_init__(self) -> None:
        if not isinstance(self.passes, int) or self.passes < 1:
            raise UsageError(f"--judge-passes must be an integer >= 1, got {self.passes!r}")
        if self.protocol is not None:
            from .protocols import JUDGE_PROTOCOLS, get_judge_protocol

            try:
                get_judge_protocol(self.protocol)
            except ValueError as exc:
                raise UsageError(str(exc), hint=f"--judge-protocol takes one of {', '.join(JUDGE_PROTOCOLS)}") from None
        if self.canaries not in ("day", "run", "off"):
            raise UsageError(f"--judge-canaries must be day, run or off, got {self.canaries!r}")
        if self.max_cost is not None and not (isinstance(self.max_cost, (int, float)) and self.max_cost >= 0
                                              and math.isfinite(self.max_cost)):
            raise UsageError(f"--max-cost must be a non-negative number of USD, got {self.max_cost!r}")


class JudgeSession:
    def __init__(self, judge: Any, config: Any, options: JudgeRunOptions | None = None,
                 cache: Path | None = None):
        self.judge = judge
        self.config = config
        self.options = options or JudgeRunOptions()
        self.cache = cache
        self.verdicts: list[Any] = []
        self.n_missing = 0
        self.canary: dict[str, Any] | None = None
        self.canary_judge: Any = None  # the judge of the canary check, for its spend in `info`

    @classmethod
    def open(cls, options: Any) -> "JudgeSession":
        """Build the judge from `ScoreOptions` (judge, cache_dir, judge_options); raises on any problem."""
        from ciebench.cache import cache_root
        from ciebench.metrics.idcs import IDCSJudge, get_judge_config

        jopts = options.judge_options or JudgeRunOptions()
        config = get_judge_config(options.judge)
        if jopts.protocol:
            config = dataclasses.replace(config, protocol=jopts.protocol)
        cache = Path(options.cache_dir) if options.cache_dir else cache_root() / "llm"
        budget = Budget(jopts.max_cost) if jopts.max_cost is not None else None
        judge = IDCSJudge(config, cache_dir=cache, passes=jopts.passes, prompts_dir=jopts.prompts_dir,
                          budget=budget, allow_unverified_prompts=jopts.allow_unverified_prompts)
        return cls(judge, config, jopts, cache)

    def _canary_judge(self, slot: Path) -> Any:
        """The judge of the canary check, answering from `slot`; paid from the run's --max-cost budget."""
        from ciebench.metrics.idcs import IDCSJudge

        jopts = self.options
        self.canary_judge = IDCSJudge(self.config, cache_dir=slot, prompts_dir=jopts.prompts_dir,
                                      budget=self.judge.budget, allow_unverified_prompts=jopts.allow_unverified_prompts)
        return self.canary_judge

    def _canary_set(self) -> tuple[str, Any] | None:
        """(judge hash, canary set) of this judge's check, or None when canaries are off."""
        from . import canaries

        if self.options.canaries == "off":
            return None
        return canaries.judge_hash_of(self.config, self.judge.protocol.hash), canaries.load_canaries(self.options.canary_set)

    def estimate_canaries(self) -> Any:
        """What the canary check would send now (a `CostReport`), or None when it would not run."""
        from . import canaries

        found = self._canary_set()
        return None if found is None else canaries.estimate(self._canary_judge, *found, self.options.canaries)

    def check_canaries(self) -> dict[str, Any] | None:
        """Re-judge the canaries when this judge was calibrated (see `ciebench.judge.canaries`)."""
        from . import canaries

        found = self._canary_set()
        if found is None:
            return None
        jopts = self.options
        self.canary = canaries.check(self._canary_judge, *found, jopts.canaries, jopts.canary_threshold)
        for note in ("warning", "skipped"):
            if self.canary and self.canary.get(note):
                log.warning("judge canaries: %s", self.canary[note])
        return self.canary

    def items(self, keys: list, loaded: Any, index: dict, paths: dict) -> list:
        from ciebench.datasets.files import decode_image
        from ciebench.metrics.idcs import JudgeItem
        from ciebench.schema import EditSample

        items = []
        for k in keys:
            sample = EditSample.from_row(loaded.dataset[index[k[0]]])
            edited = decode_image(paths[k].read_bytes(), str(paths[k]), k[0], "prediction", [])
            items.append(JudgeItem(sample_id=k[0], source=sample.image, edited=edited.image.convert("RGB"),
                                   instruction=sample.instruction))
        return items

    def run(self, keys: list, loaded: Any, index: dict, paths: dict, rows: dict, out: Path,
              progress: bool) -> tuple[dict[str, Any], dict[str, str]]:
        items = self.items(keys, loaded, index, paths)
        lock = threading.Lock()
        bar = tqdm(total=len(items), desc=f"judge {self.judge.protocol.name}", unit="img", disable=not progress)
        out.mkdir(parents=True, exist_ok=True)
        # Verdicts are appended as they arrive; a rerun rewrites the file from the (cached) verdicts.
        with open(out / VERDICTS_FILE, "w", encoding="utf-8") as stream:

            def on_indexed(i: int, verdict: Any) -> None:
                line = json.dumps({**verdict.to_dict(), "seed": keys[i][1]}, ensure_ascii=False, default=str)
                with lock:
                    stream.write(line + "\n")
                    stream.flush()
                    bar.update(1)

            try:
                if self.options.batch:
                    from .batch import batch_judge

                    verdicts = batch_judge(self.judge, items, out, poll_s=self.options.batch_poll_s,
                                           on_indexed=on_indexed)
                else:
                    verdicts = self.judge.judge(items, on_indexed=on_indexed)
            finally:
                bar.close()
        self.verdicts = verdicts
        self.check_canaries()
        for key, verdict in zip(keys, verdicts):
            rows[key].update({"idcs": float(verdict.score) if verdict.score is not None else math.nan,
                              "idcs_status": verdict.status, "idcs_error": verdict.error,
                              "idcs_sentence": verdict.sentence, "idcs_failure": verdict.failure,
                              "idcs_passes": json.dumps(verdict.pass_scores), "idcs_protocol": verdict.protocol})
        judged = set(keys)
        for key, row in rows.items():
            if key not in judged:
                self.n_missing += 1
                row.update({"idcs_status": VerdictStatus.NOT_JUDGED, "idcs_error": "no usable prediction",
                            "idcs_failure": "missing_prediction", "idcs_protocol": self.judge.protocol.name})
        return self.info(), self.judge.model_ids()

    def info(self) -> dict[str, Any]:
        """summary.json's `judge`: the judge config, except that `vlm` / `llm` are the settings the calls
        were sent with (a protocol's max_tokens, e.g. idcs-paper's, replace the config's: recording the
        config's value there named a limit no call used); `config_overrides` lists each field where the
        two differ. `hash` stays the hash of the config as given (spec.json's)."""
        resolved = self.judge.protocol
        config = self.config.to_dict()
        sent = {"vlm": self.judge.vlm.config.to_dict(), "llm": self.judge.llm.config.to_dict()}
        overrides = {f"{part}.{k}": {"config": config[part][k], "sent": v} for part in sent
                     for k, v in sent[part].items() if config[part].get(k) != v}
        return {**config, **sent, "config_overrides": overrides, "hash": self.config.hash,
                "protocol": resolved.name, "protocol_hash": resolved.hash, "protocol_spec": resolved.to_dict(),
                "passes": self.judge.passes, "stats": self.stats()}

    def stats(self) -> dict[str, Any]:
        """The judge's stats (`total`: the verdicts' calls) and, when the canary check ran, its own
        (`canaries`) and everything this run sent and spent (`total_with_canaries`)."""
        stats = self.judge.stats
        if self.canary_judge is not None:
            canary = {k: v for k, v in self.canary_judge.stats.items() if k != "budget"}  # shared: once, above
            stats["canaries"] = canary
            stats["total_with_canaries"] = {k: stats["total"][k] + canary["total"][k] for k in stats["total"]}
            stats["total_with_canaries"]["cost"] = round(stats["total_with_canaries"]["cost"], 8)
        return stats

    def annotate(self, summary: dict[str, Any]) -> None:
        """Protocol, failure classes, passes and judge noise beside the IDCS mean in `summary` (the keys
        of `ANNOTATIONS`)."""
        from ciebench.metrics.idcs import idcs_summary

        judged = idcs_summary(self.verdicts, missing=self.n_missing)
        entry = summary.setdefault("metrics", {}).setdefault("idcs", {})
        entry.update({"protocol": self.judge.protocol.name, "protocol_hash": self.judge.protocol.hash,
                      "passes": self.judge.passes, "failures_by_class": judged["failures_by_class"],
                      "failures_by_stage": judged["failures_by_stage"]})
        for key in ("judge_noise", "failed_passes", "judge_noise_withheld"):
            if key in judged:
                entry[key] = judged[key]
        if judged.get("judge_noise_withheld"):
            log.warning("IDCS: no judge-noise interval: %s", judged["judge_noise_withheld"])
        entry["possible_refusals"] = refusals = judged["possible_refusals"]
        if refusals:
            log.warning("IDCS: the describing model's text for %d scored sample(s) reads as a refusal, not a "
                        "description (%s%s); they are scored as written, as failed edits. Check them in "
                        "samples.csv (idcs_sentence); summary.json metrics.idcs.possible_refusals lists them",
                        len(refusals), ", ".join(map(str, refusals[:5])), ", ..." if len(refusals) > 5 else "")
        summary["judge_protocol"] = {"name": self.judge.protocol.name, "hash": self.judge.protocol.hash}
        if self.canary is not None:
            summary["judge_canaries"] = self.canary
        if self.judge.budget is not None:  # spent_usd includes the canary check's calls (one budget)
            summary["judge_budget"] = {**self.judge.budget.to_dict(),
                                       "not_judged": judged["failures_by_class"]["not_judged"]}
            if self.canary_judge is not None:
                summary["judge_budget"]["canary_spent_usd"] = self.canary_judge.stats["total"]["cost"]


# What `JudgeSession.annotate` adds to summary.json's metrics.idcs beside the aggregation of samples.csv:
# the verdicts' provenance, not re-aggregated from the table (`ciebench verify` re-derives the failure
# classes from the idcs_failure column, `table_failure_counts`).
ANNOTATIONS = ("protocol", "protocol_hash", "passes", "failures_by_class", "failures_by_stage", "judge_noise",
               "failed_passes", "judge_noise_withheld", "possible_refusals")


def table_failure_counts(samples: Any) -> dict[str, int]:
    """`failures_by_class` as samples.csv's idcs_failure / idcs_status columns give it (as `idcs_summary`
    counts the verdicts: a verdict without a score and without a class is unparsable)."""
    from .failures import failure_counts

    def cls(failure: Any, status: Any) -> str | None:
        if isinstance(failure, str) and failure:
            return failure
        return "unparsable" if isinstance(status, str) and status != VerdictStatus.OK else None

    failures = samples["idcs_failure"] if "idcs_failure" in samples else [None] * len(samples)
    statuses = samples["idcs_status"] if "idcs_status" in samples else [None] * len(samples)
    return failure_counts(cls(f, s) for f, s in zip(failures, statuses))


def judge_spec(options: Any) -> dict[str, Any]:
    """The judge part of a run spec: the config (with a protocol override applied) and its hash, plus
    the passes when more than one (so a resumed run never mixes protocols or pass counts)."""
    from ciebench.metrics.idcs import get_judge_config

    jopts = options.judge_options or JudgeRunOptions()
    cfg = get_judge_config(options.judge)
    if jopts.protocol:
        cfg = dataclasses.replace(cfg, protocol=jopts.protocol)
    # Resolving the protocol here fetches and verifies pinned prompts before any editing or scoring,
    # and puts the hash of the exact prompt texts into the run spec.
    from .protocols import resolve_judge_protocol

    resolved = resolve_judge_protocol(cfg.protocol, jopts.prompts_dir, cfg.describe_prompt_version,
                                      cfg.score_prompt_version, allow_unverified_local=jopts.allow_unverified_prompts)
    spec = {**cfg.to_dict(), "hash": cfg.hash, "protocol_hash": resolved.hash}
    if jopts.passes > 1:
        spec["passes"] = jopts.passes
    return spec


def dry_run_report(loaded: Any, predictions: list, options: Any) -> list[str]:
    """`score --dry-run`: what judging these predictions would send and cost; nothing is sent."""
    from ciebench.datasets.files import decode_image
    from ciebench.metrics.idcs import JudgeItem
    from ciebench.schema import EditSample
    from ciebench.scoring import resolve_metrics

    _, use_idcs = resolve_metrics(options)
    if not use_idcs:
        return ["no judged metric requested (pass --judge): nothing to estimate"]
    session = JudgeSession.open(options)
    ids = list(loaded.dataset["id"])
    index = {sid: i for i, sid in enumerate(ids)}
    items, unusable = [], 0
    for pred in predictions:
        if pred.path is None or pred.sample_id not in index:
            unusable += 1
            continue
        problems: list = []
        edited = decode_image(pred.path.read_bytes(), str(pred.path), pred.sample_id, "prediction", problems)
        if edited is None:
            unusable += 1
            continue
        sample = EditSample.from_row(loaded.dataset[index[pred.sample_id]])
        items.append(JudgeItem(pred.sample_id, sample.image, edited.image.convert("RGB"), sample.instruction))
    report = session.judge.estimate(items)
    cfg = session.config
    head = [f"judge {cfg.name} (protocol {session.judge.protocol.name}, {session.judge.passes} pass(es)): "
            f"{len(items)} prediction(s) to judge, {unusable} missing or unreadable",
            f"prices (USD per 1k tokens in/out): describe {cfg.vlm.price_per_1k_input}/{cfg.vlm.price_per_1k_output}, "
            f"score {cfg.llm.price_per_1k_input}/{cfg.llm.price_per_1k_output} (judge config fields)"]
    canary = session.estimate_canaries()
    if canary is None:
        return head + report.lines()
    # the drift check is paid from the same --max-cost: a budget sized without it skips the check
    total, total_max = report.cost + canary.cost, report.cost_max + canary.cost_max
    return (head + report.lines()
            + [f"drift-canary check (--judge-canaries {session.options.canaries}, paid from the same --max-cost):"]
            + ["  " + line for line in canary.lines()]
            + [f"estimated cost with the canary check: ${total:.4f} (at most ${total_max:.4f})"])
