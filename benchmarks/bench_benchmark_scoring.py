"""Benchmark: scoring a judge-scored benchmark streams, so peak memory is flat in the number of cases.

    python benchmarks/bench_benchmark_scoring.py [--small 250] [--large 2000]

What runs: a generated RISEBench++ folder of N cases in the official layout (a mix of every category,
multi-turn and consistency-free cases, 5% missing outputs), scored by the real pipeline
(`ciebench.benchmarks.run.judge_cases`: cases read one at a time, each output found in the official
layout and prepared as the judge would get it (768-px JPEG), one verdict line appended per case; then
`aggregate(latest_verdicts(...))`). The judge itself is an in-process stand-in that derives scores
from the case id (this measures the pipeline, not an LLM). Peak traced memory (tracemalloc) of the
scoring step is reported for both sizes, and, as the baseline measured in the same run, the peak of
the same aggregation done as the official script does it (every row in a pandas DataFrame).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ciebench.benchmarks import get_benchmark  # noqa: E402
from ciebench.benchmarks.judging import CaseJudgement  # noqa: E402
from ciebench.benchmarks.run import aggregate, iter_verdicts, judge_cases, latest_verdicts  # noqa: E402

CATS = ("temporal_reasoning", "causal_reasoning", "spatial_reasoning", "logical_reasoning", "counterfactual_reasoning")


def make_layout(root: Path, n: int) -> None:
    data, out = root / "data", root / "outputs" / "m" / "images"
    data.mkdir(parents=True)
    Image.new("RGB", (96, 64), (10, 20, 30)).save(data / "src.png")
    png = (data / "src.png").read_bytes()
    items = []
    for i in range(n):
        multi = i % 10 == 9
        cat = CATS[i % len(CATS)]
        item = {"index": f"case_{i}", "category": [cat, "causal_reasoning"] if multi else cat, "image": ["src.png"],
                "instruction": ["a", "b", "c"] if multi else f"edit {i}", "reference_txt": "ref",
                "subcategory": f"sub{i % 7}", "task_type": f"t{i % 13}"}
        if multi:
            item["multi_turn"] = True
        if i % 11 == 0:
            item["consistency_free"] = True
        items.append(item)
        if i % 20 != 7:  # 5% missing outputs
            folder = out / ("hybrid_reasoning" if multi else cat)
            folder.mkdir(parents=True, exist_ok=True)
            (folder / f"case_{i}.png").write_bytes(png)
    (data / "overall_data.json").write_text(json.dumps(items))


class StandInJudge:
    """Scores from the case id; prepares every judge image as the real judge does."""

    def __init__(self, bench):
        self.bench = bench

    def judge(self, case, output):
        dims = {}
        for call in self.bench.judge_calls(case, output):
            for path in call.images:
                self.bench.judge_image(path, call)
            h = int(hashlib.sha256(f"{case.id}{call.dimension}".encode()).hexdigest(), 16)
            dims[call.dimension] = (h % 2) if "logical" in case.flags else 1 + h % 5
        return CaseJudgement(dims=self.bench.map_scores(case, dims))


def score_once(root: Path, out: Path) -> tuple[float, int, dict]:
    bench = get_benchmark("risebench-plus")
    out.mkdir()
    tracemalloc.start()
    t0 = time.perf_counter()
    judge_cases(bench, bench.cases(root), root / "outputs" / "m", out, StandInJudge(bench), progress=False)
    summary = aggregate(bench, latest_verdicts(out / "verdicts.jsonl"))
    elapsed = time.perf_counter() - t0
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return elapsed, peak, summary


def pandas_baseline(out: Path) -> int:
    import pandas as pd

    tracemalloc.start()
    rows = [{"category": r["category"], **r["dims"]} for r in iter_verdicts(out / "verdicts.jsonl")]
    frame = pd.DataFrame(rows)
    frame.groupby("category").mean(numeric_only=True)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return peak


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--small", type=int, default=250)
    ap.add_argument("--large", type=int, default=2000)
    args = ap.parse_args()
    results = {}
    with tempfile.TemporaryDirectory(prefix="ciebench-bench-scoring-") as tmp:
        for n in (args.small, args.large):
            root = Path(tmp) / f"n{n}"
            make_layout(root, n)
            elapsed, peak, summary = score_once(root, root / "scored")
            base = pandas_baseline(root / "scored")
            results[n] = (elapsed, peak, base)
            counts = summary["ours"]["status_counts"]
            print(f"{n:>6} cases: {elapsed:6.2f} s ({1000 * elapsed / n:.2f} ms/case), peak traced memory "
                  f"{peak / 2**20:6.2f} MiB (streaming); all-rows DataFrame baseline {base / 2**20:6.2f} MiB; "
                  f"statuses {counts}; Overall Accuracy {summary['headline']['value']:.4f}")
    (s_t, s_peak, s_base), (l_t, l_peak, l_base) = results[args.small], results[args.large]
    ratio = args.large / args.small
    print(f"cases x{ratio:.0f}: streaming peak x{l_peak / s_peak:.2f}, DataFrame baseline peak x{l_base / s_base:.2f}, "
          f"time per case x{(l_t / args.large) / (s_t / args.small):.2f}")


if __name__ == "__main__":
    main()
