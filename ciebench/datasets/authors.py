"""The CIEBench authors' release layout: `updated_data.json` (or `benchmark.json`) + `k/k.png` + `k/k_mask.png`."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ciebench.schema import make_row

from .edit_types import derive_edit_type
from .fields import FieldTypes, is_optional_str, is_str, is_texts, sample_id_of, type_errors
from .files import check_pair, read_image, union_masks
from .problems import DatasetError, Problem

ANNOTATION_FILES = ("updated_data.json", "benchmark.json")


def find_annotation(root: Path) -> Path | None:
    for name in ANNOTATION_FILES:
        if (root / name).is_file():
            return root / name
    return None


def read_authors_folder(root: Path) -> tuple[list[dict[str, Any]], list[Problem]]:
    root = Path(root)
    annotation = find_annotation(root)
    if annotation is None:
        raise DatasetError(f"{root}: no {' or '.join(ANNOTATION_FILES)} found (not the authors' layout)")
    try:
        pairs = _entries(annotation)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise DatasetError(f"{annotation}: cannot parse annotation file: {exc}") from exc

    rows: list[dict[str, Any]] = []
    problems: list[Problem] = []
    seen: set[str] = set()
    for sample_id, entry in pairs:
        if sample_id is None:
            problems.append(Problem("error", None, annotation.name, f"entry {entry!r:.60} has no usable 'id'"))
            continue
        if sample_id in seen:
            problems.append(Problem("error", sample_id, annotation.name, "duplicate sample id; only the first is kept"))
            continue
        seen.add(sample_id)
        row = _read_entry(root, annotation.name, sample_id, entry, problems)
        if row is not None:
            rows.append(row)
    return rows, problems


class _Pairs(list):
    """A parsed JSON object kept as its (key, value) pairs, so duplicate keys stay visible."""


def _plain(value: Any) -> Any:
    if isinstance(value, _Pairs):
        return {k: _plain(v) for k, v in reversed(value)}  # first occurrence wins, as in the pairs below
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def _entries(annotation: Path) -> list[tuple[str, Any]]:
    """(id, entry) pairs in file order, duplicates included (a parsed dict would hide them)."""
    # utf-8-sig: a byte-order mark from Windows editors is not part of the JSON
    raw = json.loads(annotation.read_bytes().decode("utf-8-sig"), object_pairs_hook=_Pairs)
    if isinstance(raw, _Pairs):
        return [(k if k.strip() else None, _plain(v)) for k, v in raw]
    if isinstance(raw, list):  # tolerate a list of {"id": ..., ...}
        entries = [_plain(e) for e in raw]
        return [(sample_id_of(e.get("id", i)) if isinstance(e, dict) else str(i), e) for i, e in enumerate(entries)]
    raise DatasetError(f"{annotation}: expected a JSON object mapping id -> entry")


def _read_entry(root: Path, where: str, sample_id: str, entry: Any, problems: list[Problem]) -> dict[str, Any] | None:
    if not isinstance(entry, dict) or "image path" not in entry or "instruction" not in entry:
        problems.append(Problem("error", sample_id, where, "annotation entry lacks 'image path' or 'instruction'"))
        return None
    wrong = type_errors(entry, _FIELD_TYPES)
    if wrong:
        problems.append(Problem("error", sample_id, where, wrong))
        return None
    image_rel = entry["image path"]
    mask_rels = entry.get("mask path") or []
    if isinstance(mask_rels, str):
        mask_rels = [mask_rels]
    image = read_image(root, image_rel, sample_id, "image", problems)
    masks = [read_image(root, m, sample_id, "mask", problems) for m in mask_rels]
    if not mask_rels:
        problems.append(Problem("error", sample_id, None, "annotation entry has no 'mask path'"))
    if image is None or not mask_rels or any(m is None for m in masks):
        return None
    mask = union_masks(masks)
    if not check_pair(image, mask, sample_id, image_rel, ",".join(mask_rels), problems):
        return None
    if "CLIP" not in entry:  # as a JSONL manifest without clip_text: said, not silent
        problems.append(Problem("warning", sample_id, where, "no 'CLIP' key: CLIP is NaN for this sample"))
    clip_text = entry.get("CLIP") or []
    if isinstance(clip_text, str):
        clip_text = [clip_text]
    notes = entry.get("notes") or entry.get("note") or ""
    return make_row(
        id=sample_id,
        image=image.data,
        mask=mask.data,
        instruction=entry["instruction"],
        clip_text=list(clip_text),
        edit_type=derive_edit_type(entry["instruction"], clip_text),
        notes=str(notes),
        meta={"image_path": image_rel, "mask_paths": list(mask_rels), "edit_type_source": "derived"},
    )


_FIELD_TYPES: FieldTypes = (
    ("image path", "a string (a path relative to the annotation file)", is_str),
    ("mask path", "a string or a list of strings (paths)", is_texts),
    ("instruction", "a string", is_str),
    ("CLIP", "a string or a list of strings", is_texts),
    ("notes", "a string or null", is_optional_str),
    ("note", "a string or null", is_optional_str),
)
