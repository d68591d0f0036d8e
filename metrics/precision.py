"""The numeric precision of the neural-network forwards (CLIP image tower, LPIPS), per protocol.

`Protocol.model_precision` decides it; parity protocols are float32 by construction (the protocol
refuses anything else), so this module can never change a parity number.

- "float32": nothing changes.
- "tf32": TF32 tensor-core matmuls and cuDNN convolutions on CUDA (10-bit mantissa inputs, float32
  accumulation). The flags are process-global, so they are switched on while any forward runs under
  "tf32" (reference-counted across threads) and restored after. Elsewhere plain float32.
- "bfloat16": `torch.autocast` to bfloat16 on the forward's device (thread-local; on CPUs without
  native bfloat16 this is slower, not faster). Outputs are brought back to float32 before the
  unit-normalisations and the reductions.
"""
from __future__ import annotations

import threading
from contextlib import contextmanager, nullcontext
from typing import Iterator

import torch

# The largest |bfloat16 - float32| documented for `exact-bf16` against `exact` on CIEBench
# (docs/metrics.md, "Model precision"); tests/test_model_precision.py asserts them and
# benchmarks/bench_metrics.py prints a run's deviation against them.
BF16_BOUNDS = {"clip": 0.5, "lpips": 0.01}  # CLIP in score points (100 x cosine)

_tf32_lock = threading.Lock()
_tf32_users = 0
_tf32_saved: tuple[bool, bool] | None = None


@contextmanager
def _tf32() -> Iterator[None]:
    global _tf32_users, _tf32_saved
    with _tf32_lock:
        if _tf32_users == 0:
            _tf32_saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        _tf32_users += 1
    try:
        yield
    finally:
        with _tf32_lock:
            _tf32_users -= 1
            if _tf32_users == 0 and _tf32_saved is not None:
                torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = _tf32_saved
                _tf32_saved = None


def forward_precision(precision: str, device: torch.device):
    """A context manager for one model forward at `precision` ("float32" | "tf32" | "bfloat16")."""
    if precision == "float32":
        return nullcontext()
    if precision == "tf32":
        return _tf32() if device.type == "cuda" else nullcontext()
    if precision == "bfloat16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    raise ValueError(f"unknown model precision {precision!r} (float32 | tf32 | bfloat16)")
