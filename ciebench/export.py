"""`ciebench export RUN --format hub`: a run as a Hub dataset repository, and back.

The repository holds one row per (sample, seed) in `data/test-*.parquet` (the edited image, status,
sha256, every metric, the judge's verdict and sentence, the editor's trace) with a dataset card, and
the run's own files under `run/` (spec.json, summary.json, samples.csv, verify.json when present), so
others can re-score the images (`ciebench score --predictions hf:ORG/NAME`) or re-aggregate the rows
without calling a judge. `materialize_predictions` turns such a dataset back into a folder of
`<id>__s<seed>.png` files, each checked against its recorded sha256.
"""
from __future__ import annotations

import logging
import math
import shutil
from pathlib import Path
from typing import Any

import datasets
import yaml

from ciebench.datasets.hub_layout import CARD, SPLIT, default_config, write_shards

from . import __version__, outdir
from .cache import cache_root
from .errors import DataError, IntegrityError, OutputConflict
from .io import atomic_write_text, read_json_object, sha256_bytes, stable_hash
from .results import file_stem, read_samples, require_current_tables, require_run_folder
from .verify import read_verification

log = logging.getLogger(__name__)

RUN_FILES = ("spec.json", "summary.json", "samples.csv", "samples.jsonl", "verify.json")
TEXT_COLUMNS = ("idcs_status", "idcs_error", "idcs_sentence")


def export_run(run_dir: str | Path, out: str | Path) -> dict[str, Any]:
    """Write `run_dir` as a Hub dataset repository into `out` (created; must not exist or be empty)."""
    run_dir, out = require_run_folder(run_dir), Path(out)
    if out.exists() and any(out.iterdir()):
        raise OutputConflict(f"{out} exists and is not empty", hint="choose a new --out folder")
    summary = read_json_object(run_dir / "summary.json", DataError)
    require_current_tables(run_dir, summary, DataError)
    samples = read_samples(run_dir)
    metrics = [m for m in (summary.get("metrics") or {}) if m in samples.columns]
    features = run_features(metrics)
    rows = [_row(run_dir, rec, metrics) for rec in samples.to_dict("records")]
    dataset = datasets.Dataset.from_list(rows, features=features)
    with outdir.staged(out) as staging:
        checksums, sizes = write_shards(dataset, staging)
        for name in RUN_FILES:
            if (run_dir / name).is_file():
                (staging / "run").mkdir(exist_ok=True)
                shutil.copyfile(run_dir / name, staging / "run" / name)
        metadata = _card_metadata(run_dir, dataset, summary, checksums, sizes)
        atomic_write_text(staging / CARD, _render_card(metadata, summary))
    return metadata


def run_features(metrics: list[str]) -> datasets.Features:
    cols: dict[str, Any] = {
        "sample_id": datasets.Value("string"), "seed": datasets.Value("int64"), "edit_type": datasets.Value("string"),
        "status": datasets.Value("string"), "error": datasets.Value("string"), "image": datasets.Image(),
        "prediction_sha256": datasets.Value("string"), "edit_seconds": datasets.Value("float64"),
    }
    for m in metrics:
        cols[m] = datasets.Value("float64")
    if "idcs" in metrics:
        cols.update({c: datasets.Value("string") for c in TEXT_COLUMNS})
    cols["trace"] = datasets.Value("string")  # the editor's trace, JSON text (artifact images not included)
    return datasets.Features(cols)


def _row(run_dir: Path, rec: dict[str, Any], metrics: list[str]) -> dict[str, Any]:
    seed = int(rec["seed"])
    stem = file_stem(str(rec["sample_id"]), seed)
    data = _prediction_bytes(run_dir, rec)
    image = None if data is None else {"bytes": data, "path": None}
    trace_path = run_dir / "traces" / f"{stem}.json"
    row = {"sample_id": str(rec["sample_id"]), "seed": seed, "edit_type": _text(rec.get("edit_type")) or None,
           "status": _text(rec.get("status")), "error": _text(rec.get("error")) or None, "image": image,
           "prediction_sha256": _text(rec.get("prediction_sha256")) or None,
           "edit_seconds": _float(rec.get("edit_seconds")),
           "trace": trace_path.read_text(encoding="utf-8") if trace_path.is_file() else None}
    for m in metrics:
        row[m] = _float(rec.get(m))
    if "idcs" in metrics:
        row.update({c: _text(rec.get(c)) or None for c in TEXT_COLUMNS})
    return row


def _prediction_bytes(run_dir: Path, rec: dict[str, Any]) -> bytes | None:
    """The row's image, checked against its sha256; None when the row records no image (a failed edit).
    A recorded image that is gone is as wrong as a changed one: exporting the row's metrics without the
    image they were computed on would publish numbers nobody can check (the rule of `verify`'s images)."""
    prediction, sha = _text(rec.get("prediction")), _text(rec.get("prediction_sha256"))
    if not prediction and not sha:
        return None
    hint = f"run `ciebench verify {run_dir}` to see what changed"
    path = run_dir / prediction if prediction else None
    if path is None or not path.is_file():
        raise IntegrityError(f"sample {rec['sample_id']} seed {rec['seed']}: prediction file "
                             f"{path or '(no path in samples.csv)'} is missing", hint=hint)
    data = path.read_bytes()
    if sha256_bytes(data) != sha:
        raise IntegrityError(f"{path}: sha256 differs from samples.csv", hint=hint)
    return data


def _card_metadata(run_dir: Path, dataset: datasets.Dataset, summary: dict[str, Any], checksums: dict[str, str],
                   sizes: dict[str, int]) -> dict[str, Any]:
    spec = read_json_object(run_dir / "spec.json", DataError)
    return {
        "license": "other",
        "license_name": "source-licence",
        "license_details": "edited images of the benchmark's source images: the source dataset's terms apply",
        "pretty_name": f"ciebench run: {(spec.get('editor') or {}).get('name') or run_dir.name}",
        "tags": ["image-editing", "ciebench", "ciebench-run"],
        "configs": default_config(),
        "dataset_info": {"features": dataset.features._to_yaml_list(),
                         "splits": [{"name": SPLIT, "num_bytes": int(dataset.data.nbytes), "num_examples": len(dataset)}]},
        "ciebench": {
            "kind": "run",
            "exported_with": __version__,
            "spec_hash": spec.get("spec_hash"),
            "protocol": (spec.get("protocol") or summary.get("protocol") or {}).get("name"),
            "protocol_hash": (spec.get("protocol") or summary.get("protocol") or {}).get("hash"),
            "dataset": spec.get("dataset") or summary.get("dataset"),
            "judge": _judge_provenance(summary),
            "verified": _verification(run_dir),
            "checksums": {rel: f"sha256:{digest}" for rel, digest in checksums.items()},
        },
    }


def _verification(run_dir: Path) -> dict[str, Any] | None:
    """verify.json's verdict as the leaderboard reads it (`read_verification`): "stale", never verified,
    when a file it vouched for changed since, so an export cannot carry a verdict its files no longer earn."""
    record = read_verification(run_dir)
    if record is None:
        return None
    if not record["current"]:
        log.warning("%s: verify.json is stale (a file it vouched for changed since); the card says so. "
                    "Run `ciebench verify %s` again before exporting to carry a current verdict.", run_dir, run_dir)
        status = "stale"
    else:
        status = "verified" if record.get("verified") else "failed"
    return {"status": status, "verified": status == "verified", "ciebench_version": record.get("ciebench_version")}


def _judge_provenance(summary: dict[str, Any]) -> dict[str, Any] | None:
    judge = summary.get("judge")
    if not judge:
        return None
    models = summary.get("models") or {}
    return {"name": judge.get("name"), "hash": judge.get("hash"),
            "vlm": (judge.get("vlm") or {}).get("model"), "llm": (judge.get("llm") or {}).get("model"),
            "served_models": {k: v for k, v in models.items() if k in ("vlm", "llm") or "served" in k},
            "prompts": {k: {"id": f"{v.get('name')}@v{v.get('version')}", "hash": v.get("hash")}
                        for k, v in (judge.get("prompts") or {}).items() if isinstance(v, dict)}}


def _render_card(metadata: dict[str, Any], summary: dict[str, Any]) -> str:
    header = yaml.safe_dump(metadata, sort_keys=False, allow_unicode=True, width=1000)
    lines = [f"| {m} | {b.get('mean')} | {b.get('ci95')} | {b.get('n')} |"
             for m, b in (summary.get("metrics") or {}).items() if isinstance(b, dict)]
    table = "\n".join(["| metric | mean | 95% CI | n |", "|---|---|---|---|", *lines]) if lines else ""
    return f"""---
{header}---

# {metadata['pretty_name']}

A ciebench run: one row per (sample, seed) with the edited `image`, `status`, `prediction_sha256`, every
metric, the judge's verdict (`idcs`, `idcs_status`, `idcs_sentence`) and the editor's `trace`. The run's
own files (spec, summary, samples table, verification) are under `run/`.

Re-score the images with another protocol or judge:

```bash
ciebench score --dataset {(metadata['ciebench'].get('dataset') or {}).get('spec', 'DATASET')} --predictions hf:ORG/NAME --out rescored
```

{table}
"""


def materialize_predictions(spec: str, cache: Path | None = None) -> tuple[Path, dict[str, Any]]:
    """`hf:ORG/NAME[@revision]` (or `hf:` + a local folder) of an exported run -> a folder of
    `<id>__s<seed>.png` images that `ciebench score --predictions` reads, each image's sha256 checked
    against its row; and where they came from (`spec`, the hub `commit` the revision resolved to, None
    for a local folder, and the dataset's `fingerprint`), for the score's spec.json: the folder is
    only a cache entry named by a hash."""
    name = spec[3:] if spec.startswith("hf:") else spec
    name, _, revision = name.partition("@")
    try:
        ds = datasets.load_dataset(name, revision=revision or None, split=SPLIT)
    except Exception as exc:  # noqa: BLE001 (not found, offline, not a dataset)
        raise DataError(f"cannot load exported run {spec}: {exc}") from exc
    missing = {"sample_id", "seed", "image", "prediction_sha256"} - set(ds.column_names)
    if missing:
        raise DataError(f"{spec} is not a ciebench run export (no column(s) {sorted(missing)})")
    source = {"spec": spec, "commit": _hub_commit(name, revision or None), "fingerprint": ds._fingerprint}
    ds = ds.cast_column("image", datasets.Image(decode=False))
    target = (cache or cache_root() / "predictions") / stable_hash({"spec": spec, "fingerprint": ds._fingerprint})
    if (target / ".complete").is_file():
        return target, source
    if target.exists():  # an unfinished entry of an older ciebench
        shutil.rmtree(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    # another process scoring the same export may fill the entry at the same time: the first copy stays,
    # so a score already reading it never has it swapped away
    with outdir.staged(target, replace=False) as staging:
        for row in ds.select_columns(["sample_id", "seed", "image", "prediction_sha256"]):
            if row["image"] is None or row["image"].get("bytes") is None:
                continue
            data = row["image"]["bytes"]
            if sha256_bytes(data) != row["prediction_sha256"]:
                raise IntegrityError(f"{spec}: image of sample {row['sample_id']} seed {row['seed']} does not match "
                                     "its prediction_sha256")
            (staging / f"{file_stem(row['sample_id'], int(row['seed']))}.png").write_bytes(data)
        (staging / ".complete").write_text("")
    return target, source


def _hub_commit(name: str, revision: str | None) -> str | None:
    """The commit the local hub cache resolved `revision` of dataset `name` to (what load_dataset just
    read); None for a local folder."""
    from .prefetch import cached_commit
    from .requirements import hub_repo

    if Path(name).exists():
        return None
    return cached_commit(hub_repo(name, used_by="score --predictions", revision=revision, repo_type="dataset"))



def _text(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return str(value)


def _float(value: Any) -> float | None:
    try:
        x = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(x) else x

