"""Background PSNR / MSE / SSIM: functional twins and Metric classes against torchmetrics (parity
protocols), numpy / scikit-image (exact) and closed forms."""
from __future__ import annotations

import math

import pytest
import torch
from skimage.metrics import structural_similarity
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure
from torchmetrics.functional.regression import mean_squared_error

from ciebench.metrics.functional import background_mse, background_psnr, background_ssim
from ciebench.metrics.modules import BackgroundMSE, BackgroundPSNR, BackgroundSSIM
from ciebench.metrics.protocols import get_protocol


def _pair(seed: int, b: int = 3, h: int = 48, w: int = 64):
    g = torch.Generator().manual_seed(seed)
    target = torch.rand(b, 3, h, w, generator=g)
    preds = (target + 0.15 * torch.randn(b, 3, h, w, generator=g)).clamp(0, 1)
    # Soft, anti-aliased masks as in CIEBench: a blob with a ramp, values 0..1.
    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    masks = []
    for i in range(b):
        d = ((yy - h / 2 - 3 * i) ** 2 + (xx - w / 3 - 5 * i) ** 2).sqrt()
        masks.append((1 - (d - 8 - 2 * i) / 4).clamp(0, 1))
    mask = (torch.stack(masks)[:, None] * 255).round() / 255
    return preds, target, mask


def _per_image(fn, preds, target, mask):
    w = 1 - mask
    return torch.stack([fn(preds[i:i + 1] * w[i:i + 1], target[i:i + 1] * w[i:i + 1]) for i in range(len(preds))]).double()


@pytest.mark.parametrize("seed", [0, 1])
def test_parity_psnr_mse_equal_torchmetrics_per_image(seed):
    preds, target, mask = _pair(seed)
    ref_psnr = _per_image(lambda p, t: peak_signal_noise_ratio(p, t, data_range=1.0), preds, target, mask)
    ref_mse = _per_image(mean_squared_error, preds, target, mask)
    torch.testing.assert_close(background_psnr(preds, target, mask), ref_psnr, atol=1e-5, rtol=0)
    torch.testing.assert_close(background_mse(preds, target, mask), ref_mse, atol=1e-7, rtol=1e-5)


@pytest.mark.parametrize("border", ["crop", "full"])
def test_parity_ssim_equals_torchmetrics_per_image(border):
    preds, target, mask = _pair(2)

    def ref(p, t):
        _, full = structural_similarity_index_measure(p, t, data_range=1.0, return_full_image=True)
        return full[..., 5:-5, 5:-5].mean() if border == "crop" else full.mean()

    torch.testing.assert_close(background_ssim(preds, target, mask, "multiply", border), _per_image(ref, preds, target, mask),
                               atol=1e-5, rtol=0)
    if border == "full":  # torchmetrics >= 1.5's own average is the whole map
        tm = _per_image(lambda p, t: structural_similarity_index_measure(p, t, data_range=1.0), preds, target, mask)
        torch.testing.assert_close(background_ssim(preds, target, mask, "multiply", "full"), tm, atol=1e-5, rtol=0)


def test_parity_ssim_map_is_bitwise_torchmetrics_on_a_real_pair(ciebench_root):
    """The parity path runs its grouped convolution channels-last (faster on CPU); the map must stay
    bitwise torchmetrics' own, on a real CIEBench image at the cielr size."""
    import numpy as np

    from ciebench.datasets import read_dataset
    from ciebench.metrics.ssim import ssim_map_torchmetrics
    from ciebench.schema import EditSample

    image = EditSample.from_row(read_dataset(str(ciebench_root)).dataset[0]).image.convert("RGB").resize((512, 512))
    target = torch.from_numpy(np.array(image)).permute(2, 0, 1)[None].float() / 255
    g = torch.Generator().manual_seed(0)
    preds = (target + 0.05 * torch.randn(target.shape, generator=g)).clamp(0, 1)
    _, full = structural_similarity_index_measure(preds, target, data_range=1.0, return_full_image=True)
    assert torch.equal(ssim_map_torchmetrics(preds, target), full)


def test_exact_psnr_mse_ssim_equal_numpy_and_skimage():
    preds, target, mask = _pair(3, h=40, w=52)
    psnr = background_psnr(preds, target, mask, "exact")
    mse = background_mse(preds, target, mask, "exact")
    ssim = background_ssim(preds, target, mask, "exact", "crop")
    for i in range(len(preds)):
        a = target[i].permute(1, 2, 0).double().numpy()
        b = preds[i].permute(1, 2, 0).double().numpy()
        w = 1 - mask[i, 0].double().numpy()
        ref_mse = (w[..., None] * (b - a) ** 2).sum() / (3 * w.sum())
        assert mse[i].item() == pytest.approx(ref_mse, rel=1e-6)
        assert psnr[i].item() == pytest.approx(10 * math.log10(1 / ref_mse), abs=1e-5)
        _, full = structural_similarity(b, a, data_range=1.0, channel_axis=2, gaussian_weights=True, sigma=1.5,
                                        use_sample_covariance=False, full=True)
        s, wc = full.mean(2)[5:-5, 5:-5], w[5:-5, 5:-5]
        assert ssim[i].item() == pytest.approx((s * wc).sum() / wc.sum(), abs=1e-5)


def test_closed_forms_identical_images():
    _, target, mask = _pair(4)
    # Flat blocks and 8-bit values, where float32 rounding makes naive variances negative.
    target[:, :, :20, :30] = torch.round(target[:, :, :1, :1] * 255) / 255
    target = torch.round(target * 255) / 255
    for weighting in ("multiply", "exact"):
        psnr = background_psnr(target, target, mask, weighting)
        assert torch.isinf(psnr).all() and (psnr > 0).all()  # +inf itself, not a clamp
        assert (background_mse(target, target, mask, weighting) == 0).all()
        for border in ("crop", "full"):
            torch.testing.assert_close(background_ssim(target, target, mask, weighting, border),
                                       torch.ones(len(target), dtype=torch.float64))


def test_all_ones_mask_parity_zeroes_everything_exact_is_undefined():
    preds, target, _ = _pair(5)
    ones = torch.ones(len(preds), 1, *preds.shape[-2:])
    # Parity multiplies both images by w = 0: they become identical (the published quirk).
    assert torch.isinf(background_psnr(preds, target, ones)).all()
    assert (background_ssim(preds, target, ones) == 1).all()
    # exact: no background at all, so nothing to average.
    assert torch.isnan(background_psnr(preds, target, ones, "exact")).all()
    assert torch.isnan(background_ssim(preds, target, ones, "exact")).all()


def test_empty_or_missing_mask_scores_the_whole_image():
    preds, target, _ = _pair(6)
    zero = torch.zeros(len(preds), 1, *preds.shape[-2:])
    whole = torch.stack([peak_signal_noise_ratio(preds[i:i + 1], target[i:i + 1], data_range=1.0) for i in range(len(preds))])
    for weighting in ("multiply", "exact"):
        torch.testing.assert_close(background_psnr(preds, target, zero, weighting), whole.double(), atol=1e-5, rtol=0)
        torch.testing.assert_close(background_psnr(preds, target, None, weighting), whole.double(), atol=1e-5, rtol=0)


def test_parity_minus_exact_psnr_is_the_area_ratio_for_binary_masks():
    preds, target, mask = _pair(7)
    binary = (mask > 0.5).float()
    n = binary[0].numel()
    n_bg = (1 - binary).flatten(1).sum(1).double()
    diff = background_psnr(preds, target, binary, "multiply") - background_psnr(preds, target, binary, "exact")
    torch.testing.assert_close(diff, 10 * torch.log10(n / n_bg), atol=1e-5, rtol=0)


def test_metric_classes_average_per_image_values_and_skip_undefined():
    preds, target, mask = _pair(8, b=4)
    for cls, fn in ((BackgroundPSNR, background_psnr), (BackgroundMSE, background_mse), (BackgroundSSIM, background_ssim)):
        metric = cls("cielr")
        assert metric.full_state_update is False
        metric.update(preds[:2], target[:2], mask[:2])
        metric.update(preds[2:], target[2:], mask[2:])
        torch.testing.assert_close(metric.compute(), fn(preds, target, mask).mean(), atol=1e-6, rtol=1e-6)
        metric.reset()
        with pytest.warns(UserWarning, match="before the ``update``"):
            assert torch.isnan(metric.compute())
    assert BackgroundPSNR.higher_is_better and BackgroundSSIM.higher_is_better and not BackgroundMSE.higher_is_better
    exact = BackgroundPSNR(get_protocol("exact"))
    exact.update(preds, target, torch.ones_like(mask))  # all undefined
    exact.update(preds[:1], target[:1], mask[:1])
    assert exact.undefined == 4 and exact.count == 1
    torch.testing.assert_close(exact.compute(), background_psnr(preds[:1], target[:1], mask[:1], "exact")[0])
    same = BackgroundPSNR("cielr")
    same.update(target, target, mask)
    assert math.isinf(same.compute().item())


def test_a_mask_covering_the_whole_image_is_undefined_in_the_metric_classes_too():
    # Under the parity presets a full mask zeroes both images, so the formula alone says "identical"
    # (PSNR inf, MSE 0, SSIM 1) for unrelated images; the classes leave such an image out, as the scorer does.
    preds, target, mask = _pair(10, b=3)
    unrelated = torch.rand_like(preds)
    full = mask.clone()
    full[1] = 1.0
    kept = torch.tensor([0, 2])
    for cls in (BackgroundPSNR, BackgroundMSE, BackgroundSSIM):
        for protocol in ("cielr", "smartedit", "exact"):
            metric, without = cls(protocol), cls(protocol)
            metric.update(unrelated, target, full)
            without.update(unrelated[kept], target[kept], full[kept])
            assert metric.undefined == 1 and metric.count == 2, (cls.__name__, protocol)
            assert math.isfinite(metric.compute().item())
            torch.testing.assert_close(metric.compute(), without.compute())


def test_metrics_follow_the_device_of_their_inputs():
    preds, target, mask = _pair(9)
    metric = BackgroundSSIM("cielr").to("cpu")
    metric.update(preds, target, mask)
    assert metric.compute().device.type == "cpu"
    with pytest.raises(ValueError):
        background_psnr(preds, target[:, :, :10], mask)
