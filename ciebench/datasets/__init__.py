"""One entry point for every dataset spec: `load_dataset(spec) -> datasets.Dataset` with `FEATURES`.

Specs: `mini` (embedded), `ciebench` (official release, downloaded and verified), a folder in the
authors' or Reason-Edit layout, a folder or file with a JSONL manifest, a saved HF dataset folder,
parquet file(s), or `hf:ORG/NAME[@revision]`.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import datasets

from ciebench.errors import did_you_mean
from ciebench.images import read_regular_file
from ciebench.outdir import staged
from ciebench.schema import FEATURES, EditSample

from .authors import find_annotation, read_authors_folder
from .files import check_pair, decode_image, read_contained
from .jsonl import MANIFEST_NAME, read_jsonl_manifest
from .mini import read_mini
from .problems import NO_MASK, DatasetError, Problem, errors
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
    kind: str  # mini | ciebench-release | authors | reasonedit | jsonl | saved | parquet | hub | memory
    problems: list[Problem] = field(default_factory=list)
    revision: str = ""  # content hash (`dataset_revision`): the same rows under any name or path share it
    default_protocol: str = "cielr"
    # the official release only: its manifest revision, "-unverified" when accepted without checksums.
    # Provenance beside `revision`, not the data's identity (a local copy of the same files has no release).
    release: str = ""

    def describe(self) -> dict[str, Any]:
        """What a run records about its dataset (spec.json, summary.json): spec, kind, content revision,
        and the release's identity when it is the official release."""
        return {"spec": self.spec, "kind": self.kind, "revision": self.revision,
                **({"release": self.release} if self.release else {})}

    def names_revision(self, recorded: str) -> bool:
        """Whether a revision a run recorded names these rows: the content revision, or for the official
        release the `release-<manifest revision>` that ciebench recorded before it recorded content
        revisions (`ciebench.spec.legacy_release_revision`)."""
        from ciebench.spec import legacy_release_revision

        return recorded in (self.revision, legacy_release_revision(self.describe()))


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
        hint = did_you_mean(spec, NAMED)
        raise DatasetError(
            f"unknown dataset {spec!r}: not a named dataset ({', '.join(NAMED)}), not 'hf:ORG/NAME[@rev]', "
            f"and no such file or folder.{hint}")
    if path.is_file():
        if path.suffix.lower() == ".parquet":
            return _with_card_protocol(
                _wrap(_read_table(lambda: datasets.Dataset.from_parquet(str(path), features=FEATURES), path),
                      spec, "parquet", [path.parent]), path.parent)
        if path.suffix.lower() == ".jsonl":
            return _finish(*read_jsonl_manifest(path), spec, "jsonl")
        raise DatasetError(f"{path}: a dataset file must be .parquet or .jsonl")
    if not path.is_dir():
        raise DatasetError(f"{path}: neither a regular file nor a folder; refused without reading")
    if (path / "dataset_info.json").exists() and (path / "state.json").exists():
        return _with_card_protocol(_wrap(_read_table(lambda: datasets.load_from_disk(str(path)), path), spec, "saved",
                                         [path]), path)
    if find_annotation(path) is not None:
        return _finish(*read_authors_folder(path), spec, "authors")
    if (path / MANIFEST_NAME).is_file():
        return _finish(*read_jsonl_manifest(path / MANIFEST_NAME), spec, "jsonl")
    parquet = sorted(path.glob("*.parquet")) or sorted(path.glob("**/*.parquet"))
    if parquet:
        loaded = _wrap(_read_table(lambda: datasets.Dataset.from_parquet([str(p) for p in parquet], features=FEATURES),
                                   path), spec, "parquet", [path])
        return _with_card_protocol(loaded, path, path.parent if path.name == "data" else None)
    if is_reasonedit_folder(path):
        loaded = _finish(*read_reasonedit_folder(path), spec, "reasonedit")
        loaded.default_protocol = "smartedit"
        return loaded
    raise DatasetError(
        f"{path}: unrecognised dataset folder; expected updated_data.json/benchmark.json (CIEBench layout), "
        f"{MANIFEST_NAME}, a saved HF dataset, parquet files, or Reason-Edit category folders (1-Left-Right/ ...)")


def wrap_dataset(dataset: datasets.Dataset, spec: str = "<in-memory dataset>") -> LoadedDataset:
    """A `datasets.Dataset` already in memory (e.g. from `load_dataset`) as a `LoadedDataset`, checked row
    by row like a saved one. Image paths in it are not followed (embed the bytes); `spec` is what the run
    records as the dataset's name."""
    return _wrap(dataset, spec, "memory", [])


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
        h.update("\x00".join(row["clip_text"] or []).encode())  # a table may hold null for "no texts"
        for key in ("image", "mask"):
            value = row[key]
            if value is None:
                h.update(b"<none>")
            elif value.get("bytes") is not None:
                h.update(hashlib.sha256(value["bytes"]).digest())
            else:
                h.update(hashlib.sha256(read_regular_file(value["path"])).digest())
    return h.hexdigest()[:16]


def _finish(rows: list[dict[str, Any]], problems: list[Problem], spec: str, kind: str) -> LoadedDataset:
    dataset = datasets.Dataset.from_list(rows, features=FEATURES) if rows else _empty()
    loaded = LoadedDataset(dataset=dataset, spec=spec, kind=kind, problems=problems)
    loaded.revision = dataset_revision(dataset)
    return loaded


def _read_table(read: Callable[[], Any], path: Path) -> Any:
    """Run a `datasets` reader; a file it cannot parse is a `DatasetError` naming the file."""
    try:
        return read()
    except DatasetError:
        raise
    except Exception as exc:  # noqa: BLE001 - pyarrow / datasets raise many types for bad files
        raise DatasetError(f"{path}: cannot read it as a dataset ({type(exc).__name__}: {exc})") from exc


def _wrap(dataset: datasets.Dataset, spec: str, kind: str, roots: list[Path]) -> LoadedDataset:
    """A table that already has ciebench's columns (saved, parquet, hub), validated row by row like
    the file loaders: every image and mask is decoded with the shared allow-list, and an `Image`
    value that carries only a `path` is read only when the path lies inside one of `roots` (the
    dataset's own folder) and is then embedded as bytes; anything else is an error for that row."""
    missing = [k for k in FEATURES if k not in dataset.column_names]
    if missing:
        raise DatasetError(f"{spec}: dataset lacks ciebench columns {missing}; convert it with `ciebench data prepare`")
    try:
        # `cast` rewrites the whole table (into a cache file beside a saved dataset: 146 MB for
        # 2,000 CIEBench rows), so it runs only when the schema differs from ciebench's.
        if list(dataset.column_names) != list(FEATURES):
            dataset = dataset.select_columns(list(FEATURES))
        if dataset.features != FEATURES:
            dataset = dataset.cast(FEATURES)
    except Exception as exc:  # noqa: BLE001
        raise DatasetError(f"{spec}: columns do not fit ciebench's schema ({type(exc).__name__}: {exc})") from exc
    raw = dataset.cast_column("image", datasets.Image(decode=False)).cast_column("mask", datasets.Image(decode=False))
    problems: list[Problem] = []
    keep: list[int] = []
    # Only rows whose images were read from files are kept: holding every checked row would hold
    # every image's bytes at once, and peak memory would grow with the number of samples.
    read_from_paths: dict[int, dict[str, Any]] = {}
    seen: set[str] = set()
    for i, row in enumerate(raw):
        checked = _check_row(row, i, roots, seen, problems)
        if checked is None:
            continue
        row, read_a_path = checked
        keep.append(i)
        if read_a_path:
            read_from_paths[i] = row
    if read_from_paths:
        # Rows that pointed at files now carry those files' bytes: nothing outside the checked
        # folder can be read later, whatever the working directory.
        rows = [read_from_paths.get(i) or _without_paths(raw[i]) for i in keep]
        dataset = datasets.Dataset.from_list(rows, features=FEATURES)
    elif len(keep) < len(dataset):
        dataset = dataset.select(keep, keep_in_memory=True)
    loaded = LoadedDataset(dataset=dataset, spec=spec, kind=kind, problems=problems)
    loaded.revision = dataset_revision(dataset)
    return loaded


def _check_row(row: dict[str, Any], index: int, roots: list[Path], seen: set[str],
               problems: list[Problem]) -> tuple[dict[str, Any], bool] | None:
    """(the row with every image as bytes, whether a path was read), or None after logging errors."""
    sample_id = row["id"]
    where = f"row {index}"
    if sample_id is None or sample_id == "":
        problems.append(Problem("error", None, where, "sample id is missing (null or empty)"))
        return None
    if sample_id in seen:
        problems.append(Problem("error", sample_id, where, "duplicate sample id; only the first is kept"))
        return None
    seen.add(sample_id)
    if row["instruction"] is None:
        problems.append(Problem("error", sample_id, where, "instruction is missing (null)"))
        return None
    if any(t is None for t in row["clip_text"] or []):
        problems.append(Problem("error", sample_id, where, "clip_text holds a null entry"))
        return None
    try:
        meta = json.loads(row["meta"]) if row["meta"] else {}
    except json.JSONDecodeError:
        meta = None
    if not isinstance(meta, dict):
        problems.append(Problem("error", sample_id, where, "meta is not a JSON object"))
        return None
    read_a_path = False
    decoded = {}
    for role in ("image", "mask"):
        value = row[role]
        if value is None or (value.get("bytes") is None and not value.get("path")):
            if role == "image":
                problems.append(Problem("error", sample_id, where, "image is missing (null)"))
                return None
            decoded[role] = None
            continue
        data = value.get("bytes")
        name = value.get("path") or where
        if data is None:
            data = _read_from_roots(roots, str(value["path"]), sample_id, role, problems)
            if data is None:
                return None
            read_a_path = True
        image = decode_image(data, name, sample_id, role, problems)
        if image is None:
            return None
        decoded[role] = image
        row = {**row, role: {"bytes": data, "path": None}}
    if not check_pair(decoded["image"], decoded["mask"], sample_id, where, where, problems):
        return None
    if decoded["mask"] is None:  # the schema allows it; a manifest's "mask": null arrives here after `data prepare`
        problems.append(Problem("warning", sample_id, where, f"mask is null: {NO_MASK}"))
    return row, read_a_path


def _read_from_roots(roots: list[Path], path: str, sample_id: str, role: str, problems: list[Problem]) -> bytes | None:
    """An `Image` value's `path`: relative to the dataset's folder, or absolute inside one of `roots`."""
    rel = path
    if os.path.isabs(path):
        for root in roots:
            try:
                rel = str(Path(path).resolve().relative_to(root.resolve()))
            except (ValueError, OSError):
                continue
            return read_contained(root, rel, sample_id, role, problems)
        problems.append(Problem("error", sample_id, path, f"{role} path lies outside the dataset folder; rejected"))
        return None
    if not roots:
        problems.append(Problem("error", sample_id, path, f"{role} is a bare path with no dataset folder to resolve it in; rejected"))
        return None
    return read_contained(roots[0], rel, sample_id, role, problems)


def _without_paths(row: dict[str, Any]) -> dict[str, Any]:
    """A checked row whose images all carried bytes, as `_check_row` returns those: bytes only."""
    return {**row, **{role: {"bytes": row[role]["bytes"], "path": None} for role in ("image", "mask") if row[role]}}


def _empty() -> datasets.Dataset:
    return datasets.Dataset.from_dict({k: [] for k in FEATURES}, features=FEATURES)


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
        if converted.exists():  # a conversion left unfinished
            shutil.rmtree(converted)
        datasets.disable_progress_bars()
        try:
            # the converted copy appears whole or not at all; where another process converted it at the
            # same time, the first copy stays (a run may already be reading it)
            with staged(converted, replace=False) as tmp:
                dataset.save_to_disk(str(tmp))
        finally:
            datasets.enable_progress_bars()
        dataset = datasets.load_from_disk(str(converted))
    # The revision is the content hash, computed as for any other spec, so a run on the release and a run
    # on a local copy of the same files (`/data/ciebench`) share a leaderboard table; which release it
    # was stays recorded beside it (`release`).
    return LoadedDataset(dataset=dataset, spec="ciebench", kind="ciebench-release", problems=problems,
                         revision=dataset_revision(dataset),
                         release=str(manifest["revision"]) + ("" if verify else "-unverified"))


def _load_hub(spec: str) -> LoadedDataset:
    name = spec[3:]
    name, _, revision = name.partition("@")
    loaded = _read_table(lambda: datasets.load_dataset(name, revision=revision or None), Path(name))
    if isinstance(loaded, datasets.DatasetDict):
        split = "test" if "test" in loaded else next(iter(loaded))
        loaded = loaded[split]
    # The revision stays the content hash: a ref such as "main" moves, and a run resumed against
    # other rows under the same ref must be refused, not scored against the new sources.
    wrapped = _wrap(loaded, spec, "hub", _hub_roots(name))
    return _with_card_protocol(wrapped, *_card_folders(name, revision))


def _card_folders(name: str, revision: str) -> list[Path]:
    """Where a hub dataset's card may be: the folder given as its name, or the hub cache's copy."""
    if Path(name).expanduser().is_dir():
        return [Path(name).expanduser()]
    try:
        from huggingface_hub import hf_hub_download

        from .hub_layout import CARD

        return [Path(hf_hub_download(name, CARD, repo_type="dataset", revision=revision or None)).parent]
    except Exception as exc:  # noqa: BLE001 - offline, no card, no access: the default protocol stays
        log.debug("no dataset card for %s: %s", name, exc)
        return []


PREPARED_CARD = "ciebench_card.json"  # what `ciebench data prepare` writes beside the data (`prepare.py`)


def _prepared_card(folder: Path) -> dict[str, Any]:
    try:
        card = json.loads((folder / PREPARED_CARD).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return card if isinstance(card, dict) else {}


def _with_card_protocol(loaded: LoadedDataset, *folders: Path | None) -> LoadedDataset:
    """A dataset written by ciebench keeps what its card says of its source: the default protocol (a
    Reason-Edit copy is scored under `smartedit`, at its size and CLIP, not under `cielr`), from the
    hub card or `ciebench_card.json`; and the official release's identity (`release`), only while the
    rows are still the ones the card was written for (same content revision)."""
    from ciebench.metrics.protocols import PROTOCOLS

    from .hub_layout import card_default_protocol

    for folder in folders:
        if folder is None:
            continue
        prepared = _prepared_card(folder)
        release = prepared.get("release")
        if isinstance(release, str) and release and prepared.get("revision") == loaded.revision:
            loaded.release = release
        protocol = card_default_protocol(folder) or prepared.get("default_protocol")
        if not isinstance(protocol, str):
            continue
        if protocol not in PROTOCOLS:
            log.warning("%s: its card names default protocol %r, which this ciebench does not know; using %s",
                        loaded.spec, protocol, loaded.default_protocol)
        else:
            loaded.default_protocol = protocol
        break
    return loaded


def _hub_roots(name: str) -> list[Path]:
    """Where a hub dataset's files may legitimately lie: a local folder given as the name, and the
    caches `datasets` downloads into."""
    import huggingface_hub.constants as hub

    roots = [Path(name).expanduser()] if Path(name).expanduser().is_dir() else []
    return roots + [Path(datasets.config.HF_DATASETS_CACHE), Path(hub.HF_HUB_CACHE)]
