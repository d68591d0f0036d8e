"""Editors for the Ray backend tests (importable by Ray workers as tests.support.editors_for_ray:Class)."""
from __future__ import annotations

import os
import time
from dataclasses import dataclass

from ciebench import EditorConfig, EditRequest, EditResult, Editor


@dataclass(frozen=True)
class CrashConfig(EditorConfig):
    log: str = ""  # one line "<sample id> <pid>" per finished edit
    crash_on: str = ""  # the worker process dies (os._exit) when it starts editing this sample ...
    marker: str = ""  # ... the first time only: the crash appends its pid here, and a later attempt survives
    always: bool = False  # ... every time (a sample that always kills its worker)
    delay: float = 0.0


class CrashingEditor(Editor):
    """Identity that kills its own process mid-sample, as a worker lost to a segfault or the OOM killer."""

    name = "crashing"
    Config = CrashConfig

    def edit(self, requests: list[EditRequest]) -> list[EditResult]:
        cfg = self.config
        out = []
        for r in requests:
            if r.sample_id == cfg.crash_on and (cfg.always or not os.path.exists(cfg.marker)):
                with open(cfg.marker, "a") as fh:
                    fh.write(f"{os.getpid()}\n")
                os._exit(1)
            time.sleep(cfg.delay)
            if cfg.log:
                with open(cfg.log, "a") as fh:
                    fh.write(f"{r.sample_id} {os.getpid()}\n")
            out.append(EditResult(image=r.image.copy()))
        return out


class PatchEditor(Editor):
    """Cheap and deterministic: paints a seeded colour patch at a seeded place, so every sample gets
    different, finite metrics (a light stand-in for a real editor in tests and benchmarks)."""

    name = "patch"

    def edit(self, requests: list[EditRequest]) -> list[EditResult]:
        import numpy as np
        from PIL import Image

        out = []
        for r in requests:
            rng = np.random.default_rng(r.seed)
            a = np.array(r.image)
            h, w = a.shape[:2]
            y, x = int(rng.integers(0, h - h // 4)), int(rng.integers(0, w - w // 4))
            a[y:y + h // 4, x:x + w // 4] = rng.integers(0, 256, size=3, dtype=np.uint8)
            out.append(EditResult(image=Image.fromarray(a), trace={"patch": [x, y, w // 4, h // 4]}))
        return out


@dataclass(frozen=True)
class OwnCacheConfig(EditorConfig):
    worker_cache: str = ""  # the hub cache a Ray worker reads, as a worker on another machine reads its own


class OwnCacheEditor(Editor):
    """Identity that declares one hub model (never loaded). Inside a Ray actor it takes `worker_cache`
    as its machine's hub cache, as a worker on another machine would have."""

    name = "own-cache"
    Config = OwnCacheConfig
    HUB_MODEL = "ciebench-tests/ray-worker-model"

    def required_assets(self):
        from ciebench.requirements import hub_repo

        return [hub_repo(self.HUB_MODEL, used_by=f"editor {self.name}")]

    def edit(self, requests: list[EditRequest]) -> list[EditResult]:
        import ray
        from huggingface_hub import constants

        if ray.is_initialized() and ray.get_runtime_context().get_actor_id() is not None:
            constants.HF_HUB_CACHE = self.config.worker_cache
        return [EditResult(image=r.image.copy()) for r in requests]
