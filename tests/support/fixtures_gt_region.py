"""A UniREditBench folder in its official layout whose ground-truth images differ from the sources in
known rectangles, plus predictions in the official output layout (`OUTPUT/<name>/<idx>.png`), for
ciebench's region metrics on benchmark cases. Every expected value is known from the construction."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

W, H = 48, 40
RECT = (slice(10, 20), slice(12, 30))  # rows, columns the ground truth changes
MARGIN = 1  # GroundTruthRule's dilation at the defaults: max(1, round(0.01 * 40))


@dataclass
class GTCase:
    name: str
    idx: str
    source: np.ndarray
    truth: np.ndarray | None  # what was written as the ground truth (any size)
    prediction: np.ndarray | None  # None: no output file


def _source(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(40, 200, size=(H, W, 3), dtype=np.uint8)  # room for +-20 without clipping


def make_gt_unired(root: Path, predictions: Path) -> dict[tuple[str, str], GTCase]:
    """Five cases: a ground truth of the source's size (rectangle changed, one speckle pixel, codec-like
    noise under the threshold) with a prediction perturbed outside the region; a ground truth at twice
    the size (same aspect) with a prediction identical outside the rectangle; a ground truth of another
    aspect ratio; a case without an output; a ground truth that differs everywhere."""
    rng = np.random.default_rng(7)
    cases: dict[tuple[str, str], GTCase] = {}

    src = _source(1)
    gt = src.astype(np.int16) + rng.integers(-10, 11, size=src.shape)  # noise: at most 10 levels
    gt[RECT] = (250, 10, 10)
    gt[35, 5] += 100  # one isolated pixel: the opening removes it
    gt = gt.clip(0, 255).astype(np.uint8)
    pred = src.astype(np.int16)
    pred[RECT] = (240, 20, 20)
    bg = background_of_rect()
    noise = rng.integers(-20, 21, size=src.shape) * (rng.random((H, W, 1)) < 0.3)
    pred = np.where(bg[..., None], pred + noise, pred).clip(0, 255).astype(np.uint8)
    cases[("real_world_a", "1")] = GTCase("real_world_a", "1", src, gt, pred)

    src = _source(2)
    gt = src.copy()
    gt[RECT] = (250, 10, 10)
    big = np.asarray(Image.fromarray(gt).resize((2 * W, 2 * H), Image.Resampling.NEAREST))
    pred = src.copy()
    pred[RECT] = (200, 200, 0)
    cases[("real_world_a", "2")] = GTCase("real_world_a", "2", src, big, pred)

    src = _source(3)
    cases[("game_world_b", "1")] = GTCase("game_world_b", "1", src, np.zeros((20, W, 3), np.uint8), src.copy())
    src = _source(4)
    cases[("game_world_b", "2")] = GTCase("game_world_b", "2", src, src.copy(), None)
    src = _source(5)
    cases[("real_world_c", "1")] = GTCase("real_world_c", "1", src, 255 - src, src.copy())

    root.mkdir(parents=True, exist_ok=True)
    items = []
    for k, case in enumerate(cases.values()):
        Image.fromarray(case.source).save(root / f"src_{k}.png")
        Image.fromarray(case.truth).save(root / f"gt_{k}.png")
        items.append({"original_image_path": f"src_{k}.png", "reference_image_path": f"gt_{k}.png",
                      "instruction": f"do thing {k}", "name": case.name, "idx": int(case.idx),
                      "reference_effect": f"effect {k}"})
        if case.prediction is not None:
            (predictions / case.name).mkdir(parents=True, exist_ok=True)
            Image.fromarray(case.prediction).save(predictions / case.name / f"{case.idx}.png")
    (root / "data.json").write_text(json.dumps(items))
    return cases


def background_of_rect() -> np.ndarray:
    """The region that must stay unchanged for cases whose ground truth changes RECT: everything but
    RECT grown by MARGIN pixels (a square dilation)."""
    bg = np.ones((H, W), bool)
    bg[RECT[0].start - MARGIN:RECT[0].stop + MARGIN, RECT[1].start - MARGIN:RECT[1].stop + MARGIN] = False
    return bg
