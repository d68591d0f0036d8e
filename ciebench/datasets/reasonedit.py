"""SmartEdit's Reason-Edit folder layout.

`1-Left-Right/ 2-Relative-Size/ 3-Mirror/ 4-Color/ 5-Multiple-Objects/ 6-Reasoning/`, each with source
`*.png`, masks `*_mask.jpg`, and one text file whose line i is `<instruction> CLIP: <clip text>`, paired
with the i-th source in sorted file-name order (`sorted(glob("*.png"))`, as SmartEdit's inference and
scoring scripts pair `prompt[idx]`: "10.png" before "2.png"), and each source with the mask of the same stem.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from ciebench.images import ImageRefused, read_regular_file
from ciebench.results import natural_key
from ciebench.schema import make_row

from .files import check_pair, read_image
from .problems import Problem

CATEGORY_DIR = re.compile(r"^\d+-[A-Za-z][\w-]*$")


MASK_NAME = re.compile(r"^(?P<stem>.+)_mask\.(jpe?g|png)$", re.IGNORECASE)


def is_reasonedit_folder(root: Path) -> bool:
    return any(p.is_dir() and CATEGORY_DIR.match(p.name) and _texts(p) for p in root.iterdir())


def category_name(folder: str) -> str:
    return folder.split("-", 1)[1].lower()


def _texts(category: Path) -> list[Path]:
    return sorted(p for p in category.iterdir() if p.is_file() and p.suffix.lower() == ".txt")


def pair_files(names: list[str]) -> tuple[list[tuple[str, str | None]], list[str]]:
    """Sources (`*.png`, any case, not `*_mask.*`) in sorted name order (the official scripts' order:
    plain string sort, not natural), each with the mask that shares its stem (`<stem>_mask.jpg|jpeg|png`)
    or None; and the masks that have no source."""
    masks = {}
    sources = []
    for name in names:
        match = MASK_NAME.match(name)
        if match:
            masks.setdefault(match["stem"], name)
        elif Path(name).suffix.lower() == ".png":
            sources.append(name)
    sources.sort()
    paired = [(name, masks.pop(Path(name).stem, None)) for name in sources]
    return paired, sorted(masks.values(), key=lambda n: natural_key(n))


def read_reasonedit_folder(root: Path) -> tuple[list[dict[str, Any]], list[Problem]]:
    """Line i of a category's text file pairs with its i-th source in sorted name order (1, 10, 11, 2, ...:
    the official scripts' `sorted(glob(...))[i]`); each source pairs with the mask of the same stem (the
    scripts pair masks by index in their own sorted list, which is the same only when names sort alike:
    where not, a warning says the published scores used other masks). A source without its mask, a mask
    without its source, or a line count that differs from the source count is an error (with a
    count mismatch no line can be trusted to describe its image, so the category is skipped)."""
    rows: list[dict[str, Any]] = []
    problems: list[Problem] = []
    for category in sorted(p for p in root.iterdir() if p.is_dir() and CATEGORY_DIR.match(p.name)):
        texts = _texts(category)
        if len(texts) != 1:
            problems.append(Problem("error", None, category.name, f"expected one instruction .txt file, found {len(texts)}"))
            continue
        text_rel = f"{category.name}/{texts[0].name}"
        try:
            raw = read_regular_file(texts[0])
        except (ImageRefused, OSError) as exc:
            problems.append(Problem("error", None, text_rel, f"instruction file cannot be read ({exc})"))
            continue
        # utf-8-sig drops a byte-order mark; undecodable bytes become U+FFFD and are reported
        text = raw.decode("utf-8-sig", errors="replace")
        if "\ufffd" in text and b"\xef\xbf\xbd" not in raw:
            problems.append(Problem("warning", None, text_rel, "instruction file is not valid UTF-8; bad bytes shown as U+FFFD"))
        lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
        paired, orphans = pair_files(sorted(p.name for p in category.iterdir() if p.is_file()))
        for mask_name in orphans:
            problems.append(Problem("error", None, f"{category.name}/{mask_name}", "mask has no source image with its stem"))
        by_stem = [mask for _, mask in paired]
        if not orphans and None not in by_stem and by_stem != sorted(by_stem):
            problems.append(Problem(
                "warning", None, category.name,
                "masks sort in another order than their images (e.g. 10_mask.jpg before 1_mask.jpg): each image "
                "is scored with the mask of its own stem, but SmartEdit's metrics_evaluation.py pairs the i-th "
                "sorted image with the i-th sorted mask, so published scores on this folder used other masks"))
        if len(lines) != len(paired):
            problems.append(Problem(
                "error", None, text_rel,
                f"{len(lines)} instruction lines but {len(paired)} source images: cannot pair them; category skipped"))
            continue
        for line, (image_name, mask_name) in zip(lines, paired):
            sample_id = f"{category.name}/{Path(image_name).stem}"
            if mask_name is None:
                problems.append(Problem("error", sample_id, f"{category.name}/{image_name}",
                                        f"no mask {Path(image_name).stem}_mask.jpg for this image"))
                continue
            instruction, clip = _split_line(line)
            if clip is None:
                problems.append(Problem("warning", sample_id, texts[0].name, "instruction line has no 'CLIP:' part"))
            image_rel, mask_rel = f"{category.name}/{image_name}", f"{category.name}/{mask_name}"
            image = read_image(root, image_rel, sample_id, "image", problems)
            mask = read_image(root, mask_rel, sample_id, "mask", problems)
            if image is None or mask is None:
                continue
            if not check_pair(image, mask, sample_id, image_rel, mask_rel, problems):
                continue
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
