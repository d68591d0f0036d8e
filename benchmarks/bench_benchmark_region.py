"""Benchmark: ciebench's region metrics on a judge-scored benchmark stream, so memory is flat in the
number of cases.

    python benchmarks/bench_benchmark_region.py [--small 200] [--large 1600] [--side 256]

What runs: a generated UniREditBench folder of N cases in the official layout (every case has a
ground-truth image differing from its source in a rectangle; 5% of outputs missing, 5% of ground
truths of another aspect ratio), scored by the real path (`ciebench.benchmarks.region.run_region`:
cases read one at a time, the must-change region derived by the default `GroundTruthRule`, PSNR / MSE
/ SSIM / locality by `RegionScorer` under the `exact` protocol, one row appended per case, then the
streaming summary). Reported for both sizes: peak traced Python memory (tracemalloc) of the scoring
step, growth of the process's peak RSS during it, and seconds per case. The small run is the baseline
measured in the same process; the ratios large / small are what should stay near 1 (memory) and near
1 (time per case).
"""
from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ciebench.benchmarks import get_benchmark  # noqa: E402
from ciebench.benchmarks.region import RegionOptions, run_region  # noqa: E402


def make_layout(root: Path, n: int, side: int) -> tuple[Path, Path]:
    data, out = root / "data", root / "outputs"
    data.mkdir(parents=True)
    rng = np.random.default_rng(0)
    w, h = side, side * 3 // 4
    src = rng.integers(40, 200, size=(h, w, 3), dtype=np.uint8)
    gt = src.copy()
    gt[h // 4:h // 2, w // 4:w // 2] = (250, 10, 10)
    Image.fromarray(src).save(data / "src.png")
    Image.fromarray(gt).save(data / "gt.png")
    Image.fromarray(gt[: h // 2]).save(data / "gt_other_aspect.png")
    pred = np.clip(src.astype(np.int16) + rng.integers(-12, 13, size=src.shape), 0, 255).astype(np.uint8)
    pred_png = data / "pred.png"
    Image.fromarray(pred).save(pred_png)
    items = []
    for i in range(n):
        name = f"dim_{i % 6}"
        items.append({"original_image_path": "src.png",
                      "reference_image_path": "gt_other_aspect.png" if i % 20 == 3 else "gt.png",
                      "instruction": f"edit {i}", "name": name, "idx": i, "reference_effect": "e"})
        if i % 20 != 7:  # 5% missing outputs
            (out / name).mkdir(parents=True, exist_ok=True)
            (out / name / f"{i}.png").write_bytes(pred_png.read_bytes())
    (data / "data.json").write_text(json.dumps(items))
    return data, out


def rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(n: int, side: int) -> dict:
    bench = get_benchmark("unireditbench")
    with tempfile.TemporaryDirectory() as tmp:
        data, outputs = make_layout(Path(tmp), n, side)
        out = Path(tmp) / "scored"
        out.mkdir()
        rss_before = rss_mib()
        tracemalloc.start()
        started = time.perf_counter()
        counts, summary = run_region(bench, bench.cases(data), outputs, out, RegionOptions(), progress=False, total=n)
        seconds = time.perf_counter() - started
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        return {"n": n, "counts": counts, "status_counts": summary["status_counts"], "seconds": seconds,
                "per_case_ms": 1000 * seconds / n, "peak_traced_mib": peak / 2**20,
                "peak_rss_growth_mib": rss_mib() - rss_before}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--small", type=int, default=200)
    parser.add_argument("--large", type=int, default=1600)
    parser.add_argument("--side", type=int, default=256)
    args = parser.parse_args()
    measure(20, args.side)  # warm-up: imports, thread pools, allocator
    small, large = measure(args.small, args.side), measure(args.large, args.side)
    for r in (small, large):
        print(f"n={r['n']:>6}: {r['seconds']:.1f} s ({r['per_case_ms']:.1f} ms/case), peak traced "
              f"{r['peak_traced_mib']:.2f} MiB, peak RSS growth {r['peak_rss_growth_mib']:.1f} MiB, {r['status_counts']}")
    print(f"x{args.large / args.small:.0f} cases: peak traced memory x{large['peak_traced_mib'] / small['peak_traced_mib']:.2f}, "
          f"time per case x{large['per_case_ms'] / small['per_case_ms']:.2f}, "
          f"peak RSS growth {small['peak_rss_growth_mib']:.1f} -> {large['peak_rss_growth_mib']:.1f} MiB")


if __name__ == "__main__":
    main()
