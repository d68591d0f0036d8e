"""A prepared SmartEdit folder (written once by smartedit_prepare.py, read at every load): its layout
and format, reading it, and the strict key-and-shape check against the architecture.

    <folder>/smartedit_manifest.json     sources, every file's repo and commit, the check report
    <folder>/smartedit/<part>-0000i-of-0000n.safetensors + <part>.index.json   official key names
    <folder>/smartedit/adapter_config.json
    <folder>/llava/llava_base-*.safetensors   LLaVA-1.1's embedding and LM-head rows, projector
    <folder>/llm/config.json, tokenizer.model  Vicuna-1.1's

The manifest is written last, so a folder with a manifest is complete.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from ciebench.io import atomic_write_json

from .smartedit_modules import KeyMap, SmartEditModel, build_skeleton, check_derived, derived_kind
from .smartedit_sources import ADAPTER_CONFIG, DISCARDED, SMARTEDIT_FILES, SmartEditWeightsError, Sources
from .smartedit_text import ADDED_TOKENS

MANIFEST = "smartedit_manifest.json"
FORMAT_VERSION = 1
MAX_SHARD_BYTES = 4 * 1024**3


def save_sharded(state: dict[str, torch.Tensor], folder: Path, stem: str, metadata: dict[str, str]) -> list[str]:
    """Write `stem-0000i-of-0000n.safetensors` shards (each tensor cloned contiguous: official files may
    store views of shared buffers) and `stem.index.json`; returns the shard names."""
    from safetensors.torch import save_file

    groups: list[list[str]] = [[]]
    size = 0
    for key in sorted(state):
        nbytes = state[key].numel() * state[key].element_size()
        if groups[-1] and size + nbytes > MAX_SHARD_BYTES:
            groups.append([])
            size = 0
        groups[-1].append(key)
        size += nbytes
    names = [f"{stem}-{i + 1:05d}-of-{len(groups):05d}.safetensors" for i in range(len(groups))]
    weight_map = {}
    for name, keys in zip(names, groups):
        tmp = folder / f".{name}.tmp"
        save_file({k: state[k].detach().contiguous().clone() for k in keys}, str(tmp), metadata=metadata)
        os.replace(tmp, folder / name)
        weight_map.update({k: name for k in keys})
    atomic_write_json(folder / f"{stem}.index.json", {"metadata": metadata, "weight_map": weight_map})
    return names


def read_sharded(folder: Path, stem: str, device: str | torch.device = "cpu",
                 dtype_for: Callable[[str, torch.dtype], torch.dtype] | None = None) -> dict[str, torch.Tensor]:
    from safetensors import safe_open

    index = json.loads((folder / f"{stem}.index.json").read_text(encoding="utf-8"))
    out: dict[str, torch.Tensor] = {}
    for shard in sorted(set(index["weight_map"].values())):
        with safe_open(str(folder / shard), framework="pt", device="cpu") as f:
            for key in f.keys():
                t = f.get_tensor(key)
                dtype = dtype_for(key, t.dtype) if dtype_for else t.dtype
                out[key] = t.to(device=device, dtype=dtype)
    return out


def sharded_shapes(folder: Path, stem: str) -> dict[str, tuple[int, ...]]:
    from safetensors import safe_open

    index = json.loads((folder / f"{stem}.index.json").read_text(encoding="utf-8"))
    shapes: dict[str, tuple[int, ...]] = {}
    for shard in sorted(set(index["weight_map"].values())):
        with safe_open(str(folder / shard), framework="pt", device="cpu") as f:
            for key in f.keys():
                shapes[key] = tuple(f.get_slice(key).get_shape())
    return shapes


@dataclass
class LoadReport:
    """Official keys vs the keys the architecture expects, per file."""

    files: dict[str, int] = field(default_factory=dict)  # part -> keys read
    missing: list[str] = field(default_factory=list)  # expected, supplied by no file
    unexpected: list[str] = field(default_factory=list)  # supplied, not expected (official key names)
    shape_mismatches: list[str] = field(default_factory=list)
    duplicates: list[str] = field(default_factory=list)
    derived_checked: int = 0  # buffers verified and dropped
    derived_failed: list[str] = field(default_factory=list)
    discarded: list[str] = field(default_factory=list)  # keys the official loader discards too

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.shape_mismatches or self.duplicates or self.derived_failed)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok}

    def summary(self, limit: int = 12) -> str:
        lines = [f"files: {', '.join(f'{k}={v} keys' for k, v in self.files.items())}; "
                 f"{self.derived_checked} derived buffers verified and dropped"]
        for label, items in (("missing", self.missing), ("unexpected", self.unexpected),
                             ("shape mismatch", self.shape_mismatches), ("duplicate", self.duplicates),
                             ("wrong derived buffer", self.derived_failed), ("discarded", self.discarded)):
            if items:
                shown = ", ".join(items[:limit]) + (f", ... ({len(items) - limit} more)" if len(items) > limit else "")
                lines.append(f"{label} ({len(items)}): {shown}")
        return "\n".join(lines)


def compare_keys(official: dict[str, dict[str, tuple[int, ...]]], expected: dict[str, tuple[int, ...]],
                 llm_head_dim: int, rope_theta: float = 10000.0,
                 values: Callable[[str, str], torch.Tensor] | None = None) -> tuple[LoadReport, dict[str, tuple[str, str]]]:
    """Match the official files' keys (part -> key -> shape) with the expected local keys. Returns the
    report and local key -> (part, official key). `values(part, key)` supplies derived buffers' values
    for verification (header-only checks pass None and verify shapes only)."""
    report = LoadReport()
    keymap = KeyMap(expected)
    sources: dict[str, tuple[str, str]] = {}
    for part, shapes in official.items():
        report.files[part] = len(shapes)
        for key, shape in shapes.items():
            if key in DISCARDED.get(part, set()):
                report.discarded.append(f"{part}:{key}")
                continue
            kind = derived_kind(key)
            if kind is not None:
                problem = None
                if values is not None:
                    problem = check_derived(kind, values(part, key), llm_head_dim, rope_theta)
                elif kind == "rotary_inv_freq" and shape != (llm_head_dim // 2,):
                    problem = f"shape {shape}"
                if problem:
                    report.derived_failed.append(f"{key}: {problem}")
                else:
                    report.derived_checked += 1
                continue
            local = keymap(key)
            if local not in expected:
                report.unexpected.append(f"{part}:{key}")
                continue
            if local in sources:
                report.duplicates.append(f"{key} (in {sources[local][0]} and {part})")
                continue
            sources[local] = (part, key)
            if tuple(shape) != tuple(expected[local]):
                report.shape_mismatches.append(f"{key}: file {tuple(shape)}, model {tuple(expected[local])}")
    report.missing = sorted(k for k in expected if k not in sources)
    return report, sources


class PreparedWeights:
    """A folder written by `prepare`."""

    def __init__(self, folder: str | Path, sources: Sources | None = None):
        """`sources` given: a folder still being prepared (no manifest yet)."""
        self.folder = Path(folder)
        path = self.folder / MANIFEST
        if sources is not None:
            self.manifest: dict[str, Any] = {}
            self.sources = sources
            return
        if not path.exists():
            raise SmartEditWeightsError(f"{self.folder} is not a prepared SmartEdit folder (no {MANIFEST}); run "
                                        f"`ciebench baselines smartedit prepare` first")
        self.manifest = json.loads(path.read_text(encoding="utf-8"))
        if self.manifest.get("format") != FORMAT_VERSION:
            raise SmartEditWeightsError(f"{path}: format {self.manifest.get('format')}, this ciebench reads "
                                        f"{FORMAT_VERSION}; prepare again with --force")
        self.sources = Sources(**self.manifest["sources_requested"])

    @property
    def tokenizer_file(self) -> Path:
        return self.folder / "llm" / "tokenizer.model"

    def llm_config(self) -> Any:
        from transformers import LlamaConfig

        return LlamaConfig.from_json_file(str(self.folder / "llm" / "config.json"))

    def lora(self) -> dict[str, Any]:
        return json.loads((self.folder / "smartedit" / ADAPTER_CONFIG).read_text(encoding="utf-8"))

    def official_shapes(self) -> dict[str, dict[str, tuple[int, ...]]]:
        return {part: sharded_shapes(self.folder / "smartedit", part) for part in SMARTEDIT_FILES}

    def llava_rows(self, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
        return read_sharded(self.folder / "llava", "llava_base", dtype_for=lambda k, d: dtype)


def runtime_configs(sources: Sources) -> tuple[Any, dict[str, Any]]:
    """CLIP vision config and the UNet config, from the hub cache."""
    from diffusers import UNet2DConditionModel
    from transformers import CLIPVisionConfig

    vision = CLIPVisionConfig.from_pretrained(sources.clip_repo)
    unet = dict(UNet2DConditionModel.load_config(sources.ip2p_repo, subfolder="unet"))
    return vision, unet


def skeleton_for(prepared: PreparedWeights, attn_implementation: str = "sdpa") -> SmartEditModel:
    from .smartedit_text import SmartEditTokenizer

    vision, unet = runtime_configs(prepared.sources)
    base_vocab = SmartEditTokenizer(prepared.tokenizer_file).base_vocab_size
    llm_config = prepared.llm_config()
    if int(llm_config.vocab_size) != base_vocab:
        raise SmartEditWeightsError(f"LLM config vocabulary {llm_config.vocab_size} != tokenizer's {base_vocab}")
    return build_skeleton(llm_config, vision, unet, prepared.lora(), base_vocab, attn_implementation)


def llm_head_dim(cfg: Any) -> int:
    return int(getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads)


def llm_rope_theta(cfg: Any) -> float:
    theta = getattr(cfg, "rope_theta", None)
    if theta is None:
        theta = (getattr(cfg, "rope_parameters", None) or {}).get("rope_theta", 10000.0)
    return float(theta)


def check_prepared(folder: str | Path, sources: Sources | None = None) -> LoadReport:
    """Key-and-shape check of a prepared folder against the architecture, from file headers only
    (no weights read, nothing allocated). Used by `prepare` and `ciebench baselines smartedit check`."""
    folder = Path(folder)
    prepared = PreparedWeights(folder, sources)
    model = skeleton_for(prepared)
    cfg = prepared.llm_config()
    report, _ = compare_keys(prepared.official_shapes(), model.checkpoint_state_shapes(), llm_head_dim(cfg), llm_rope_theta(cfg))
    llava = sharded_shapes(folder / "llava", "llava_base")
    for key in ("model.embed_tokens.weight", "lm_head.weight"):
        want = (model.dims.vocab_size - len(ADDED_TOKENS), model.dims.llm_hidden)
        if llava.get(key) != want:
            report.shape_mismatches.append(f"llava_base:{key}: file {llava.get(key)}, expected {want}")
    return report

