"""Region-metric speed: ciebench's `RegionScorer` against a plain per-image loop over torchmetrics
modules written as the published scripts do (`tests/metrics_reference.PublishedLoop`).

    python benchmarks/bench_metrics.py                    # all 86 CIEBench samples, protocol cielr
    python benchmarks/bench_metrics.py --limit 16 --protocol smartedit --batch-size 16 --device cuda

Inputs: the real CIEBench (../shared/ciebench, or --source) with one synthetic edited image per
sample (tests/synthetic_edits.py, rotating through its kinds, written as PNG files), so both ways
decode the same files. Models: real-size architectures with random weights (CLIP ViT-L/14 at the
protocol's size built from the published config's shapes, torchvision squeezenet1_1), saved into
a temporary offline hub cache and torch hub folder, so both ways load them through the real
`from_pretrained` / torchvision weights paths. Metrics: those both ways compute (psnr, ssim,
lpips, mse, clip).

Each way runs in a fresh child process (so its peak memory, `ru_maxrss`, is its own) and times
model loading and scoring separately. Printed: both scoring wall times, their ratio, peak memory,
and the largest difference between the two results per metric. Not a timed test.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_SOURCE = REPO.parent / "shared" / "ciebench"
METRICS = ("psnr", "ssim", "lpips", "mse", "clip")
TOLERANCE = {"clip": 1e-4}  # others: 1e-5


def _set_caches(root: Path) -> None:
    os.environ["HF_HUB_CACHE"] = str(root / "hub")
    os.environ["TORCH_HOME"] = str(root / "torch")
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    (root / "hub").mkdir(parents=True, exist_ok=True)


def prepare(source: Path, work: Path, protocol_name: str, limit: int | None) -> Path:
    """Publish the models, write the predictions, and return the manifest the children read."""
    from ciebench.datasets import read_dataset
    from ciebench.metrics.protocols import get_protocol
    from ciebench.schema import EditSample
    from ciebench.tests.fixtures_models import image_size_of, publish_clip, publish_squeezenet1_1, vit_l14_config
    from ciebench.tests.synthetic_edits import KINDS, synthetic_edit

    protocol = get_protocol(protocol_name)
    t0 = time.perf_counter()
    publish_clip(protocol.clip_model, config=vit_l14_config(image_size_of(protocol.clip_model)))
    publish_squeezenet1_1()
    print(f"published random-weight {protocol.clip_model} (ViT-L/14 shapes) and squeezenet1_1 "
          f"in {time.perf_counter() - t0:.1f} s", flush=True)
    loaded = read_dataset(str(source))
    rows = []
    predictions = work / "predictions"
    predictions.mkdir(parents=True, exist_ok=True)
    for n in range(len(loaded.dataset) if limit is None else min(limit, len(loaded.dataset))):
        row = loaded.dataset[n]
        sample = EditSample.from_row(row)
        kind = [k for k in KINDS if k != "identity"][n % (len(KINDS) - 1)]
        pred_path = predictions / f"{sample.id}.png"
        synthetic_edit(sample.image, sample.mask, kind, seed=n).save(pred_path)
        meta = json.loads(row["meta"])
        rows.append({"id": sample.id, "source": str(source / meta["image_path"]),
                     "mask": str(source / meta["mask_paths"][0]), "prediction": str(pred_path),
                     "clip_text": sample.clip_text, "kind": kind})
    manifest = work / "manifest.json"
    manifest.write_text(json.dumps({"protocol": protocol_name, "rows": rows}))
    return manifest


def run_ours(manifest: dict, batch_size: int, workers: int, device: str) -> dict:
    from PIL import Image

    from ciebench.metrics.region import RegionScorer, ScoreItem

    t0 = time.perf_counter()
    scorer = RegionScorer(manifest["protocol"], metrics=list(METRICS), device=device, batch_size=batch_size,
                          workers=workers)
    t1 = time.perf_counter()
    # Files are opened lazily; decoding happens in the scorer's worker threads.
    items = (ScoreItem(r["id"], Image.open(r["source"]), Image.open(r["mask"]), Image.open(r["prediction"]),
                       r["clip_text"]) for r in manifest["rows"])
    results = {sid: row for sid, row in scorer.score(items)}
    t2 = time.perf_counter()
    return {"load_s": t1 - t0, "score_s": t2 - t1, "results": results, "model_ids": scorer.model_ids()}


def run_published(manifest: dict) -> dict:
    from PIL import Image

    from ciebench.metrics.protocols import get_protocol
    from ciebench.tests.metrics_reference import PublishedLoop

    protocol = get_protocol(manifest["protocol"])
    if protocol.size is None:
        raise SystemExit("the published loop exists for the parity protocols (cielr, smartedit) only")
    t0 = time.perf_counter()
    loop = PublishedLoop(size=protocol.size, clip_model=protocol.clip_model, ssim_crop=protocol.ssim_border == "crop")
    t1 = time.perf_counter()
    results = {}
    for r in manifest["rows"]:
        results[r["id"]] = loop.score(Image.open(r["source"]), Image.open(r["mask"]), Image.open(r["prediction"]),
                                      r["clip_text"])
    t2 = time.perf_counter()
    return {"load_s": t1 - t0, "score_s": t2 - t1, "results": results}


def child(args: argparse.Namespace) -> None:
    import torch

    _set_caches(Path(args.cache))
    manifest = json.loads(Path(args.manifest).read_text())
    with torch.inference_mode():
        out = run_ours(manifest, args.batch_size, args.workers, args.device) if args.way == "ours" else run_published(manifest)
    # ru_maxrss is in KiB on Linux.
    out["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out["threads"] = torch.get_num_threads()
    Path(args.out).write_text(json.dumps(out, default=str, allow_nan=True))


def _diff(a: float, b: float) -> float:
    if (math.isnan(a) and math.isnan(b)) or a == b:
        return 0.0
    return abs(a - b) if math.isfinite(a) and math.isfinite(b) else math.inf


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", type=Path, default=DEFAULT_SOURCE)
    parser.add_argument("--protocol", default="cielr", choices=["cielr", "smartedit", "cielr-full", "smartedit-full"])
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--way", choices=["ours", "published"], help=argparse.SUPPRESS)
    parser.add_argument("--manifest", help=argparse.SUPPRESS)
    parser.add_argument("--cache", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.way:
        child(args)
        return
    if not (args.source / "updated_data.json").exists():
        raise SystemExit(f"no CIEBench release at {args.source} (pass --source)")
    with tempfile.TemporaryDirectory(prefix="ciebench-bench-metrics-") as tmp:
        work = Path(tmp)
        _set_caches(work / "cache")
        manifest = prepare(args.source, work, args.protocol, args.limit)
        n = len(json.loads(manifest.read_text())["rows"])
        outs = {}
        for way in ("published", "ours"):
            out_path = work / f"{way}.json"
            cmd = [sys.executable, __file__, "--way", way, "--manifest", str(manifest), "--cache", str(work / "cache"),
                   "--out", str(out_path), "--batch-size", str(args.batch_size), "--workers", str(args.workers),
                   "--device", args.device]
            print(f"running {way} ...", flush=True)
            subprocess.run(cmd, check=True)
            outs[way] = json.loads(out_path.read_text())
        report(outs, n, args)


def report(outs: dict, n: int, args: argparse.Namespace) -> None:
    ours, ref = outs["ours"], outs["published"]
    print(f"\nCIEBench region metrics, protocol {args.protocol}, {n} samples (synthetic edits), device {args.device}, "
          f"torch threads {ours['threads']}; ciebench batch {args.batch_size}, {args.workers} worker threads")
    print(f"{'':28}{'model load':>12}{'scoring':>12}{'per sample':>12}{'peak RSS':>12}")
    for name, out in (("published per-image loop", ref), ("ciebench RegionScorer", ours)):
        print(f"{name:28}{out['load_s']:>10.1f} s{out['score_s']:>10.1f} s{out['score_s'] / n:>10.2f} s"
              f"{out['peak_rss_mib']:>8.0f} MiB")
    print(f"speed-up (scoring wall time, published / ciebench): {ref['score_s'] / ours['score_s']:.2f}x")
    print("largest |difference| per metric (ciebench vs published):")
    worst_ok = True
    for m in METRICS:
        diffs = [_diff(float(ours["results"][sid][m]), float(ref["results"][sid][m])) for sid in ref["results"]]
        tol = TOLERANCE.get(m, 1e-5)
        bad = sum(d > tol for d in diffs)
        worst_ok &= bad == 0
        n_inf = sum(math.isinf(float(ours["results"][sid][m])) for sid in ours["results"])
        print(f"  {m:6} {max(diffs):.3g}  (tolerance {tol:g}; {bad} over; {n_inf} samples at +inf)")
    errors = {sid: r["error"] for sid, r in ours["results"].items() if "error" in r}
    print(f"per-sample errors: {len(errors)}" + (f" {errors}" if errors else ""))
    print("results identical within tolerance" if worst_ok else "RESULTS DIFFER beyond tolerance")
    print(f"ciebench model ids: {json.dumps(ours['model_ids'], sort_keys=True)}")


if __name__ == "__main__":
    main()
