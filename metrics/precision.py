"""The numeric precision of float32 work: the neural-network forwards (CLIP, LPIPS) per protocol,
and the float32 arithmetic every protocol computes exactly (SSIM's parity path, the text tower).

`Protocol.model_precision` decides the forwards; parity protocols are float32 by construction (the
protocol refuses anything else), so this module can never change a parity number.

- "float32": true float32 (IEEE) matmuls and convolutions, whatever the process's settings. This
  matters: PyTorch runs cuDNN's float32 convolutions in TF32 by default on Ampere and later GPUs,
  and `torch.set_float32_matmul_precision("high" | "medium")` (which users' scripts and training
  frameworks call) turns float32 matmuls into TF32 on CUDA and bfloat16 in oneDNN on CPUs. Under
  any of these a "float32" protocol would silently compute something else.
- "tf32": TF32 tensor-core matmuls and cuDNN convolutions on CUDA (10-bit mantissa inputs, float32
  accumulation). Elsewhere plain float32.
- "bfloat16": `torch.autocast` to bfloat16 on the forward's device (thread-local; on CPUs without
  native bfloat16 this is slower, not faster), the float32 ops inside it in IEEE float32. Outputs
  are brought back to float32 before the unit-normalisations and the reductions.

The math-mode flags (`torch.backends.*.fp32_precision`) are process-global and read when an op is
dispatched, so a mode is held only around the host calls that dispatch the work, and threads that
want different modes take turns (`float32_math`): a "tf32" CLIP forward in one thread never leaks
into a float32 SSIM in another. The process's own settings are restored when the last holder leaves.
"""
from __future__ import annotations

import os
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator, Literal

import torch

from .protocols import MODEL_PRECISIONS

# The largest |bfloat16 - float32| documented for `exact-bf16` against `exact` on CIEBench
# (docs/metrics.md, "Model precision"); tests/test_model_precision.py asserts them and
# benchmarks/bench_metrics.py prints a run's deviation against them.
BF16_BOUNDS = {"clip": 0.5, "lpips": 0.01}  # CLIP in score points (100 x cosine)
# The same for `exact-tf32`, measured with TF32 emulated on a CPU (tests/support/emulated_tf32.py;
# no GPU was available): at most 0.051 CLIP points and 1.6e-4 LPIPS, bounds about 5x and 12x above.
TF32_BOUNDS = {"clip": 0.25, "lpips": 0.002}
DEVIATION_BOUNDS = {"bfloat16": BF16_BOUNDS, "tf32": TF32_BOUNDS}  # by Protocol.model_precision

MathMode = Literal["ieee", "tf32"]


def _leaves(module, *names: str) -> tuple:
    """The per-op flags (`fp32_precision`, PyTorch >= 2.9) this PyTorch has; none before 2.9, where
    the legacy settings alone decide (and `allow_tf32 = False` also keeps oneDNN off bfloat16)."""
    found = (getattr(module, name, None) for name in names)
    return tuple(leaf for leaf in found if leaf is not None and hasattr(leaf, "fp32_precision"))


_CUDNN_LEAVES = _leaves(torch.backends.cudnn, "conv", "rnn")
_ONEDNN_LEAVES = _leaves(torch.backends.mkldnn, "matmul", "conv", "rnn")
_LEAVES = _leaves(torch.backends.cuda, "matmul") + _CUDNN_LEAVES + _ONEDNN_LEAVES


@dataclass(frozen=True)
class _Flags:
    """The process's float32 math settings: every per-op flag, and the two legacy settings PyTorch
    checks them against (None where the process's settings were already inconsistent, so unreadable)."""
    leaves: tuple[str, ...]
    matmul_precision: str | None  # torch.get_float32_matmul_precision()
    cudnn_tf32: bool | None  # torch.backends.cudnn.allow_tf32

    @classmethod
    def capture(cls) -> "_Flags":
        return cls(tuple(leaf.fp32_precision for leaf in _LEAVES), _readable(torch.get_float32_matmul_precision),
                   _readable(lambda: torch.backends.cudnn.allow_tf32))

    def restore(self) -> None:
        if self.matmul_precision is not None:
            torch.set_float32_matmul_precision(self.matmul_precision)
        if self.cudnn_tf32 is not None:
            torch.backends.cudnn.allow_tf32 = self.cudnn_tf32
        for leaf, value in zip(_LEAVES, self.leaves):
            leaf.fp32_precision = value


def _readable(read):
    try:
        return read()
    except RuntimeError:  # "you have used a mix of the legacy and new APIs"
        return None


def _apply(mode: str) -> None:
    """Set `mode` so that PyTorch's checks pass: cuBLAS refuses (raises on every float32 matmul)
    when the legacy matmul precision and the per-op flag disagree, so both are set together; the
    per-op flags are set explicitly, since "none" would inherit `torch.backends.fp32_precision`."""
    tf32 = mode == "tf32"
    for leaf in _ONEDNN_LEAVES:  # "tf32" is a CUDA mode: oneDNN keeps IEEE float32 (plain float32 on CPUs)
        leaf.fp32_precision = "ieee"
    torch.backends.cuda.matmul.allow_tf32 = tf32  # legacy "high" / "highest" and the CUDA matmul flag
    torch.backends.cudnn.allow_tf32 = tf32
    for leaf in _CUDNN_LEAVES:
        leaf.fp32_precision = "tf32" if tf32 else "ieee"


class _ModeLock:
    """Holders of the same mode share it; a different mode waits until the last holder leaves."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._mode: str | None = None
        self._holders = 0
        self._saved: _Flags | None = None
        self._local = threading.local()  # this thread's held modes, innermost last

    def held(self) -> str | None:
        stack = getattr(self._local, "stack", None)
        return stack[-1] if stack else None

    @contextmanager
    def hold(self, mode: str) -> Iterator[None]:
        stack = self._local.__dict__.setdefault("stack", [])
        if stack and stack[-1] != mode:  # waiting here would wait for ourselves
            raise RuntimeError(f"float32 math mode {mode!r} requested inside {stack[-1]!r} in the same thread")
        with self._cond:
            while self._holders and self._mode != mode:
                self._cond.wait()
            if self._holders == 0:
                self._saved = _Flags.capture()
                _apply(mode)
                self._mode = mode
            self._holders += 1
        stack.append(mode)
        try:
            yield
        finally:
            stack.pop()
            with self._cond:
                self._holders -= 1
                if self._holders == 0:
                    self._saved.restore()
                    self._mode, self._saved = None, None
                    self._cond.notify_all()


_LOCK = _ModeLock()


def _reset_in_forked_child() -> None:
    """A child forked while another thread held a mode inherits the lock held by a thread that does
    not exist there (its first other mode would wait forever) and that mode's flags: start afresh
    with the process's own settings."""
    global _LOCK
    saved = _LOCK._saved
    _LOCK = _ModeLock()
    if saved is not None:
        saved.restore()


if hasattr(os, "register_at_fork"):  # POSIX
    os.register_at_fork(after_in_child=_reset_in_forked_child)


def float32_math(mode: MathMode | None = None):
    """A context manager holding the float32 math mode for the matmuls and convolutions this thread
    dispatches inside it. None: the mode this thread already holds (a protocol's forward), else
    IEEE float32: what the metrics' own float32 arithmetic always uses."""
    if mode not in (None, "ieee", "tf32"):
        raise ValueError(f"unknown float32 math mode {mode!r} (ieee | tf32)")
    return _LOCK.hold(mode or _LOCK.held() or "ieee")


def forward_precision(precision: str, device: torch.device):
    """A context manager for one model forward at `precision` ("float32" | "tf32" | "bfloat16")."""
    if precision not in MODEL_PRECISIONS:
        raise ValueError(f"unknown model precision {precision!r} ({' | '.join(MODEL_PRECISIONS)})")
    return _forward(precision, device)


@contextmanager
def _forward(precision: str, device: torch.device) -> Iterator[None]:
    with float32_math("tf32" if precision == "tf32" and device.type == "cuda" else "ieee"):
        if precision == "bfloat16":
            with torch.autocast(device_type=device.type, dtype=torch.bfloat16):
                yield
        else:
            yield
