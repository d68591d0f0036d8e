"""Generated bad inputs for the reliability tests (issue 11): small JSONL datasets with odd ids, editors
that fail, return out-of-range pixels or unserialisable traces, and a process that holds a lock.
Nothing binary is committed: every image is drawn here."""
from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ciebench import EditorConfig, EditRequest, EditResult, Editor

# Ids that broke earlier versions: pandas missing-value spellings, leading zeros that must stay
# distinct from the number, a 26-character Chinese id, a 300-character id, path-like and case-twin ids.
CHINESE_ID = "把桌子上的红色杯子换成蓝色的瓷杯并保留阴影和倒影效果"
ODD_IDS = ["NA", "null", "nan", "007", "7", CHINESE_ID, "x" * 300, "a/b", "A", "a", "None", ""]
ODD_IDS = [i for i in ODD_IDS if i]  # an empty id is not a valid sample id
assert len(CHINESE_ID) == 26


def write_image(path: Path, seed: int, size: tuple[int, int] = (24, 16)) -> None:
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)).save(path)


def write_mask(path: Path, size: tuple[int, int] = (24, 16)) -> None:
    mask = np.zeros((size[1], size[0]), dtype=np.uint8)
    mask[4:12, 6:18] = 255
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(mask).save(path)


def jsonl_dataset(root: Path, ids: list[str]) -> Path:
    """A JSONL dataset folder `root` with one generated sample per id (files named by index)."""
    root.mkdir(parents=True, exist_ok=True)
    lines = []
    for k, sample_id in enumerate(ids):
        write_image(root / f"img{k}.png", k)
        write_mask(root / f"mask{k}.png")
        lines.append(json.dumps({"id": sample_id, "image": f"img{k}.png", "mask": f"mask{k}.png",
                                 "instruction": f"make object {k} blue", "clip_text": "a blue object",
                                 "edit_type": "change"}))
    (root / "manifest.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return root


class AlwaysFails(Editor):
    name = "always-fails"

    def edit(self, requests: list[EditRequest]) -> list[EditResult]:
        return [EditResult.failure("simulated failure") for _ in requests]


class FailsFirstId(Editor):
    """Identity, except that it fails on the sample whose id sorts first."""

    name = "fails-first"

    def edit(self, requests: list[EditRequest]) -> list[EditResult]:
        return [EditResult.failure("hard sample") if r.sample_id == "NA" else EditResult(image=r.image)
                for r in requests]


class BadOutputs(Editor):
    """Per id: float pixels above 1, negative int pixels, ints above 255, the source's grey as a PIL float
    image in [0, 1] (mode F) and as a 16-bit one (mode I;16, levels times 257), an object in the trace,
    NaN in the trace; any other id gets a clean float image in [0, 1]."""

    name = "bad-outputs"

    def edit(self, requests: list[EditRequest]) -> list[EditResult]:
        results = []
        for r in requests:
            base = np.asarray(r.image, dtype=np.float64) / 255.0
            if r.sample_id == "float-high":
                results.append(EditResult(image=base * 1.5 + 0.2))
            elif r.sample_id == "int-negative":
                results.append(EditResult(image=(base * 255).astype(np.int16) - 40))
            elif r.sample_id == "int-high":
                results.append(EditResult(image=(base * 255).astype(np.int32) + 300))
            elif r.sample_id == "pil-float-grey":
                grey = np.asarray(r.image.convert("L"), dtype=np.float32)
                results.append(EditResult(image=Image.fromarray(grey / 255.0)))
            elif r.sample_id == "pil-16bit-grey":
                grey = np.asarray(r.image.convert("L"), dtype=np.uint16)
                results.append(EditResult(image=Image.fromarray(grey * 257)))
            elif r.sample_id == "object-trace":
                results.append(EditResult(image=r.image, trace={"model": object(), "step": 1}))
            elif r.sample_id == "nan-trace":
                results.append(EditResult(image=r.image, trace={"score": math.nan, "gain": [1.0, math.inf]}))
            else:
                results.append(EditResult(image=base))
        return results


@dataclass(frozen=True)
class StepsConfig(EditorConfig):
    steps: int = 10

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1, not {self.steps}")


class Validated(Editor):
    """Identity with a `Config` that rejects steps < 1, as a user's editor would."""

    name = "validated"
    Config = StepsConfig

    def edit(self, requests: list[EditRequest]) -> list[EditResult]:
        return [EditResult(image=r.image) for r in requests]


class BrokenInit(Validated):
    """A bug in the editor's own constructor (not a rejected option): it must keep its traceback."""

    name = "broken-init"

    def __init__(self, config=None, **options):
        super().__init__(config, **options)
        raise ValueError("bug inside the editor's constructor")


LOCK_HOLDER = """
import sys, time
from ciebench import outdir
with outdir.lock(sys.argv[1]):
    print("locked", flush=True)
    time.sleep(600)
"""


def hold_lock(folder: Path) -> subprocess.Popen:
    """A separate process holding `outdir.lock(folder)`; returns once it holds it."""
    proc = subprocess.Popen([sys.executable, "-c", LOCK_HOLDER, str(folder)], stdout=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    line = proc.stdout.readline()
    assert line.strip() == "locked" and time.monotonic() < deadline, line
    return proc


# --- output folders as a ciebench without output markers left them ---------------------------------------
# The files are spelt out by hand from the writers of that version (git d099ab5: runner.prepare_run_dir,
# cli score, leaderboard.report, datasets.prepare; 7b52128: benchmarks.run), not produced by today's code,
# so a change of today's writers cannot make these tests agree with themselves.

def _json(path: Path, obj: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2), encoding="utf-8")


def _older_run(out: Path) -> None:
    _json(out / "spec.json", {
        "editor": {"name": "identity", "class": "ciebench.baselines.identity:Identity", "version": "1", "config": {}},
        "dataset": {"spec": "mini", "kind": "mini", "revision": "3f2a", "n": 1}, "seeds": [0],
        "protocol": {"name": "cielr", "hash": "ab12"}, "metrics": ["psnr"], "judge": None, "limit": 1,
        "ciebench_version": "0.1.0", "notes": {}, "spec_hash": "0123456789abcdef", "editor_config_hash": "fedcba9876543210"})
    write_image(out / "images" / "a__s0.png", 0)
    _json(out / "records" / "a__s0.json", {"status": "ok", "error": None})
    (out / "samples.csv").write_text("sample_id,seed,status,psnr\na,0,ok,30.0\n", encoding="utf-8")
    _json(out / "summary.json", {"n_samples": 1, "versions": {"ciebench": "0.1.0"}})


def _older_score(out: Path) -> None:
    _json(out / "spec.json", {"editor": None, "predictions": "/data/preds",
                              "dataset": {"spec": "mini", "revision": "3f2a", "n": 1},
                              "score_options": {"protocol": "cielr", "metrics": ["psnr"], "judge": None}})
    (out / "samples.csv").write_text("sample_id,seed,status,psnr\na,0,ok,30.0\n", encoding="utf-8")


def _older_leaderboard(out: Path) -> None:
    (out / "tables.csv").write_text(
        "table,title,protocol,protocol_hash,dataset,revision,n_runs,primary_metric,primary_reason,leaderboard_csv,"
        "by_edit_type_csv,significance_csv,plots\nmini,mini,cielr,ab12,mini,3f2a,1,psnr,,leaderboard__mini.csv,"
        "by_edit_type__mini.csv,significance__mini.csv,plots/mini/\n", encoding="utf-8")
    (out / "leaderboard.md").write_text("# CIEBench leaderboard\n", encoding="utf-8")
    (out / "leaderboard.csv").write_text("table,editor\nmini,identity\n", encoding="utf-8")
    (out / "plots" / "mini").mkdir(parents=True)


def _older_benchmark_run(out: Path) -> None:
    _json(out / "spec.json", {"benchmark": "risebench", "root": None, "hub_revision": "abc", "limit": 2,
                              "editor": {"name": "identity"}, "judge": {}, "prompts_sha256": "00",
                              "spec_hash": "0123456789abcdef"})
    write_image(out / "images" / "Temporal" / "1.png", 0)
    (out / "verdicts.jsonl").write_text("{}\n", encoding="utf-8")


def _older_benchmark_score(out: Path) -> None:  # `score --benchmark` wrote no spec.json, only the summary
    _json(out / "summary.json", {"benchmark": {"name": "risebench", "title": "RISEBench", "size": 360,
                                               "categories": [], "licence": "", "needs": [], "hub_id": None,
                                               "hub_revision": "abc", "code": "", "headline": "accuracy"},
                                 "predictions": "/data/outputs", "run": {"judging": {}}, "judge": {}})
    (out / "verdicts.jsonl").write_text("{}\n", encoding="utf-8")


def _older_dataset(out: Path) -> None:
    _json(out / "ciebench_card.json", {"source": "mini", "kind": "mini", "revision": "3f2a", "n_samples": 1,
                                       "problems": [], "format": "parquet"})
    (out / "data.parquet").write_bytes(b"PAR1")


# (kind, builder, the file that shows it is ciebench's)
OLDER_OUTPUTS = [("run", _older_run, "spec.json"), ("score", _older_score, "spec.json"),
                 ("leaderboard", _older_leaderboard, "tables.csv"), ("benchmark", _older_benchmark_run, "spec.json"),
                 ("benchmark", _older_benchmark_score, "summary.json"), ("dataset", _older_dataset, "ciebench_card.json")]
