"""Model precision options (`Protocol.model_precision`): refused by the parity presets, no-ops where
they cannot apply, and the bfloat16 and TF32 deviations of `exact-bf16` and `exact-tf32` from `exact`
within the bounds that docs/metrics.md documents, on all 86 CIEBench samples (synthetic edits; TF32
emulated on the CPU, tests/support/emulated_tf32.py)."""
from __future__ import annotations

import math
import threading
from typing import NamedTuple

import pytest
import torch

from ciebench.io import stable_hash
from ciebench.metrics.precision import BF16_BOUNDS, TF32_BOUNDS, float32_math, forward_precision
from ciebench.metrics.protocols import PROTOCOLS, get_protocol
from ciebench.metrics.region import RegionScorer, ScoreItem
from ciebench.schema import EditSample

from tests.support.emulated_tf32 import ROUNDINGS, emulated_tf32_forwards
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


# PyTorch >= 2.9 has per-op float32 flags (`fp32_precision`) beside the legacy settings; before
# 2.9 the legacy settings alone decide, and the tests check those.
_PER_OP = [(torch.backends.cuda, "matmul"), (torch.backends.cudnn, "conv"), (torch.backends.cudnn, "rnn"),
           (torch.backends.mkldnn, "matmul"), (torch.backends.mkldnn, "conv"), (torch.backends.mkldnn, "rnn")]
PER_OP_FLAGS = all(hasattr(getattr(m, n, None), "fp32_precision") for m, n in _PER_OP)


class Settings(NamedTuple):
    """Every float32 math setting of the process ("mixed" where PyTorch refuses to read one)."""
    leaves: tuple  # the six per-op flags; () before PyTorch 2.9
    generic: str | None  # torch.backends.fp32_precision
    legacy: tuple  # get_float32_matmul_precision(), cudnn.allow_tf32, cuda.matmul.allow_tf32

    @property
    def mode(self) -> tuple:
        return self.leaves, self.legacy


# What a held mode must look like: the legacy readings agree with the per-op flags (cuBLAS raises
# on every float32 matmul when they do not).
IEEE = (("ieee",) * 6 if PER_OP_FLAGS else (), ("highest", False, False))
TF32 = (("tf32",) * 3 + ("ieee",) * 3 if PER_OP_FLAGS else (), ("high", True, True))


def _process_settings() -> Settings:
    def read(fn):
        try:
            return fn()
        except RuntimeError:
            return "mixed"
    leaves = tuple(getattr(m, n).fp32_precision for m, n in _PER_OP) if PER_OP_FLAGS else ()
    return Settings(leaves, getattr(torch.backends, "fp32_precision", None),
                    (read(torch.get_float32_matmul_precision), read(lambda: torch.backends.cudnn.allow_tf32),
                     read(lambda: torch.backends.cuda.matmul.allow_tf32)))


@pytest.fixture
def restore_process_settings():
    """Tests here change the process's float32 settings as a user's script would; put them back."""
    yield
    if PER_OP_FLAGS:
        torch.backends.fp32_precision = "none"
    torch.set_float32_matmul_precision("highest")
    torch.backends.cudnn.allow_tf32 = True  # PyTorch's defaults
    if PER_OP_FLAGS:
        for leaf in (torch.backends.cuda.matmul, torch.backends.mkldnn.matmul, torch.backends.mkldnn.conv,
                     torch.backends.mkldnn.rnn):
            leaf.fp32_precision = "none"


def test_forward_precision_contexts(restore_process_settings):
    cpu, cuda = torch.device("cpu"), torch.device("cuda")  # flags only; nothing runs on the device
    a, b = torch.randn(64, 64), torch.randn(64, 64)
    with forward_precision("bfloat16", cpu):
        assert (a @ b).dtype == torch.bfloat16
        assert _process_settings().mode == IEEE  # float32 ops inside autocast
    assert (a @ b).dtype == torch.float32
    # A user's script asked for fast float32 matmuls (TF32 on CUDA, bfloat16 in oneDNN on CPUs),
    # and PyTorch's default already runs cuDNN's float32 convolutions in TF32.
    torch.set_float32_matmul_precision("medium")
    before = _process_settings()
    assert before.legacy == ("medium", True, True)
    if PER_OP_FLAGS:
        assert before.leaves[:4] == ("tf32", "tf32", "tf32", "bf16")
    for precision, device in (("float32", cuda), ("float32", cpu), ("tf32", cpu), ("bfloat16", cuda)):
        with forward_precision(precision, device):
            assert _process_settings().mode == IEEE, (precision, device)
        assert _process_settings() == before
    with forward_precision("tf32", cuda):
        assert _process_settings().mode == TF32
    assert _process_settings() == before
    with pytest.raises(ValueError):
        forward_precision("float16", cpu)


@pytest.mark.skipif(not PER_OP_FLAGS, reason="PyTorch < 2.9 has one set of float32 settings, never inconsistent")
def test_an_inconsistent_process_setting_keeps_its_per_op_flags(restore_process_settings):
    # transformers' enable_tf32 sets the generic new-API flag; PyTorch then refuses the legacy reads
    torch.backends.fp32_precision = "tf32"
    before = _process_settings()
    assert before.legacy[0] == "mixed"
    with forward_precision("float32", torch.device("cuda")):
        assert _process_settings().leaves == IEEE[0]
    assert _process_settings() == before  # "highest" was, and is, what the legacy setting holds


def test_float32_modes_take_turns_across_threads(restore_process_settings):
    cuda = torch.device("cuda")
    held, entered, release = threading.Event(), threading.Event(), threading.Event()
    seen: dict[str, tuple] = {}

    def tf32_forward():
        with forward_precision("tf32", cuda):
            held.set()
            release.wait(10)
            seen["tf32 at release"] = _process_settings().mode

    def ieee_work():
        held.wait(10)
        with float32_math("ieee"):
            entered.set()
            seen["ieee"] = _process_settings().mode

    threads = [threading.Thread(target=tf32_forward), threading.Thread(target=ieee_work)]
    for t in threads:
        t.start()
    assert held.wait(10)
    assert not entered.wait(0.3)  # the IEEE work waits while a TF32 forward dispatches
    release.set()
    for t in threads:
        t.join(10)
    assert entered.is_set()
    assert seen["tf32 at release"] == TF32  # the other thread did not switch it meanwhile
    assert seen["ieee"] == IEEE

    # holders of one mode share it
    both = threading.Barrier(2, timeout=10)

    def share():
        with float32_math("ieee"):
            both.wait()

    pair = [threading.Thread(target=share) for _ in range(2)]
    for t in pair:
        t.start()
    for t in pair:
        t.join(10)
    assert not both.broken

    # inside a forward, the metrics' own float32 work follows it; another mode there is an error
    with forward_precision("tf32", cuda):
        with float32_math():
            assert _process_settings().mode == TF32
        with pytest.raises(RuntimeError, match="requested inside"):
            with float32_math("ieee"):
                pass
    with float32_math():
        assert _process_settings().mode == IEEE


def _child_takes_ieee(queue) -> None:
    with float32_math("ieee"):
        inside = _process_settings().mode
    queue.put((inside, _process_settings()))


def test_a_child_forked_while_a_mode_is_held_starts_afresh(restore_process_settings):
    import multiprocessing

    before = _process_settings()
    held, release = threading.Event(), threading.Event()

    def tf32_forward():
        with forward_precision("tf32", torch.device("cuda")):
            held.set()
            release.wait(20)

    holder = threading.Thread(target=tf32_forward)
    holder.start()
    try:
        assert held.wait(10)
        ctx = multiprocessing.get_context("fork")
        queue = ctx.Queue()
        child = ctx.Process(target=_child_takes_ieee, args=(queue,), daemon=True)
        child.start()
        try:
            inside, after = queue.get(timeout=30)  # the inherited TF32 holder does not exist in the child
            child.join(10)
        finally:
            if child.is_alive():  # it waits for ever on the inherited lock
                child.kill()
    finally:
        release.set()
        holder.join(10)
    assert inside == IEEE
    assert after == before  # the process's own settings, not the forward's TF32
    assert child.exitcode == 0


def test_parity_scores_ignore_the_process_float32_settings(all_items, restore_process_settings, monkeypatch):
    """Parity protocols compute IEEE float32 whatever the process asked for: the same values as with
    PyTorch's defaults, and every forward and SSIM convolution dispatched in IEEE mode."""
    items = all_items[:6]
    expected = _scores("cielr", None, items)
    seen: list[tuple] = []
    conv2d = torch.nn.functional.conv2d

    def spy_conv2d(*args, **kwargs):
        seen.append(("conv2d", _process_settings().mode))
        return conv2d(*args, **kwargs)

    def record(name):
        return lambda module, args: seen.append((name, _process_settings().mode))

    torch.set_float32_matmul_precision("medium")  # oneDNN bfloat16 matmuls, TF32 on CUDA
    if PER_OP_FLAGS:
        torch.backends.mkldnn.conv.fp32_precision = "bf16"
    before = _process_settings()
    scorer = RegionScorer("cielr", batch_size=16)
    clip = scorer._clip.model
    hooks = [clip.vision_model.register_forward_pre_hook(record("clip_image")),
             clip.text_model.register_forward_pre_hook(record("clip_text")),
             scorer._lpips.register_forward_pre_hook(record("lpips"))]
    monkeypatch.setattr(torch.nn.functional, "conv2d", spy_conv2d)
    matmul = torch.Tensor.__matmul__

    def spy_matmul(a, b):  # the metrics' own float32 products (CLIP's image-text similarity)
        seen.append(("@", _process_settings().mode))
        return matmul(a, b)

    monkeypatch.setattr(torch.Tensor, "__matmul__", spy_matmul)
    try:
        got = dict(scorer.score(items))
    finally:
        for h in hooks:
            h.remove()
    assert {name for name, _ in seen} >= {"clip_image", "clip_text", "lpips", "conv2d", "@"}
    assert all(mode == IEEE for _, mode in seen), sorted(set(seen))
    assert got == expected
    assert _process_settings() == before


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


@pytest.mark.heavy  # about 40 s on a 2-core machine
def test_tf32_deviation_bound_on_all_ciebench_samples(all_items):
    # Unclamped CLIP: the clamp at 0 can only shrink a difference, and most of a random-weight
    # CLIP's cosines are negative, so clamped they would all read 0 and hide the deviation.
    def unclamped(name: str):
        return get_protocol(name).with_(name=f"{name}-unclamped", clip_clamp="none")

    float32 = _scores(unclamped("exact"), ["clip", "lpips"], all_items)
    for rounding in ROUNDINGS:
        with emulated_tf32_forwards(rounding) as calls:
            tf32 = _scores(unclamped("exact-tf32"), ["clip", "lpips"], all_items)
        assert calls["linear"] > 0 and calls["conv2d"] > 0  # the emulation really ran in both models
        clip_dev = _largest_deviation(float32, tf32, "clip")
        lpips_dev = _largest_deviation(float32, tf32, "lpips")
        print(f"tf32 ({rounding}) largest deviation on 86 samples: clip {clip_dev:.4g} points, lpips {lpips_dev:.4g}")
        assert 0 < clip_dev <= TF32_BOUNDS["clip"]
        assert 0 < lpips_dev <= TF32_BOUNDS["lpips"]
