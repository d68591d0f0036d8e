"""Editors used by the runner tests (importable as tests.support.editors_for_tests:Class from subprocesses)."""
from __future__ import annotations

import os
import time
from dataclasses import dataclass

import numpy as np
from PIL import Image

from ciebench import EditorConfig, EditRequest, EditResult, Editor


class NoisyEditor(Editor):
    """Adds seeded Gaussian noise inside the left half: deterministic given the request seed."""

    name = "noisy"

    def edit(self, requests: list[EditRequest]) -> list[EditResult]:
        results = []
        for r in requests:
            rng = np.random.default_rng(r.seed)
            a = np.asarray(r.image, dtype=np.float64)
            a[:, : a.shape[1] // 2] += rng.normal(0, 20, size=a[:, : a.shape[1] // 2].shape)
            results.append(EditResult(image=Image.fromarray(np.clip(a, 0, 255).astype(np.uint8)),
                                      trace={"seed": r.seed, "steps": ["noise"]}))
        return results


class HubNoisyEditor(NoisyEditor):
    """NoisyEditor that declares a hub model (never loaded): a run records the commit the hub cache
    resolves it to."""

    name = "hub-noisy"
    HUB_MODEL = "ciebench-tests/tiny-model"

    def required_assets(self):
        from ciebench.requirements import hub_repo

        return [hub_repo(self.HUB_MODEL, used_by=f"editor {self.name}")]


class FaultyEditor(Editor):
    """Raises on one sample, returns a wrong-sized image on another and NaNs on a third."""

    name = "faulty"
    RAISE, WRONG_SIZE, NAN = "astronaut-flag", "coffee-cup", "chelsea-nose"

    def edit(self, requests: list[EditRequest]) -> list[EditResult]:
        results = []
        for r in requests:
            if r.sample_id == self.RAISE:
                raise RuntimeError("simulated CUDA error")
            if r.sample_id == self.WRONG_SIZE:
                results.append(EditResult(image=r.image.resize((64, 48))))
            elif r.sample_id == self.NAN:
                a = np.asarray(r.image, dtype=np.float32) / 255.0
                a[0, 0, 0] = np.nan
                results.append(EditResult(image=a))
            else:
                results.append(EditResult(image=r.image.copy()))
        return results


@dataclass(frozen=True)
class CountingConfig(EditorConfig):
    delay: float = 0.0
    log: str = ""


class CountingEditor(Editor):
    """Identity that appends each sample id it edits to `log` (one line per call) and can be slow,
    so a test can kill a run part-way and count what was regenerated."""

    name = "counting"
    Config = CountingConfig

    def edit(self, requests: list[EditRequest]) -> list[EditResult]:
        out = []
        for r in requests:
            if self.config.log:
                with open(self.config.log, "a") as fh:
                    fh.write(r.sample_id + "\n")
                    fh.flush()
                    os.fsync(fh.fileno())
            time.sleep(self.config.delay)
            out.append(EditResult(image=r.image.copy()))
        return out
