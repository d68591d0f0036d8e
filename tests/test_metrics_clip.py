"""Region CLIP score: the real `from_pretrained` path on tiny random-weight CLIPs published into the
offline hub cache, against a per-image transformers reference written as the published scripts do."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from ciebench.metrics.align import mask_box
from ciebench.metrics.clipscore import RegionCLIP, clip_score
from ciebench.metrics.modules import RegionCLIPScore

from tests.support.fixtures_models import CLIP_VIT_L14_336, publish_clip, publish_squeezenet1_1
from tests.support.metrics_reference import PublishedLoop

LONG_TEXT = "a very detailed description of the new object " * 20  # far beyond 77 tokens


@pytest.fixture(scope="module")
def models():
    # ViT-L/14 at 224 (smartedit) runs through the same code; test_metrics_region covers it end to end.
    publish_clip(CLIP_VIT_L14_336)
    publish_squeezenet1_1()  # the reference loop builds torchmetrics' LPIPS too
    return RegionCLIP(CLIP_VIT_L14_336), PublishedLoop(size=512, clip_model=CLIP_VIT_L14_336)


def _batch(seed: int, b: int = 4, h: int = 60, w: int = 90):
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (b, 3, h, w), generator=g, dtype=torch.uint8)
    masks = torch.zeros(b, 1, h, w, dtype=torch.uint8)
    for i in range(b):
        masks[i, 0, 5 + 2 * i:40 + i, 10 + 3 * i:70] = 255
        masks[i, 0, 4 + 2 * i, 10 + 3 * i:70] = 40  # anti-aliased edge: nonzero, so inside the box
    return images, masks


def test_fixture_tokenizer_is_the_real_clip_bpe(models):
    import open_clip

    clip, _ = models
    reference = open_clip.get_tokenizer("ViT-L-14")
    for text in ["blue bottle", "Cherry Tomatoes", "a white plate on the table", "blue tabel", "white wall"]:
        assert clip.tokenizer(text)["input_ids"] == [t for t in reference([text])[0].tolist() if t]


def test_long_text_is_truncated_keeping_the_end_token(models):
    clip, _ = models
    ids = clip.tokenizer([LONG_TEXT], truncation=True, max_length=clip.max_tokens)["input_ids"][0]
    assert len(ids) == 77 and ids[-1] == clip.tokenizer.eos_token_id


@pytest.mark.parametrize("inclusive", [False, True])
def test_scores_equal_the_per_image_reference(models, inclusive):
    clip, ref = models
    images, masks = _batch(0)
    texts = ["blue bottle", ["wall", "background"], LONG_TEXT, "teddy bear"]
    crop = "inclusive" if inclusive else "pil_exclusive"
    ours_raw = clip_score(images, masks, texts, clip, crop=crop, clamp=False)
    ours = clip_score(images, masks, texts, clip, crop=crop)
    for i in range(len(images)):
        pil = Image.fromarray(images[i].permute(1, 2, 0).numpy())
        t = [texts[i]] if isinstance(texts[i], str) else texts[i]
        expected_raw = ref.clip_score(pil, masks[i, 0].numpy(), t, inclusive=inclusive, clamp=False)
        assert ours_raw[i].item() == pytest.approx(expected_raw, abs=1e-4)
        assert ours[i].item() == pytest.approx(max(expected_raw, 0.0), abs=1e-4)


def test_float_images_are_the_same_as_uint8(models):
    clip, _ = models
    images, masks = _batch(1)
    a = clip_score(images, masks, ["lamp"] * 4, clip, clamp=False)
    b = clip_score(images.float() / 255, masks.float() / 255, ["lamp"] * 4, clip, clamp=False)
    torch.testing.assert_close(a, b)


def test_a_bare_string_is_one_images_text_never_its_characters(models):
    clip, _ = models
    images, masks = _batch(1)
    one = clip_score(images[:1], masks[:1], "lamp", clip, clamp=False)
    torch.testing.assert_close(one, clip_score(images[:1], masks[:1], ["lamp"], clip, clamp=False))
    with pytest.raises(ValueError, match="4 images but 1 text"):  # as torchmetrics' CLIPScore: no silent spread
        clip_score(images, masks, "lamp", clip)


def test_exclusive_crop_drops_the_last_row_and_column():
    mask = np.zeros((20, 30), dtype=np.uint8)
    mask[3:8, 4:11] = 255  # rows 3..7, columns 4..10
    assert mask_box(mask, inclusive=False) == (4, 3, 10, 7)  # PIL crop -> 6 x 4 pixels
    assert mask_box(mask, inclusive=True) == (4, 3, 11, 8)  # the whole 7 x 5 region
    assert mask_box(np.zeros_like(mask), inclusive=True) is None


def test_undefined_cases_give_nan_not_errors(models):
    clip, _ = models
    images, masks = _batch(2, b=4)
    masks[0] = 0  # empty mask: no box
    masks[1] = 0
    masks[1, 0, 10:30, 50] = 255  # one column: the exclusive crop is empty
    scores = clip_score(images, masks, ["lamp", "lamp", [], "lamp"], clip)
    assert math.isnan(scores[0]) and math.isnan(scores[1]) and math.isnan(scores[2]) and math.isfinite(scores[3])
    inclusive = clip_score(images[1:2], masks[1:2], ["lamp"], clip, crop="inclusive")
    assert math.isfinite(inclusive[0])


def test_several_texts_average_before_the_clamp(models):
    clip, _ = models
    images, masks = _batch(3, b=1)
    texts = ["lamp", "wall", "background", "blue bottle", "a teddy bear"]
    single = [clip_score(images, masks, [t], clip, clamp=False).item() for t in texts]
    mean = clip_score(images, masks, [texts], clip, clamp=False).item()
    assert mean == pytest.approx(float(np.mean(single)), abs=1e-4)
    assert clip_score(images, masks, [texts], clip).item() == pytest.approx(max(mean, 0.0), abs=1e-4)


def test_each_distinct_text_is_encoded_once(models, monkeypatch):
    clip, _ = models
    clip._texts.clear()
    seen: list[int] = []
    original = clip.model.get_text_features

    def counting(*args, **kwargs):
        seen.append(kwargs["input_ids"].shape[0])
        return original(*args, **kwargs)

    monkeypatch.setattr(clip.model, "get_text_features", counting)
    images, masks = _batch(4)
    clip_score(images, masks, ["wall", "wall", ["wall", "lamp"], "lamp"], clip)
    clip_score(images, masks, ["lamp", "wall", "wall", "lamp"], clip)
    assert seen == [2]


def test_batched_equals_one_at_a_time(models):
    clip, _ = models
    images, masks = _batch(5)
    texts = ["a", "b", "c", "d"]
    batched = clip_score(images, masks, texts, clip, clamp=False)
    single = torch.cat([clip_score(images[i:i + 1], masks[i:i + 1], texts[i:i + 1], clip, clamp=False) for i in range(4)])
    torch.testing.assert_close(batched, single, atol=1e-4, rtol=0)


def test_metric_class_clamps_after_averaging(models):
    clip, _ = models
    images, masks = _batch(6)
    texts = ["lamp", "wall", "sofa", "tie"]
    metric = RegionCLIPScore("cielr", clip=clip)
    assert metric.higher_is_better is True
    metric.update(images[:2], masks[:2], texts[:2])
    metric.update(images[2:], masks[2:], texts[2:])
    raw = clip_score(images, masks, texts, clip, clamp=False)
    assert metric.compute().item() == pytest.approx(max(raw.mean().item(), 0.0), abs=1e-4)
    assert clip.model_ids()["clip"] == clip.model_id
    assert len(clip.model_ids()["clip_revision"]) == 40


def test_texts_are_encoded_again_after_the_model_moves_device(models, monkeypatch):
    """A torchmetrics `.to(device)` moves the model after texts were cached on the old device: the
    cached rows must not meet the new device's. No GPU here: the meta device is another device all
    the same (CLIP's text tower cannot run on it, so there it returns placeholders of the right shape)."""
    clip, _ = models
    clip._texts.clear()
    first = clip.text_embeddings(["wall", "lamp"])
    encoded: list[tuple[str, int]] = []
    original = clip.model.get_text_features

    def text_features(input_ids, attention_mask):
        encoded.append((input_ids.device.type, input_ids.shape[0]))
        if input_ids.device.type == "meta":
            return torch.empty(input_ids.shape[0], first.shape[1], device="meta")
        return original(input_ids=input_ids, attention_mask=attention_mask)

    monkeypatch.setattr(clip.model, "get_text_features", text_features)
    weights = {k: v.clone() for k, v in clip.model.state_dict().items()}
    try:
        clip.model.to("meta")
        moved = clip.text_embeddings(["wall", "sofa"])  # "wall" is cached, but on the CPU
        assert moved.device.type == "meta" and moved.shape == first.shape
        assert encoded == [("meta", 2)]
    finally:
        clip.model.to_empty(device="cpu")
        clip.model.load_state_dict(weights)
    again = clip.text_embeddings(["wall", "lamp"])  # back on the CPU: the CPU rows serve again
    assert encoded == [("meta", 2)] and torch.equal(again, first)
