"""Small helpers shared by the CIELR model wrappers: device / dtype choice, call counters, grouping."""
from __future__ import annotations

import threading
import time
from collections import defaultdict
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Hashable, Iterator, Sequence, TypeVar

T = TypeVar("T")


def torch_dtype(name: str, device: str):
    """"auto": float16 on CUDA, float32 elsewhere; else the named torch dtype."""
    import torch

    if name == "auto":
        return torch.float16 if str(device).startswith("cuda") else torch.float32
    try:
        dtype = getattr(torch, name)
    except AttributeError:
        raise ValueError(f"unknown dtype {name!r}; use auto, float32, float16 or bfloat16") from None
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"unknown dtype {name!r}")
    return dtype


@dataclass
class CallStats:
    """How often a model ran, on how many images, and for how long (thread-safe)."""

    calls: int = 0  # forward batches
    images: int = 0  # images processed
    seconds: float = 0.0
    per_key: dict[Hashable, int] = field(default_factory=lambda: defaultdict(int))  # key -> batches it was in
    per_key_seconds: dict[Hashable, float] = field(default_factory=lambda: defaultdict(float))  # amortised
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @contextmanager
    def track(self, keys: Sequence[Hashable] = ()) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            with self._lock:
                self.calls += 1
                self.images += len(keys)
                self.seconds += time.perf_counter() - t0
                share = (time.perf_counter() - t0) / max(1, len(keys))
                for k in keys:
                    self.per_key[k] += 1
                    self.per_key_seconds[k] += share

    def to_dict(self) -> dict[str, Any]:
        with self._lock:
            return {"calls": self.calls, "images": self.images, "seconds": round(self.seconds, 4)}


def group_by(items: Sequence[T], key: Callable[[T], Hashable]) -> list[list[int]]:
    """Indices of `items` grouped by `key`, groups in first-seen order."""
    groups: dict[Hashable, list[int]] = {}
    for i, item in enumerate(items):
        groups.setdefault(key(item), []).append(i)
    return list(groups.values())


def chunks(indices: Sequence[int], size: int) -> list[list[int]]:
    size = max(1, int(size))
    return [list(indices[i:i + size]) for i in range(0, len(indices), size)]
