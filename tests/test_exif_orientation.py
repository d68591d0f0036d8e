"""Phone photos carry an EXIF orientation: `datasets` decodes a dataset's images as displayed (the
orientation applied), so every image ciebench reads follows the same rule (sources, masks and
predictions on one pixel grid), and a mask drawn on the stored, unrotated pixels of a rotated image is
an error for that sample, never silently squashed across the rotation."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
from PIL import Image

from ciebench.datasets import read_dataset
from ciebench.images import open_image_file
from ciebench.schema import EditSample
from ciebench.scoring import ScoreOptions, find_predictions, score

ROTATE_90_CW = 6  # EXIF Orientation: displayed rotated 90 degrees clockwise


def _photo(path: Path) -> np.ndarray:
    """A 240 x 160 (stored) JPEG that is displayed 160 x 240; returns its stored pixels."""
    yy, xx = np.mgrid[0:160, 0:240]
    pixels = np.stack([xx, yy * 1.5, (xx + yy) / 2], -1).astype(np.uint8)
    exif = Image.Exif()
    exif[0x0112] = ROTATE_90_CW
    Image.fromarray(pixels).save(path, quality=95, exif=exif.tobytes())
    return np.asarray(Image.open(path).convert("RGB"))


def _dataset(folder: Path, mask: np.ndarray) -> Path:
    _photo(folder / "src.jpg")
    Image.fromarray(mask).save(folder / "mask.png")
    manifest = folder / "manifest.jsonl"
    manifest.write_text(json.dumps({"id": "s1", "image": "src.jpg", "mask": "mask.png", "instruction": "remove it",
                                    "clip_text": ["wall"]}) + "\n")
    return manifest


def test_every_image_is_read_as_displayed(tmp_path):
    stored = _photo(tmp_path / "photo.jpg")
    image = open_image_file(tmp_path / "photo.jpg")
    assert image.size == (160, 240)  # width x height as displayed
    assert np.array_equal(np.asarray(image.convert("RGB")), np.rot90(stored, k=-1))  # 90 degrees clockwise


def test_a_mask_of_the_displayed_image_scores_an_identical_prediction_perfectly(tmp_path):
    mask = np.zeros((240, 160), np.uint8)  # drawn on the displayed (upright) image
    mask[100:160, 40:80] = 255
    loaded = read_dataset(str(_dataset(tmp_path, mask)))
    assert [p.severity for p in loaded.problems] == ["warning"] and "EXIF orientation 6" in loaded.problems[0].message
    sample = EditSample.from_row(loaded.dataset[0])
    assert sample.image.size == sample.mask.size == (160, 240)
    predictions = tmp_path / "pred"
    predictions.mkdir()
    (predictions / "s1.jpg").write_bytes((tmp_path / "src.jpg").read_bytes())  # the same file, EXIF and all
    result = score(loaded, find_predictions(predictions, ["s1"]), tmp_path / "out",
                   ScoreOptions(protocol="exact", metrics=("psnr", "mse", "ssim")), progress=False)
    row = result.rows[0]
    # before: the prediction was read as stored and the source as displayed: PSNR 9.1, SSIM 0.67
    assert row["status"] == "ok" and row["psnr"] == math.inf and row["mse"] == 0 and row["ssim"] == 1


def test_a_mask_of_the_stored_pixels_is_an_error_naming_the_files(tmp_path):
    mask = np.zeros((160, 240), np.uint8)  # the stored, unrotated grid
    mask[40:80, 100:160] = 255
    loaded = read_dataset(str(_dataset(tmp_path, mask)))
    errors = [p for p in loaded.problems if p.severity == "error"]
    assert len(errors) == 1 and errors[0].sample_id == "s1" and "mask.png" in str(errors[0])
    assert "src.jpg as stored" in errors[0].message and "EXIF orientation 6" in errors[0].message
    assert len(loaded.dataset) == 0  # the sample is left out, with the error, not scored on a squashed mask


def test_a_malformed_exif_block_leaves_the_image_as_stored(tmp_path):
    import io
    import warnings

    buf = io.BytesIO()
    Image.new("RGB", (8, 6), "red").save(buf, format="JPEG", exif=b"Exif\x00\x00MM\x00*\x00\x00\x00\x08\x00\x05\x01\x12\x00")
    (tmp_path / "broken.jpg").write_bytes(buf.getvalue())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Pillow warns about the corrupt EXIF
        assert open_image_file(tmp_path / "broken.jpg").size == (8, 6)
