"""Scoring protocols: the presets carry PROTOCOLS.md's facts, hashes are stable and discriminating."""
from __future__ import annotations

import dataclasses
import json

import pytest

from ciebench.metrics.protocols import PROTOCOLS, Protocol, UnknownProtocolError, get_protocol


def test_presets_fix_the_published_settings():
    cielr, smartedit, exact = (get_protocol(n) for n in ("cielr", "smartedit", "exact"))
    assert (cielr.size, cielr.clip_model) == (512, "openai/clip-vit-large-patch14-336")
    assert (smartedit.size, smartedit.clip_model) == (256, "openai/clip-vit-large-patch14")
    for p in (cielr, smartedit):
        assert p.weighting == "multiply" and p.ssim_border == "crop" and p.clip_crop == "pil_exclusive"
        assert (p.image_filter, p.mask_filter) == ("bicubic", "nearest")
        assert p.arithmetic == "torchmetrics-float32"
    assert exact.arithmetic == "float64"
    assert exact.size is None and exact.weighting == "exact" and exact.clip_crop == "inclusive"
    assert exact.prediction_resize == "to_source_size"
    for p in PROTOCOLS.values():
        assert (p.ssim_sigma, p.ssim_kernel_size, p.ssim_k1, p.ssim_k2, p.data_range) == (1.5, 11, 0.01, 0.03, 1.0)
        assert (p.lpips_version, p.lpips_net, p.lpips_input) == ("0.1", "squeeze", "2x-1")
    assert get_protocol("cielr-full").ssim_border == "full"
    assert get_protocol("smartedit-full").ssim_border == "full"


def test_frozen_and_hash_depends_on_settings_not_name():
    cielr = get_protocol("cielr")
    with pytest.raises(dataclasses.FrozenInstanceError):
        cielr.size = 256  # type: ignore[misc]
    assert cielr.hash == get_protocol("cielr").hash
    assert cielr.with_(name="renamed", description="x").hash == cielr.hash
    hashes = {p.hash for p in PROTOCOLS.values()}
    assert len(hashes) == len(PROTOCOLS)
    assert cielr.with_(name="t", locality_threshold=9).hash != cielr.hash


def test_to_dict_is_json_and_round_trips():
    for p in PROTOCOLS.values():
        d = json.loads(json.dumps(p.to_dict()))
        assert Protocol(**d) == p
        assert p.manifest()["hash"] == p.hash


def test_unknown_protocol_suggests_a_name():
    with pytest.raises(UnknownProtocolError, match="Did you mean 'smartedit'"):
        get_protocol("smartedt")
    with pytest.raises(ValueError, match="known: cielr"):
        get_protocol("nothing-like-it")
    assert get_protocol(get_protocol("exact")) is get_protocol("exact")


def test_inconsistent_protocols_are_refused():
    with pytest.raises(ValueError):
        get_protocol("cielr").with_(name="bad", ssim_border="middle")
    with pytest.raises(ValueError):
        get_protocol("cielr").with_(name="bad", size=None)  # no size needs predictions resized to the source
    with pytest.raises(ValueError):
        get_protocol("cielr").with_(name="bad", ssim_sigma=2.0)  # window no longer 11 taps


@pytest.mark.parametrize("change", [dict(clip_clamp="zero-after-mean"), dict(image_filter="cubic"),
                                    dict(mask_filter="Nearest"), dict(ssim_padding="zeros"), dict(lpips_net="alex"),
                                    dict(lpips_input="x"), dict(clip_text_reduce="max"),
                                    dict(prediction_mode="composite_on_white"),
                                    dict(lpips_trunk="torchvision/squeezenet1_1/OTHER")])
def test_a_value_that_would_be_recorded_but_not_computed_is_refused(change):
    # Before this check, clip_clamp="zero-after-mean" silently scored without the clamp.
    with pytest.raises(ValueError, match=next(iter(change))):
        get_protocol("exact").with_(name="bad", **change)


def test_every_value_that_is_computed_is_accepted():
    exact = get_protocol("exact")
    assert exact.with_(name="unclamped", clip_clamp="none").clip_clamp == "none"
    for name in ("nearest", "bilinear", "bicubic", "lanczos", "box", "hamming"):
        assert exact.with_(name=name, image_filter=name, mask_filter=name).image_filter == name
