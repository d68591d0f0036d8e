"""Reading per-case verdicts for re-aggregation without a judge: ciebench's verdicts.jsonl, or the
official per-case judge table RISEBench's scripts write (`MODEL_judge.xlsx`, or a CSV export of it:
columns index, category, Reasoning, ApprConsistency, VisualPlausibility, and where present
consistency_free, multi_turn, subtask / subcategory, task_type)."""
from __future__ import annotations

import ast
import logging
import math
from pathlib import Path
from typing import Any, Iterator

from ciebench.status import Status

from .base import Benchmark
from .rise import AC, HYBRID, IR, VP, plus_flags
from .run import latest_verdicts

log = logging.getLogger("ciebench.benchmarks")


def read_verdict_file(benchmark: Benchmark, path: Path) -> Iterator[dict[str, Any]]:
    """The verdict rows of `path`, after a first pass that refuses a file made for another benchmark
    (`check_owner`): its numbers would be published under `benchmark`'s name."""
    if not path.is_file():
        raise FileNotFoundError(f"--verdicts {path} does not exist")
    if path.suffix == ".jsonl":
        rows = lambda: latest_verdicts(path)  # noqa: E731
    elif path.suffix in (".csv", ".xlsx"):
        own = getattr(benchmark, "official_verdicts", None)
        rows = lambda: own(path) if own is not None else _official_table(path)  # noqa: E731
    else:
        raise ValueError(f"--verdicts {path}: expected .jsonl (ciebench) or .xlsx/.csv (the official judge table)")
    check_owner(benchmark, path, rows())
    return rows()


def check_owner(benchmark: Benchmark, path: Path, rows: Iterator[dict[str, Any]]) -> None:
    """Refuse rows made for another benchmark: one naming another (`verdict_row` records the name), or,
    for rows naming none (an older ciebench's, an official table's), one whose category is not this
    benchmark's (`Benchmark.owns_verdict`). Rows the benchmark cannot tell apart are counted in a warning."""
    unsure = 0
    for row in rows:
        name = row.get("benchmark")
        where = f"case {row.get('output_folder')}/{row.get('id')}"
        if name is not None and name != benchmark.name:
            raise ValueError(f"--verdicts {path} was made for benchmark {name!r} ({where}), not {benchmark.name!r}: "
                             f"re-aggregate it with --benchmark {name}")
        if name is not None:
            continue
        owns = benchmark.owns_verdict(row)
        if owns is False:
            listed = sorted({row.get("category"), *(row.get("categories") or ())} - {None}, key=str)
            raise ValueError(f"--verdicts {path}: {where} (category {', '.join(map(str, listed))}, folder "
                             f"{row.get('output_folder')!r}) is not a case of {benchmark.name} (categories: "
                             f"{', '.join(benchmark.categories)}): a verdict file of another benchmark?")
        if owns is None:
            unsure += 1
    if unsure:
        log.warning("--verdicts %s: %d row(s) name no benchmark and %s cannot tell its cases from another "
                    "benchmark's; make sure the file was made for %s", path, unsure, benchmark.name, benchmark.name)


def _official_table(path: Path) -> Iterator[dict[str, Any]]:
    import pandas as pd

    frame = pd.read_excel(path) if path.suffix == ".xlsx" else pd.read_csv(path)
    missing = {"index", "category", IR} - set(frame.columns)
    if missing:
        raise ValueError(f"--verdicts {path}: missing columns {sorted(missing)}")
    for n, item in enumerate(frame.to_dict("records")):
        category = item["category"]
        if isinstance(category, str) and category.startswith("["):
            category = ast.literal_eval(category)  # a list written by pandas: literals only, never code
        categories = tuple(category) if isinstance(category, (list, tuple)) else (category,)
        flags = plus_flags(item, categories)
        multi_turn = "multi_turn" in flags
        dims = {d: _num(item.get(d)) for d in (AC, IR, VP)}
        yield {"id": str(item["index"]), "category": categories[0], "categories": list(categories),
               "output_folder": HYBRID if multi_turn else categories[0],
               "subtask": _text(item.get("subcategory", item.get("subtask"))), "task_type": _text(item.get("task_type")),
               "flags": sorted(flags), "status": Status.OK if dims[IR] is not None else Status.JUDGE_ERROR, "dims": dims,
               "source_row": n}


def _num(v: Any) -> float | None:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return None
    return float(v)


def _text(v: Any) -> str | None:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return None
    return str(v)
