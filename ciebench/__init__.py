"""ciebench: benchmark and evaluation toolkit for reasoning-driven image editing."""
from __future__ import annotations

from importlib import import_module
from typing import Any

__version__ = "0.1.0"

# Public names resolve lazily so `import ciebench` stays light (no torch until it is needed).
_EXPORTS = {
    "load_dataset": "ciebench.datasets",
    "read_dataset": "ciebench.datasets",
    "iter_samples": "ciebench.datasets",
    "DatasetError": "ciebench.datasets",
    "EditSample": "ciebench.schema",
    "FEATURES": "ciebench.schema",
    "Editor": "ciebench.editor",
    "EditRequest": "ciebench.editor",
    "EditResult": "ciebench.editor",
    "EditorConfig": "ciebench.editor",
}


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'ciebench' has no attribute {name!r}")
    return getattr(import_module(module), name)


__all__ = sorted(_EXPORTS) + ["__version__"]
