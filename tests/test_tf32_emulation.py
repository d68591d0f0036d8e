"""The CPU emulation of TF32 (tests/support/emulated_tf32.py) that measures `exact-tf32`'s deviation
without a GPU: its rounding against a float64 reference of TF32's definition, each emulated product
against the float64 product of the rounded inputs, what it refuses, and that inside the scorer it
touches the `tf32` CLIP and LPIPS forwards and nothing else."""
from __future__ import annotations

import math
import threading

import pytest
import torch
import torch.nn.functional as F

from ciebench.metrics import precision, region
from ciebench.metrics.protocols import get_protocol
from ciebench.metrics.region import RegionScorer, ScoreItem
from ciebench.schema import EditSample

from tests.support.emulated_tf32 import EmulatedTF32, emulated_tf32_forwards, round_to_tf32
from tests.support.fixtures_models import CLIP_VIT_L14_336, publish_clip, publish_squeezenet1_1
from tests.support.synthetic_edits import KINDS, synthetic_edit

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def reference_round(value: float, rounding: str) -> float:
    """TF32 by definition, for a normal float32 value: 11 significant bits (1 implicit + 10 stored),
    the rest rounded half to even (Python's round) or dropped."""
    if value == 0 or not math.isfinite(value):
        return value
    m, e = math.frexp(value)  # value = m * 2**e, 0.5 <= |m| < 1
    scaled = m * 2 ** 11
    return math.ldexp(round(scaled) if rounding == "nearest" else math.trunc(scaled), e - 11)


def reference_tensor(x: torch.Tensor, rounding: str = "nearest") -> torch.Tensor:
    return torch.tensor([reference_round(v, rounding) for v in x.double().flatten().tolist()],
                        dtype=torch.float64).reshape(x.shape)


def _values() -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    random = torch.randn(2000, generator=g) * torch.pow(10.0, torch.empty(2000).uniform_(-30, 30, generator=g))
    # exact ties: the dropped part is exactly half a unit, beside an even and an odd kept part
    ties = [sign * math.ldexp(1024 + k + 0.5, e) for sign in (1, -1) for k in (0, 1, 2, 3, 1022) for e in (-20, -11, 0, 7)]
    near = [math.ldexp(1024 + 0.5 + d, -11) for d in (-2 ** -12, 2 ** -12)]  # just under / over a tie
    return torch.cat([random, torch.tensor(ties + near + [0.0, -0.0, 1.0, -2.5])]).float()


@pytest.mark.parametrize("rounding", ["nearest", "truncate"])
def test_rounding_matches_the_definition_of_tf32(rounding):
    x = _values()
    got = round_to_tf32(x, rounding)
    assert got.dtype == torch.float32
    assert torch.equal(got.double(), reference_tensor(x, rounding))
    assert torch.equal(round_to_tf32(got, rounding), got)  # TF32 values are kept
    assert (got.view(torch.int32) & 0x1FFF).eq(0).all()  # 10 mantissa bits left


def test_rounding_keeps_non_finite_values_and_overflows_to_infinity():
    special = torch.tensor([math.inf, -math.inf, math.nan, 3.4028234e38, -3.4028234e38])
    got = round_to_tf32(special)
    assert got[0] == math.inf and got[1] == -math.inf and math.isnan(got[2])
    assert got[3] == math.inf and got[4] == -math.inf  # the largest float32 is above TF32's largest
    assert round_to_tf32(special, "truncate")[3] == pytest.approx(3.4028234e38, rel=1e-3)
    x64 = torch.tensor([1 + 2 ** -30], dtype=torch.float64)
    assert torch.equal(round_to_tf32(x64), x64)  # only float32 is converted
    with pytest.raises(ValueError, match="unknown TF32 rounding"):
        round_to_tf32(x64, "stochastic")


def _data(*shape, seed):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _close_to(got: torch.Tensor, reference: torch.Tensor, plain: torch.Tensor, tol: float) -> None:
    """`got` (emulated) equals the float64 reference up to float32 summation noise, while plain float32
    is far from it: the emulation changed the result, and in the way TF32 does."""
    assert (got.double() - reference).abs().max() < tol
    assert (plain.double() - reference).abs().max() > 20 * tol


@pytest.mark.parametrize("rounding", ["nearest", "truncate"])
def test_linear_matmul_and_convolution_use_tf32_inputs(rounding):
    a, w, b = _data(4, 64, seed=1), _data(32, 64, seed=2), _data(32, seed=3)
    image, kernel = _data(2, 3, 9, 9, seed=4), _data(5, 3, 3, 3, seed=5)
    ra, rw, ri, rk = (reference_tensor(t, rounding) for t in (a, w, image, kernel))
    mode = EmulatedTF32(rounding)
    with mode:
        linear = F.linear(a, w, b)
        by_keyword = F.linear(input=a, weight=w)
        product = a @ w.t()
        batched = torch.bmm(a[None], w.t()[None])
        conv = F.conv2d(image, kernel, padding=1)
    _close_to(linear, ra @ rw.T + b.double(), F.linear(a, w, b), 1e-4)
    _close_to(by_keyword, ra @ rw.T, F.linear(a, w), 1e-4)
    _close_to(product, ra @ rw.T, a @ w.t(), 1e-4)
    _close_to(batched[0], ra @ rw.T, a @ w.t(), 1e-4)
    _close_to(conv, F.conv2d(ri, rk, padding=1), F.conv2d(image, kernel, padding=1), 1e-4)
    assert mode.calls == {"linear": 2, "matmul": 1, "bmm": 1, "conv2d": 1}


def test_the_accumulated_term_and_the_bias_stay_float32():
    # Small integers and multiples of 2^-12 below 2^9: every sum is exact in float32 whatever the
    # order, so the expected values are exact; TF32 would round c and the bias to 2^-5 or coarser.
    g = torch.Generator().manual_seed(6)
    a = torch.randint(-8, 8, (3, 5), generator=g).float()
    b = torch.randint(-8, 8, (5, 4), generator=g).float()
    c = torch.randint(-64, 64, (3, 4), generator=g) + torch.randint(1, 4096, (3, 4), generator=g) / 4096
    bias = torch.randint(-64, 64, (4,), generator=g) + torch.randint(1, 4096, (4,), generator=g) / 4096
    assert not torch.equal(round_to_tf32(c), c) and not torch.equal(round_to_tf32(bias), bias)
    with EmulatedTF32():
        added = torch.addmm(c, a, b)
        linear = F.linear(a, b.t(), bias)
    assert torch.equal(added.double(), c.double() + a.double() @ b.double())
    assert torch.equal(linear.double(), a.double() @ b.double() + bias.double())


@pytest.mark.parametrize("masking", ["none", "causal", "bool", "additive"])
def test_attention_is_its_definition_on_tf32_inputs(masking):
    q, k, v = _data(2, 3, 7, 16, seed=8), _data(2, 3, 7, 16, seed=9), _data(2, 3, 7, 16, seed=10)
    allowed = torch.rand(7, 7, generator=torch.Generator().manual_seed(11)) > 0.3
    allowed.fill_diagonal_(True)
    kwargs = {"none": {}, "causal": {"is_causal": True}, "bool": {"attn_mask": allowed},
              "additive": {"attn_mask": _data(7, 7, seed=12)}}[masking]
    with EmulatedTF32():
        got = F.scaled_dot_product_attention(q, k, v, **kwargs)
    scores = reference_tensor(q / 4) @ reference_tensor(k).transpose(-2, -1)  # scale 1 / sqrt(16), exact
    if masking == "causal":
        scores = scores.masked_fill(~torch.ones(7, 7, dtype=torch.bool).tril(), -math.inf)
    elif masking == "bool":
        scores = scores.masked_fill(~allowed, -math.inf)
    elif masking == "additive":
        scores = scores + kwargs["attn_mask"].double()
    weights = reference_tensor(torch.softmax(scores, -1).float())
    reference = weights @ reference_tensor(v)
    _close_to(got, reference, F.scaled_dot_product_attention(q, k, v, **kwargs), 2e-6)


def test_other_gemm_ops_are_refused_and_other_dtypes_and_threads_untouched():
    a, w = _data(4, 8, seed=13), _data(8, 3, seed=14)
    with EmulatedTF32():
        with pytest.raises(NotImplementedError, match="einsum is not emulated"):
            torch.einsum("ij,jk->ik", a, w)
        assert torch.equal(a.double() @ w.double(), a.double() @ w.double())
        seen = {}
        thread = threading.Thread(target=lambda: seen.update(product=a @ w))  # the mode is thread-local
        thread.start()
        thread.join()
        inside = a @ w
    assert torch.equal(seen["product"], a @ w)
    assert not torch.equal(inside, a @ w)


def test_pytorch_cuda_defaults_round_the_convolutions_only():
    a, w = _data(4, 64, seed=15), _data(32, 64, seed=16)
    image, kernel = _data(1, 3, 9, 9, seed=17), _data(4, 3, 3, 3, seed=18)
    q = _data(1, 2, 5, 8, seed=19)
    mode = EmulatedTF32("nearest", which="convolutions")
    with mode:
        linear, product = F.linear(a, w), a @ w.t()
        attention = F.scaled_dot_product_attention(q, q, q)
        einsum = torch.einsum("ij,kj->ik", a, w)  # a matmul: IEEE under the defaults, so not refused
        conv = F.conv2d(image, kernel)
    assert torch.equal(linear, F.linear(a, w)) and torch.equal(product, a @ w.t())
    assert torch.equal(attention, F.scaled_dot_product_attention(q, q, q))
    assert torch.equal(einsum, torch.einsum("ij,kj->ik", a, w))
    _close_to(conv, F.conv2d(reference_tensor(image), reference_tensor(kernel)), F.conv2d(image, kernel), 1e-5)
    assert mode.calls == {"conv2d": 1}
    with pytest.raises(ValueError, match="unknown TF32 products"):
        EmulatedTF32(which="matmuls")


@pytest.mark.parametrize("which", ["all", "convolutions"])
def test_depthwise_convolutions_stay_float32_unless_channels_last(which):
    # PyTorch runs contiguous float32 depthwise convolutions (torchmetrics' SSIM window) with its own
    # CUDA kernel, never cuDNN, so TF32 does not apply; channels-last ones go to cuDNN.
    image, window = _data(2, 3, 16, 16, seed=20), _data(3, 1, 11, 11, seed=21)
    dense = _data(4, 3, 3, 3, seed=22)
    last = image.contiguous(memory_format=torch.channels_last)
    mode = EmulatedTF32("nearest", which=which)
    with mode:
        depthwise = F.conv2d(image, window, groups=3)
        depthwise_last = F.conv2d(last, window, groups=3)
        grouped = F.conv2d(_data(2, 6, 8, 8, seed=23), _data(3, 2, 3, 3, seed=24), groups=3)  # 2 channels per group
        full = F.conv2d(image, dense)
    assert torch.equal(depthwise, F.conv2d(image, window, groups=3))
    assert not torch.equal(depthwise_last, F.conv2d(last, window, groups=3))
    assert not torch.equal(full, F.conv2d(image, dense))
    assert mode.calls == {"conv2d (depthwise, float32)": 1, "conv2d": 3}
    assert grouped.shape == (2, 3, 6, 6)


# ---- inside the region scorer -------------------------------------------------------------------
@pytest.fixture(scope="module")
def items(ciebench_root) -> list[ScoreItem]:
    from ciebench.datasets import read_dataset

    publish_clip(CLIP_VIT_L14_336)
    publish_squeezenet1_1()
    dataset = read_dataset(str(ciebench_root)).dataset
    kinds = [k for k in KINDS if k != "identity"]
    out = []
    for n in range(4):
        sample = EditSample.from_row(dataset[n])
        edited = synthetic_edit(sample.image, sample.mask, kinds[n % len(kinds)], seed=n)
        out.append(ScoreItem(sample.id, sample.image, sample.mask, edited, list(sample.clip_text)))
    return out


def _scores(name: str, items) -> dict:
    # unclamped: a random-weight CLIP's negative cosines would all read 0 and hide any change
    protocol = get_protocol(name).with_(name=f"{name}-unclamped", clip_clamp="none")
    return dict(RegionScorer(protocol, batch_size=4).score(items))


def test_only_the_tf32_forwards_are_emulated(items):
    plain32, plain_tf32 = _scores("exact", items), _scores("exact-tf32", items)
    assert plain32 == plain_tf32  # on a CPU, without the emulation, TF32 is float32
    with emulated_tf32_forwards("nearest") as calls:
        under32 = _scores("exact", items)
        assert not calls  # float32 forwards are untouched
        emulated = _scores("exact-tf32", items)
    assert region.forward_precision is precision.forward_precision  # restored
    assert under32 == plain32
    assert calls["linear"] > 0 and calls["conv2d"] > 0
    assert calls["scaled_dot_product_attention"] + calls["matmul"] > 0  # CLIP's attention products
    for sid, row in emulated.items():
        for metric in ("psnr", "mse", "ssim"):  # never a forward: identical
            assert row[metric] == plain32[sid][metric] or (math.isnan(row[metric]) and math.isnan(plain32[sid][metric]))
    moved = {m: max(abs(emulated[s][m] - plain32[s][m]) for s in emulated) for m in ("clip", "lpips")}
    assert 0 < moved["clip"] < 1 and 0 < moved["lpips"] < 0.01, moved
