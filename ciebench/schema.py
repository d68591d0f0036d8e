"""The one record every part of ciebench exchanges: `EditSample`, and the HF features that hold it."""
from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from typing import Any

import datasets
from PIL import Image

from .images import open_image, open_image_file, to_mask8, to_rgb8

EDIT_TYPES = ("remove", "replace", "add", "recolor", "other")

FEATURES = datasets.Features(
    {
        "id": datasets.Value("string"),
        "image": datasets.Image(),
        "mask": datasets.Image(),
        "instruction": datasets.Value("string"),
        "clip_text": datasets.Sequence(datasets.Value("string")),
        "edit_type": datasets.Value("string"),
        "notes": datasets.Value("string"),
        # Source-specific extras (original paths, categories, flags) as a JSON object, so every
        # loader shares one schema and parquet / save_to_disk round-trip it unchanged.
        "meta": datasets.Value("string"),
    }
)


@dataclass
class EditSample:
    """One benchmark item. `mask` is mode "L", 255 = region to edit; it may be None or differ in size
    from the image (CIEBench sample 5): use `aligned_mask()` where a same-size mask is needed."""

    id: str
    image: Image.Image
    mask: Image.Image | None
    instruction: str
    clip_text: list[str] = field(default_factory=list)
    edit_type: str = "other"
    notes: str = ""
    meta: dict[str, Any] = field(default_factory=dict)

    def aligned_mask(self) -> Image.Image | None:
        """The mask at the image's size (nearest-neighbour resize, as the protocols do), mode L."""
        if self.mask is None:
            return None
        mask = to_mask8(self.mask)
        if mask.size != self.image.size:
            mask = mask.resize(self.image.size, Image.NEAREST)
        return mask

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> "EditSample":
        # The pixel rule of `ciebench.images`: 16-bit and float sources scaled (never clipped), one
        # mask rule (0/1 label maps rescaled), so editors, metrics and the gallery all see the same.
        image = _as_pil(row["image"])
        mask = _as_pil(row.get("mask"))
        if image is not None:
            image = to_rgb8(image)
        if mask is not None:
            mask = to_mask8(mask)
        meta = row.get("meta") or "{}"
        return cls(
            id=str(row["id"]),
            image=image,
            mask=mask,
            instruction=row.get("instruction") or "",
            clip_text=list(row.get("clip_text") or []),
            edit_type=row.get("edit_type") or "other",
            notes=row.get("notes") or "",
            meta=json.loads(meta) if isinstance(meta, str) else dict(meta),
        )


def make_row(
    *,
    id: str,
    image: bytes | Image.Image,
    mask: bytes | Image.Image | None,
    instruction: str,
    clip_text: list[str],
    edit_type: str,
    notes: str = "",
    meta: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A row for `FEATURES`. Pass file bytes where you have them: they are stored unchanged, so
    images round-trip pixel- and byte-exactly."""
    return {
        "id": str(id),
        "image": _as_feature(image),
        "mask": _as_feature(mask),
        "instruction": instruction,
        "clip_text": list(clip_text),
        "edit_type": edit_type,
        "notes": notes or "",
        "meta": json.dumps(meta or {}, sort_keys=True),
    }


def _as_feature(value: bytes | Image.Image | None) -> dict[str, Any] | None:
    if value is None:
        return None
    if isinstance(value, Image.Image):
        buf = io.BytesIO()
        value.save(buf, format="PNG")
        value = buf.getvalue()
    return {"bytes": value, "path": None}


def _as_pil(value: Any) -> Image.Image | None:
    if value is None or isinstance(value, Image.Image):
        return value
    if isinstance(value, dict):
        # Loaders have already confined any path to the dataset's folder; reading still goes through
        # the one guarded opener (regular files only, allowed formats, pixel limit).
        if value.get("bytes") is not None:
            return open_image(value["bytes"])
        if value.get("path"):
            return open_image_file(value["path"])
        return None
    raise TypeError(f"cannot read an image from {type(value).__name__}")
