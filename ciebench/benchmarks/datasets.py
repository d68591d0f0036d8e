"""CIEBench and Reason-Edit as registered benchmarks: they run through the dataset pipeline (region
metrics on masks, optional IDCS judge), so `--benchmark ciebench` is `--dataset ciebench`."""
from __future__ import annotations

from .base import Benchmark


class CIEBench(Benchmark):
    name = "ciebench"
    title = "CIEBench"
    size = 86
    categories = ("remove", "replace", "add", "recolor", "other")
    licence = "see the release"
    needs = ("release download (checksummed)", "optional judge for IDCS")
    headline = "region metrics (protocol cielr)"
    pipeline = "dataset"
    dataset_spec = "ciebench"


class ReasonEdit(Benchmark):
    name = "reason-edit"
    title = "Reason-Edit"
    size = 219
    categories = ("reason-edit",)
    licence = "not stated"
    needs = ("the Reason-Edit folder (--benchmark-root)", "optional judge for IDCS")
    headline = "region metrics (protocol smartedit)"
    pipeline = "dataset"
    dataset_spec = None  # a folder the user names: --benchmark-root
