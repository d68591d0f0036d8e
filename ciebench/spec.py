"""The frozen run spec: everything that decides a run's results, written to `spec.json` before any
work starts. Two runs with the same `spec_hash` must give the same numbers."""
from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from .io import stable_hash

# Fields of the dataset block that record where the data came from, not what it is: not hashed.
DATASET_PROVENANCE = ("spec", "release")


def legacy_release_revision(dataset: dict[str, Any]) -> str | None:
    """The revision ciebench 0.x recorded for the official release before it recorded content
    revisions: "release-<manifest revision>[-unverified]"; None for any other dataset. Run folders
    holding it still resume (`RunSpec.legacy_spec_hash`), verify and load in the leaderboard."""
    release = dataset.get("release")
    return f"release-{release}" if release else None


def is_legacy_release_revision(revision: str) -> bool:
    return revision.startswith("release-")


@dataclass(frozen=True)
class RunSpec:
    editor: dict[str, Any] | None  # Editor.describe(): name, class, version, config, oracle_mask; None: `score`
    dataset: dict[str, Any]  # spec, kind, revision, n
    seeds: tuple[int, ...]
    protocol: dict[str, Any]  # name, hash and every field
    metrics: tuple[str, ...]
    judge: dict[str, Any] | None
    limit: int | None = None
    ciebench_version: str = ""
    notes: dict[str, Any] = field(default_factory=dict)  # recorded, not hashed (device, backend)
    predictions: str | None = None  # `ciebench score`: the folder of predictions scored; recorded, not hashed
    # `ciebench score --predictions hf:...`: the export they came from (spec, hub commit, dataset
    # fingerprint), since `predictions` is then a cache folder; recorded, not hashed
    predictions_source: dict[str, Any] | None = None

    @property
    def editor_config_hash(self) -> str:
        return stable_hash({k: (self.editor or {}).get(k) for k in ("class", "version", "config")})

    @property
    def spec_hash(self) -> str:
        """Hash of what decides the results. The dataset enters by its kind, content revision and size,
        not by how its path was spelled, so `ds`, `./ds` and `/abs/ds/` resume the same run."""
        decided = {k: v for k, v in asdict(self).items() if k not in ("notes", "predictions", "predictions_source")}
        decided["dataset"] = {k: v for k, v in self.dataset.items() if k not in DATASET_PROVENANCE}
        return stable_hash(decided)

    @property
    def legacy_spec_hash(self) -> str | None:
        """The spec_hash an older ciebench gave this spec, where it differs: a run on the official
        release recorded `legacy_release_revision` instead of the content revision. None otherwise."""
        legacy = legacy_release_revision(self.dataset)
        if legacy is None:
            return None
        dataset = {k: v for k, v in self.dataset.items() if k != "release"}
        return replace(self, dataset={**dataset, "revision": legacy}).spec_hash

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["seeds"] = list(self.seeds)
        d["metrics"] = list(self.metrics)
        if self.editor is not None:
            # A `score` spec has no hash: its results depend on the predictions' content, which a spec
            # cannot pin, so two scorings with one spec need not agree (and `verify` skips the check).
            d["spec_hash"] = self.spec_hash
            d["editor_config_hash"] = self.editor_config_hash
        return d


def derive_seed(sample_id: str, seed: int) -> int:
    """The generation seed for (sample, run seed): independent of batch order, backend and resume."""
    digest = hashlib.sha256(f"{sample_id}\x00{seed}".encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF
