"""The generic layout for users' own benchmarks: a JSONL manifest beside the files.

One JSON object per line: `id`, `image`, `mask`, `instruction`, `clip_text` (string or list), and
optionally `edit_type` and `notes`; paths are relative to the manifest's folder. `mask` is required:
a missing (or misspelt) key would otherwise score the whole image as if it had to stay unchanged, so
only an explicit `"mask": null` means "no mask", and it is warned about per sample.
"""
from __future__ import annotations

import codecs
import json
from pathlib import Path
from typing import Any

from ciebench.errors import did_you_mean
from ciebench.schema import make_row

from .edit_types import derive_edit_type
from .fields import FieldTypes, is_optional_str, is_str, is_texts, json_type, sample_id_of, type_errors
from .files import check_pair, read_image
from .problems import NO_MASK, DatasetError, Problem

MANIFEST_NAME = "manifest.jsonl"


def read_jsonl_manifest(manifest: Path) -> tuple[list[dict[str, Any]], list[Problem]]:
    """Rows and problems of a manifest. Every bad line (not UTF-8, not JSON, not an object, a field
    of the wrong type) is one error naming the file and line; the other lines load."""
    root = manifest.parent
    rows: list[dict[str, Any]] = []
    problems: list[Problem] = []
    seen: set[str] = set()
    unknown: dict[str, list[int]] = {}  # key -> the lines it is on: one warning per key, not per line
    try:
        raw = manifest.read_bytes()
    except OSError as exc:
        raise DatasetError(f"{manifest}: cannot read the manifest ({exc.strerror or exc})") from exc
    if raw.startswith(codecs.BOM_UTF8):
        raw = raw[len(codecs.BOM_UTF8):]  # a byte-order mark from Windows editors: not part of line 1
    for lineno, data in enumerate(raw.splitlines(), start=1):
        where = f"{manifest.name}:{lineno}"
        try:
            line = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            problems.append(Problem("error", None, where, f"line is not UTF-8 ({exc.reason} at byte {exc.start})"))
            continue
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except (json.JSONDecodeError, RecursionError) as exc:
            problems.append(Problem("error", None, where, f"not valid JSON: {exc}"))
            continue
        if not isinstance(entry, dict):
            problems.append(Problem("error", None, where, f"expected a JSON object, got {json_type(entry)}"))
            continue
        for key in entry:
            if key not in KNOWN_KEYS:
                unknown.setdefault(key, []).append(lineno)
        row = _read_entry(root, entry, where, seen, problems)
        if row is not None:
            rows.append(row)
    for key, lines in unknown.items():
        on = f"line {lines[0]}" if len(lines) == 1 else f"{len(lines)} lines ({_line_list(lines)})"
        problems.append(Problem(
            "warning", None, f"{manifest.name}:{lines[0]}",
            f"unknown key {key!r} on {on} is ignored; known keys: {', '.join(KNOWN_KEYS)}.{did_you_mean(key, KNOWN_KEYS)}"))
    return rows, problems


def _line_list(lines: list[int], shown: int = 5) -> str:
    more = f", ... {len(lines) - shown} more" if len(lines) > shown else ""
    return ", ".join(map(str, lines[:shown])) + more


def _read_entry(root: Path, entry: dict[str, Any], where: str, seen: set[str], problems: list[Problem]) -> dict[str, Any] | None:
    raw_id = entry.get("id")
    sample_id = sample_id_of(raw_id)
    missing = [k for k in REQUIRED_KEYS if k not in entry]
    if missing:
        hint = " (write \"mask\": null for a sample without a mask)" if "mask" in missing else ""
        problems.append(Problem("error", sample_id, where, f"missing keys: {missing}{hint}"))
        return None
    if sample_id is None:
        problems.append(Problem("error", None, where, f"'id' must be a non-empty string or an integer, got {json_type(raw_id)}"))
        return None
    wrong = type_errors(entry, _FIELD_TYPES)
    if wrong:
        problems.append(Problem("error", sample_id, where, wrong))
        return None
    if sample_id in seen:
        problems.append(Problem("error", sample_id, where, "duplicate sample id; only the first is kept"))
        return None
    seen.add(sample_id)
    mask_rel = entry["mask"] or None  # null (or "") is the one way to say "no mask"
    image = read_image(root, entry["image"], sample_id, "image", problems)
    mask = read_image(root, mask_rel, sample_id, "mask", problems) if mask_rel else None
    if image is None or (mask_rel and mask is None):
        return None
    if not check_pair(image, mask, sample_id, entry["image"], mask_rel, problems):
        return None
    if mask is None:
        problems.append(Problem("warning", sample_id, where, f"\"mask\" is null or empty: {NO_MASK}"))
    if "clip_text" not in entry:
        problems.append(Problem("warning", sample_id, where, "no 'clip_text' key: CLIP is NaN for this sample"))
    clip_text = entry.get("clip_text") or []
    if isinstance(clip_text, str):
        clip_text = [clip_text]
    edit_type = entry.get("edit_type") or derive_edit_type(entry["instruction"], clip_text)
    return make_row(
        id=sample_id, image=image.data, mask=mask.data if mask else None, instruction=entry["instruction"],
        clip_text=list(clip_text), edit_type=edit_type, notes=entry.get("notes") or "",
        meta={"image_path": entry["image"], "mask_path": mask_rel,
              "edit_type_source": "annotated" if entry.get("edit_type") else "derived"},
    )


REQUIRED_KEYS = ("id", "image", "mask", "instruction")
KNOWN_KEYS = ("id", "image", "mask", "instruction", "clip_text", "edit_type", "notes")

_FIELD_TYPES: FieldTypes = (
    ("image", "a string (a path relative to the manifest)", is_str),
    ("mask", "a string (a path relative to the manifest) or null", is_optional_str),
    ("instruction", "a string", is_str),
    ("clip_text", "a string or a list of strings", is_texts),
    ("edit_type", "a string or null", is_optional_str),
    ("notes", "a string or null", is_optional_str),
)
