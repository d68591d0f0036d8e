"""ciebench.metrics: the metric catalogue (`ciebench.metrics.catalogue`: every metric's name,
direction, title and family), region metrics (torchmetrics-style classes and functional twins), scoring
protocols, the batched `RegionScorer`, and the IDCS judge (`ciebench.metrics.idcs`).

Names resolve lazily so importing the package does not import torch or transformers."""
from __future__ import annotations

from ciebench.lazy import lazy_exports

_EXPORTS = {
    "Protocol": "ciebench.metrics.protocols",
    "PROTOCOLS": "ciebench.metrics.protocols",
    "get_protocol": "ciebench.metrics.protocols",
    "RegionScorer": "ciebench.metrics.region",
    "ScoreItem": "ciebench.metrics.region",
    "METRIC_INFO": "ciebench.metrics.region",
    "MetricInfo": "ciebench.metrics.catalogue",
    "CATALOGUE": "ciebench.metrics.catalogue",
    "BackgroundPSNR": "ciebench.metrics.modules",
    "BackgroundMSE": "ciebench.metrics.modules",
    "BackgroundSSIM": "ciebench.metrics.modules",
    "BackgroundLPIPS": "ciebench.metrics.modules",
    "RegionCLIPScore": "ciebench.metrics.modules",
    "EditLocality": "ciebench.metrics.modules",
}


__getattr__, __all__ = lazy_exports(__name__, _EXPORTS)
