"""The frozen run spec: everything that decides a run's results, written to `spec.json` before any
work starts. Two runs with the same `spec_hash` must give the same numbers."""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Any

from .io import stable_hash

# Fields of the dataset block that record where the data came from, not what it is: not hashed.
DATASET_PROVENANCE = ("spec", "release")
# Top-level fields recorded beside what decides the results (or derived from it): not hashed.
RECORDED_ONLY = ("notes", "predictions", "predictions_source", "spec_hash", "editor_config_hash")


def decided_fields(spec: dict[str, Any]) -> dict[str, Any]:
    """The part of a spec (as `RunSpec.to_dict()` or spec.json holds it) that decides the results:
    what `spec_hash` hashes."""
    decided = {k: v for k, v in spec.items() if k not in RECORDED_ONLY}
    decided["dataset"] = {k: v for k, v in (spec.get("dataset") or {}).items() if k not in DATASET_PROVENANCE}
    return decided


def spec_differences(recorded: dict[str, Any], current: dict[str, Any], limit: int = 6) -> list[str]:
    """Where two specs (plain JSON-like dicts) differ, as `path: recorded -> now` lines, deepest keys
    first found, at most `limit` (then a count): what a refused resume tells the user to change."""
    found: list[str] = []

    def show(value: Any) -> str:
        text = "(absent)" if value is _ABSENT else json.dumps(value, sort_keys=True, default=str)
        return text if len(text) <= 80 else text[:77] + "..."

    def walk(path: str, old: Any, new: Any) -> None:
        if isinstance(old, dict) and isinstance(new, dict):
            for key in sorted(set(old) | set(new), key=str):
                walk(f"{path}.{key}" if path else str(key), old.get(key, _ABSENT), new.get(key, _ABSENT))
        elif _normal(old) != _normal(new):
            found.append(f"{path}: {show(old)} -> {show(new)}")

    walk("", recorded, current)
    if len(found) > limit:
        found = found[:limit] + [f"... and {len(found) - limit} more"]
    return found


_ABSENT = object()


def _normal(value: Any) -> Any:
    """The JSON text the hash reads: tuples and lists alike, but 1 and 1.0 (or true and 1) apart."""
    return value if value is _ABSENT else json.dumps(value, sort_keys=True, default=str)


# Fields of an editor's description that decide its outputs: hashed into `editor_config_hash`.
EDITOR_CONFIG_FIELDS = ("class", "version", "config")


def editor_config(editor: dict[str, Any]) -> dict[str, Any]:
    """What decides an editor's outputs, from its `describe()`. A wrapper (`rewrite:EDITOR`) describes
    the editor it wraps under "inner": that editor's resolved settings (a diffusers editor's table
    values) count too, since the wrapper's own config holds the options as given (None: from the table)."""
    decided = {k: editor.get(k) for k in EDITOR_CONFIG_FIELDS}
    if isinstance(editor.get("inner"), dict):
        decided["inner"] = editor_config(editor["inner"])
    return decided


def legacy_release_revision(dataset: dict[str, Any]) -> str | None:
    """The revision ciebench 0.x recorded for the official release before it recorded content
    revisions: "release-<manifest revision>[-unverified]"; None for any other dataset. Run folders
    holding it still resume (`ciebench.runner`), verify and load in the leaderboard."""
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
        return stable_hash(editor_config(self.editor or {}))

    @property
    def legacy_editor_config_hash(self) -> str | None:
        """The editor_config_hash an older ciebench recorded for a wrapper, from the wrapper's own fields
        only (it missed the wrapped editor's resolved settings); None for an editor without "inner".
        `verify` accepts it, so run folders recorded before keep verifying."""
        if not isinstance((self.editor or {}).get("inner"), dict):
            return None
        return stable_hash({k: v for k, v in editor_config(self.editor).items() if k != "inner"})

    @property
    def spec_hash(self) -> str:
        """Hash of what decides the results. The dataset enters by its kind, content revision and size,
        not by how its path was spelled, so `ds`, `./ds` and `/abs/ds/` resume the same run."""
        return stable_hash(decided_fields(asdict(self)))

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
