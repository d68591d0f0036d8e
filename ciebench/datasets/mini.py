"""`mini`: the embedded demo set. Images come from scikit-image's bundled photographs (part of the
installed package, so no network and no copied files); annotations and mask polygons live in
`ciebench/data/mini.json`."""
from __future__ import annotations

import json
from importlib import resources
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from ciebench.schema import make_row

from .problems import Problem


def mini_annotations() -> dict[str, Any]:
    return json.loads(resources.files("ciebench.data").joinpath("mini.json").read_text(encoding="utf-8"))


def read_mini() -> tuple[list[dict[str, Any]], list[Problem]]:
    from skimage import data as skdata

    spec = mini_annotations()
    photos: dict[str, Image.Image] = {}
    rows = []
    for entry in spec["samples"]:
        name = entry["skimage"]
        if name not in photos:
            photos[name] = Image.fromarray(np.asarray(getattr(skdata, name)())).convert("RGB")
        image = photos[name]
        mask = Image.new("L", image.size, 0)
        draw = ImageDraw.Draw(mask)
        for polygon in entry["polygons"]:
            draw.polygon([tuple(p) for p in polygon], fill=255)
        rows.append(make_row(
            id=entry["id"], image=image, mask=mask, instruction=entry["instruction"],
            clip_text=entry["clip_text"], edit_type=entry["edit_type"],
            meta={"source": f"skimage.data.{name}", "mini_version": spec["version"], "edit_type_source": "annotated"},
        ))
    return rows, []
