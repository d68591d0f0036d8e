"""RegionScorer end to end: the real CIEBench (a subset, with synthetic edits) against the published
per-image loop for `cielr` and `smartedit`, numpy / scikit-image / lpips for `exact`, closed forms,
and every documented edge case."""
from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch
from PIL import Image

from ciebench.metrics.protocols import get_protocol
from ciebench.metrics.region import METRIC_INFO, RegionScorer, ScoreItem, region_metric_names
from ciebench.schema import EditSample

from tests.support.fixtures_models import CLIP_VIT_L14, CLIP_VIT_L14_336, publish_clip, publish_squeezenet1_1
from tests.support.metrics_reference import PublishedLoop, exact_lpips_reference, exact_reference, published_inputs
from tests.support.synthetic_edits import KINDS, synthetic_edit

# 5: mask smaller than its image; 52: a tiny mask; 14: half the image; 55: portrait.
SUBSET = ("5", "52", "14", "55")
PIXEL_METRICS = ("psnr", "mse", "ssim", "lpips")


@pytest.fixture(scope="module", autouse=True)
def published_models():
    publish_clip(CLIP_VIT_L14_336)
    publish_clip(CLIP_VIT_L14)
    publish_squeezenet1_1()


@pytest.fixture(scope="module")
def samples(ciebench_root) -> list[EditSample]:
    from ciebench.datasets import read_dataset

    dataset = read_dataset(str(ciebench_root)).dataset
    by_id = {row["id"]: i for i, row in enumerate(dataset.select_columns(["id"]))}
    return [EditSample.from_row(dataset[by_id[s]]) for s in SUBSET]


@pytest.fixture(scope="module")
def items(samples) -> list[ScoreItem]:
    """Two synthetic edits per sample, rotating so that all seven kinds appear."""
    out = []
    for n, sample in enumerate(samples):
        for k in range(2):
            kind = KINDS[(2 * n + k) % len(KINDS)]
            out.append(ScoreItem(f"{sample.id}/{kind}", sample.image, sample.mask,
                                 synthetic_edit(sample.image, sample.mask, kind, seed=n), list(sample.clip_text)))
    return out


def _scored(scorer: RegionScorer, items: list[ScoreItem]) -> dict[str, dict[str, float]]:
    results = list(scorer.score(items))
    assert [sid for sid, _ in results] == [it.sample_id for it in items]  # streaming keeps input order
    return dict(results)


def _close(actual: float, expected: float, tol: float) -> bool:
    if math.isnan(expected) or math.isinf(expected):
        return (math.isnan(actual) and math.isnan(expected)) or actual == expected
    return abs(actual - expected) <= tol


def _same(a: dict, b: dict) -> bool:
    """Rows equal value for value (NaN matching NaN), up to float rounding: a batched forward may
    round an image differently in another batch (CLIP to 1e-4, the rest to 1e-7)."""
    return a.keys() == b.keys() and all(
        a[k] == b[k] if isinstance(a[k], str) else _close(a[k], b[k], 1e-4 if k == "clip" else 1e-7) for k in a)


def _locality_reference(source, mask, prediction, size):
    """Locality recomputed from the definition on PIL-resized arrays with numpy."""
    src = np.asarray(source.convert("RGB").resize(size, Image.Resampling.BICUBIC), dtype=np.int16)
    pred = np.asarray(prediction.convert("RGB").resize(size, Image.Resampling.BICUBIC), dtype=np.int16)
    region = np.asarray(mask.convert("L").resize(size, Image.Resampling.NEAREST)) >= 128
    changed = np.abs(pred - src).max(axis=2) > 8
    tp, fp, fn = (changed & region).sum(), (changed & ~region).sum(), (~changed & region).sum()
    nan = float("nan")
    return {"locality_precision": tp / (tp + fp) if tp + fp else nan,
            "locality_recall": tp / (tp + fn) if tp + fn else nan,
            "locality_f1": 2 * tp / (2 * tp + fp + fn) if 2 * tp + fp + fn else nan}


@pytest.mark.parametrize("name", ["cielr", "smartedit"])
def test_parity_protocols_equal_the_published_per_image_loop(items, name):
    protocol = get_protocol(name)
    reference = PublishedLoop(size=protocol.size, clip_model=protocol.clip_model, ssim_crop=True)
    ours = _scored(RegionScorer(protocol, batch_size=4, workers=2), items)
    mismatches = []
    for item in items:
        expected = reference.score(item.source, item.mask, item.prediction, item.clip_text)
        expected.update(_locality_reference(item.source, item.mask, item.prediction, (protocol.size, protocol.size)))
        got = ours[item.sample_id]
        assert "error" not in got, got
        for metric, value in expected.items():
            tol = 1e-4 if metric == "clip" else 1e-5
            if not _close(got[metric], value, tol):
                mismatches.append((item.sample_id, metric, got[metric], value))
    assert not mismatches, mismatches
    identity = [v for k, v in ours.items() if k.endswith("/identity")]
    assert identity and all(math.isinf(v["psnr"]) and v["ssim"] == 1 and v["lpips"] == 0 for v in identity)


def test_full_border_variant_equals_torchmetrics_1_5_ssim(items):
    from torchmetrics.image import StructuralSimilarityIndexMeasure

    module = StructuralSimilarityIndexMeasure(data_range=1.0)  # torchmetrics >= 1.5: the whole map
    ours = _scored(RegionScorer("cielr-full", metrics=["ssim"], batch_size=4), items[:4])
    for item in items[:4]:
        t_pred, t_gt, _, _ = published_inputs(item.source, item.mask, item.prediction, 512)
        assert ours[item.sample_id]["ssim"] == pytest.approx(float(module(t_pred, t_gt)), abs=1e-5)


@pytest.mark.filterwarnings("ignore:The parameter 'pretrained' is deprecated", "ignore:Arguments other than a weight enum")
def test_exact_equals_numpy_skimage_and_the_lpips_package(items):
    import lpips

    spatial = lpips.LPIPS(net="squeeze", version="0.1", spatial=True, verbose=False)
    reference = PublishedLoop(size=512, clip_model=CLIP_VIT_L14_336)  # for its CLIP pieces only
    subset = [it for it in items if it.sample_id.split("/")[1] in ("noise_in_mask", "shifted_patch", "other_size")]
    ours = _scored(RegionScorer("exact", batch_size=3), subset)
    for item in subset:
        got = ours[item.sample_id]
        expected = exact_reference(item.source, item.mask, item.prediction)
        for metric in ("psnr", "ssim"):
            assert _close(got[metric], expected[metric], 1e-5), (item.sample_id, metric, got[metric], expected[metric])
        assert got["mse"] == pytest.approx(expected["mse"], rel=1e-5, abs=1e-9)
        assert got["lpips"] == pytest.approx(exact_lpips_reference(item.source, item.mask, item.prediction, spatial), abs=1e-5)
        pred = item.prediction.convert("RGB")
        if pred.size != item.source.size:
            pred = pred.resize(item.source.size, Image.Resampling.BICUBIC)
        mask = np.asarray(item.mask.resize(item.source.size, Image.Resampling.NEAREST))
        assert got["clip"] == pytest.approx(reference.clip_score(pred, mask, item.clip_text, inclusive=True), abs=1e-4)


def test_cielr_minus_exact_psnr_is_the_area_ratio(samples):
    scorer_cielr = RegionScorer("cielr", metrics=["psnr"])
    scorer_exact = RegionScorer("exact", metrics=["psnr"])
    for n, sample in enumerate(samples[:4]):
        # At 512x512 with a binary mask the cielr squash is the identity, so only the averaging differs.
        source = sample.image.resize((512, 512), Image.Resampling.BICUBIC)
        mask = sample.mask.resize((512, 512), Image.Resampling.NEAREST).point(lambda v: 255 if v >= 128 else 0)
        item = ScoreItem(sample.id, source, mask, synthetic_edit(source, mask, "noise_everywhere", seed=n), [])
        n_bg = int((np.asarray(mask) == 0).sum())
        diff = scorer_cielr.score_one(item)["psnr"] - scorer_exact.score_one(item)["psnr"]
        assert diff == pytest.approx(10 * math.log10(512 * 512 / n_bg), abs=1e-5)


# ---- edge cases (synthetic images: they run without the real data) --------------------------

def _toy(seed: int = 0, size=(64, 48)):
    rng = np.random.default_rng(seed)
    source = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8), "RGB")
    mask = np.zeros((size[1], size[0]), dtype=np.uint8)
    mask[10:30, 20:50] = 255
    return source, Image.fromarray(mask, "L")


@pytest.fixture(scope="module")
def toy_scorers():
    return {name: RegionScorer(name, batch_size=3, workers=2) for name in ("cielr", "exact")}


def test_empty_and_missing_masks(toy_scorers):
    source, _ = _toy()
    pred = synthetic_edit(source, None, "noise_everywhere")
    for name, scorer in toy_scorers.items():
        empty = scorer.score_one(ScoreItem("e", source, Image.new("L", source.size, 0), pred, ["lamp"]))
        missing = scorer.score_one(ScoreItem("m", source, None, pred, ["lamp"]))
        for row in (empty, missing):
            assert "error" not in row
            assert math.isfinite(row["psnr"]) and math.isfinite(row["ssim"]) and math.isfinite(row["lpips"])
            assert math.isnan(row["clip"]) and math.isnan(row["locality_recall"]) and row["locality_precision"] == 0
        assert _same(empty, missing)


def test_all_ones_mask(toy_scorers):
    source, _ = _toy(1)
    pred = synthetic_edit(source, None, "noise_everywhere")
    ones = Image.new("L", source.size, 255)
    parity = toy_scorers["cielr"].score_one(ScoreItem("o", source, ones, pred, ["lamp"]))
    # Parity would multiply both images by 0 and call identical black images perfect (the published
    # quirk: PSNR inf, MSE 0 for any editor); with no background they are undefined (issue #11 §6).
    assert all(math.isnan(parity[m]) for m in PIXEL_METRICS) and "no background" in parity["note"]
    assert math.isfinite(parity["clip"]) and parity["locality_precision"] == 1
    exact = toy_scorers["exact"].score_one(ScoreItem("o", source, ones, pred, ["lamp"]))
    assert all(math.isnan(exact[m]) for m in PIXEL_METRICS) and math.isfinite(exact["clip"])
    assert "error" not in parity and "error" not in exact


def test_all_ones_mask_stays_undefined_when_another_metric_fails(toy_scorers, monkeypatch):
    source, _ = _toy(1)
    pred = synthetic_edit(source, None, "noise_everywhere")
    scorer = toy_scorers["cielr"]

    def out_of_memory(preps):
        raise RuntimeError("CUDA out of memory")

    monkeypatch.setattr(scorer, "_clip_metric", out_of_memory)
    row = scorer.score_one(ScoreItem("o", source, Image.new("L", source.size, 255), pred, ["lamp"]))
    assert "clip: RuntimeError: CUDA out of memory" in row["error"]
    # before: PSNR inf, MSE 0, SSIM 1 (the parity quirk), which made the run's mean PSNR inf
    assert all(math.isnan(row[m]) for m in PIXEL_METRICS) and "no background" in row["note"]


def test_blank_clip_texts_are_no_texts_and_a_string_is_one_text():
    source, mask = _toy(7)
    pred = synthetic_edit(source, mask, "noise_in_mask")
    unclamped = get_protocol("exact").with_(name="exact-unclamped", clip_clamp="none")  # a random CLIP's cosines are often < 0
    texts = {"one": ["blue bottle"], "with-blank": ["blue bottle", "", "  "], "string": "blue bottle",
             "blank": [""], "spaces": ["   "], "none": []}
    rows = dict(RegionScorer(unclamped, metrics=["clip"]).score(
        [ScoreItem(name, source, mask, pred, t) for name, t in texts.items()]))
    assert rows["one"]["clip"] != 0 and math.isfinite(rows["one"]["clip"])
    assert rows["with-blank"]["clip"] == rows["one"]["clip"]  # not averaged with the empty prompt's score
    assert rows["string"]["clip"] == rows["one"]["clip"]  # one text, not one per character
    assert all(math.isnan(rows[n]["clip"]) and "error" not in rows[n] for n in ("blank", "spaces", "none"))


@pytest.mark.parametrize("name", ["cielr", "exact"])
def test_grey_and_rgba_predictions_are_converted_like_pil(toy_scorers, name):
    source, mask = _toy(2)
    scorer = toy_scorers[name]
    grey = synthetic_edit(source, mask, "grey")
    rgba = synthetic_edit(source, mask, "rgba")
    results = dict(scorer.score([ScoreItem("grey", source, mask, grey, ["lamp"]),
                                 ScoreItem("grey-rgb", source, mask, grey.convert("RGB"), ["lamp"]),
                                 ScoreItem("rgba", source, mask, rgba, ["lamp"]),
                                 ScoreItem("rgba-rgb", source, mask, rgba.convert("RGB"), ["lamp"])]))
    assert _same(results["grey"], results["grey-rgb"])  # grey replicated into R, G, B
    assert _same(results["rgba"], results["rgba-rgb"])  # alpha dropped, colour kept


def test_other_size_prediction_is_resized_to_the_source_in_exact(toy_scorers):
    source, mask = _toy(3)
    pred = synthetic_edit(source, mask, "noise_in_mask").resize((100, 80), Image.Resampling.BICUBIC)
    resized = pred.resize(source.size, Image.Resampling.BICUBIC)
    a = toy_scorers["exact"].score_one(ScoreItem("a", source, mask, pred, ["lamp"]))
    b = toy_scorers["exact"].score_one(ScoreItem("b", source, mask, resized, ["lamp"]))
    assert _same(a, b)


def test_16_bit_grey_is_scaled_and_32_bit_refused(toy_scorers):
    source, mask = _toy(4)
    grey8 = source.convert("L")
    grey16 = Image.fromarray(np.asarray(grey8).astype(np.uint16) * 257)  # I;16
    scorer = toy_scorers["cielr"]
    assert _same(scorer.score_one(ScoreItem("a", source, mask, grey16, ["x"])), scorer.score_one(ScoreItem("b", source, mask, grey8, ["x"])))
    float_image = Image.fromarray(np.asarray(grey8).astype(np.float32))
    row = scorer.score_one(ScoreItem("f", source, mask, float_image, ["x"]))
    assert "unsupported image mode 'F'" in row["error"] and all(math.isnan(row[c]) for c in METRIC_INFO)


def test_a_truncated_png_fails_alone_and_the_run_goes_on(toy_scorers):
    source, mask = _toy(5)
    buf = io.BytesIO()
    synthetic_edit(source, mask, "noise_in_mask").save(buf, format="PNG")
    truncated = Image.open(io.BytesIO(buf.getvalue()[: len(buf.getvalue()) // 2]))  # opens lazily, fails on decode
    good = synthetic_edit(source, mask, "noise_in_mask")
    items = [ScoreItem("ok1", source, mask, good, ["lamp"]), ScoreItem("bad", source, mask, truncated, ["lamp"]),
             ScoreItem("ok2", source, mask, good, ["lamp"])]
    results = list(toy_scorers["cielr"].score(items))
    assert [sid for sid, _ in results] == ["ok1", "bad", "ok2"]
    rows = dict(results)
    assert "truncated" in rows["bad"]["error"].lower() or "OSError" in rows["bad"]["error"]
    assert all(math.isnan(rows["bad"][c]) for c in METRIC_INFO)
    assert _same(rows["ok1"], rows["ok2"]) and "error" not in rows["ok1"]


def test_a_sample_failing_inside_a_batch_does_not_spoil_the_others(toy_scorers):
    source, mask = _toy(6)
    tiny_source = Image.new("RGB", (4, 4), (10, 20, 30))  # too small for the 11-tap SSIM window and SqueezeNet
    items = [ScoreItem("a", source, mask, synthetic_edit(source, mask, "noise_everywhere"), ["lamp"]),
             ScoreItem("tiny", tiny_source, None, tiny_source, ["lamp"])]
    rows = dict(toy_scorers["exact"].score(items))
    assert "error" not in rows["a"] and all(math.isfinite(rows["a"][m]) for m in PIXEL_METRICS)
    assert rows["tiny"]["error"].startswith("pixel: ValueError") and "lpips:" in rows["tiny"]["error"]
    assert math.isnan(rows["tiny"]["ssim"]) and math.isnan(rows["tiny"]["clip"])  # no mask: no box


def test_batch_size_and_workers_do_not_change_results():
    source, mask = _toy(7)
    items = [ScoreItem(str(i), source, mask, synthetic_edit(source, mask, kind, seed=i), ["lamp", "wall"][i % 2:])
             for i, kind in enumerate(KINDS)]
    one = dict(RegionScorer("cielr", batch_size=1, workers=1).score(items))
    many = dict(RegionScorer("cielr", batch_size=4, workers=2).score(iter(items)))  # any iterable
    for sid in one:
        for col in METRIC_INFO:
            tol = 1e-4 if col == "clip" else 1e-6
            assert _close(many[sid][col], one[sid][col], tol), (sid, col)


def test_metric_selection_model_ids_and_names():
    scorer = RegionScorer("smartedit", metrics=["psnr", "locality_f1"])
    assert scorer.columns == ["psnr", "locality_precision", "locality_recall", "locality_f1"]
    assert scorer.model_ids() == {}  # neither LPIPS nor CLIP was loaded
    full = RegionScorer("smartedit", batch_size=2)
    ids = full.model_ids()
    assert ids["clip"] == CLIP_VIT_L14 and len(ids["clip_revision"]) == 40
    assert ids["lpips"] == "lpips v0.1 squeeze" and len(ids["lpips_trunk_sha256"]) == 64
    assert list(METRIC_INFO) == ["psnr", "ssim", "lpips", "mse", "clip", "locality_precision", "locality_recall", "locality_f1"]
    assert METRIC_INFO["lpips"] is False and METRIC_INFO["mse"] is False and METRIC_INFO["psnr"] is True
    with pytest.raises(ValueError, match="Did you mean 'lpips'"):
        region_metric_names(["lpip"])
    with pytest.raises(ValueError, match="unknown protocol"):
        RegionScorer("cielrr")


def test_stopping_early_leaves_no_work_behind():
    source, mask = _toy(8)
    made = []

    def items():
        for i in range(100):
            made.append(i)
            yield ScoreItem(str(i), source, mask, source, ["lamp"])

    stream = RegionScorer("cielr", metrics=["psnr"], batch_size=2).score(items())
    assert next(stream)[0] == "0"
    stream.close()
    assert len(made) <= 6  # a bounded look-ahead, not the whole input


def test_a_device_this_machine_lacks_fails_before_any_model_loads(monkeypatch):
    """`--device cuda` without a GPU, `cuda:N` past the last GPU and a misspelt device are one-line
    errors naming the device, raised before the scoring models load."""
    from ciebench.errors import EnvironmentProblem, UsageError

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(EnvironmentProblem, match="no CUDA device"):
        RegionScorer("cielr", metrics=["lpips"], device="cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(EnvironmentProblem, match="has 2 CUDA device"):
        RegionScorer("cielr", metrics=["lpips"], device="cuda:2")
    with pytest.raises(UsageError, match="'gpu' is not a device"):
        RegionScorer("cielr", metrics=["lpips"], device="gpu")
    with pytest.raises(UsageError):
        RegionScorer("cielr", metrics=["lpips"], device="cpu:1")


def test_scoring_models_load_with_torchvision_imported_before_the_loader_thread():
    """CLIP's processor loads on a thread (transformers' image utilities import torchvision.transforms)
    while LPIPS loads on the caller's (torchvision.models): in a process that imported transformers but not
    torchvision, the two imports raced and one failed half initialised (ImportError, 3 runs in 6). So
    torchvision must be whole before that thread starts: checked in a fresh process, at the thread's start."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    code = """
import json, sys, concurrent.futures as cf
import transformers
assert "torchvision" not in sys.modules
seen = []
real = cf.ThreadPoolExecutor.submit
def submit(self, fn, *args, **kwargs):
    seen.append(all(m in sys.modules for m in ("torchvision.transforms", "torchvision.models")))
    return real(self, fn, *args, **kwargs)
cf.ThreadPoolExecutor.submit = submit
from ciebench.metrics.region import RegionScorer
RegionScorer("cielr", metrics=["psnr", "lpips", "clip"], device="cpu").model_ids()
print(json.dumps(seen))
"""
    repo = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-c", code], cwd=repo, env={**os.environ, "PYTHONPATH": str(repo)},
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    assert seen and all(seen), seen
