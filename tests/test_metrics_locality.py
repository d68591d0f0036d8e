"""Edit locality: precision / recall / F1 of the changed pixels against the mask, by definition."""
from __future__ import annotations

import math

import pytest
import torch

from ciebench.metrics.functional import edit_locality
from ciebench.metrics.modules import EditLocality


def _scene(h: int = 20, w: int = 30):
    source = torch.full((1, 3, h, w), 100, dtype=torch.uint8)
    mask = torch.zeros(1, 1, h, w, dtype=torch.uint8)
    mask[..., 5:15, 10:20] = 255  # 100 region pixels
    return source, mask


def test_counts_follow_the_definition():
    source, mask = _scene()
    pred = source.clone()
    pred[..., 5:15, 10:15] = 200  # 50 changed inside the region
    pred[..., 0:2, 0:10] = 0  # 20 changed outside
    out = edit_locality(pred, source, mask)
    assert out["precision"].item() == pytest.approx(50 / 70)
    assert out["recall"].item() == pytest.approx(50 / 100)
    assert out["f1"].item() == pytest.approx(2 * 50 / (2 * 50 + 20 + 50))


def test_threshold_is_strictly_more_than_eight_levels_on_any_channel():
    source, mask = _scene()
    pred = source.clone()
    pred[:, 0, 5:15, 10:20] += 8  # not a change
    assert math.isnan(edit_locality(pred, source, mask)["precision"].item())
    pred[:, 2, 5:6, 10:20] += 9  # one channel, 9 levels, 10 pixels: a change
    out = edit_locality(pred, source, mask)
    assert out["precision"].item() == 1.0 and out["recall"].item() == pytest.approx(0.1)
    # float input in [0, 1] is quantised to the same levels
    out_float = edit_locality(pred.float() / 255, source.float() / 255, mask.float() / 255)
    assert out_float["recall"].item() == pytest.approx(0.1)


def test_soft_mask_counts_from_half_coverage():
    source, mask = _scene()
    mask[..., 4, 10:20] = 128  # anti-aliased edge row at half coverage: inside
    mask[..., 15, 10:20] = 127  # just under half: outside
    pred = source.clone()
    pred[..., 4, 10:20] = 0
    pred[..., 15, 10:20] = 0
    out = edit_locality(pred, source, mask)
    assert out["precision"].item() == pytest.approx(0.5)
    assert out["recall"].item() == pytest.approx(10 / 110)


def test_edge_cases_are_defined():
    source, mask = _scene()
    nothing = edit_locality(source, source, mask)  # identity editor
    assert math.isnan(nothing["precision"].item()) and nothing["recall"].item() == 0 and nothing["f1"].item() == 0
    empty = torch.zeros_like(mask)
    changed = source.clone()
    changed[..., 0, 0] = 0
    out = edit_locality(changed, source, empty)  # no region: every change is outside it
    assert out["precision"].item() == 0 and math.isnan(out["recall"].item()) and out["f1"].item() == 0
    both = edit_locality(source, source, empty)
    assert all(math.isnan(v.item()) for v in both.values())
    assert torch.equal(edit_locality(changed, source, None)["precision"], out["precision"])
    ones = torch.full_like(mask, 255)
    allin = edit_locality(changed, source, ones)
    assert allin["precision"].item() == 1.0 and allin["recall"].item() == pytest.approx(1 / 600)


def test_metric_class_means_each_defined_value():
    source, mask = _scene()
    a = source.clone()
    a[..., 5:15, 10:20] = 0  # perfect edit
    batch_pred = torch.cat([a, source])
    metric = EditLocality("cielr")
    metric.update(batch_pred, torch.cat([source, source]), torch.cat([mask, mask]))
    out = metric.compute()
    assert out["precision"].item() == 1.0  # the identity sample has no precision
    assert out["recall"].item() == pytest.approx(0.5) and out["f1"].item() == pytest.approx(0.5)
