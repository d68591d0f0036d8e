"""ciebench.metrics: region metrics (torchmetrics-style classes and functional twins), scoring
protocols, the batched `RegionScorer`, and the IDCS judge (`ciebench.metrics.idcs`).

Names resolve lazily so importing the package does not import torch or transformers."""
from __future__ import annotations

from importlib import import_module
from typing import Any

_EXPORTS = {
    "Protocol": "protocols",
    "PROTOCOLS": "protocols",
    "get_protocol": "protocols",
    "RegionScorer": "region",
    "ScoreItem": "region",
    "METRIC_INFO": "region",
    "BackgroundPSNR": "modules",
    "BackgroundMSE": "modules",
    "BackgroundSSIM": "modules",
    "BackgroundLPIPS": "modules",
    "RegionCLIPScore": "modules",
    "EditLocality": "modules",
}


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'ciebench.metrics' has no attribute {name!r}")
    return getattr(import_module(f"{__name__}.{module}"), name)


__all__ = sorted(_EXPORTS)
