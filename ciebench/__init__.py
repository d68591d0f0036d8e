"""ciebench: benchmark and evaluation toolkit for reasoning-driven image editing."""
from __future__ import annotations

from .lazy import lazy_exports

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
    "evaluate": "ciebench.api",
    "score": "ciebench.api",
    "RunResult": "ciebench.api",
    "Backend": "ciebench.backend",
    "LocalBackend": "ciebench.backend",
    "RayBackend": "ciebench.distributed",
    "RayOptions": "ciebench.distributed",
}


__getattr__, _names = lazy_exports(__name__, _EXPORTS)
__all__ = _names + ["__version__"]
