"""The generic layout for users' own benchmarks: a JSONL manifest beside the files.

One JSON object per line: `id`, `image`, `mask`, `instruction`, `clip_text` (string or list), and
optionally `edit_type` and `notes`; paths are relative to the manifest's folder.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..schema import make_row
from .edit_types import derive_edit_type
from .files import check_pair, read_image
from .problems import Problem

MANIFEST_NAME = "manifest.jsonl"


def read_jsonl_manifest(manifest: Path) -> tuple[list[dict[str, Any]], list[Problem]]:
    root = manifest.parent
    rows: list[dict[str, Any]] = []
    problems: list[Problem] = []
    seen: set[str] = set()
    for lineno, line in enumerate(manifest.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{manifest.name}:{lineno}"
        try:
            entry = json.loads(line)
        except json.JSONDecodeError as exc:
            problems.append(Problem("error", None, where, f"not valid JSON: {exc}"))
            continue
        missing = [k for k in ("id", "image", "instruction") if k not in entry]
        if missing:
            problems.append(Problem("error", str(entry.get("id")) if "id" in entry else None, where, f"missing keys: {missing}"))
            continue
        sample_id = str(entry["id"])
        if sample_id in seen:
            problems.append(Problem("error", sample_id, where, "duplicate sample id; only the first is kept"))
            continue
        seen.add(sample_id)
        image = read_image(root, str(entry["image"]), sample_id, "image", problems)
        mask = read_image(root, str(entry["mask"]), sample_id, "mask", problems) if entry.get("mask") else None
        if image is None or (entry.get("mask") and mask is None):
            continue
        check_pair(image, mask, sample_id, str(entry["image"]), entry.get("mask"), problems)
        clip_text = entry.get("clip_text") or []
        if isinstance(clip_text, str):
            clip_text = [clip_text]
        edit_type = entry.get("edit_type") or derive_edit_type(entry["instruction"], clip_text)
        rows.append(make_row(
            id=sample_id, image=image.data, mask=mask.data if mask else None, instruction=str(entry["instruction"]),
            clip_text=[str(t) for t in clip_text], edit_type=str(edit_type), notes=str(entry.get("notes") or ""),
            meta={"image_path": entry["image"], "mask_path": entry.get("mask"),
                  "edit_type_source": "annotated" if entry.get("edit_type") else "derived"},
        ))
    return rows, problems
