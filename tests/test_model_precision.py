"""Model precision options (`Protocol.model_precision`): refused by the parity presets, no-ops where
they cannot apply, and the bfloat16 deviation of `exact-bf16` from `exact` within the bound that
docs/metrics.md documents, on all 86 CIEBench samples (synthetic edits)."""
from __future__ import annotations

import math

import pytest
import torch

from ciebench.io import stable_hash
from ciebench.metrics.precision import BF16_BOUNDS, forward_precision
from ciebench.metrics.protocols import PROTOCOLS, get_protocol
from ciebench.metrics.region import RegionScorer, ScoreItem
from ciebench.schema import EditSample

from tests.support.fixtures_models import CLIP_VIT_L14_336, publish_clip, publish_squeezenet1_1
from tests.support.synthetic_edits import KINDS, synthetic_edit

# The documented bounds (docs/metrics.md, "Model precision"): largest |bf16 - float32| over CIEBench.
BF16_CLIP_BOUND = BF16_BOUNDS["clip"]  # CLIP score points (score = 100 * cos)
BF16_LPIPS_BOUND = BF16_BOUNDS["lpips"]
LPIPS_SIDE = 128  # LPIPS here on a 128x128 grid: bfloat16 convolutions are emulated (slow) on CPUs


@pytest.fixture(scope="module", autouse=True)
def published_models():
    publish_clip(CLIP_VIT_L14_336)
    publish_squeezenet1_1()


@pytest.mark.parametrize("name", [n for n, p in PROTOCOLS.items() if p.is_parity])
@pytest.mark.parametrize("precision", ["tf32", "bfloat16"])
def test_parity_protocols_refuse_reduced_precision(name, precision):
    parity = get_protocol(name)
    assert parity.model_precision == "float32"
    with pytest.raises(ValueError, match="only allowed for non-parity protocols"):
        parity.with_(name=f"{name}-{precision}", model_precision=precision)


def test_precision_field_keeps_every_existing_hash_and_is_hashed_when_set():
    for p in PROTOCOLS.values():
        if p.model_precision == "float32":  # the hash recorded before the field existed
            fields = {k: v for k, v in p.to_dict().items() if k not in ("name", "description", "model_precision")}
            assert p.hash == stable_hash(fields)
    exact = get_protocol("exact")
    assert len({exact.hash, get_protocol("exact-tf32").hash, get_protocol("exact-bf16").hash}) == 3
    with pytest.raises(ValueError, match="model_precision must be one of"):
        exact.with_(name="x", model_precision="float16")


def test_forward_precision_contexts():
    cpu = torch.device("cpu")
    a, b = torch.randn(64, 64), torch.randn(64, 64)
    with forward_precision("bfloat16", cpu):
        assert (a @ b).dtype == torch.bfloat16
    assert (a @ b).dtype == torch.float32
    saved = torch.backends.cuda.matmul.allow_tf32
    with forward_precision("tf32", torch.device("cuda")):  # flags only; nothing runs on the device
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
    assert torch.backends.cuda.matmul.allow_tf32 == saved
    with pytest.raises(ValueError):
        forward_precision("float16", cpu)


@pytest.fixture(scope="module")
def all_items(ciebench_root) -> list[ScoreItem]:
    from ciebench.datasets import read_dataset

    dataset = read_dataset(str(ciebench_root)).dataset
    kinds = [k for k in KINDS if k != "identity"]
    items = []
    for n in range(len(dataset)):
        sample = EditSample.from_row(dataset[n])
        edited = synthetic_edit(sample.image, sample.mask, kinds[n % len(kinds)], seed=n)
        items.append(ScoreItem(sample.id, sample.image, sample.mask, edited, list(sample.clip_text)))
    return items


def _scores(protocol, metrics, items) -> dict[str, dict[str, float]]:
    return dict(RegionScorer(protocol, metrics=metrics, batch_size=16).score(items))


def _largest_deviation(a: dict, b: dict, metric: str) -> float:
    diffs = []
    for sid in a:
        x, y = a[sid][metric], b[sid][metric]
        assert math.isnan(x) == math.isnan(y), (sid, x, y)
        if not math.isnan(x):
            diffs.append(abs(x - y))
    assert len(diffs) > 40  # most samples have a defined value
    return max(diffs)


def test_tf32_on_cpu_is_float32_bitwise(all_items):
    items = all_items[:4]
    grid = dict(size=LPIPS_SIDE, prediction_resize="to_protocol_size")
    tf32 = get_protocol("exact-tf32").with_(name="t", **grid)
    assert _scores(tf32, ["clip", "lpips"], items) == _scores(get_protocol("exact").with_(name="f", **grid),
                                                               ["clip", "lpips"], items)


@pytest.mark.heavy  # about 75 s on a loaded 2-core machine
def test_bf16_deviation_bound_on_all_ciebench_samples(all_items):
    assert len(all_items) == 86
    clip32 = _scores("exact", ["clip"], all_items)
    clip16 = _scores("exact-bf16", ["clip"], all_items)
    grid = dict(size=LPIPS_SIDE, prediction_resize="to_protocol_size")
    lp32 = _scores(get_protocol("exact").with_(name="exact-128", **grid), ["lpips"], all_items)
    lp16 = _scores(get_protocol("exact-bf16").with_(name="exact-bf16-128", **grid), ["lpips"], all_items)
    clip_dev = _largest_deviation(clip32, clip16, "clip")
    lpips_dev = _largest_deviation(lp32, lp16, "lpips")
    print(f"bf16 largest deviation on 86 samples: clip {clip_dev:.4g} points, lpips {lpips_dev:.4g}")
    assert clip_dev > 0 and lpips_dev > 0  # bfloat16 really ran
    assert clip_dev <= BF16_CLIP_BOUND
    assert lpips_dev <= BF16_LPIPS_BOUND
