"""Drift canaries: a frozen set of (source, edited, instruction) items that a judge is asked again and
again, so a provider that silently changed its model shows up as disagreement with stored verdicts.

- `mini_canaries()`: the built-in set, from the embedded ``mini`` images with deterministic synthetic
  edits: per sample an *unchanged* copy (the requested change did not happen) and a *filled* copy (the
  masked region painted with the mean colour of the rest of the image: the object is gone).
- `freeze_run(run_dir, dataset, out)`: any scored run's predictions as a canary set (a folder with
  ``canaries.jsonl`` and the images, each with its sha256).

`calibrate(judge, canaries)` judges a set and stores the verdicts under
``$CIEBENCH_CACHE/canaries/<judge config hash>/<set hash>.json`` (the first calibration is the
reference; later ones are compared with it). `check(...)` re-judges the set bypassing the answer
cache (a fresh cache slot per day or per run) and reports agreement = the share of the canaries the
reference scored that got the same score again (a canary that fails today counts as a disagreement: see
`agreement`); below the threshold it warns. Scoring runs do this automatically
for a judge that has a reference (`JudgeRunOptions.canaries`).
"""
from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ciebench.cache import cache_root
from ciebench.errors import DataError, UsageError
from ciebench.io import atomic_write_bytes, atomic_write_json, png_bytes, sha256_bytes, stable_hash
from ciebench.results import RunFolderError
from ciebench.status import Status, VerdictStatus

DEFAULT_THRESHOLD = 0.9
CANARY_MODES = ("day", "run", "off")


@dataclass
class Canary:
    id: str
    source: Image.Image
    edited: Image.Image
    instruction: str


@dataclass
class CanarySet:
    name: str
    items: list[Canary]

    @property
    def hash(self) -> str:
        """Over ids, instructions and the pixels of both images: the set's identity."""
        h = hashlib.sha256()
        for c in self.items:
            for part in (c.id, c.instruction, _pixels_sha(c.source), _pixels_sha(c.edited)):
                h.update(part.encode("utf-8") + b"\0")
        return h.hexdigest()[:16]


def _pixels_sha(im: Image.Image) -> str:
    im = im.convert("RGB")
    return sha256_bytes(f"{im.width}x{im.height}:".encode() + im.tobytes())


def mini_canaries() -> CanarySet:
    from ciebench.datasets import iter_samples, load_dataset

    items = []
    for s in iter_samples(load_dataset("mini")):
        src = s.image.convert("RGB")
        items.append(Canary(f"{s.id}/unchanged", src, src.copy(), s.instruction))
        mask = s.aligned_mask()
        if mask is None:
            continue
        m = np.asarray(mask.convert("L")) >= 128
        if not m.any() or m.all():
            continue
        arr = np.asarray(src).copy()
        arr[m] = arr[~m].mean(axis=0).round().astype(np.uint8)
        items.append(Canary(f"{s.id}/filled", src, Image.fromarray(arr), s.instruction))
    return CanarySet("mini", items)


def freeze_run(run_dir: str | Path, out: str | Path, dataset: str | None = None) -> Path:
    """Write a scored run's (readable) predictions as a canary set folder `out`."""
    from ciebench.datasets import read_dataset
    from ciebench.schema import EditSample

    run_dir, out = Path(run_dir), Path(out)
    spec_path = run_dir / "spec.json"
    samples = run_dir / "samples.jsonl"
    if not spec_path.is_file() or not samples.is_file():
        raise RunFolderError(f"{run_dir} is not a run folder (spec.json and samples.jsonl needed)")
    spec = json.loads(spec_path.read_text(encoding="utf-8"))
    dataset = dataset or (spec.get("dataset") or {}).get("spec")
    if not dataset:
        raise UsageError(f"{spec_path} names no dataset: pass --dataset")
    loaded = read_dataset(dataset)
    index = {sid: i for i, sid in enumerate(loaded.dataset["id"])}
    lines = []
    for line in samples.read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        rel = row.get("prediction")
        if row.get("status") != Status.OK or not rel or row.get("sample_id") not in index:
            continue
        pred = (run_dir / rel).resolve()
        if run_dir.resolve() not in pred.parents or not pred.is_file():
            continue  # only files inside the run folder
        sample = EditSample.from_row(loaded.dataset[index[row["sample_id"]]])
        cid = f"{row['sample_id']}__s{row.get('seed', 0)}"
        stem = hashlib.sha256(cid.encode()).hexdigest()[:16]
        src_bytes = png_bytes(sample.image.convert("RGB"))
        with Image.open(pred) as im:
            edited_bytes = png_bytes(im.convert("RGB"))
        atomic_write_bytes(out / "images" / f"{stem}_source.png", src_bytes)
        atomic_write_bytes(out / "images" / f"{stem}_edited.png", edited_bytes)
        lines.append(json.dumps({"id": cid, "instruction": sample.instruction,
                                 "source": f"images/{stem}_source.png", "source_sha256": sha256_bytes(src_bytes),
                                 "edited": f"images/{stem}_edited.png", "edited_sha256": sha256_bytes(edited_bytes)},
                                ensure_ascii=False))
    if not lines:
        raise DataError(f"{run_dir}: no readable predictions to freeze")
    atomic_write_bytes(out / "canaries.jsonl", ("\n".join(lines) + "\n").encode("utf-8"))
    return out


def load_canaries(spec: str | Path | None) -> CanarySet:
    """``mini`` (default) or a folder written by `freeze_run` (every image verified by sha256)."""
    if spec is None or str(spec) == "mini":
        return mini_canaries()
    folder = Path(spec)
    manifest = folder / "canaries.jsonl"
    if not manifest.is_file():
        raise DataError(f"{folder}: not a canary set (no canaries.jsonl); make one with `ciebench judge freeze`")
    items = []
    for n, line in enumerate(manifest.read_text(encoding="utf-8").splitlines(), start=1):
        rec = json.loads(line)
        images = []
        for part in ("source", "edited"):
            path = (folder / rec[part]).resolve()
            if folder.resolve() not in path.parents:
                raise DataError(f"{manifest}:{n}: {rec[part]} is outside the canary folder")
            data = path.read_bytes()
            if sha256_bytes(data) != rec[f"{part}_sha256"]:
                raise DataError(f"{manifest}:{n}: {rec[part]} does not match its sha256")
            images.append(Image.open(io.BytesIO(data)).convert("RGB"))
        items.append(Canary(rec["id"], images[0], images[1], rec["instruction"]))
    return CanarySet(folder.name, items)


def store_path(judge_hash: str, set_hash: str) -> Path:
    return cache_root() / "canaries" / judge_hash / f"{set_hash}.json"


def _items(canaries: CanarySet) -> list[Any]:
    from ciebench.metrics.idcs import JudgeItem

    return [JudgeItem(c.id, c.source, c.edited, c.instruction) for c in canaries.items]


def _scores(verdicts: list[Any]) -> dict[str, int | None]:
    return {v.sample_id: (v.score if v.ok else None) for v in verdicts}


def judge_canaries(judge: Any, canaries: CanarySet) -> dict[str, int | None]:
    return _scores(judge.judge(_items(canaries)))


def agreement(reference: dict[str, Any], scores: dict[str, Any]) -> dict[str, Any]:
    """Today's `scores` against the `reference` verdicts. The denominator is every canary the reference
    scored: one that fails today (no score) disagrees, as one scored differently does; a judge whose
    answers turned unusable has stopped agreeing too, and leaving those canaries out let 6 of 18 scored
    canaries report agreement 1.0. Canaries the reference did not score have nothing to be compared with.

    Returns `agreement` (None when the reference scored none), `reference_scored`, `compared` (scored
    both times), `same` and `failed_today` (scored by the reference, not today)."""
    ref = [k for k in reference if reference[k] is not None]
    both = [k for k in ref if scores.get(k) is not None]
    same = sum(float(reference[k]) == float(scores[k]) for k in both)
    return {"agreement": same / len(ref) if ref else None, "reference_scored": len(ref), "compared": len(both),
            "same": same, "failed_today": len(ref) - len(both)}


def calibrate(judge: Any, judge_hash: str, canaries: CanarySet, threshold: float = DEFAULT_THRESHOLD) -> dict[str, Any]:
    """Judge `canaries`; the first calibration stores the reference, later ones report agreement with it
    and are appended to the history."""
    scores = judge_canaries(judge, canaries)
    path = store_path(judge_hash, canaries.hash)
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    record = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
    if record is None:
        record = {"judge_hash": judge_hash, "set": canaries.name, "set_hash": canaries.hash, "created": now,
                  "reference": scores, "history": []}
        result = {"reference_created": True, "agreement": None, "compared": 0}
    else:
        compared = agreement(record["reference"], scores)
        record["history"].append({"date": now, **compared})
        result = {"reference_created": False, **compared, "warning": _warning(compared, threshold, record["created"])}
    atomic_write_json(path, record)
    scored = sum(v is not None for v in scores.values())
    return {**result, "set": canaries.name, "set_hash": canaries.hash, "n": len(scores), "scored": scored,
            "store": str(path), "reference_date": record["created"], "threshold": threshold}


def check(judge_factory: Any, judge_hash: str, canaries: CanarySet, mode: str = "day",
          threshold: float = DEFAULT_THRESHOLD) -> dict[str, Any] | None:
    """Re-judge `canaries` when a reference exists; None when there is none or `mode` is "off".
    `judge_factory(cache_dir)` builds the judge with the given cache slot: one per UTC day ("day": the
    day's later runs reuse it, so the check is paid once a day) or a fresh one ("run"). A judge with a
    `budget` (--max-cost) runs the check only when the budget can pay its upper-bound cost; otherwise
    the result says why it was `skipped` and has no agreement."""
    if mode not in CANARY_MODES:
        raise UsageError(f"canary mode must be one of {CANARY_MODES}, got {mode!r}")
    path = store_path(judge_hash, canaries.hash)
    if mode == "off" or not path.is_file():
        return None
    record = json.loads(path.read_text(encoding="utf-8"))
    judge = judge_factory(_slot(judge_hash, mode))
    head = {"set": canaries.name, "set_hash": canaries.hash, "n": len(canaries.items),
            "reference_date": record["created"], "threshold": threshold, "mode": mode}
    items = _items(canaries)
    budget = getattr(judge, "budget", None)
    if budget is not None:
        # The check draws on the run's --max-cost budget. Only a check that can be paid whole is sent:
        # canaries left unjudged would read as failures (disagreements) and fake a drift warning.
        need = judge.estimate(items).cost_max
        if not budget.affords(need):
            return {**head, "agreement": None, "warning": None,
                    "skipped": f"not checked: its calls could cost up to ${need:.4f} and the --max-cost budget "
                               f"has ${budget.left:.4f} left (nothing was sent; rerun with a larger budget)"}
    verdicts = judge.judge(items)
    unpaid = sum(v.status == VerdictStatus.NOT_JUDGED for v in verdicts)
    if unpaid:  # the estimate fell short (a longer description, a retry): what was sent is paid and counted
        return {**head, "agreement": None, "warning": None,
                "skipped": f"not checked: the --max-cost budget ran out during the check ({unpaid} of "
                           f"{len(verdicts)} canaries not judged); rerun with a larger budget"}
    scores = _scores(verdicts)
    compared = agreement(record["reference"], scores)
    return {**head, "scored": sum(v is not None for v in scores.values()), **compared,
            "warning": _warning(compared, threshold, record["created"])}


def estimate(judge_factory: Any, judge_hash: str, canaries: CanarySet, mode: str = "day") -> Any:
    """What `check` would send now (a `CostReport`; answers already in today's slot are free), for
    `score --dry-run`; None when it would not run (mode "off", or no reference)."""
    if mode not in CANARY_MODES:
        raise UsageError(f"canary mode must be one of {CANARY_MODES}, got {mode!r}")
    if mode == "off" or not store_path(judge_hash, canaries.hash).is_file():
        return None
    return judge_factory(_slot(judge_hash, mode)).estimate(_items(canaries))


def _slot(judge_hash: str, mode: str) -> Path:
    """The cache of the check's answers: one per UTC day ("day": later runs that day reuse it) or a
    fresh one ("run")."""
    now = datetime.now(timezone.utc)
    name = now.strftime("%Y-%m-%d") if mode == "day" else f"run-{now:%Y%m%dT%H%M%S%f}"
    return cache_root() / "canaries" / judge_hash / "answers" / name


def _warning(compared: dict[str, Any], threshold: float, created: str) -> str | None:
    value = compared["agreement"]
    if value is None:
        return f"the reference of {created} scored no canary: nothing to compare with (calibrate again)"
    if value < threshold:
        ref, failed = compared["reference_scored"], compared["failed_today"]
        differ = compared["compared"] - compared["same"]
        return (f"judge drift: only {value:.0%} of the {ref} canaries scored on {created} got the same score "
                f"today ({differ} scored differently, {failed} failed to score; threshold {threshold:.0%}); "
                f"the provider may have changed the model behind its name, or its answers no longer parse")
    return None


def judge_hash_of(config: Any, protocol_hash: str, passes: int = 1) -> str:
    """What a stored reference is keyed by: the judge config, its protocol's exact prompts, passes."""
    return stable_hash({"config": config.hash, "protocol": protocol_hash, "passes": passes})


__all__ = ["Canary", "CanarySet", "mini_canaries", "freeze_run", "load_canaries", "calibrate", "check", "estimate",
           "agreement", "judge_hash_of", "DEFAULT_THRESHOLD", "CANARY_MODES"]
