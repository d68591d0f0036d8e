"""LPIPS v0.1 (squeeze): our batched module against torchmetrics and the lpips package, given the
same (random) torchvision trunk under its official checkpoint name and the shipped linear heads."""
from __future__ import annotations

import pytest
import torch

from ciebench.metrics.functional import background_lpips
from ciebench.metrics.modules import BackgroundLPIPS
from ciebench.metrics.perceptual import SqueezeLPIPS

from tests.support.fixtures_models import publish_squeezenet1_1


@pytest.fixture(scope="module")
def net() -> SqueezeLPIPS:
    publish_squeezenet1_1()
    return SqueezeLPIPS.pretrained()


def _images(seed: int, b: int = 3, h: int = 64, w: int = 80):
    g = torch.Generator().manual_seed(seed)
    target = torch.rand(b, 3, h, w, generator=g)
    preds = (target + 0.3 * torch.randn(b, 3, h, w, generator=g)).clamp(0, 1)
    mask = torch.zeros(b, 1, h, w)
    for i in range(b):
        mask[i, :, 10 + 3 * i:40, 20:50 + 4 * i] = 1.0
        mask[i, :, 9 + 3 * i, 20:50] = 0.5  # an anti-aliased edge row
    return preds, target, mask


def test_parity_equals_torchmetrics_per_image(net):
    from torchmetrics.image import LearnedPerceptualImagePatchSimilarity

    preds, target, mask = _images(0)
    tm = LearnedPerceptualImagePatchSimilarity(net_type="squeeze")
    w = 1 - mask
    ref = torch.stack([tm(preds[i:i + 1] * w[i:i + 1] * 2 - 1, target[i:i + 1] * w[i:i + 1] * 2 - 1) for i in range(3)])
    torch.testing.assert_close(background_lpips(preds, target, mask, net), ref.double(), atol=1e-5, rtol=0)


@pytest.mark.filterwarnings("ignore:The parameter 'pretrained' is deprecated", "ignore:Arguments other than a weight enum")
def test_equals_the_lpips_package(net):
    import lpips

    preds, target, mask = _images(1)
    ref_net = lpips.LPIPS(net="squeeze", version="0.1", verbose=False)
    w = 1 - mask
    with torch.no_grad():
        ref = ref_net(preds * w * 2 - 1, target * w * 2 - 1).flatten()
        ours = background_lpips(preds, target, mask, net)
        torch.testing.assert_close(ours, ref.double(), atol=1e-5, rtol=0)
        # exact: the lpips spatial map (layers upsampled to the image) averaged with the weights.
        spatial = lpips.LPIPS(net="squeeze", version="0.1", spatial=True, verbose=False)(preds * 2 - 1, target * 2 - 1)
        ref_exact = (spatial * w).flatten(1).sum(1) / w.flatten(1).sum(1)
    torch.testing.assert_close(background_lpips(preds, target, mask, net, "exact"), ref_exact.double(), atol=1e-5, rtol=0)


def test_closed_forms(net):
    preds, target, mask = _images(2)
    for weighting in ("multiply", "exact"):
        assert (background_lpips(target, target, mask, net, weighting) == 0).all()
    ones = torch.ones_like(mask)
    assert (background_lpips(preds, target, ones, net) == 0).all()  # parity: both images zeroed
    assert torch.isnan(background_lpips(preds, target, ones, net, "exact")).all()


def test_batching_does_not_change_values(net):
    preds, target, mask = _images(3, b=4)
    batched = background_lpips(preds, target, mask, net)
    single = torch.cat([background_lpips(preds[i:i + 1], target[i:i + 1], mask[i:i + 1], net) for i in range(4)])
    torch.testing.assert_close(batched, single, atol=1e-6, rtol=0)


def test_metric_class_shares_the_network(net):
    preds, target, mask = _images(4, b=4)
    metric = BackgroundLPIPS("cielr", net=net)
    assert metric.higher_is_better is False and metric.net is net
    metric.update(preds[:2], target[:2], mask[:2])
    metric.update(preds[2:], target[2:], mask[2:])
    torch.testing.assert_close(metric.compute(), background_lpips(preds, target, mask, net).mean(), atol=1e-7, rtol=1e-6)


def test_metric_class_leaves_out_an_image_with_no_background(net):
    preds, target, mask = _images(5, b=3)
    mask[0] = 1.0  # covers the whole image: the parity formula would say LPIPS 0 for unrelated images
    metric = BackgroundLPIPS("cielr", net=net)
    metric.update(torch.rand_like(preds), target, mask)
    assert metric.undefined == 1 and metric.count == 2


def test_missing_trunk_says_where_it_is_expected(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    import torch.hub

    monkeypatch.setattr(torch.hub, "download_url_to_file",
                        lambda *a, **k: (_ for _ in ()).throw(OSError("network is unreachable")))
    with pytest.raises(RuntimeError, match="squeezenet1_1-b8a52dc0.pth"):
        SqueezeLPIPS.pretrained()
