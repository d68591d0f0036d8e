"""The benchmark registry: built-ins, the entry-point group `ciebench.benchmarks`, or package.module:Class.

    from ciebench.benchmarks import get_benchmark
    bench = get_benchmark("risebench")
"""
from __future__ import annotations

from ciebench.registry import Registry, RegistryError

from .base import Benchmark, Case, JudgeCall

BENCHMARKS = Registry(
    kind="benchmark",
    builtins={
        "ciebench": "ciebench.benchmarks.datasets:CIEBench",
        "reason-edit": "ciebench.benchmarks.datasets:ReasonEdit",
        "risebench": "ciebench.benchmarks.rise:RiseBench",
        "risebench-plus": "ciebench.benchmarks.rise:RiseBenchPlus",
        "kris": "ciebench.benchmarks.kris:KrisBench",
        "gedit": "ciebench.benchmarks.gedit:GEditBench",
        "unireditbench": "ciebench.benchmarks.unireditbench:UniREditBench",
        "imgedit": "ciebench.benchmarks.imgedit:ImgEditBasic",
        "imgedit-uge": "ciebench.benchmarks.imgedit:ImgEditUGE",
        "wiseedit": "ciebench.benchmarks.wiseedit:WiseEdit",
    },
    entry_point_group="ciebench.benchmarks",
)


def get_benchmark(name: str) -> Benchmark:
    cls = BENCHMARKS.resolve(name)
    if not (isinstance(cls, type) and issubclass(cls, Benchmark)):
        raise RegistryError(f"{name!r} resolves to {cls!r}, which is not a ciebench Benchmark subclass")
    return cls()


__all__ = ["BENCHMARKS", "Benchmark", "Case", "JudgeCall", "get_benchmark"]
