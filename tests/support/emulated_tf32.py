"""TF32 arithmetic emulated on a CPU: what the `exact-tf32` protocol changes on a GPU, measured
without one.

On CUDA, `exact-tf32` runs the float32 matmuls and convolutions of the CLIP image tower and LPIPS on
TF32 tensor cores: each input is converted to TF32 (float32's 8-bit exponent, 10 of its 23 mantissa
bits) and the products are summed in float32. On a CPU `exact-tf32` is plain float32
(`ciebench.metrics.precision`), so there its deviation from `exact` is zero and says nothing.
`EmulatedTF32` reproduces the conversion: inside it, every float32 product the thread dispatches
first rounds its inputs to TF32, then runs in float32.

What is emulated, and how faithfully:
- The conversion's rounding: "nearest" (half to even) or "truncate" (the 13 low bits dropped).
  NVIDIA documents neither for cuBLAS and cuDNN, so the benchmark measures both.
- The products: linear, matmul / mm / bmm / addmm / baddbmm / addbmm (their bias or `input` term
  is added in float32, as cuBLAS's epilogue does), conv1d/2d/3d and their transposes, and
  scaled_dot_product_attention, computed from its definition with both products' inputs rounded
  (PyTorch's math backend under TF32; a fused float32 attention kernel may keep more precision).
- Any other op that a GPU would run as a float32 GEMM (einsum, tensordot, ...) raises instead of
  silently staying float32.
- Depthwise float32 convolutions in the default (contiguous) layout stay float32: PyTorch runs them
  with its own CUDA kernel, not cuDNN (aten/src/ATen/native/Convolution.cpp, `use_cudnn_depthwise`:
  cuDNN only for float16, or channels-last), so TF32 never applies. torchmetrics' SSIM window is one.
- `which="convolutions"`: convolutions only, PyTorch's defaults on CUDA (cuDNN's float32
  convolutions in TF32, matmuls in IEEE float32), i.e. what a script that sets nothing computes on
  an Ampere-or-later GPU.
- Not emulated: the order in which a GPU sums (float32 rounding noise, about 1e-7 relative).

`emulated_tf32_forwards()` applies it exactly where `exact-tf32` holds TF32 on CUDA: the region
scorer's CLIP image and LPIPS forwards (`metrics.precision.forward_precision`), nothing else.
`benchmarks/bench_metrics.py --protocol exact-tf32 --emulate-tf32 nearest,truncate` measures the
real-size models with it; tests/test_model_precision.py checks the documented bound with it.
"""
from __future__ import annotations

import math
import threading
from collections import Counter
from contextlib import contextmanager
from typing import Any, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.overrides import TorchFunctionMode

ROUNDINGS = ("nearest", "truncate")
_DROPPED_BITS = 13  # float32 keeps 23 mantissa bits, TF32 10
_KEEP_MASK = -(1 << _DROPPED_BITS)  # int32 with the 13 low bits clear
_HALF = (1 << (_DROPPED_BITS - 1)) - 1  # 0x0FFF: just under half of the dropped unit


def round_to_tf32(x: Tensor, rounding: str = "nearest") -> Tensor:
    """`x` with each float32 value rounded to TF32 (other dtypes are returned as they are); infinities
    and NaNs are kept, a finite value beyond TF32's range rounds to infinity as in any IEEE format."""
    if rounding not in ROUNDINGS:
        raise ValueError(f"unknown TF32 rounding {rounding!r} ({' | '.join(ROUNDINGS)})")
    if x.dtype != torch.float32:
        return x
    bits = x.view(torch.int32)
    if rounding == "nearest":
        # Adding just under half a unit of the kept bits, plus the lowest kept bit, carries exactly when
        # the dropped part is above half, or at half with an odd kept part (ties to even). The sign bit
        # is untouched: float bits are sign and magnitude, and a finite magnitude cannot carry into it.
        bits = bits + (_HALF + ((bits >> _DROPPED_BITS) & 1))
    rounded = (bits & _KEEP_MASK).view(torch.float32)
    return torch.where(torch.isfinite(x), rounded, x)


# op -> (name, positions and keyword names of the operands that a GPU converts to TF32)
_TWO = ((0, 1), ("input", "other", "weight", "mat2"))
_ACCUMULATE = ((1, 2), ("mat1", "mat2", "batch1", "batch2"))  # the bias-like `input` term stays float32
_MATMULS = {
    F.linear: ("linear", (0, 1), ("input", "weight")),
    torch.matmul: ("matmul", *_TWO), torch.Tensor.matmul: ("matmul", *_TWO),
    torch.Tensor.__matmul__: ("matmul", *_TWO), torch.Tensor.__rmatmul__: ("matmul", *_TWO),
    torch.mm: ("mm", *_TWO), torch.Tensor.mm: ("mm", *_TWO),
    torch.bmm: ("bmm", *_TWO), torch.Tensor.bmm: ("bmm", *_TWO),
    torch.addmm: ("addmm", *_ACCUMULATE), torch.Tensor.addmm: ("addmm", *_ACCUMULATE),
    torch.baddbmm: ("baddbmm", *_ACCUMULATE), torch.Tensor.baddbmm: ("baddbmm", *_ACCUMULATE),
    torch.addbmm: ("addbmm", *_ACCUMULATE), torch.Tensor.addbmm: ("addbmm", *_ACCUMULATE),
}
_CONVOLUTIONS = {getattr(F, conv): (conv, (0, 1), ("input", "weight"))
                 for conv in ("conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d", "conv_transpose3d")}
# the products a GPU runs in TF32: all of them in `exact-tf32`'s forwards; convolutions under PyTorch's defaults
_PRODUCTS = {"all": {**_MATMULS, **_CONVOLUTIONS}, "convolutions": _CONVOLUTIONS}
WHICH = tuple(_PRODUCTS)


# Ops a GPU would also run as float32 GEMMs, which this emulation does not decompose: refused, so a
# model that uses one cannot get a deviation that silently left it out.
_REFUSED = {torch.einsum: "einsum", torch.tensordot: "tensordot", F.bilinear: "bilinear",
            torch.chain_matmul: "chain_matmul", torch.linalg.multi_dot: "linalg.multi_dot",
            F.multi_head_attention_forward: "multi_head_attention_forward"}


_DEPTHWISE_CAPABLE = ("conv2d", "conv3d")  # PyTorch's native CUDA depthwise kernels (not transposed)


def _native_depthwise(args: tuple, kwargs: dict) -> bool:
    """Whether CUDA would run this float32 convolution with PyTorch's depthwise kernel instead of cuDNN:
    one input channel per group (several groups), weights a multiple of the groups, and neither
    tensor channels-last (which PyTorch sends to cuDNN)."""
    x = args[0] if args else kwargs.get("input")
    weight = args[1] if len(args) > 1 else kwargs.get("weight")
    groups = args[6] if len(args) > 6 else kwargs.get("groups", 1)
    if not isinstance(x, Tensor) or not isinstance(weight, Tensor) or x.dtype != torch.float32 or x.dim() not in (4, 5):
        return False
    channels_last = torch.channels_last if x.dim() == 4 else torch.channels_last_3d
    if any(t.is_contiguous(memory_format=channels_last) and not t.is_contiguous() for t in (x, weight)):
        return False
    return groups > 1 and x.shape[1] == groups and weight.shape[0] % groups == 0


class EmulatedTF32(TorchFunctionMode):
    """Inside (thread-local, like every torch function mode): float32 products with TF32 inputs, all of
    them or (`which="convolutions"`) the convolutions only. `calls` counts the emulated dispatches per
    op, so a caller can see what was covered."""

    def __init__(self, rounding: str = "nearest", which: str = "all") -> None:
        super().__init__()
        if rounding not in ROUNDINGS:
            raise ValueError(f"unknown TF32 rounding {rounding!r} ({' | '.join(ROUNDINGS)})")
        if which not in WHICH:
            raise ValueError(f"unknown TF32 products {which!r} ({' | '.join(WHICH)})")
        self.rounding = rounding
        self.matmuls = which == "all"
        self.calls: Counter[str] = Counter()
        self._products = _PRODUCTS[which]

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.scaled_dot_product_attention and self.matmuls:
            self.calls["scaled_dot_product_attention"] += 1
            return self._attention(*args, **kwargs)
        if func in _REFUSED and self.matmuls:
            raise NotImplementedError(f"{_REFUSED[func]} is not emulated in TF32 (tests/support/emulated_tf32.py): "
                                      "add it before measuring a model that uses it")
        rule = self._products.get(func)
        if rule is None:
            return func(*args, **kwargs)
        name, positions, names = rule
        if name in _DEPTHWISE_CAPABLE and _native_depthwise(args, kwargs):
            self.calls[f"{name} (depthwise, float32)"] += 1
            return func(*args, **kwargs)
        self.calls[name] += 1
        args = tuple(self._round(a) if i in positions else a for i, a in enumerate(args))
        kwargs = {k: self._round(v) if k in names else v for k, v in kwargs.items()}
        return func(*args, **kwargs)

    def _round(self, x: Any) -> Any:
        return round_to_tf32(x, self.rounding) if isinstance(x, Tensor) else x

    def _attention(self, query: Tensor, key: Tensor, value: Tensor, attn_mask: Tensor | None = None,
                   dropout_p: float = 0.0, is_causal: bool = False, scale: float | None = None,
                   enable_gqa: bool = False) -> Tensor:
        if dropout_p or enable_gqa:
            raise NotImplementedError("emulated TF32 attention supports neither dropout nor grouped-query attention")
        if query.dtype != torch.float32:
            return F.scaled_dot_product_attention(query, key, value, attn_mask, dropout_p, is_causal, scale)
        scale = 1 / math.sqrt(query.shape[-1]) if scale is None else scale
        scores = torch.matmul(self._round(query * scale), self._round(key).transpose(-2, -1))
        if is_causal:
            n, m = scores.shape[-2:]
            scores = scores.masked_fill(~torch.ones(n, m, dtype=torch.bool, device=scores.device).tril(), -math.inf)
        if attn_mask is not None:
            scores = scores.masked_fill(~attn_mask, -math.inf) if attn_mask.dtype == torch.bool else scores + attn_mask
        return torch.matmul(self._round(torch.softmax(scores, dim=-1)), self._round(value))


@contextmanager
def emulated_tf32_forwards(rounding: str = "nearest") -> Iterator[Counter]:
    """Inside: the region scorer's `tf32` forwards on a CPU (CLIP image tower, LPIPS) run under
    `EmulatedTF32`, in whichever thread dispatches them; float32 and bfloat16 forwards, and all other
    work, are untouched. Yields the emulated dispatches per op, filled as forwards finish."""
    from ciebench.metrics import region

    real = region.forward_precision
    calls: Counter[str] = Counter()
    lock = threading.Lock()

    @contextmanager
    def forward(precision: str, device: torch.device) -> Iterator[None]:
        with real(precision, device):
            if precision == "tf32" and device.type == "cpu":
                mode = EmulatedTF32(rounding)
                with mode:
                    yield
                with lock:
                    calls.update(mode.calls)
            else:
                yield

    region.forward_precision = forward
    try:
        yield calls
    finally:
        region.forward_precision = real
