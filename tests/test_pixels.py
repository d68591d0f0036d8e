"""Issue #11 §6: deep sources are scaled (never clipped), one mask rule everywhere, 0/1 label maps
rescaled with a warning, and a mask with no background leaves preservation metrics undefined."""
from __future__ import annotations

import io
import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from ciebench.cli import app
from ciebench.datasets import iter_samples, read_dataset
from ciebench.images import ImageRefused, to_mask8, to_rgb8
from ciebench.metrics.align import align, to_mask
from ciebench.metrics.protocols import get_protocol
from ciebench.metrics.region import NO_BACKGROUND, RegionScorer, ScoreItem

from tests.support.fixtures_bad_data import box_mask, picture, png16_rgb, write_manifest

runner = CliRunner()


def _dataset(root: Path, image_bytes: bytes, mask: Image.Image | None = None, suffix: str = "png"):
    root.mkdir(parents=True, exist_ok=True)
    (root / f"src.{suffix}").write_bytes(image_bytes)
    entry = {"id": "s", "image": f"src.{suffix}", "mask": None, "instruction": "Please remove it.", "clip_text": "wall"}
    if mask is not None:
        mask.save(root / "m.png")
        entry["mask"] = "m.png"
    write_manifest(root, [entry])
    return read_dataset(str(root))


def _encode(image: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt)
    return buf.getvalue()


# --- sources ------------------------------------------------------------------------------------------

def test_16_bit_grey_png_source_is_scaled_not_white(tmp_path: Path):
    levels = (np.arange(16 * 24, dtype=np.uint32).reshape(16, 24) * 170).astype(np.uint16)  # 0 .. 65110
    data = _encode(Image.fromarray(levels), "PNG")
    assert Image.open(io.BytesIO(data)).mode == "I;16"
    loaded = _dataset(tmp_path / "ds", data)
    sample = next(iter_samples(loaded.dataset))
    got = np.asarray(sample.image)
    expected = np.round(levels / 257.0).astype(np.uint8)
    assert sample.image.mode == "RGB"
    for c in range(3):
        np.testing.assert_array_equal(got[..., c], expected)
    assert (got < 255).mean() > 0.9  # PIL's convert("RGB") would have clipped almost all of it to 255
    assert any("scaled (not clipped)" in p.message for p in loaded.problems if p.severity == "warning")


def test_16_bit_rgb_png_source_keeps_its_levels(tmp_path: Path):
    rng = np.random.default_rng(0)
    levels = rng.integers(0, 65536, (16, 24, 3), dtype=np.uint64).astype(np.uint16)
    sample = next(iter_samples(_dataset(tmp_path / "ds", png16_rgb(levels)).dataset))
    got = np.asarray(sample.image).astype(int)
    assert np.abs(got - np.round(levels / 257.0)).max() <= 1  # Pillow keeps the high byte: within one level


@pytest.mark.parametrize("scale", [1.0, 255.0])
def test_float_tiff_source_in_unit_or_byte_range_is_scaled(tmp_path: Path, scale: float):
    unit = np.linspace(0, 1, 16 * 24, dtype=np.float32).reshape(16, 24)
    data = _encode(Image.fromarray(unit * np.float32(scale)), "TIFF")
    assert Image.open(io.BytesIO(data)).mode == "F"
    sample = next(iter_samples(_dataset(tmp_path / "ds", data, suffix="tif").dataset))
    np.testing.assert_array_equal(np.asarray(sample.image)[..., 0], np.round(unit.astype(np.float64) * 255).astype(np.uint8))


def test_float_source_out_of_range_is_a_validation_error(tmp_path: Path):
    data = _encode(Image.fromarray(np.full((16, 24), -3.0, np.float32)), "TIFF")
    loaded = _dataset(tmp_path / "ds", data, suffix="tif")
    assert len(loaded.dataset) == 0
    (problem,) = [p for p in loaded.problems if p.severity == "error"]
    assert problem.sample_id == "s" and problem.file == "src.tif" and "expected [0, 1] or [0, 255]" in problem.message
    with pytest.raises(ImageRefused):
        to_rgb8(Image.fromarray(np.full((2, 2), np.nan, np.float32)))


# --- the mask rule -------------------------------------------------------------------------------------

def _label_levels() -> np.ndarray:
    levels = np.zeros((16, 24), np.uint8)
    levels[4:10, 4:12] = 1
    return levels


@pytest.mark.parametrize("make", [
    lambda lv: Image.fromarray(lv, "L"),  # 0/1 label map, 8-bit
    lambda lv: Image.fromarray(lv.astype(np.uint16)),  # 0/1 label map, 16-bit
    lambda lv: Image.fromarray(lv * 255, "L").convert("1"),  # bilevel
    lambda lv: Image.fromarray(lv.astype(np.uint16) * 65535),  # 16-bit 0/65535
    lambda lv: Image.merge("RGBA", [Image.fromarray(lv * 255, "L")] * 3 + [Image.new("L", (24, 16), 0)]),  # alpha ignored
])
def test_one_mask_rule_everywhere(make):
    levels = _label_levels()
    mask = make(levels)
    expected = levels * 255
    np.testing.assert_array_equal(np.asarray(to_mask8(mask)), expected)
    np.testing.assert_array_equal(np.asarray(to_mask(mask)), expected)  # the metrics use the same rule
    aligned = align(picture(0), picture(1), mask, get_protocol("exact"))
    np.testing.assert_array_equal(aligned.mask, expected)


def test_label_map_mask_is_rescaled_with_a_warning(tmp_path: Path):
    loaded = _dataset(tmp_path / "ds", _encode(picture(0), "PNG"), Image.fromarray(_label_levels(), "L"))
    (warning,) = [p for p in loaded.problems if "label map" in p.message]
    assert warning.severity == "warning" and warning.sample_id == "s" and warning.file == "m.png"
    sample = next(iter_samples(loaded.dataset))
    np.testing.assert_array_equal(np.asarray(sample.mask), _label_levels() * 255)
    np.testing.assert_array_equal(np.asarray(sample.aligned_mask()), _label_levels() * 255)


# --- no background -------------------------------------------------------------------------------------

@pytest.mark.parametrize("protocol", ["cielr", "exact", "smartedit"])
def test_full_mask_leaves_preservation_undefined_with_a_reason(protocol: str):
    scorer = RegionScorer(protocol, metrics=["psnr", "mse", "ssim", "locality"], batch_size=2, workers=1)
    source, pred = picture(0), picture(1)
    full = Image.new("L", source.size, 255)
    rows = dict(scorer.score([ScoreItem("full", source, full, pred), ScoreItem("box", source, box_mask(), pred)]))
    for column in ("psnr", "mse", "ssim"):
        assert math.isnan(rows["full"][column]), (column, rows["full"])
        assert math.isfinite(rows["box"][column]) and rows["box"][column] != 0
    assert rows["full"]["note"] == NO_BACKGROUND and "note" not in rows["box"]
    assert "error" not in rows["full"]
    assert rows["full"]["locality_precision"] == 1  # locality is still defined: every change is inside


def test_full_mask_sample_does_not_make_the_dataset_mean_inf(tmp_path: Path):
    root = tmp_path / "ds"
    root.mkdir()
    entries = []
    for i, mask in enumerate([Image.new("L", (24, 16), 255), box_mask()]):
        picture(i).save(root / f"i{i}.png")
        mask.save(root / f"m{i}.png")
        entries.append({"id": f"s{i}", "image": f"i{i}.png", "mask": f"m{i}.png", "instruction": "Please remove it.",
                        "clip_text": "wall"})
    write_manifest(root, entries)
    preds = tmp_path / "preds"
    preds.mkdir()
    for i in range(2):
        picture(10 + i).save(preds / f"s{i}.png")
    out = tmp_path / "scored"
    result = runner.invoke(app, ["score", "--dataset", str(root), "--predictions", str(preds), "--out", str(out),
                                 "--metrics", "psnr,mse", "--protocol", "cielr"])
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    for metric in ("psnr", "mse"):
        entry = summary["metrics"][metric]
        assert entry["n"] == 1 and math.isfinite(float(entry["mean"])) and float(entry["mean"]) > 0, entry
    rows = {json.loads(line)["sample_id"]: json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()}
    assert rows["s0"]["psnr"] in (None, "nan") or math.isnan(float(rows["s0"]["psnr"]))
