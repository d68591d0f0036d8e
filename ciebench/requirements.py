"""What a configuration will load, declared before anything is loaded: the interface behind
`ciebench prefetch`, offline bundles and `ciebench doctor`.

Every component that loads files declares them as `Requirement`s: an editor in
`Editor.required_assets()`, the region scorer in `RegionScorer.required_assets(protocol, metrics)`,
an LLM back end in `LLMConfig.required_assets()`, the IDCS judge in `JudgeConfig.required_assets()`,
datasets in `dataset_requirements(spec)`. A requirement names *where* the files come from (a hub
repository at a revision with the loader's file-selection rule, a torchvision checkpoint URL, a
pinned asset of another project, a dataset release, an HTTP endpoint); `ciebench.prefetch` turns it
into concrete files with sizes from the hub's metadata.

Declaring yours (a third-party editor that loads `org/model` with transformers):

    def required_assets(self):
        return [hub_repo("org/model", used_by=f"editor {self.name}", revision=self.config.revision)]
"""
from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import TYPE_CHECKING, Any, Iterable

if TYPE_CHECKING:  # pragma: no cover
    from .assets import PinnedAsset

HUB, TORCH_CHECKPOINT, ASSET, DATASET, ENDPOINT, LOCAL = "hub", "torch_checkpoint", "asset", "dataset", "endpoint", "local"
KINDS = (HUB, TORCH_CHECKPOINT, ASSET, DATASET, ENDPOINT, LOCAL)
# Hub file-selection rules, mirroring what the loaders read (see `select_hub_files`).
LAYOUTS = ("transformers", "diffusers", "files")


@dataclass(frozen=True)
class Requirement:
    kind: str  # one of KINDS
    ref: str  # hub repo id | checkpoint file name | asset name | dataset spec | endpoint URL | local path
    used_by: str = ""  # who loads it, e.g. "editor instructpix2pix", "protocol cielr: CLIP"
    revision: str | None = None  # hub: branch, tag or commit (None: main)
    repo_type: str = "model"  # hub: model | dataset
    layout: str = "transformers"  # hub: transformers | diffusers | files
    files: tuple[str, ...] = ()  # hub "files": glob patterns; "diffusers": only these components (empty: all)
    skip: tuple[str, ...] = ()  # hub "diffusers": components the loader does not read (e.g. safety_checker)
    url: str = ""  # torch_checkpoint: download URL; endpoint: base URL
    asset: "PinnedAsset | None" = None
    detail: str = ""  # endpoint: model name; local: what the path must hold
    config: Any = field(default=None, compare=False)  # endpoint: the LLMConfig requests will use (doctor)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"requirement kind must be one of {KINDS}, not {self.kind!r}")
        if self.kind == HUB and self.layout not in LAYOUTS:
            raise ValueError(f"hub layout must be one of {LAYOUTS}, not {self.layout!r}")

    @property
    def key(self) -> tuple:
        return (self.kind, self.ref, self.revision, self.repo_type, self.layout, self.files, self.skip, self.url,
                self.detail)

    def describe(self) -> str:
        if self.kind == HUB:
            where = f"{self.ref}@{self.revision or 'main'}"
            return f"hub {self.repo_type} {where} ({self.layout})"
        return f"{self.kind} {self.ref}"


def hub_repo(repo_id: str, *, used_by: str, revision: str | None = None, layout: str = "transformers",
             files: Iterable[str] = (), skip: Iterable[str] = (), repo_type: str = "model") -> Requirement:
    return Requirement(HUB, repo_id, used_by, revision, repo_type, layout, tuple(files), tuple(skip))


def torchvision_weights(weights: Any, *, used_by: str) -> Requirement:
    """A torchvision weights enum member (e.g. SqueezeNet1_1_Weights.IMAGENET1K_V1): the checkpoint file
    torchvision caches under $TORCH_HOME/hub/checkpoints/ (its name carries a sha256 prefix)."""
    url = weights.url
    return Requirement(TORCH_CHECKPOINT, PurePosixPath(url).name, used_by, url=url)


def pinned_asset(asset: "PinnedAsset", *, used_by: str) -> Requirement:
    return Requirement(ASSET, asset.name, used_by, url=asset.url, asset=asset)


def endpoint(base_url: str, model: str, *, used_by: str, config: Any = None) -> Requirement:
    return Requirement(ENDPOINT, base_url, used_by, detail=model, config=config)


def local_path(path: str, *, used_by: str, detail: str = "") -> Requirement:
    return Requirement(LOCAL, str(path), used_by, detail=detail)


def dedupe(requirements: Iterable[Requirement]) -> list[Requirement]:
    """One requirement per source; `used_by` of duplicates joined."""
    merged: dict[tuple, Requirement] = {}
    for req in requirements:
        if req.key in merged:
            old = merged[req.key]
            users = list(dict.fromkeys(old.used_by.split("; ") + [req.used_by]))
            merged[req.key] = Requirement(**{**_fields(old), "used_by": "; ".join(u for u in users if u)})
        else:
            merged[req.key] = req
    return list(merged.values())


def _fields(req: Requirement) -> dict[str, Any]:
    return {f: getattr(req, f) for f in Requirement.__dataclass_fields__}


# ---- hub file selection -----------------------------------------------------------------------------
_VARIANT = re.compile(r"\.(fp16|fp32|bf16|non_ema|ema|onnx)\.")
_CONFIG_SUFFIXES = (".json", ".txt", ".model", ".tiktoken", ".jinja")
_IGNORED_DIRS = {"onnx", "openvino", "coreml", "flax", "tf", ".git"}


def select_hub_files(files: Iterable[str], req: Requirement) -> list[str]:
    """The files of a hub repository (paths relative to its root) that the loader of `req` reads.

    transformers (`from_pretrained(repo)`): top-level configs, tokenizer and processor files, and the
    weights in the format transformers prefers: `*.safetensors` when present, else `pytorch_model*.bin`.
    diffusers (`Pipeline.from_pretrained(repo)`): `model_index.json` and, in each component folder,
    the same rule, non-variant files only (no `.fp16.` copies). files: the given glob patterns."""
    files = sorted(set(files))
    if req.layout == "files":
        return [f for f in files if any(fnmatch.fnmatch(f, p) for p in req.files)]
    if req.layout == "transformers":
        return _folder_files([f for f in files if "/" not in f], "")
    chosen = [f for f in files if f == "model_index.json"] if not req.files else []
    folders = sorted({f.split("/", 1)[0] for f in files if "/" in f} - _IGNORED_DIRS - set(req.skip))
    if req.files:
        folders = [d for d in folders if d in req.files]
    for folder in folders:
        inside = [f for f in files if f.startswith(folder + "/") and f.count("/") == 1]
        chosen += _folder_files(inside, folder + "/")
    return chosen


def _folder_files(files: list[str], prefix: str) -> list[str]:
    names = [f[len(prefix):] for f in files]
    plain = [n for n in names if not _VARIANT.search(n)]
    configs = [n for n in plain if n.endswith(_CONFIG_SUFFIXES)]
    weights = [n for n in plain if n.endswith(".safetensors")]
    if not weights:
        weights = [n for n in plain if n.endswith(".bin") and ("pytorch_model" in n or n.startswith("diffusion_pytorch_model"))]
    return [prefix + n for n in configs + weights]
