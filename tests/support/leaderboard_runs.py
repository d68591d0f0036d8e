"""Small run directories for leaderboard tests and the docs example, built on the embedded `mini` set.

Each run is written in the run-directory format of `ciebench.results` (spec.json, samples.csv/.jsonl,
summary.json, images/, traces/) by synthetic editors:

- ``identity``: returns the source image;
- ``noisy``: the source plus tiny zero-mean Gaussian noise (sigma 2 grey levels, none on
  near-saturated pixels, so it has no systematic effect on colour means);
- ``damaged``: the source plus heavy Gaussian noise everywhere (sigma 60);
- ``tint``: blends the masked region towards a per-sample target colour (a crude "edit"); it writes
  CIELR-style reasoning traces and fails on one sample, so coverage and traces are exercised.

The metric values are simple numpy stand-ins, not the real metrics: ``mse``/``psnr`` over the
background (outside the mask), a one-window global ``ssim`` on luminance, ``clip`` = cosine
similarity between the mean colour inside the mask and the target colour, ``locality_*`` from the
changed-pixel map against the mask, and ``idcs`` = max(0, 2 ``clip`` - 1) when the background
PSNR is at least 20 dB, else 0 (a judge that fails wrecked images). The real scorer can replace `score` later.

Run ``python -m tests.support.leaderboard_runs OUT`` to write the runs into OUT (used for docs/leaderboard.md).
"""
from __future__ import annotations

import hashlib
import math
import sys
from urllib.parse import quote
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

from ciebench.io import atomic_save_png, atomic_write_json, stable_hash
from ciebench.results import read_samples, summarize, write_samples

HIGHER_IS_BETTER = {"psnr": True, "ssim": True, "mse": False, "clip": True, "idcs": True,
                    "locality_precision": True, "locality_recall": True, "locality_f1": True}
METRICS = list(HIGHER_IS_BETTER)

_MINI: list | None = None


def mini_samples() -> list:
    """The `mini` samples (decoded once per process)."""
    global _MINI
    if _MINI is None:
        import ciebench

        _MINI = list(ciebench.iter_samples(ciebench.load_dataset("mini")))
    return _MINI


def _rng(sample_id: str, seed: int, salt: str) -> np.random.Generator:
    digest = hashlib.sha256(f"{salt}|{sample_id}|{seed}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def target_colour(sample) -> np.ndarray:
    """A per-sample "target" colour derived from its CLIP text (what the stand-in success metric wants)."""
    digest = hashlib.sha256(" ".join(sample.clip_text).encode()).digest()
    return np.array([digest[0], digest[1], digest[2]], dtype=np.float64)


# --- synthetic editors: (sample, seed) -> uint8 HxWx3 -------------------------------------------

def identity(sample, seed: int) -> np.ndarray:
    return np.asarray(sample.image.convert("RGB"), dtype=np.uint8).copy()


def _add_noise(sample, seed: int, sigma: float, salt: str, unbiased: bool = False) -> np.ndarray:
    src = np.asarray(sample.image.convert("RGB"), dtype=np.float64)
    noise = _rng(sample.id, seed, salt).normal(0.0, sigma, size=src.shape)
    if unbiased:  # leave near-saturated pixels alone so clipping cannot shift the mean colour
        noise[(src < 4 * sigma) | (src > 255 - 4 * sigma)] = 0.0
    return np.clip(np.rint(src + noise), 0, 255).astype(np.uint8)


def noisy(sample, seed: int) -> np.ndarray:
    return _add_noise(sample, seed, 2.0, "noisy", unbiased=True)


def damaged(sample, seed: int) -> np.ndarray:
    return _add_noise(sample, seed, 60.0, "damaged")


def tint(sample, seed: int) -> np.ndarray:
    src = np.asarray(sample.image.convert("RGB"), dtype=np.float64)
    mask = np.asarray(sample.aligned_mask(), dtype=np.uint8) > 127
    out = src.copy()
    out[mask] = 0.4 * src[mask] + 0.6 * target_colour(sample)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


EDITORS: dict[str, Callable] = {"identity": identity, "noisy": noisy, "damaged": damaged, "tint": tint}


# --- stand-in metrics -----------------------------------------------------------------------------

def score(sample, pred: np.ndarray) -> dict[str, float]:
    src = np.asarray(sample.image.convert("RGB"), dtype=np.float64) / 255.0
    out = pred.astype(np.float64) / 255.0
    mask = np.asarray(sample.aligned_mask(), dtype=np.uint8) > 127
    bg = ~mask
    mse = float(np.mean((out[bg] - src[bg]) ** 2))
    psnr = math.inf if mse == 0 else 10.0 * math.log10(1.0 / mse)
    lum = lambda a: a @ np.array([0.299, 0.587, 0.114])  # noqa: E731
    x, y = lum(src), lum(out)
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    cov = float(np.mean((x - x.mean()) * (y - y.mean())))
    ssim = ((2 * x.mean() * y.mean() + c1) * (2 * cov + c2)) / ((x.mean() ** 2 + y.mean() ** 2 + c1) * (x.var() + y.var() + c2))
    mean_in = out[mask].mean(axis=0) * 255.0
    t = target_colour(sample)
    clip = float(mean_in @ t / (np.linalg.norm(mean_in) * np.linalg.norm(t) + 1e-12))
    changed = (np.abs(pred.astype(int) - np.rint(src * 255).astype(int)) > 10).any(axis=2)
    hit = float((changed & mask).sum())
    precision = hit / changed.sum() if changed.sum() else math.nan
    recall = hit / mask.sum() if mask.sum() else math.nan
    f1 = (2 * precision * recall / (precision + recall)) if (precision + recall) > 0 else (
        0.0 if not math.isnan(precision) else math.nan)
    idcs = max(0.0, 2.0 * clip - 1.0) if psnr >= 20.0 else 0.0
    return {"psnr": psnr, "ssim": float(ssim), "mse": mse, "clip": clip, "idcs": idcs,
            "locality_precision": precision, "locality_recall": recall, "locality_f1": f1}


# --- run directories ------------------------------------------------------------------------------

def build_run(root: Path, name: str, editor: str, *, seeds=(0,), protocol: str = "cielr",
              protocol_version: str = "1", fail: tuple[str, ...] = (), traces: bool = False,
              metrics: list[str] | None = None) -> Path:
    """Write one run directory `root/name` with `editor` (a key of EDITORS) on `mini`."""
    import ciebench
    from ciebench.datasets import read_dataset

    run = Path(root) / name
    metrics = list(metrics or METRICS)
    fn = EDITORS[editor]
    loaded_revision = read_dataset("mini").revision
    protocol_block = {"name": protocol, "version": protocol_version,
                      "hash": stable_hash({"name": protocol, "version": protocol_version})}
    editor_block = {"name": editor, "class": f"tests.support.leaderboard_runs:{editor}", "version": "0",
                    "config": {"preset": "default"}, "oracle_mask": False}
    config_hash = stable_hash({k: editor_block[k] for k in ("class", "version", "config")})  # as RunSpec does
    spec = {"editor": editor_block, "editor_config_hash": config_hash,
            "dataset": {"spec": "mini", "revision": loaded_revision, "n": len(mini_samples())},
            "protocol": protocol_block, "metrics": metrics, "judge": None, "seeds": list(seeds)}
    spec["spec_hash"] = stable_hash(spec)
    atomic_write_json(run / "spec.json", spec)
    rows = []
    for sample in mini_samples():
        for seed in seeds:
            row = {"sample_id": sample.id, "seed": int(seed), "edit_type": sample.edit_type}
            if sample.id in fail:
                row.update(status="edit_error", error="RuntimeError: synthetic failure", prediction=None,
                           prediction_sha256=None, edit_seconds=0.01)
                row.update({m: math.nan for m in metrics})
                if "idcs" in metrics:
                    row.update(idcs_status="skipped", idcs_error="no prediction", idcs_sentence=None)
                rows.append(row)
                continue
            pred = fn(sample, int(seed))
            rel = f"images/{sample.id}__s{seed}.png"
            sha = atomic_save_png(run / rel, Image.fromarray(pred))
            values = score(sample, pred)
            row.update(status="ok", error=None, prediction=rel, prediction_sha256=sha, edit_seconds=0.01)
            row.update({m: values[m] for m in metrics})
            if "idcs" in metrics:
                row.update(idcs_status="ok", idcs_error=None, idcs_sentence=f"stand-in judge for {sample.id}")
            rows.append(row)
            if traces:  # as the runner writes them: traces/<stem>.json, artifact images under traces/<stem>/
                stem = f"{quote(sample.id, safe='-_.')}__s{seed}"
                atomic_save_png(run / "traces" / stem / "region.png", sample.aligned_mask())
                trace = _trace(sample)
                trace["artifacts"] = {"edit region": f"{stem}/region.png"}
                atomic_write_json(run / "traces" / f"{stem}.json", trace)
    write_samples(run, rows, metrics)
    directions = {m: HIGHER_IS_BETTER[m] for m in metrics}
    summary = summarize(read_samples(run), directions)
    summary.update(protocol=protocol_block, dataset=spec["dataset"], editor=editor_block,
                   versions={"ciebench": ciebench.__version__}, models={})
    atomic_write_json(run / "summary.json", summary)
    return run


def _trace(sample) -> dict:
    colour = [int(c) for c in target_colour(sample)]
    return {"editor": "tint", "sample_id": sample.id, "steps": [
        {"name": "understand", "llm": {"model": "stand-in", "prompt": sample.instruction,
                                       "response": f"The target is the object to {sample.edit_type}: <{sample.id}>."}},
        {"name": "locate", "mask_source": "dataset", "area": "see mask"},
        {"name": "execute", "operation": "blend", "target_colour": colour, "strength": 0.6},
    ]}


def build_standard_runs(root: Path) -> dict[str, Path]:
    """The runs the leaderboard tests use: four editors under protocol `cielr` (noisy with two seeds,
    tint failing on one sample, with traces) and the identity editor again under protocol `smartedit`."""
    root = Path(root)
    return {
        "identity": build_run(root, "identity", "identity"),
        "noisy": build_run(root, "noisy", "noisy", seeds=(0, 1)),
        "damaged": build_run(root, "damaged", "damaged"),
        "tint": build_run(root, "tint", "tint", fail=("rocket-tower",), traces=True),
        "identity_smartedit": build_run(root, "identity-smartedit", "identity", protocol="smartedit"),
    }


if __name__ == "__main__":
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "leaderboard-example-runs")
    for key, path in build_standard_runs(out).items():
        print(f"{key}: {path}")
