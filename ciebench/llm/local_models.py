"""One loaded local model per (model id, revision, device, dtype) in the process, shared by every user.

The CIELR editor and the IDCS judge may name the same local chat model (the `lite` preset uses
Qwen2.5-VL-3B for both) but spell its placement differently: the editor passes its own device
("cuda"), the judge none, and both dtype "auto". The key is therefore canonical: no device means
cuda:0 when CUDA is available else cpu, "cuda" means cuda:0, "auto" resolves to the dtype the loader
would pick. Equal keys get the same instance.

The registry holds models weakly: a model lives as long as some client (a back end) holds it, so
when the editor closes its clients before scoring, its models are freed unless the judge is using
the very same one.
"""
from __future__ import annotations

import threading
import weakref
from typing import Any, Callable, Hashable

_MODELS: "weakref.WeakValueDictionary[tuple, Any]" = weakref.WeakValueDictionary()
_LOCK = threading.Lock()


def canonical_device(device: str | None) -> str:
    """"cuda" -> "cuda:0"; None -> "cuda:0" when CUDA is available, else "cpu"."""
    if device is None:
        import torch

        return "cuda:0" if torch.cuda.is_available() else "cpu"
    device = str(device)
    return "cuda:0" if device == "cuda" else device


def canonical_dtype(dtype: str, device: str, auto: Callable[[str], str] | None = None) -> str:
    """"auto" as the loader resolves it: `auto(device)`, default bfloat16 on CUDA and float32 elsewhere."""
    if dtype != "auto":
        return dtype
    if auto is not None:
        return auto(device)
    return "bfloat16" if device.startswith("cuda") else "float32"


def model_key(model: str, revision: str | None, device: str | None, dtype: str, kind: Hashable = "chat") -> tuple:
    dev = canonical_device(device)
    return (kind, model, revision or "main", dev, canonical_dtype(dtype, dev))


def shared(key: tuple, factory: Callable[[], Any]) -> Any:
    """The live instance for `key`, built by `factory()` when none is held (loading under the lock,
    so two threads asking at once load it once)."""
    with _LOCK:
        obj = _MODELS.get(key)
        if obj is None:
            obj = factory()
            _MODELS[key] = obj
        return obj


def loaded() -> list[tuple]:
    """Keys of the models alive now (for tests and diagnostics)."""
    with _LOCK:
        return list(_MODELS.keys())


def release_all() -> None:
    """Forget every model: the next request loads again (holders keep theirs until they drop it)."""
    with _LOCK:
        _MODELS.clear()


__all__ = ["canonical_device", "canonical_dtype", "model_key", "shared", "loaded", "release_all"]
