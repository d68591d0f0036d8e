"""One entry point for every dataset spec: `load_dataset(spec) -> datasets.Dataset` with `FEATURES`.

Specs: `mini` (embedded), `ciebench` (official release, downloaded and verified), a folder in the
authors' or Reason-Edit layout, a folder or file with a JSONL manifest, a saved HF dataset folder,
parquet file(s), or `hf:ORG/NAME[@revision]`.
"""
from __future__ import annotations

import difflib
import hashlib
import logging
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import datasets

from ..schema import FEATURES, EditSample
from .authors import find_annotation, read_authors_folder
from .jsonl import MANIFEST_NAME, read_jsonl_manifest
from .mini import read_mini
from .problems import DatasetError, Problem, errors
from .reasonedit import is_reasonedit_folder, read_reasonedit_folder
from .release import ChecksumError, cache_dir, fetch_release, release_manifest

__all__ = ["load_dataset", "read_dataset", "LoadedDataset", "iter_samples", "dataset_revision",
           "DatasetError", "ChecksumError", "Problem"]

log = logging.getLogger(__name__)

NAMED = ("mini", "ciebench")


@dataclass
class LoadedDataset:
    dataset: datasets.Dataset
    spec: str
    kind: str  # mini | ciebench-release | authors | reasonedit | jsonl | saved | parquet | hub
    problems: list[Problem] = field(default_factory=list)
    revision: str = ""  # content hash, or the release / hub revision
    default_protocol: str = "cielr"


def load_dataset(spec: str, *, strict: bool = False, verify: bool = True, sources: list[str] | None = None) -> datasets.Dataset:
    """Load any supported dataset spec as a `datasets.Dataset` with ciebench's `FEATURES`.

    Bad samples are skipped with a logged warning naming sample and file (``strict=True`` raises
    instead); use `read_dataset` to get the problems as data."""
    loaded = read_dataset(spec, verify=verify, sources=sources)
    bad = errors(loaded.problems)
    if strict and bad:
        raise DatasetError(f"{spec}: {len(bad)} sample error(s):\n  " + "\n  ".join(map(str, bad)))
    for problem in loaded.problems:
        log.warning("%s", problem)
    return loaded.dataset


def read_dataset(spec: str, *, verify: bool = True, sources: list[str] | None = None) -> LoadedDataset:
    spec = str(spec)
    if spec == "mini":
        rows, problems = read_mini()
        return _finish(rows, problems, spec, "mini")
    if spec == "ciebench":
        return _load_release(verify=verify, sources=sources)
    if spec.startswith("hf:"):
        return _load_hub(spec)
    path = Path(spec).expanduser()
    if not path.exists():
        close = difflib.get_close_matches(spec, NAMED, n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        raise DatasetError(
            f"unknown dataset {spec!r}: not a named dataset ({', '.join(NAMED)}), not 'hf:ORG/NAME[@rev]', "
            f"and no such file or folder.{hint}")
    if path.is_file():
        if path.suffix == ".parquet":
            return _wrap(datasets.Dataset.from_parquet(str(path), features=FEATURES), spec, "parquet")
        if path.suffix == ".jsonl":
            return _finish(*read_jsonl_manifest(path), spec, "jsonl")
        raise DatasetError(f"{path}: a dataset file must be .parquet or .jsonl")
    if (path / "dataset_info.json").exists() and (path / "state.json").exists():
        return _wrap(datasets.load_from_disk(str(path)), spec, "saved")
    if find_annotation(path) is not None:
        return _finish(*read_authors_folder(path), spec, "authors")
    if (path / MANIFEST_NAME).is_file():
        return _finish(*read_jsonl_manifest(path / MANIFEST_NAME), spec, "jsonl")
    parquet = sorted(path.glob("*.parquet")) or sorted(path.glob("**/*.parquet"))
    if parquet:
        return _wrap(datasets.Dataset.from_parquet([str(p) for p in parquet], features=FEATURES), spec, "parquet")
    if is_reasonedit_folder(path):
        loaded = _finish(*read_reasonedit_folder(path), spec, "reasonedit")
        loaded.default_protocol = "smartedit"
        return loaded
    raise DatasetError(
        f"{path}: unrecognised dataset folder; expected updated_data.json/benchmark.json (CIEBench layout), "
        f"{MANIFEST_NAME}, a saved HF dataset, parquet files, or Reason-Edit category folders (1-Left-Right/ ...)")


def iter_samples(dataset: datasets.Dataset, limit: int | None = None) -> Iterator[EditSample]:
    n = len(dataset) if limit is None else min(limit, len(dataset))
    for i in range(n):
        yield EditSample.from_row(dataset[i])


def dataset_revision(dataset: datasets.Dataset) -> str:
    """A content hash over ids, texts and the stored image and mask bytes (no decoding)."""
    raw = dataset.cast_column("image", datasets.Image(decode=False)).cast_column("mask", datasets.Image(decode=False))
    h = hashlib.sha256()
    for row in raw:
        h.update(row["id"].encode())
        h.update(row["instruction"].encode())
        h.update("\x00".join(row["clip_text"]).encode())
        for key in ("image", "mask"):
            value = row[key]
            if value is None:
                h.update(b"<none>")
            elif value.get("bytes") is not None:
                h.update(hashlib.sha256(value["bytes"]).digest())
            else:
                h.update(hashlib.sha256(Path(value["path"]).read_bytes()).digest())
    return h.hexdigest()[:16]


def _finish(rows: list[dict[str, Any]], problems: list[Problem], spec: str, kind: str) -> LoadedDataset:
    dataset = datasets.Dataset.from_list(rows, features=FEATURES) if rows else datasets.Dataset.from_dict(
        {k: [] for k in FEATURES}, features=FEATURES)
    loaded = LoadedDataset(dataset=dataset, spec=spec, kind=kind, problems=problems)
    loaded.revision = dataset_revision(dataset)
    return loaded


def _wrap(dataset: datasets.Dataset, spec: str, kind: str) -> LoadedDataset:
    missing = [k for k in FEATURES if k not in dataset.column_names]
    if missing:
        raise DatasetError(f"{spec}: dataset lacks ciebench columns {missing}; convert it with `ciebench data prepare`")
    dataset = dataset.select_columns(list(FEATURES)).cast(FEATURES)
    problems = []
    ids = dataset["id"]
    seen: set[str] = set()
    for sample_id in ids:
        if sample_id in seen:
            problems.append(Problem("error", sample_id, None, "duplicate sample id"))
        seen.add(sample_id)
    loaded = LoadedDataset(dataset=dataset, spec=spec, kind=kind, problems=problems)
    loaded.revision = dataset_revision(dataset)
    return loaded


def _load_release(verify: bool, sources: list[str] | None) -> LoadedDataset:
    manifest = release_manifest()
    converted = cache_dir() / ("dataset" if verify else "dataset-unverified")
    if (converted / "state.json").exists():
        dataset = datasets.load_from_disk(str(converted))
        problems: list[Problem] = []
    else:
        root = fetch_release(sources=sources, verify=verify)
        rows, problems = read_authors_folder(root)
        dataset = datasets.Dataset.from_list(rows, features=FEATURES)
        tmp = Path(tempfile.mkdtemp(dir=converted.parent, prefix=".dataset-"))
        datasets.disable_progress_bars()
        try:
            dataset.save_to_disk(str(tmp))
        finally:
            datasets.enable_progress_bars()
        if converted.exists():
            shutil.rmtree(converted)
        tmp.rename(converted)  # the converted copy appears whole or not at all
        dataset = datasets.load_from_disk(str(converted))
    return LoadedDataset(dataset=dataset, spec="ciebench", kind="ciebench-release", problems=problems,
                         revision=f"release-{manifest['revision']}" + ("" if verify else "-unverified"))


def _load_hub(spec: str) -> LoadedDataset:
    name = spec[3:]
    name, _, revision = name.partition("@")
    loaded = datasets.load_dataset(name, revision=revision or None)
    if isinstance(loaded, datasets.DatasetDict):
        split = "test" if "test" in loaded else next(iter(loaded))
        loaded = loaded[split]
    wrapped = _wrap(loaded, spec, "hub")
    wrapped.revision = revision or wrapped.revision
    return wrapped
