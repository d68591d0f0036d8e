"""Region-metric speed against the hardware's floor, per stage, and memory against the number of samples.

    python benchmarks/bench_metrics.py --limit 20 --repeat 3          # floor vs reference vs ciebench
    python benchmarks/bench_metrics.py --limit 86 --device cuda --protocol exact-bf16
    python benchmarks/bench_metrics.py --memory 250,2000              # peak memory, cheap metrics
    python benchmarks/bench_metrics.py --limit 86 --protocol exact-tf32 --emulate-tf32 nearest,truncate

The ways, each a whole fresh process, timed from outside (start-up and imports count):

- floor: a bare process that imports torch and transformers, loads the same CLIP and runs its image
  forward on the same crops (saved as lossless PNGs), at the same batch size, device and forward
  precision (the protocol's), with the same allocator setting as ciebench's process
  (`ciebench.allocator`; --allocator system gives every way glibc's defaults);
- reference: the published per-image loop (`tests/metrics_reference.PublishedLoop`: torchmetrics
  modules and one CLIP forward per image and text, on the same device, in IEEE float32 as ciebench
  computes the parity protocols: not PyTorch's default TF32 cuDNN convolutions), parity protocols only;
- ciebench: the real `python -m ciebench score` over a folder of predictions; its per-stage account
  comes from the run's summary.json "timing" (stage shares of the wall clock, `metrics.timing`),
  which the command counts from its process's start: "startup" holds the interpreter, the imports,
  the CLI, reading and verifying the dataset and finding the predictions;
- float32, for a protocol with reduced-precision forwards (`exact-bf16`, `exact-tf32`): the same
  command with the preset that is that protocol in float32 (`exact`), for the speed-up and the
  largest deviation per metric (against the documented bfloat16 and TF32 bounds, `metrics.precision`).

--check-device DEV (e.g. cpu beside --device cuda): ciebench once more on DEV, and the largest
difference per metric between the two devices' results (a float32 protocol computes IEEE float32
on every device, so only the order of float32 sums may differ: the reference tolerance applies).

Per stage, each way reports its share of the wall clock (decode, align, pixel metrics, SSIM,
LPIPS, CLIP preprocess, CLIP forward, writing, summary, ...). Printed: the whole-process walls
(min / median / max over --repeat runs), the floor ratio (ciebench / floor), the reference ratio
(reference / ciebench), the same ratios for scoring only (the process less start-up, imports and
model load: the measure of the GPU targets, 86 samples in under 5 s, at least 5x the reference,
within 1.3x of the floor), the per-stage table, peak memory, and the largest difference between the
reference's and ciebench's results per metric.

Inputs: the real CIEBench (../shared/ciebench, or --source) with one synthetic edited image per
sample (tests/support/synthetic_edits.py, rotating through its kinds). Models: real-size architectures with
random weights (CLIP ViT-L/14 at the protocol's size from the published config's shapes,
torchvision squeezenet1_1), saved into a temporary offline hub cache and torch hub folder, so every
way loads them through the real `from_pretrained` / torchvision weights paths.

--breakdown: in one process, the CPU time (all threads) of each piece of work on the first --limit
samples (at most 8, one batch): CLIP image forward, LPIPS, pixel metrics + SSIM, alignment + CLIP
preprocessing, CLIP text tower; each as a share of the CLIP forward, which is all the floor does. Each
is warmed up, then timed --repeat times and the minimum kept (on a loaded machine, threads that spin
while waiting inflate CPU time; the minimum is the least disturbed run). It says how far above the
floor the whole process must stay whatever the scheduling.

--emulate-tf32 nearest,truncate with a parity protocol (cielr, smartedit): the published per-image
loop in IEEE float32 against the same loop under PyTorch's defaults on an Ampere-or-later GPU
(cuDNN's float32 convolutions in TF32, emulated), against the parity tolerance: how far published
numbers computed on such a GPU can be from ciebench's.

--emulate-tf32 nearest,truncate (with --protocol exact-tf32 --device cpu): TF32's effect measured
without a GPU, in this process. The float32 twin (`exact`) and, per rounding, `exact-tf32` with the
CLIP and LPIPS forwards' float32 products taking TF32-rounded inputs (tests/support/emulated_tf32.py),
CLIP unclamped; prints the largest deviation per metric against the documented TF32 bounds
(`metrics.precision`). No timing.

--memory N1,N2: CIEBench repeated to N1 and N2 samples (bench_scale.build_dataset), scored with
`ciebench score --metrics psnr,mse`; prints each run's peak anonymous memory (RssAnon, sampled
every 20 ms; mapped dataset pages excluded) and peak RSS, and their ratio. Not a timed test.
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable

from procmem import rss_anon  # benchmarks/, this script's folder

REPO = Path(__file__).resolve().parents[1]
DEFAULT_SOURCE = REPO.parent / "shared" / "ciebench"
METRICS = ("psnr", "ssim", "lpips", "mse", "clip")
CHEAP_METRICS = "psnr,mse"
TOLERANCE = {m: 1e-4 if m == "clip" else 1e-5 for m in METRICS}  # ciebench against the published loop
STAGE_ORDER = ("startup", "index", "read", "decode", "load", "align", "clip_preprocess", "pixel", "ssim",
               "locality", "lpips", "clip_text", "clip_forward", "writing", "summary")


def strict_float32(tf32: bool = False) -> None:
    """A fresh child process's float32 math: IEEE everywhere, or TF32 matmuls and convolutions on
    CUDA. The legacy setters keep PyTorch's legacy and per-op flags consistent in a fresh process."""
    import torch

    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32


def use_offline_caches(root: Path) -> None:
    """Point the hub and torch caches at `root` and go offline (the models are published there)."""
    os.environ["HF_HUB_CACHE"] = str(root / "hub")
    os.environ["TORCH_HOME"] = str(root / "torch")
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    (root / "hub").mkdir(parents=True, exist_ok=True)


# ---- preparation (parent process) ---------------------------------------------------------------
def publish_models(protocol_name: str) -> None:
    from ciebench.metrics.protocols import get_protocol
    from ciebench.tests.support.fixtures_models import image_size_of, publish_clip, publish_squeezenet1_1, vit_l14_config

    protocol = get_protocol(protocol_name)
    t0 = time.perf_counter()
    publish_clip(protocol.clip_model, config=vit_l14_config(image_size_of(protocol.clip_model)))
    publish_squeezenet1_1()
    print(f"published random-weight {protocol.clip_model} (ViT-L/14 shapes) and squeezenet1_1 "
          f"in {time.perf_counter() - t0:.1f} s", flush=True)


def prepare(source: Path, work: Path, protocol_name: str, limit: int | None) -> Path:
    """Write the predictions (and, for the floor, each sample's CLIP crop) and the manifest."""
    from ciebench.datasets import read_dataset
    from ciebench.metrics.align import align
    from ciebench.metrics.clipscore import region_crop
    from ciebench.metrics.protocols import get_protocol
    from ciebench.schema import EditSample
    from ciebench.tests.support.synthetic_edits import KINDS, synthetic_edit
    from PIL import Image

    protocol = get_protocol(protocol_name)
    loaded = read_dataset(str(source))
    rows = []
    predictions, crops = work / "predictions", work / "crops"
    predictions.mkdir(parents=True, exist_ok=True)
    crops.mkdir(exist_ok=True)
    kinds = [k for k in KINDS if k != "identity"]
    for n in range(len(loaded.dataset) if limit is None else min(limit, len(loaded.dataset))):
        row = loaded.dataset[n]
        sample = EditSample.from_row(row)
        kind = kinds[n % len(kinds)]
        pred_path = predictions / f"{sample.id}.png"
        edited = synthetic_edit(sample.image, sample.mask, kind, seed=n)
        edited.save(pred_path)
        aligned = align(sample.image, Image.open(pred_path), sample.mask, protocol)
        crop = region_crop(aligned.prediction, aligned.mask, protocol.clip_crop == "inclusive")
        crop_path = None
        if crop is not None and sample.clip_text:
            crop_path = crops / f"{sample.id}.png"
            Image.fromarray(crop).save(crop_path)
        meta = json.loads(row["meta"])
        rows.append({"id": sample.id, "source": str(source / meta["image_path"]),
                     "mask": str(source / meta["mask_paths"][0]), "prediction": str(pred_path),
                     "crop": str(crop_path) if crop_path else None, "clip_text": sample.clip_text, "kind": kind})
    manifest = work / "manifest.json"
    manifest.write_text(json.dumps({"protocol": protocol_name, "clip_model": protocol.clip_model,
                                    "model_precision": protocol.model_precision, "source": str(source), "rows": rows}))
    return manifest


# ---- the ways (child processes) -----------------------------------------------------------------
def _timer():
    from ciebench.metrics.timing import StageTimer

    return StageTimer()


def child_floor(manifest: dict, batch_size: int, device: str, out: Path, started: float) -> None:
    """Only what the floor needs: torch, transformers, PIL; of ciebench only its allocator setting
    (applied in `main`), so the floor's memory comes from where ciebench's does."""
    import torch
    import transformers
    from PIL import Image

    stages: dict[str, float] = {"startup": time.perf_counter() - started}  # interpreter and imports

    def timed(name, fn):
        t0 = time.perf_counter()
        value = fn()
        stages[name] = stages.get(name, 0.0) + time.perf_counter() - t0
        return value

    dev = torch.device(device)

    def load():
        model = transformers.CLIPModel.from_pretrained(manifest["clip_model"]).eval().to(dev)
        cls = getattr(transformers, "CLIPImageProcessorPil", None) or transformers.CLIPImageProcessor
        return model, cls.from_pretrained(manifest["clip_model"])

    model, processor = timed("load", load)
    paths = [r["crop"] for r in manifest["rows"] if r["crop"]]
    # The protocol's forward precision, as ciebench applies it (metrics.precision), written out here
    # so the floor imports nothing of ciebench's scoring: bfloat16 autocast, or TF32 on CUDA, else
    # IEEE float32 (PyTorch's default would run cuDNN's float32 convolutions in TF32).
    precision = manifest.get("model_precision", "float32")
    strict_float32(tf32=precision == "tf32" and dev.type == "cuda")
    autocast = (torch.autocast(device_type=dev.type, dtype=torch.bfloat16) if precision == "bfloat16"
                else contextlib.nullcontext())
    with torch.inference_mode(), autocast:
        for start in range(0, len(paths), batch_size):
            part = paths[start:start + batch_size]
            crops = timed("decode", lambda: [Image.open(p).convert("RGB") for p in part])
            pixels = timed("clip_preprocess", lambda: processor(images=crops, return_tensors="pt")["pixel_values"])

            def forward():
                feats = model.get_image_features(pixel_values=pixels.to(dev))
                feats = feats if isinstance(feats, torch.Tensor) else feats.pooler_output
                feats = feats.float()
                feats = feats / feats.norm(dim=-1, keepdim=True)
                if dev.type == "cuda":
                    torch.cuda.synchronize(dev)
                return feats

            timed("clip_forward", forward)
    out.write_text(json.dumps({"stages": stages, "n_crops": len(paths), "threads": torch.get_num_threads()}))


def child_reference(manifest: dict, device: str, out: Path, started: float) -> None:
    import torch
    from PIL import Image

    from ciebench.metrics.protocols import get_protocol
    from ciebench.tests.support import metrics_reference as ref

    timer = _timer()
    startup_s = time.perf_counter() - started
    protocol = get_protocol(manifest["protocol"])
    if protocol.size is None:
        raise SystemExit("the published loop exists for the parity protocols (cielr, smartedit) only")

    dev = torch.device(device)
    strict_float32()  # the parity protocols' float32, as ciebench computes it (metrics.precision)

    def timed(name, fn):
        def wrapper(*args, **kwargs):
            with timer.stage(name):
                value = fn(*args, **kwargs)
                if dev.type == "cuda":  # the loop's float() waits right after; the wait belongs to the stage
                    torch.cuda.synchronize(dev)
                return value
        return wrapper

    with timer.stage("load"):
        loop = ref.PublishedLoop(size=protocol.size, clip_model=protocol.clip_model,
                                 ssim_crop=protocol.ssim_border == "crop", device=device)
    ref.published_inputs = timed("align", ref.published_inputs)
    ref.published_ssim = timed("ssim", ref.published_ssim)
    loop.psnr, loop.mse = timed("pixel", loop.psnr), timed("pixel", loop.mse)
    loop.lpips = timed("lpips", loop.lpips)
    loop.processor = timed("clip_preprocess", loop.processor)  # images and texts, per text
    loop.clip = timed("clip_forward", loop.clip)  # image and text towers, per text

    def load_image(path):
        with timer.stage("decode"):
            image = Image.open(path)
            image.load()
            return image

    results = {}
    with torch.inference_mode():
        for r in manifest["rows"]:
            src, mask, pred = load_image(r["source"]), load_image(r["mask"]), load_image(r["prediction"])
            results[r["id"]] = loop.score(src, mask, pred, r["clip_text"])
    report = timer.report()
    stages = {"startup": startup_s, **{k: v["wall_s"] for k, v in report["stages"].items()}}
    out.write_text(json.dumps({"stages": stages, "results": results, "threads": torch.get_num_threads()}))


# ---- running and measuring a child --------------------------------------------------------------
def run_process(cmd: list[str]) -> dict:
    """Run `cmd`; its whole-process wall time, CPU time (user + system, all threads), peak RSS
    (ru_maxrss) and sampled peak RssAnon."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL)
    peak_anon, done = 0, threading.Event()

    def sample():
        nonlocal peak_anon
        while not done.is_set():
            peak_anon = max(peak_anon, rss_anon(proc.pid))
            done.wait(0.02)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    done.set()
    sampler.join()
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode not in (0,):
        raise SystemExit(f"{' '.join(cmd[:4])} ... exited with {proc.returncode}")
    return {"wall_s": wall, "cpu_s": usage.ru_utime + usage.ru_stime, "peak_rss_mib": usage.ru_maxrss / 1024,
            "peak_anon_mib": peak_anon / 2**20}


def run_ciebench(dataset: str, predictions: Path, out: Path, protocol: str, metrics: str, batch_size: int,
                 device: str, limit: int | None) -> dict:
    cmd = [sys.executable, "-m", "ciebench", "score", "--dataset", dataset, "--predictions", str(predictions),
           "--out", str(out), "--protocol", protocol, "--metrics", metrics, "--batch-size", str(batch_size),
           "--device", device]
    if limit is not None:
        cmd += ["--limit", str(limit)]
    measured = run_process(cmd)
    summary = json.loads((out / "summary.json").read_text())
    timing = summary["timing"]
    stages = {k: v["wall_s"] for k, v in timing["stages"].items()}
    stages["(idle)"] = timing["idle_s"]
    stages["(exit)"] = measured["wall_s"] - timing["wall_s"]  # spec.json, the interpreter's exit
    with open(out / "samples.csv", newline="") as fh:
        results = {r["sample_id"]: {m: float(r[m]) if r[m] not in ("", None) else math.nan for m in METRICS if m in r}
                   for r in csv.DictReader(fh)}
    return {**measured, "stages": stages, "results": results, "models": summary.get("models", {})}


def _stats(values: list[float], digits: int = 1) -> str:
    return " / ".join(f"{v:.{digits}f}" for v in (min(values), statistics.median(values), max(values)))


def _ratios(label: str, num: list[float], den: list[float], target: str = "") -> None:
    """Per-round ratios (rounds are interleaved, so each pair saw about the same load), their median
    and their spread (min..max)."""
    ratio = [a / b for a, b in zip(num, den)]
    print(f"  {label:34}{', '.join(f'{x:.3f}' for x in ratio)}  -> median {statistics.median(ratio):.3f}x "
          f"(spread {min(ratio):.3f}..{max(ratio):.3f}){target}")


def bench_speed(args: argparse.Namespace, work: Path) -> None:
    from ciebench.metrics.protocols import get_protocol

    publish_models(args.protocol)
    manifest_path = prepare(args.source, work, args.protocol, args.limit)
    manifest = json.loads(manifest_path.read_text())
    n = len(manifest["rows"])
    with_reference = get_protocol(args.protocol).is_parity and not args.no_reference
    twin = float32_twin(args.protocol)
    ways = ["floor"] + (["reference"] if with_reference else []) + ["ciebench"] + (["float32"] if twin else [])
    runs: dict[str, list[dict]] = {w: [] for w in ways}
    for rep in range(args.repeat):
        # Interleaved, and in reverse order every other round (floor, ciebench, ciebench, floor, ...),
        # so a drift in the machine's load hits every way alike.
        for way in (ways if rep % 2 == 0 else ways[::-1]):
            print(f"run {rep + 1}/{args.repeat}: {way} ...", flush=True)
            if way in ("ciebench", "float32"):
                runs[way].append(run_ciebench(str(args.source), work / "predictions", work / f"scored-{way}-{rep}",
                                              args.protocol if way == "ciebench" else twin, ",".join(METRICS),
                                              args.batch_size, args.device, n))
                _print_run(way, runs[way][-1])
                continue
            out = work / f"{way}-{rep}.json"
            cmd = [sys.executable, __file__, "--way", way, "--manifest", str(manifest_path), "--out", str(out),
                   "--batch-size", str(args.batch_size), "--device", args.device, "--threads", str(args.threads)]
            measured = run_process(cmd)
            result = json.loads(out.read_text())
            # "(exit)": what the child's own account (from its process's start) leaves out: its exit
            result["stages"]["(exit)"] = measured["wall_s"] - sum(result["stages"].values())
            runs[way].append({**measured, **result})
            _print_run(way, runs[way][-1])
    other_device = None
    if args.check_device:
        print(f"once on {args.check_device}: ciebench ...", flush=True)
        other_device = run_ciebench(str(args.source), work / "predictions", work / "scored-check-device", args.protocol,
                                    ",".join(METRICS), args.batch_size, args.check_device, n)
    report_speed(runs, n, args, other_device)


def bench_tf32_emulation(args: argparse.Namespace, work: Path) -> None:
    """`--protocol` (a tf32 one) with TF32 emulated on this CPU, per rounding, against its float32 twin:
    the largest deviation per metric against the documented bound. In this process (emulation is slow:
    no timing), with the CLIP clamp at 0 off: a clamp can only shrink a difference, and most of a
    random-weight CLIP's cosines are negative, so clamped they would read 0 and hide it."""
    from ciebench.datasets import read_dataset
    from ciebench.metrics.precision import TF32_BOUNDS
    from ciebench.metrics.protocols import get_protocol
    from ciebench.metrics.region import RegionScorer, ScoreItem
    from ciebench.schema import EditSample
    from ciebench.tests.support.emulated_tf32 import emulated_tf32_forwards
    from PIL import Image

    roundings = [r.strip() for r in args.emulate_tf32.split(",") if r.strip()]
    protocol = get_protocol(args.protocol)
    if args.device != "cpu" or not (protocol.model_precision == "tf32" or protocol.is_parity):
        raise SystemExit("--emulate-tf32 runs on a CPU (--device cpu) with a tf32 protocol (exact-tf32) or a parity "
                         "protocol (cielr, smartedit: the published loop under PyTorch's GPU defaults)")
    if protocol.is_parity:
        return bench_published_on_gpu_defaults(args, work, roundings)
    twin = float32_twin(args.protocol)
    publish_models(args.protocol)
    rows = json.loads(prepare(args.source, work, args.protocol, args.limit).read_text())["rows"]
    dataset = read_dataset(str(args.source)).dataset
    items = []
    for n, row in enumerate(rows):
        sample = EditSample.from_row(dataset[n])
        assert sample.id == row["id"], (sample.id, row["id"])
        items.append(ScoreItem(sample.id, sample.image, sample.mask, Image.open(row["prediction"]).convert("RGB"),
                               list(sample.clip_text)))

    def score(name: str) -> dict:
        protocol = get_protocol(name).with_(name=f"{name}-unclamped", clip_clamp="none")
        return _timed(lambda: dict(RegionScorer(protocol, metrics=METRICS, batch_size=args.batch_size).score(items)))

    print(f"{twin} (float32), CLIP unclamped ...", flush=True)
    float32 = score(twin)
    for rounding in roundings:
        print(f"{args.protocol}, CLIP unclamped, TF32 emulated with rounding {rounding} ...", flush=True)
        with emulated_tf32_forwards(rounding) as calls:
            tf32 = score(args.protocol)
        print("  emulated products: " + ", ".join(f"{op} {k}" for op, k in sorted(calls.items())))
        print_differences(f"{args.protocol} with emulated TF32 ({rounding}) - {twin}, {len(items)} samples, CLIP "
                          "unclamped", tf32, float32, TF32_BOUNDS, "documented bound")


def _timed(score: Callable[[], dict]) -> dict:
    """`score()`'s results per sample, with the time it took printed."""
    t0 = time.perf_counter()
    got = score()
    print(f"  {len(got)} samples in {time.perf_counter() - t0:.1f} s", flush=True)
    return got


def bench_published_on_gpu_defaults(args: argparse.Namespace, work: Path, roundings: list[str]) -> None:
    """The published per-image loop in IEEE float32 (what ciebench's parity protocols compute) and with
    PyTorch's defaults on an Ampere-or-later GPU emulated (cuDNN's float32 convolutions in TF32:
    LPIPS, SSIM's window, CLIP's patch embedding; matmuls IEEE), per rounding: how far published
    numbers computed there can be from ciebench's. CLIP unclamped (see bench_tf32_emulation)."""
    import torch
    from PIL import Image

    from ciebench.metrics.protocols import get_protocol
    from ciebench.tests.support import metrics_reference as ref
    from ciebench.tests.support.emulated_tf32 import EmulatedTF32

    protocol = get_protocol(args.protocol)
    publish_models(args.protocol)
    rows = json.loads(prepare(args.source, work, args.protocol, args.limit).read_text())["rows"]
    strict_float32()
    loop = ref.PublishedLoop(size=protocol.size, clip_model=protocol.clip_model,
                             ssim_crop=protocol.ssim_border == "crop", clip_clamp=False)

    def score(mode) -> dict:
        with mode or contextlib.nullcontext(), torch.inference_mode():
            return _timed(lambda: {r["id"]: loop.score(Image.open(r["source"]), Image.open(r["mask"]),
                                                       Image.open(r["prediction"]), r["clip_text"]) for r in rows})

    print(f"published loop, {args.protocol}, IEEE float32, CLIP unclamped ...", flush=True)
    ieee = score(None)
    for rounding in roundings:
        print(f"published loop, PyTorch's GPU defaults emulated (TF32 convolutions, rounding {rounding}) ...", flush=True)
        mode = EmulatedTF32(rounding, which="convolutions")
        tf32 = score(mode)
        print("  emulated products: " + ", ".join(f"{op} {k}" for op, k in sorted(mode.calls.items())))
        print_differences(f"published loop with TF32 convolutions ({rounding}) - in IEEE float32, {len(rows)} samples, "
                          "CLIP unclamped", tf32, ieee, TOLERANCE, "parity tolerance")


def float32_twin(name: str) -> str | None:
    """For a protocol with reduced-precision forwards (`exact-bf16`), the preset that is the same in
    float32 (`exact`); None for a float32 protocol."""
    from ciebench.metrics.protocols import PROTOCOLS, get_protocol

    protocol = get_protocol(name)
    if protocol.model_precision == "float32":
        return None
    want = {k: v for k, v in protocol.to_dict().items() if k not in ("name", "description")}
    want["model_precision"] = "float32"
    for other, q in PROTOCOLS.items():
        if {k: v for k, v in q.to_dict().items() if k not in ("name", "description")} == want:
            return other
    raise SystemExit(f"no preset is {name} in float32: its precision cannot be measured against one")


def _print_run(way: str, run: dict) -> None:
    order = {name: i for i, name in enumerate(STAGE_ORDER)}
    stages = ", ".join(f"{k} {v:.1f}" for k, v in sorted(run["stages"].items(), key=lambda kv: order.get(kv[0], len(order))))
    print(f"  {way}: whole process {run['wall_s']:.1f} s wall, {run['cpu_s']:.1f} s CPU; stages (s): {stages}",
          flush=True)


def report_speed(runs: dict[str, list[dict]], n: int, args: argparse.Namespace, other_device: dict | None) -> None:
    from ciebench.metrics.precision import DEVIATION_BOUNDS
    from ciebench.metrics.protocols import get_protocol

    precision = get_protocol(args.protocol).model_precision
    twin = float32_twin(args.protocol)
    walls = {w: [r["wall_s"] for r in rs] for w, rs in runs.items()}
    cpus = {w: [r["cpu_s"] for r in rs] for w, rs in runs.items()}
    print(f"\nCIEBench region metrics ({', '.join(METRICS)}), protocol {args.protocol}, {n} samples (synthetic "
          f"edits), device {args.device}, batch {args.batch_size}, torch threads {runs['floor'][0]['threads']} "
          f"(OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}, allocator {args.allocator} for every way); "
          f"{args.repeat} round(s), interleaved")
    print(f"{'whole process':28}{'wall min / median / max s':>28}{'CPU min / median / max s':>28}{'peak RSS':>12}")
    for way, rs in runs.items():
        print(f"  {way:26}{_stats(walls[way]):>28}{_stats(cpus[way]):>28}{max(r['peak_rss_mib'] for r in rs):>8.0f} MiB")
    print(f"noise: identical floor runs differ by up to {max(walls['floor']) / min(walls['floor']) - 1:.0%} wall, "
          f"{max(cpus['floor']) / min(cpus['floor']) - 1:.0%} CPU")
    gpu = args.device.startswith("cuda")
    print("floor ratio (ciebench / floor, whole process, per round):")
    _ratios("wall clock", walls["ciebench"], walls["floor"], f" (target <= {'1.30' if gpu else '1.10'}x)")
    _ratios("CPU time (less sensitive to load)", cpus["ciebench"], cpus["floor"])
    if "reference" in runs:
        print("reference ratio (reference / ciebench, whole process, per round):")
        _ratios("wall clock", walls["reference"], walls["ciebench"])
        _ratios("CPU time", cpus["reference"], cpus["ciebench"])
    # The GPU targets count scoring only: the process less its start-up (imports included), model loading
    # and exit (each way's "load" stage is its share of the clock, so loading hidden behind work is not removed).
    scoring = {w: [r["wall_s"] - sum(r["stages"].get(k, 0.0) for k in ("startup", "load", "(exit)")) for r in rs]
               for w, rs in runs.items()}
    print("scoring only (whole process less start-up, model load and exit; ciebench's start-up includes reading "
          "and checking the dataset; min / median / max s):")
    for way in runs:
        target = f" (target on a GPU: < {5 * n / 86:.2f} s, i.e. 86 samples in 5 s)" if way == "ciebench" and gpu else ""
        print(f"  {way:26}{_stats(scoring[way], 2):>28}{target}")
    _ratios("ciebench / floor", scoring["ciebench"], scoring["floor"])
    if "reference" in runs:
        _ratios("reference / ciebench", scoring["reference"], scoring["ciebench"],
                " (target on a GPU >= 5x)" if gpu else "")
    if "float32" in runs:
        _ratios(f"speed-up ({twin} / {args.protocol})", scoring["float32"], scoring["ciebench"])
    # Per-stage table: median over runs of each stage's share of the wall clock, in seconds.
    names = [s for s in STAGE_ORDER if any(s in r["stages"] for rs in runs.values() for r in rs)]
    names += sorted({s for rs in runs.values() for r in rs for s in r["stages"]} - set(names))
    print("\nper stage (seconds of wall clock, median over runs; overlapping stages share the clock)")
    print(f"{'stage':18}" + "".join(f"{w:>12}" for w in runs))
    for name in names:
        cells = []
        for rs in runs.values():
            vals = [r["stages"][name] for r in rs if name in r["stages"]]
            cells.append(f"{statistics.median(vals):>12.2f}" if vals else f"{'-':>12}")
        print(f"{name:18}" + "".join(cells))
    print(f"{'whole process':18}" + "".join(f"{statistics.median(walls[w]):>12.2f}" for w in runs))
    covered = [1 - r["stages"]["(exit)"] / r["wall_s"] for r in runs["ciebench"]]
    print(f"ciebench's summary.json timing accounts for {statistics.median(covered):.1%} of its whole process "
          f"(median; the rest: writing spec.json and the interpreter's exit)")
    ours = runs["ciebench"][0]["results"]
    if "reference" in runs:
        print_differences("ciebench vs reference", ours, runs["reference"][0]["results"], TOLERANCE, "tolerance")
    if "float32" in runs:
        print_differences(f"{args.protocol} - {twin}: reduced- against full-precision forwards, same inputs", ours,
                          runs["float32"][0]["results"], DEVIATION_BOUNDS.get(precision, {}), "documented bound")
    if other_device is not None:
        # float32 protocols compute IEEE float32 on every device (metrics.precision): only the order
        # of float32 sums differs, so the reference tolerance applies.
        print_differences(f"ciebench on {args.device} vs on {args.check_device}", ours, other_device["results"],
                          TOLERANCE if precision == "float32" else {}, "tolerance")


def print_differences(title: str, ours: dict, theirs: dict, limits: dict[str, float], limit_name: str) -> None:
    """The largest |difference| per metric over the samples both scored, each against its limit (if any)."""
    print(f"\nlargest |difference| per metric ({title}):")
    ok = True
    for m in METRICS:
        diffs = [_diff(float(ours[sid][m]), float(theirs[sid][m])) for sid in theirs]
        limit = limits.get(m)
        if limit is None:
            print(f"  {m:6} {max(diffs):.3g}")
            continue
        over = sum(d > limit for d in diffs)
        ok &= over == 0
        print(f"  {m:6} {max(diffs):.3g}  ({limit_name} {limit:g}; {over} over)")
    if limits:
        print(f"within the {limit_name}" if ok else f"DIFFERENT beyond the {limit_name}")


def bench_breakdown(args: argparse.Namespace, work: Path) -> None:
    import torch
    from PIL import Image

    from ciebench.metrics.region import RegionScorer, ScoreItem

    if args.device != "cpu":  # process time does not wait for asynchronous device work
        raise SystemExit("--breakdown measures CPU time and runs on --device cpu only; on a GPU, read the "
                         "per-stage table of the speed run (each stage waits for its device work)")
    publish_models(args.protocol)
    manifest = json.loads(prepare(args.source, work, args.protocol, min(args.limit, 8)).read_text())
    scorer = RegionScorer(args.protocol, device=args.device, batch_size=args.batch_size)
    items = [ScoreItem(r["id"], Image.open(r["source"]), Image.open(r["mask"]), Image.open(r["prediction"]),
                       r["clip_text"]) for r in manifest["rows"]]
    preps = [scorer._prepare(item) for item in items]
    clip = scorer._clip
    pixels = torch.stack([p.clip_pixels for p in preps if p.clip_pixels is not None])
    texts = [t for p in preps for t in p.clip_text]

    def uncached_texts():
        clip._texts.clear()
        return clip.text_embeddings(texts)

    work_items = {  # each runs once to warm up (the CLIP forward on one crop), then is timed --repeat times
        "clip_forward (image tower)": lambda warm=False: clip.image_embeddings(pixels[:1] if warm else pixels),
        "lpips": lambda warm=False: scorer._lpips_metric(preps),
        "pixel + ssim": lambda warm=False: scorer._pixel_metrics(preps),
        "align + clip_preprocess": lambda warm=False: [scorer._prepare(item) for item in items],
        "clip_text (uncached)": lambda warm=False: uncached_texts(),
    }
    cpu = {}
    with torch.inference_mode():
        for name, fn in work_items.items():
            fn(warm=True)
            times = []
            for _ in range(args.repeat):
                t0 = time.process_time()
                fn()
                times.append(time.process_time() - t0)
            cpu[name] = min(times)
    base = cpu["clip_forward (image tower)"]
    print(f"\nCPU seconds (all threads; minimum of {args.repeat}) on {len(items)} samples ({len(pixels)} CLIP crops), "
          f"protocol {args.protocol}, torch threads {torch.get_num_threads()}:")
    for name, value in cpu.items():
        print(f"  {name:30}{value:8.2f} s{value / base:8.1%} of the CLIP forward")
    extra = sum(cpu.values()) - base
    print(f"  {'everything but the CLIP forward':30}{extra:8.2f} s{extra / base:8.1%}  -> per-sample work alone puts "
          f"ciebench at >= {1 + extra / base:.3f}x the floor's CPU time (before imports and dataset reading)")


def bench_memory(args: argparse.Namespace, work: Path) -> None:
    sys.path.insert(0, str(Path(__file__).parent))
    from bench_scale import build_dataset

    from ciebench.datasets import read_dataset
    from ciebench.schema import EditSample
    from ciebench.tests.support.synthetic_edits import synthetic_edit

    sizes = [int(x) for x in args.memory.split(",")]
    base = read_dataset(str(args.source)).dataset
    edits = work / "edits"
    edits.mkdir()
    for n in range(len(base)):
        sample = EditSample.from_row(base[n])
        synthetic_edit(sample.image, sample.mask, "noise_in_mask", seed=n).save(edits / f"{sample.id}.png")
    results = {}
    for size in sizes:
        dataset = build_dataset(args.source, size, work / f"data-{size}")
        predictions = work / f"pred-{size}"
        predictions.mkdir()
        for k in range(size):  # ids r<copy>-<id>: links to the base sample's edit
            base_id = base[k % len(base)]["id"]
            os.link(edits / f"{base_id}.png", predictions / f"r{k // len(base):03d}-{base_id}.png")
        print(f"scoring {size} samples ({CHEAP_METRICS}) ...", flush=True)
        results[size] = run_ciebench(str(dataset), predictions, work / f"scored-{size}", args.protocol, CHEAP_METRICS,
                                     args.batch_size, args.device, None)
    print(f"\npeak memory of `ciebench score --metrics {CHEAP_METRICS}` (protocol {args.protocol}, batch {args.batch_size})")
    print(f"{'samples':>10}{'wall s':>10}{'peak RssAnon':>16}{'peak RSS':>12}")
    for size, r in results.items():
        print(f"{size:>10}{r['wall_s']:>10.1f}{r['peak_anon_mib']:>12.0f} MiB{r['peak_rss_mib']:>8.0f} MiB")
    lo, hi = results[sizes[0]], results[sizes[-1]]
    print(f"ratio {sizes[-1]} / {sizes[0]}: RssAnon {hi['peak_anon_mib'] / lo['peak_anon_mib']:.3f}x, "
          f"RSS {hi['peak_rss_mib'] / lo['peak_rss_mib']:.3f}x (target <= 1.2x)")


def _diff(a: float, b: float) -> float:
    if (math.isnan(a) and math.isnan(b)) or a == b:
        return 0.0
    return abs(a - b) if math.isfinite(a) and math.isfinite(b) else math.inf


def main() -> None:
    from ciebench.metrics.timing import process_started

    started = process_started() or time.perf_counter()  # a child's account counts from its process's start
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", type=Path, default=DEFAULT_SOURCE)
    parser.add_argument("--protocol", default="cielr")
    parser.add_argument("--limit", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeat", type=int, default=1, help="rounds of every way, interleaved; the ratios are "
                        "reported per round with their median and spread")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                        help="intra-op threads of every way (OMP_NUM_THREADS / MKL_NUM_THREADS); default: all cores")
    parser.add_argument("--work", type=Path, help="keep models, inputs and outputs in this folder (published "
                        "models are reused by later runs); default: a temporary folder")
    parser.add_argument("--allocator", choices=["tuned", "system"], default="tuned",
                        help="memory allocator of every way (ciebench.allocator; CIEBENCH_ALLOCATOR): ciebench's "
                        "setting (default), or glibc's defaults")
    parser.add_argument("--no-reference", action="store_true", help="skip the published per-image loop")
    parser.add_argument("--check-device", help="also score once on this device (e.g. cpu beside --device cuda) and "
                        "print the largest difference per metric: a float32 protocol gives the same numbers on both")
    parser.add_argument("--breakdown", action="store_true", help="CPU time of each piece of work, in one process")
    parser.add_argument("--memory", help="N1,N2: peak memory of scoring N1 and N2 generated samples (cheap metrics)")
    parser.add_argument("--emulate-tf32", metavar="ROUNDINGS", help="nearest,truncate: on a CPU, score --protocol "
                        "exact-tf32 with TF32 emulated (tests/support/emulated_tf32.py) per rounding, and print the "
                        "largest deviation from its float32 twin against the documented bound; with a parity "
                        "protocol, the published loop under PyTorch's GPU defaults (TF32 convolutions) instead")
    parser.add_argument("--way", choices=["floor", "reference"], help=argparse.SUPPRESS)
    parser.add_argument("--manifest", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    # Set before any child starts (and before torch is imported here), so every way runs with the same pool.
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(args.threads)
    os.environ["CIEBENCH_ALLOCATOR"] = args.allocator  # read by every way's process, ciebench's CLI included
    from ciebench.allocator import reuse_freed_memory

    reuse_freed_memory()  # here too: the floor, the reference and --breakdown run in this script's process
    if args.way:
        manifest = json.loads(Path(args.manifest).read_text())
        if args.way == "floor":
            child_floor(manifest, args.batch_size, args.device, Path(args.out), started)
        else:
            child_reference(manifest, args.device, Path(args.out), started)
        return
    if not (args.source / "updated_data.json").exists():
        raise SystemExit(f"no CIEBench release at {args.source} (pass --source)")
    with tempfile.TemporaryDirectory(prefix="ciebench-bench-metrics-") as tmp:
        work = Path(tmp)
        cache = (args.work / "cache") if args.work else work / "cache"
        use_offline_caches(cache)
        if args.memory:
            bench_memory(args, work)
        elif args.breakdown:
            bench_breakdown(args, work)
        elif args.emulate_tf32:
            bench_tf32_emulation(args, work)
        else:
            bench_speed(args, work)


if __name__ == "__main__":
    main()
