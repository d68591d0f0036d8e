"""SmartEdit's Reason-Edit folder layout.

`1-Left-Right/ 2-Relative-Size/ 3-Mirror/ 4-Color/ 5-Multiple-Objects/ 6-Reasoning/`, each with source
`*.png`, masks `*_mask.jpg`, and one text file whose line i is `<instruction> CLIP: <clip text>`, paired
with the i-th file of the sorted png and mask lists (the released evaluation's pairing).
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from ..schema import make_row
from .files import check_pair, read_image
from .problems import Problem

CATEGORY_DIR = re.compile(r"^\d+-[A-Za-z][\w-]*$")


def is_reasonedit_folder(root: Path) -> bool:
    return any(p.is_dir() and CATEGORY_DIR.match(p.name) and list(p.glob("*.txt")) for p in root.iterdir())


def category_name(folder: str) -> str:
    return folder.split("-", 1)[1].lower()


def read_reasonedit_folder(root: Path) -> tuple[list[dict[str, Any]], list[Problem]]:
    rows: list[dict[str, Any]] = []
    problems: list[Problem] = []
    for category in sorted(p for p in root.iterdir() if p.is_dir() and CATEGORY_DIR.match(p.name)):
        texts = sorted(category.glob("*.txt"))
        if len(texts) != 1:
            problems.append(Problem("error", None, category.name, f"expected one instruction .txt file, found {len(texts)}"))
            continue
        lines = [ln.strip() for ln in texts[0].read_text(encoding="utf-8", errors="replace").splitlines() if ln.strip()]
        images = sorted(p.name for p in category.glob("*.png"))
        masks = sorted(p.name for p in category.glob("*_mask.jpg"))
        if not (len(lines) == len(images) == len(masks)):
            problems.append(Problem(
                "warning", None, category.name,
                f"{len(lines)} instruction lines, {len(images)} png images, {len(masks)} masks; pairing the first "
                f"{min(len(lines), len(images), len(masks))} by sorted order"))
        for line, image_name, mask_name in zip(lines, images, masks):
            sample_id = f"{category.name}/{Path(image_name).stem}"
            instruction, clip = _split_line(line)
            if clip is None:
                problems.append(Problem("warning", sample_id, texts[0].name, "instruction line has no 'CLIP:' part"))
            image_rel, mask_rel = f"{category.name}/{image_name}", f"{category.name}/{mask_name}"
            image = read_image(root, image_rel, sample_id, "image", problems)
            mask = read_image(root, mask_rel, sample_id, "mask", problems)
            if image is None or mask is None:
                continue
            check_pair(image, mask, sample_id, image_rel, mask_rel, problems)
            rows.append(make_row(
                id=sample_id, image=image.data, mask=mask.data, instruction=instruction,
                clip_text=[clip] if clip else [], edit_type=category_name(category.name),
                meta={"category": category.name, "image_path": image_rel, "mask_path": mask_rel},
            ))
    return rows, problems


def _split_line(line: str) -> tuple[str, str | None]:
    if "CLIP:" not in line:
        return line, None
    instruction, clip = line.rsplit("CLIP:", 1)
    return instruction.strip(), clip.strip()
