"""The Hugging Face Hub's dataset repository layout: a dataset card `README.md` whose YAML header
declares the config, features and split, plus `data/test-*.parquet` shards with the images embedded.

A folder written here loads with the plain `datasets` library, locally
(`datasets.load_dataset(DIR, split="test")`) and after `push_dataset` from the Hub
(`datasets.load_dataset("ORG/NAME", split="test")`), with no ciebench code involved. The card also
records where the data came from (source, content revision) and the sha256 of every shard.
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import datasets
import yaml

from ciebench.errors import EnvironmentProblem, UsageError
from ciebench.io import atomic_write_text, sha256_file

from . import LoadedDataset

SPLIT = "test"
DATA_DIR = "data"
MAX_SHARD_BYTES = 500 * 1024 * 1024  # the Hub's datasets-server works best with shards of a few hundred MB
CARD = "README.md"
LICENCE_NOT_STATED = "not stated by the source"
# What is known of each source's licence; anything else is stated as unknown, never guessed.
KIND_LICENCE = {"mini": "scikit-image's bundled sample photographs (see scikit-image's data licence); "
                        "instructions and masks: ciebench's own"}
CITATION = """@misc{cielr,
  title = {Understanding the Implicit User Intention via Reasoning with Large Language Model for Image Editing},
  note  = {CIELR method and CIEBench benchmark; https://github.com/Jia-shao/Reasoning-Editing},
}"""


def shard_paths(n_shards: int) -> list[str]:
    return [f"{DATA_DIR}/{SPLIT}-{i:05d}-of-{n_shards:05d}.parquet" for i in range(n_shards)]


def write_hub_layout(loaded: LoadedDataset, out: Path, *, source: str, pretty_name: str | None = None,
                     max_shard_bytes: int = MAX_SHARD_BYTES) -> dict[str, Any]:
    """Write `loaded` into `out` (an empty or new folder) in the Hub layout; returns the card's metadata."""
    out = Path(out)
    dataset = _embedded(loaded.dataset)
    checksums, sizes = write_shards(dataset, out, max_shard_bytes)
    metadata = card_metadata(loaded, dataset, checksums, sizes, source, pretty_name)
    atomic_write_text(out / CARD, render_card(metadata, loaded, source))
    return metadata


def write_shards(dataset: datasets.Dataset, out: Path, max_shard_bytes: int = MAX_SHARD_BYTES
                 ) -> tuple[dict[str, str], dict[str, int]]:
    """`data/test-XXXXX-of-YYYYY.parquet` shards of at most about `max_shard_bytes` each, images
    embedded; returns (sha256, size) per shard path."""
    dataset = _embedded(dataset)
    n_shards = max(1, math.ceil(dataset.data.nbytes / max_shard_bytes)) if len(dataset) else 1
    paths = shard_paths(n_shards)
    (out / DATA_DIR).mkdir(parents=True, exist_ok=True)
    for index, rel in enumerate(paths):
        dataset.shard(n_shards, index, contiguous=True).to_parquet(str(out / rel))
    return {rel: sha256_file(out / rel) for rel in paths}, {rel: (out / rel).stat().st_size for rel in paths}


def default_config() -> list[dict[str, Any]]:
    """The card's `configs`: one config whose `test` split is every shard."""
    return [{"config_name": "default", "data_files": [{"split": SPLIT, "path": f"{DATA_DIR}/{SPLIT}-*.parquet"}]}]


def card_metadata(loaded: LoadedDataset, dataset: datasets.Dataset, checksums: dict[str, str],
                  sizes: dict[str, int], source: str, pretty_name: str | None) -> dict[str, Any]:
    """The card's YAML header. `configs`/`dataset_info` follow the Hub's dataset-card spec (what
    `datasets.load_dataset` reads); the `ciebench` block is provenance for humans and `verify`."""
    return {
        "license": "other",
        "license_name": "source-licence",
        "license_details": KIND_LICENCE.get(loaded.kind, LICENCE_NOT_STATED),
        "pretty_name": pretty_name or _pretty_name(loaded),
        "task_categories": ["image-to-image"],
        "tags": ["image-editing", "reasoning", "ciebench"],
        "size_categories": [_size_category(len(dataset))],
        "configs": default_config(),
        "dataset_info": {
            "features": dataset.features._to_yaml_list(),
            "splits": [{"name": SPLIT, "num_bytes": int(dataset.data.nbytes), "num_examples": len(dataset)}],
            "download_size": int(sum(sizes.values())),
            "dataset_size": int(dataset.data.nbytes),
        },
        "ciebench": {
            "source": source,
            "source_kind": loaded.kind,
            "source_revision": loaded.revision,
            "default_protocol": loaded.default_protocol,
            "checksums": {rel: f"sha256:{digest}" for rel, digest in checksums.items()},
            "problems": [str(p) for p in loaded.problems],
        },
    }


def card_default_protocol(folder: Path) -> str | None:
    """The default protocol a card written here declares (`ciebench.default_protocol` in its YAML
    header), or None: no card, another card, or one that does not say."""
    try:
        text = (Path(folder) / CARD).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None
    if not text.startswith("---"):
        return None
    try:
        header = yaml.safe_load(text.split("---", 2)[1]) or {}
    except yaml.YAMLError:
        return None
    value = (header.get("ciebench") or {}).get("default_protocol") if isinstance(header, dict) else None
    return value if isinstance(value, str) else None


def render_card(metadata: dict[str, Any], loaded: LoadedDataset, source: str) -> str:
    header = yaml.safe_dump(metadata, sort_keys=False, allow_unicode=True, width=1000)
    counts: dict[str, int] = {}
    for edit_type in loaded.dataset["edit_type"]:
        counts[edit_type] = counts.get(edit_type, 0) + 1
    by_type = ", ".join(f"{k}: {v}" for k, v in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))
    return f"""---
{header}---

# {metadata['pretty_name']}

Reasoning-driven image editing samples in ciebench's schema: `id`, `image` (RGB source), `mask`
(mode L, 255 = the region to edit), `instruction`, `clip_text` (texts the edited region should match),
`edit_type`, `notes`, `meta` (JSON of source-specific fields). One split, `{SPLIT}`, {len(loaded.dataset)}
samples ({by_type}).

```python
import datasets
ds = datasets.load_dataset("ORG/NAME", split="{SPLIT}")   # or a local copy of this folder
```

With ciebench: `ciebench evaluate --dataset hf:ORG/NAME --editor ...` (default protocol
`{loaded.default_protocol}`).

## Provenance

- Source: `{source}` ({loaded.kind}); content revision `{loaded.revision}`.
- Shards and their sha256 are listed under `ciebench.checksums` in this card's header.
- Licence: {metadata['license_details']}. Check the source's terms before redistributing.

## Citation

```bibtex
{CITATION}
```
"""


def push_dataset(folder: str | os.PathLike, repo_id: str, *, revision: str | None = None, private: bool = False,
                 commit_message: str = "Upload with ciebench") -> str:
    """Upload a Hub-layout folder with huggingface_hub. The token comes from the environment
    (HF_TOKEN) or huggingface_hub's own login; ciebench never reads it into a file or a log line."""
    folder = Path(folder)
    if not (folder / CARD).is_file() or not list((folder / DATA_DIR).glob(f"{SPLIT}-*.parquet")):
        raise UsageError(f"{folder} is not a Hub-layout dataset (no {CARD} and {DATA_DIR}/{SPLIT}-*.parquet)",
                         hint="write one with `ciebench data prepare SRC --format hub --out DIR`")
    if repo_id.count("/") != 1:
        raise UsageError(f"repository id {repo_id!r} must be ORG/NAME")
    from huggingface_hub import HfApi

    api = HfApi()
    try:
        api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
        info = api.upload_folder(folder_path=str(folder), repo_id=repo_id, repo_type="dataset", revision=revision,
                                 allow_patterns=[CARD, f"{DATA_DIR}/*.parquet", "run/*"], commit_message=commit_message)
    except (OSError, ValueError) as exc:  # HTTP errors of huggingface_hub derive from OSError
        raise EnvironmentProblem(f"upload of {folder} to {repo_id} failed: {exc}",
                                 hint="set HF_TOKEN to a token with write access, and check the network") from exc
    return str(getattr(info, "commit_url", info))


def _embedded(dataset: datasets.Dataset) -> datasets.Dataset:
    """Images as bytes inside the table (a path to a local file means nothing on the Hub)."""
    from datasets.table import embed_table_storage

    fmt = dataset.format
    embedded = dataset.with_format("arrow").map(embed_table_storage, batched=True, desc=None)
    embedded = embedded.with_format(**fmt)
    return embedded.cast(dataset.features)


def _pretty_name(loaded: LoadedDataset) -> str:
    return {"ciebench-release": "CIEBench", "mini": "ciebench mini"}.get(loaded.kind, f"ciebench dataset ({loaded.kind})")


def _size_category(n: int) -> str:
    for limit, label in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K")):
        if n < limit:
            return label
    return "n>100K"
