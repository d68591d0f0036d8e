"""Throughput and driver memory of `--backend ray` on a 2,000-sample dataset (CIEBench repeated).

    python benchmarks/bench_scale.py                      # 2,000 samples; 1 and 2 Ray workers
    python benchmarks/bench_scale.py --n 500 --workers 1,2,4 --local --cpus 4

The dataset is CIEBench (../shared/ciebench, or --source) repeated to --n samples with unique ids,
saved as a Hugging Face dataset on disk in a temporary folder (the format `ciebench data prepare`
writes, memory-mapped when read). The editor is a light numpy edit (a patch of colour); scoring is
limited to cheap region metrics (psnr, mse), so the numbers measure the backend: shipping rows to
workers, PNG encoding there, results back, atomic writes by the driver, and scoring on workers.

Each configuration runs in a fresh child process with its own local Ray (num_cpus=--cpus), so its
driver peak memory is its own: `ru_maxrss` (peak resident set, which also counts pages of the
memory-mapped dataset that were read, reclaimable) and the peak of anonymous memory (RssAnon,
sampled every 50 ms: what the driver actually holds). Not a timed test: numbers depend on the machine.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from ciebench.editor import EditorConfig, EditResult, Editor

from procmem import rss_anon  # benchmarks/, this script's folder

REPO = Path(__file__).resolve().parents[1]
DEFAULT_SOURCE = REPO.parent / "shared" / "ciebench"


def build_dataset(source: Path, n: int, out: Path) -> Path:
    """CIEBench repeated to `n` rows with ids `r<copy>-<id>`, saved with `save_to_disk` (streamed to disk)."""
    import datasets

    from ciebench.datasets import read_dataset
    from ciebench.schema import FEATURES

    base = read_dataset(str(source)).dataset.cast_column("image", datasets.Image(decode=False)) \
        .cast_column("mask", datasets.Image(decode=False))

    def rows():
        for k in range(n):
            row = dict(base[k % len(base)])
            row["id"] = f"r{k // len(base):03d}-{row['id']}"
            yield row

    built = datasets.Dataset.from_generator(rows, features=FEATURES, cache_dir=str(out / "cache"))
    path = out / f"ciebench-x{n}"
    built.save_to_disk(str(path))
    return path


@dataclass(frozen=True)
class PatchConfig(EditorConfig):
    fraction: float = 0.25


class LightEditor(Editor):
    """A light numpy edit: a seeded colour patch (deterministic per sample and seed)."""

    name = "bench-light"
    Config = PatchConfig

    def edit(self, requests):
        import numpy as np
        from PIL import Image

        out = []
        for r in requests:
            rng = np.random.default_rng(r.seed)
            a = np.array(r.image)
            h, w = a.shape[:2]
            ph, pw = max(1, int(h * self.config.fraction)), max(1, int(w * self.config.fraction))
            y, x = int(rng.integers(0, h - ph + 1)), int(rng.integers(0, w - pw + 1))
            a[y:y + ph, x:x + pw] = rng.integers(0, 256, size=3, dtype=np.uint8)
            out.append(EditResult(image=Image.fromarray(a)))
        return out


class AnonPeak:
    """Samples RssAnon of this process (Linux) in a thread; `peak` in bytes (0 where unavailable)."""

    def __init__(self, every: float = 0.05):
        self.peak, self.every, self._stop = 0, every, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_anon())
            self._stop.wait(self.every)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()



def timed_generation(backend, phases: dict, anon):
    """`backend` (a ciebench Backend) with the edit phase's wall time and peak memory recorded."""
    from ciebench.backend import Backend

    class Timed(Backend):
        def generate(self, *args):
            started = time.perf_counter()
            backend.generate(*args)
            phases["edit_s"] = time.perf_counter() - started
            phases["edit_peak_anon_mb"] = anon.peak / 2**20

        def score_regions(self, *args):
            return backend.score_regions(*args)

        def model_ids(self):
            return backend.model_ids()

    return Timed()


def child(args) -> dict:
    """One configuration: workers = 0 runs the local backend."""
    from ciebench.datasets import read_dataset
    from ciebench.runner import RunOptions, run
    from ciebench.scoring import ScoreOptions

    with AnonPeak() as anon:
        started = time.perf_counter()
        loaded = read_dataset(args.dataset)
        load_s = time.perf_counter() - started
        editor = LightEditor()
        options = RunOptions(batch_size=args.batch_size, progress=False,
                             score=ScoreOptions(metrics=("psnr", "mse"), batch_size=8))
        phases: dict[str, float] = {}
        if args.workers == 0:
            from ciebench.backend import LocalBackend

            t0 = time.perf_counter()
            stats, result = run(editor, loaded, Path(args.out), options,
                                backend=timed_generation(LocalBackend(), phases, anon))
            total = time.perf_counter() - t0
            phases["ray_start_s"] = 0.0
        else:
            import ray

            from ciebench.distributed import RayBackend, RayOptions

            t = time.perf_counter()
            ray.init(num_cpus=args.cpus, include_dashboard=False, log_to_driver=False)
            phases["ray_start_s"] = time.perf_counter() - t
            backend = RayBackend(RayOptions(num_workers=args.workers, cpus_per_worker=1))
            try:
                t0 = time.perf_counter()
                stats, result = run(editor, loaded, Path(args.out), options,
                                    backend=timed_generation(backend, phases, anon))
                total = time.perf_counter() - t0
            finally:
                ray.shutdown()
    n = stats.generated
    score_s = result.summary["scoring_seconds"]
    ok = sum(r["status"] == "ok" for r in result.rows)
    return {"workers": args.workers, "n": n, "ok": ok, "load_s": load_s, **phases, "score_s": score_s,
            "total_s": total, "edit_per_s": n / phases["edit_s"], "score_per_s": len(result.rows) / score_s,
            "end_to_end_per_s": n / total, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "peak_anon_mb": anon.peak / 2**20}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--workers", default="1,2", help="comma-separated Ray worker counts")
    parser.add_argument("--local", action="store_true", help="also run the local backend, for comparison")
    parser.add_argument("--cpus", type=int, default=2, help="num_cpus of the local Ray")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--source", type=Path, default=DEFAULT_SOURCE)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--dataset", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        args.workers = int(args.workers)
        print("RESULT " + json.dumps(child(args)), flush=True)
        return

    configs = ([0] if args.local else []) + [int(w) for w in args.workers.split(",")]
    with tempfile.TemporaryDirectory(prefix="ciebench-bench-scale-") as tmp:
        t = time.perf_counter()
        dataset = build_dataset(args.source, args.n, Path(tmp))
        print(f"dataset: {args.n} samples (CIEBench x{args.n / 86:.1f}, unique ids) saved in "
              f"{time.perf_counter() - t:.1f}s; editor: light numpy patch; metrics: psnr, mse; "
              f"batch size {args.batch_size}; local Ray num_cpus={args.cpus}; {os.cpu_count()} CPU cores")
        print("driver memory: peak RSS (ru_maxrss, counts read pages of the memory-mapped dataset) and peak anonymous "
              "memory (RssAnon), over the whole run and during the editing phase")
        print(f"{'backend':<10}{'edit img/s':>11}{'score img/s':>12}{'end-to-end img/s':>17}{'total s':>9}"
              f"{'ray start s':>12}{'peak RSS MB':>12}{'peak anon MB':>13}{'(editing)':>10}")
        for workers in configs:
            out = Path(tmp) / f"run-{workers}"
            env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
            proc = subprocess.run([sys.executable, __file__, "--child", "--workers", str(workers), "--dataset", str(dataset),
                                   "--out", str(out), "--cpus", str(args.cpus), "--batch-size", str(args.batch_size)],
                                  capture_output=True, text=True, env=env)
            line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
            if proc.returncode != 0 or line is None:
                print(proc.stdout[-2000:], proc.stderr[-4000:], file=sys.stderr)
                raise SystemExit(f"configuration with {workers} worker(s) failed")
            r = json.loads(line[len("RESULT "):])
            assert r["n"] == args.n and r["ok"] == args.n, r
            label = "local" if workers == 0 else f"ray x{workers}"
            print(f"{label:<10}{r['edit_per_s']:>11.1f}{r['score_per_s']:>12.1f}{r['end_to_end_per_s']:>17.1f}"
                  f"{r['total_s']:>9.1f}{r['ray_start_s']:>12.1f}{r['peak_rss_mb']:>12.0f}{r['peak_anon_mb']:>13.0f}"
                  f"{r['edit_peak_anon_mb']:>10.0f}", flush=True)


if __name__ == "__main__":
    main()
