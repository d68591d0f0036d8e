"""SmartEdit's one-time preparation (`ciebench baselines smartedit prepare`): download the official
files and what they need (smartedit_sources.py), merge LLaVA-1.1's rows, convert the pickles to
safetensors, check the result against the architecture and write the manifest (the folder's format:
smartedit_checkpoint.py).

LLaVA-1.1 is only published as a delta against the original LLaMA weights: `prepare` merges exactly
the rows SmartEdit keeps from it (embedding and LM head, fp16 sum, as LLaVA's `apply_delta` does) and
the projector. Run-time models are fetched into the hub cache too, so later runs work offline.

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
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, Iterable

import torch

from ciebench.io import atomic_write_json

from .smartedit_checkpoint import FORMAT_VERSION, MANIFEST, check_prepared, read_sharded, save_sharded
from .smartedit_sources import (ADAPTER_CONFIG, ADAPTER_CONFIG_FILE, CLIP_FILES, EMBED_KEY, IP2P_FILES,
                                SMARTEDIT_FILES, SmartEditWeightsError, Sources, default_weights_dir)

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------------
# hub access and the official (pickled) files
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
        atomic_write_json(out / "smartedit_check_failed.json", manifest)
        raise SmartEditWeightsError(f"the prepared weights do not match the SmartEdit architecture:\n{report.summary()}")
    atomic_write_json(manifest_path, manifest)
    echo(f"prepared {out}")
    return out



def prepare_weights(variant: str = "7b", out_dir: str | Path | None = None, force: bool = False,
                    **source_overrides: Any) -> Path:
    """Python entry point of `ciebench baselines smartedit prepare`: download and assemble the weights
    of one variant once (see `prepare`). Returns the prepared folder."""
    return prepare(Sources.for_variant(variant, **source_overrides), out_dir, force=force, echo=print)
