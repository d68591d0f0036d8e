"""Getting SmartEdit's weights: download once, convert to safetensors, load strictly.

What the official inference reads, and where each tensor comes from:

| part | official file (hub repo `TencentARC/SmartEdit-7B` / `-13B`) | keys |
| --- | --- | --- |
| LLaMA + LoRA | `LLM-15000/adapter_model.bin` | `model.base_model.model.*` (all LLaMA weights, LoRA A/B, rotary buffers) |
| Q-Former, projector, LM head | `embeddings_qformer/checkpoint-15000_embeddings_qformer.bin` | `sd_qformer.*`, `sd_query_tokens`, `mm_projector.*`, `lm_head.weight` |
| BIM | `modulate-15000/adapter_model.bin` | `modulate_head.*`, `modulate_transformer.*`, `pe_layer.*`, `dimension_reduction_head_*` |
| UNet | `unet-15000/adapter_model.bin` | `unet.*` (the whole 8-channel UNet) |
| LoRA settings | `LLM-15000/adapter_config.json` | r, alpha, target modules |

Two things come from elsewhere. The first 32000 rows of the token embedding and of the LM head are
LLaVA-1.1's (the official loader overwrites them after loading the files above), and LLaVA-1.1 is
only published as a delta against the original LLaMA weights: `prepare` merges exactly those rows
(fp16 sum, as LLaVA's `apply_delta` does). The LLM config and the sentencepiece tokenizer are
Vicuna-1.1's (`lmsys/vicuna-*-delta-v1.1`, two small files; its weights are not needed because every
LLaMA weight is replaced by SmartEdit's). Run-time models are fetched into the hub cache by `prepare`
too: CLIP ViT-L/14 (`openai/clip-vit-large-patch14`) and InstructPix2Pix's VAE, scheduler, UNet config
and CLIP text encoder (`timbrooks/instruct-pix2pix`, the text encoder only for the empty negative prompt).

The official files are pickles. `prepare` opens each of them exactly once, with
`torch.load(weights_only=True)` (tensors and containers only, no code), and rewrites it as safetensors
under the prepared folder with the official key names unchanged; every later load reads safetensors.
"""
from __future__ import annotations

import datetime as _dt
import json
import logging
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import torch

from ciebench.cache import cache_root
from ciebench.errors import EnvironmentProblem

from .smartedit_modules import (KeyMap, SmartEditModel, build_skeleton, check_derived, derived_kind)
from .smartedit_text import ADDED_TOKENS

log = logging.getLogger(__name__)

MANIFEST = "smartedit_manifest.json"
FORMAT_VERSION = 1
MAX_SHARD_BYTES = 4 * 1024**3

VARIANTS: dict[str, dict[str, str]] = {
    "7b": {
        "smartedit_repo": "TencentARC/SmartEdit-7B",
        "vicuna_repo": "lmsys/vicuna-7b-delta-v1.1",
        "llava_delta_repo": "liuhaotian/LLaVA-Lightning-7B-delta-v1-1",
        "llama_base_repo": "huggyllama/llama-7b",
    },
    "13b": {
        "smartedit_repo": "TencentARC/SmartEdit-13B",
        "vicuna_repo": "lmsys/vicuna-13b-delta-v1.1",
        "llava_delta_repo": "liuhaotian/LLaVA-13b-delta-v1-1",
        "llama_base_repo": "huggyllama/llama-13b",
    },
}
CLIP_REPO = "openai/clip-vit-large-patch14"
IP2P_REPO = "timbrooks/instruct-pix2pix"

# part -> path inside the SmartEdit repo
SMARTEDIT_FILES = {
    "llm": "LLM-{step}/adapter_model.bin",
    "embeddings_qformer": "embeddings_qformer/checkpoint-{step}_embeddings_qformer.bin",
    "modulate": "modulate-{step}/adapter_model.bin",
    "unet": "unet-{step}/adapter_model.bin",
}
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_CONFIG_FILE = "LLM-{step}/adapter_config.json"  # the hub repos have it beside the LLM weights
LLM_PREFIX = "model.base_model.model."
EMBED_KEY = LLM_PREFIX + "embed_tokens.weight"
LM_HEAD_KEY = "lm_head.weight"
# keys that some releases of a file carry and that the official loader explicitly discards
DISCARDED = {"embeddings_qformer": {EMBED_KEY}}
# run-time files fetched into the hub cache by prepare
CLIP_FILES = ["config.json", "preprocessor_config.json", "model.safetensors"]
IP2P_FILES = ["model_index.json", "vae/config.json", "vae/diffusion_pytorch_model.safetensors",
              "scheduler/scheduler_config.json", "unet/config.json", "text_encoder/config.json",
              "text_encoder/model.safetensors", "tokenizer/*"]


class SmartEditWeightsError(EnvironmentProblem, RuntimeError):
    """A prepared folder or an official file is missing, incomplete or does not match the architecture."""


@dataclass(frozen=True)
class Sources:
    """Where every weight comes from. Hub revisions default to each repo's main branch; the commit
    actually used is recorded in the prepared folder's manifest."""

    variant: str = "7b"
    step: int = 15000
    smartedit_repo: str = ""
    smartedit_revision: str | None = None
    vicuna_repo: str = ""
    llava_delta_repo: str = ""
    llama_base_repo: str = ""
    clip_repo: str = CLIP_REPO
    ip2p_repo: str = IP2P_REPO

    @classmethod
    def for_variant(cls, variant: str = "7b", **overrides: Any) -> "Sources":
        if variant not in VARIANTS:
            raise ValueError(f"unknown SmartEdit variant {variant!r}; known: {', '.join(VARIANTS)}")
        values: dict[str, Any] = {"variant": variant, **VARIANTS[variant]}
        values.update({k: v for k, v in overrides.items() if v not in (None, "")})
        return cls(**values)

    def file(self, part: str) -> str:
        return SMARTEDIT_FILES[part].format(step=self.step)


def default_weights_dir(sources: Sources) -> Path:
    root = cache_root()
    name = sources.smartedit_repo.replace("/", "--")
    return root / "smartedit" / f"{name}-step{sources.step}"


# --------------------------------------------------------------------------------------------------
# hub access and file formats
class LocalEntryMissing(FileNotFoundError):
    pass


def _entry_not_found() -> tuple[type[BaseException], ...]:
    try:
        from huggingface_hub.errors import EntryNotFoundError
    except ImportError:  # pragma: no cover - older huggingface_hub
        from huggingface_hub.utils import EntryNotFoundError
    return (EntryNotFoundError, LocalEntryMissing)


def hub_file(repo: str, filename: str, revision: str | None = None) -> Path:
    """A file of a hub repo (through the hub cache), or of a local folder when `repo` is one."""
    if os.path.isdir(repo):
        path = Path(repo) / filename
        if not path.is_file():
            raise LocalEntryMissing(f"{path} does not exist")
        return path
    from huggingface_hub import hf_hub_download

    return Path(hf_hub_download(repo, filename, revision=revision))


def snapshot_commit(path: Path) -> str | None:
    parts = Path(path).parts
    return parts[parts.index("snapshots") + 1] if "snapshots" in parts else None


def file_record(repo: str, filename: str, path: Path) -> dict[str, Any]:
    real = Path(os.path.realpath(path))
    return {"repo": repo, "file": filename, "commit": snapshot_commit(path), "bytes": real.stat().st_size,
            "blob": real.name if real.parent.name == "blobs" else None}


def load_pickled_state(path: Path) -> dict[str, torch.Tensor]:
    """An official .bin checkpoint: unpickled with weights_only=True (tensors and plain containers only)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError as exc:  # legacy (non-zip) serialisation cannot be memory-mapped
        if "mmap" not in str(exc):
            raise
        state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        raise SmartEditWeightsError(f"{path}: expected a flat mapping of parameter names to tensors")
    return dict(state)


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
    _write_json(folder / f"{stem}.index.json", {"metadata": metadata, "weight_map": weight_map})
    return names


def _write_json(path: Path, obj: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, path)


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


def _checkpoint_files(repo: str, names: list[str], revision: str | None) -> dict[str, str]:
    """name -> file of a transformers checkpoint holding it: from a shard index (safetensors, then .bin)
    or the single-file checkpoint."""
    tried = []
    for index_name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        try:
            index_path = hub_file(repo, index_name, revision)
        except _entry_not_found() as exc:
            tried.append(f"{index_name} ({exc.__class__.__name__})")
            continue
        weight_map = json.loads(index_path.read_text(encoding="utf-8"))["weight_map"]
        absent = [n for n in names if n not in weight_map]
        if absent:
            raise SmartEditWeightsError(f"{repo}/{index_name} has no {', '.join(absent)}")
        return {n: weight_map[n] for n in names}
    for single in ("model.safetensors", "pytorch_model.bin"):
        try:
            hub_file(repo, single, revision)
        except _entry_not_found() as exc:
            tried.append(f"{single} ({exc.__class__.__name__})")
            continue
        return {n: single for n in names}
    raise SmartEditWeightsError(f"cannot find a checkpoint in {repo}; tried {', '.join(tried)}")


def fetch_tensors(repo: str, names: Iterable[str], revision: str | None = None) -> tuple[dict[str, torch.Tensor], list[dict[str, Any]]]:
    """The named tensors of a transformers checkpoint (safetensors or .bin, sharded or single),
    downloading only the files that hold them. Returns (tensors, file records)."""
    from safetensors import safe_open

    files = _checkpoint_files(repo, list(names), revision)
    tensors: dict[str, torch.Tensor] = {}
    records = []
    for filename in sorted(set(files.values())):
        path = hub_file(repo, filename, revision)
        records.append(file_record(repo, filename, path))
        wanted = [n for n, f in files.items() if f == filename]
        if filename.endswith(".safetensors"):
            with safe_open(str(path), framework="pt", device="cpu") as f:
                tensors.update({n: f.get_tensor(n) for n in wanted})
        else:
            state = load_pickled_state(path)
            missing = [n for n in wanted if n not in state]
            if missing:
                raise SmartEditWeightsError(f"{repo}/{filename} lacks {', '.join(missing)}")
            tensors.update({n: state[n].clone() for n in wanted})
            del state
    return tensors, records


# --------------------------------------------------------------------------------------------------
# prepare
def prepare(sources: Sources, out_dir: str | Path | None = None, force: bool = False,
            echo: Callable[[str], None] = log.info) -> Path:
    """Download SmartEdit and what it needs, merge LLaVA-1.1's embedding rows, convert the official
    pickles to safetensors, check the result against the architecture, and write the manifest.
    Idempotent: a folder whose manifest matches `sources` is returned as is unless `force`."""
    from filelock import FileLock

    out = Path(out_dir) if out_dir else default_weights_dir(sources)
    out.mkdir(parents=True, exist_ok=True)
    with FileLock(str(out / ".prepare.lock")):  # parallel workers: one prepares, the others wait and reuse
        return _prepare_locked(sources, out, force, echo)


def _prepare_locked(sources: Sources, out: Path, force: bool, echo: Callable[[str], None]) -> Path:
    manifest_path = out / MANIFEST
    if manifest_path.exists() and not force:
        existing = json.loads(manifest_path.read_text(encoding="utf-8"))
        if existing.get("sources_requested") == asdict(sources) and existing.get("format") == FORMAT_VERSION:
            echo(f"already prepared: {out}")
            return out
        raise SmartEditWeightsError(f"{out} holds a preparation of other sources; pass force=True (--force) "
                                    f"to replace it, or choose another folder")
    if manifest_path.exists():
        manifest_path.unlink()
    for sub in ("smartedit", "llava", "llm"):
        shutil.rmtree(out / sub, ignore_errors=True)
        (out / sub).mkdir(parents=True, exist_ok=True)

    manifest: dict[str, Any] = {"format": FORMAT_VERSION, "sources_requested": asdict(sources), "files": {},
                                "unpickled_with_weights_only": []}

    # 1. Vicuna-1.1: LLM config and tokenizer
    for name in ("config.json", "tokenizer.model"):
        path = hub_file(sources.vicuna_repo, name)
        shutil.copyfile(path, out / "llm" / name)
        manifest["files"][f"vicuna/{name}"] = file_record(sources.vicuna_repo, name, path)
    llm_config = json.loads((out / "llm" / "config.json").read_text(encoding="utf-8"))
    base_vocab = int(llm_config["vocab_size"])
    echo(f"LLM config and tokenizer from {sources.vicuna_repo} (vocabulary {base_vocab})")

    # 2. SmartEdit's own files -> safetensors, official key names kept
    adapter_name = ADAPTER_CONFIG_FILE.format(step=sources.step)
    adapter = hub_file(sources.smartedit_repo, adapter_name, sources.smartedit_revision)
    shutil.copyfile(adapter, out / "smartedit" / ADAPTER_CONFIG)
    manifest["files"]["smartedit/adapter_config.json"] = file_record(sources.smartedit_repo, adapter_name, adapter)
    converted: dict[str, Any] = {}
    smartedit_embed_rows = None
    for part in SMARTEDIT_FILES:
        name = sources.file(part)
        echo(f"downloading {sources.smartedit_repo}/{name}")
        path = hub_file(sources.smartedit_repo, name, sources.smartedit_revision)
        manifest["files"][f"smartedit/{part}"] = file_record(sources.smartedit_repo, name, path)
        echo(f"converting {name} to safetensors (torch.load weights_only=True)")
        state = load_pickled_state(path)
        manifest["unpickled_with_weights_only"].append(f"{sources.smartedit_repo}/{name}")
        if part == "llm" and EMBED_KEY in state:
            smartedit_embed_rows = state[EMBED_KEY][:base_vocab].float().clone()
        shards = save_sharded(state, out / "smartedit", part,
                              {"format": "pt", "source": f"{sources.smartedit_repo}/{name}"})
        dtypes: dict[str, int] = {}
        for t in state.values():
            dtypes[str(t.dtype).replace("torch.", "")] = dtypes.get(str(t.dtype).replace("torch.", ""), 0) + 1
        converted[part] = {"source": name, "shards": shards, "keys": len(state), "dtypes": dtypes}
        del state
    manifest["converted"] = converted

    # 3. LLaVA-1.1 = LLaMA + delta: only the rows SmartEdit keeps (embedding, LM head) and the projector
    echo(f"merging LLaVA-1.1 rows: {sources.llama_base_repo} + {sources.llava_delta_repo}")
    delta, delta_files = fetch_tensors(sources.llava_delta_repo, ["model.embed_tokens.weight", "lm_head.weight",
                                                                  "model.mm_projector.weight", "model.mm_projector.bias"])
    base, base_files = fetch_tensors(sources.llama_base_repo, ["model.embed_tokens.weight", "lm_head.weight"])
    llava: dict[str, torch.Tensor] = {}
    for key in ("model.embed_tokens.weight", "lm_head.weight"):
        d, b = delta[key].half(), base[key].half()
        if d.shape[1] != b.shape[1] or d.shape[0] < base_vocab or b.shape[0] < base_vocab:
            raise SmartEditWeightsError(f"{key}: delta {tuple(d.shape)} and base {tuple(b.shape)} do not fit a "
                                        f"{base_vocab}-token vocabulary")
        merged = d[:base_vocab].clone()
        merged += b[:base_vocab]  # fp16 addition, as LLaVA's apply_delta
        llava[key] = merged
    llava["model.mm_projector.weight"] = delta["model.mm_projector.weight"]
    llava["model.mm_projector.bias"] = delta["model.mm_projector.bias"]
    save_sharded(llava, out / "llava", "llava_base",
                 {"format": "pt", "source": f"{sources.llama_base_repo} + {sources.llava_delta_repo}"})
    manifest["files"]["llava_delta"] = delta_files
    manifest["files"]["llama_base"] = base_files
    checks: dict[str, Any] = {}
    if smartedit_embed_rows is not None:
        checks["embed_rows_max_abs_diff_smartedit_vs_llava"] = float(
            (smartedit_embed_rows - llava["model.embed_tokens.weight"].float()).abs().max())
    eq = read_sharded(out / "smartedit", "embeddings_qformer")
    if "mm_projector.weight" in eq:
        checks["mm_projector_max_abs_diff_smartedit_vs_llava"] = float(
            (eq["mm_projector.weight"].float() - llava["model.mm_projector.weight"].float()).abs().max())
    manifest["llava_checks"] = checks
    del delta, base, llava, eq

    # 4. run-time models into the hub cache (so later runs work offline)
    from huggingface_hub import snapshot_download

    for key, repo, patterns in (("clip", sources.clip_repo, CLIP_FILES), ("ip2p", sources.ip2p_repo, IP2P_FILES)):
        echo(f"fetching {repo}")
        folder = Path(snapshot_download(repo, allow_patterns=patterns))
        manifest["files"][key] = {"repo": repo, "commit": folder.name, "patterns": patterns}

    # 5. strict check of every key and shape against the architecture, then the manifest (last)
    report = check_prepared(out, sources=sources)
    manifest["check"] = report.to_dict()
    manifest["created"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    try:
        from importlib.metadata import version

        manifest["ciebench_version"] = version("ciebench")
    except Exception:  # noqa: BLE001 - not installed as a distribution
        manifest["ciebench_version"] = "unknown"
    if not report.ok:
        _write_json(out / "smartedit_check_failed.json", manifest)
        raise SmartEditWeightsError(f"the prepared weights do not match the SmartEdit architecture:\n{report.summary()}")
    _write_json(manifest_path, manifest)
    echo(f"prepared {out}")
    return out


# --------------------------------------------------------------------------------------------------
# loading
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


def _head_dim(cfg: Any) -> int:
    return int(getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads)


def _rope_theta(cfg: Any) -> float:
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
    report, _ = compare_keys(prepared.official_shapes(), model.checkpoint_state_shapes(), _head_dim(cfg), _rope_theta(cfg))
    llava = sharded_shapes(folder / "llava", "llava_base")
    for key in ("model.embed_tokens.weight", "lm_head.weight"):
        want = (model.dims.vocab_size - len(ADDED_TOKENS), model.dims.llm_hidden)
        if llava.get(key) != want:
            report.shape_mismatches.append(f"llava_base:{key}: file {llava.get(key)}, expected {want}")
    return report


def load_weights(model: SmartEditModel, prepared: PreparedWeights, device: str | torch.device,
                 dtype_for: Callable[[str], torch.dtype]) -> LoadReport:
    """Fill `model` (a skeleton) from the prepared folder, strictly: every expected key from exactly one
    file, no unexpected key, every shape equal, derived buffers verified. Raises SmartEditWeightsError
    with the report otherwise. `dtype_for(local_key)` picks each tensor's dtype."""
    cfg = prepared.llm_config()
    expected = model.checkpoint_state_shapes()
    official = prepared.official_shapes()
    # derived buffers are tiny: read their values for verification first
    derived_values: dict[tuple[str, str], torch.Tensor] = {}
    for part, shapes in official.items():
        wanted = [k for k in shapes if derived_kind(k)]
        if wanted:
            from safetensors import safe_open

            index = json.loads((prepared.folder / "smartedit" / f"{part}.index.json").read_text(encoding="utf-8"))
            for key in wanted:
                with safe_open(str(prepared.folder / "smartedit" / index["weight_map"][key]), framework="pt") as f:
                    derived_values[(part, key)] = f.get_tensor(key)
    report, sources = compare_keys(official, expected, _head_dim(cfg), _rope_theta(cfg),
                                   values=lambda part, key: derived_values[(part, key)])
    if not report.ok:
        raise SmartEditWeightsError(f"SmartEdit checkpoint does not match the architecture:\n{report.summary()}")

    by_official = {(part, key): local for local, (part, key) in sources.items()}
    llava = prepared.llava_rows(torch.float32)
    base_vocab = model.dims.vocab_size - len(ADDED_TOKENS)
    state: dict[str, torch.Tensor] = {}
    for part in SMARTEDIT_FILES:
        def target(key: str, stored: torch.dtype, part: str = part) -> torch.dtype:
            local = by_official.get((part, key))
            if local is None or key in (EMBED_KEY, LM_HEAD_KEY):
                return torch.float32  # derived/discarded (dropped below) or assembled in fp32 first
            return dtype_for(local)

        tensors = read_sharded(prepared.folder / "smartedit", part, device=device, dtype_for=target)
        for key, value in tensors.items():
            local = by_official.get((part, key))
            if local is None:
                continue
            if key in (EMBED_KEY, LM_HEAD_KEY):
                # the official loader puts LLaVA-1.1's rows back over the first `base_vocab` rows
                rows = llava["model.embed_tokens.weight" if key == EMBED_KEY else "lm_head.weight"]
                value = torch.cat([rows.to(value.device), value[base_vocab:]], dim=0).to(dtype_for(local))
            state[local] = value
        del tensors
    incompatible = model.load_state_dict(state, strict=False, assign=True)
    leftover = [k for k in incompatible.missing_keys if not k.startswith("vision_tower.")]
    if leftover or incompatible.unexpected_keys:
        raise SmartEditWeightsError(f"internal key mismatch after mapping: missing {leftover[:8]}, "
                                    f"unexpected {incompatible.unexpected_keys[:8]}")
    still_meta = [n for n, p in model.named_parameters() if p.is_meta]
    if still_meta:
        raise SmartEditWeightsError(f"parameters left unloaded: {still_meta[:8]}")
    return report


def describe_sources(prepared: PreparedWeights) -> dict[str, str]:
    """The provenance recorded in each result's trace: every repo and the commit actually used."""
    found: dict[str, set[str]] = {}
    for name, rec in prepared.manifest.get("files", {}).items():
        for r in rec if isinstance(rec, list) else [rec]:
            found.setdefault(name.split("/")[0], set()).add(f"{r.get('repo')}@{r.get('commit') or 'local'}")
    return {name: ", ".join(sorted(refs)) for name, refs in sorted(found.items())}
