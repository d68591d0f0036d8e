"""`ciebench prefetch`: resolve everything a configuration will load into concrete files with sizes,
download what is missing, and optionally write a self-contained offline bundle.

The configuration's components declare their needs (`ciebench.requirements`); here each requirement
becomes files: a hub repository through the hub's file metadata (commit and sizes from
`HfApi.model_info(files_metadata=True)`) and the loader's selection rule, or, offline, through the
local hub cache; torchvision checkpoints through their URL (size from the server's Content-Length);
pinned assets through `ciebench.assets`; the CIEBench release through its converted cache.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import re
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from .errors import EnvironmentProblem, UsageError
from .requirements import ASSET, DATASET, ENDPOINT, HUB, LOCAL, TORCH_CHECKPOINT, Requirement, dedupe, select_hub_files

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Configuration:
    """What `evaluate` will be asked to run: editors (name, preset, key=value args), dataset and scoring."""

    editors: tuple[str, ...] = ()
    preset: str | None = None
    editor_args: tuple[str, ...] = ()
    dataset: str | None = None
    protocol: str | None = None
    metrics: tuple[str, ...] | None = None
    judge: str | None = None
    score: bool = True  # False: generation only (no scoring models)
    benchmark: str | None = None  # a registered benchmark (instead of, or giving, the dataset)
    judge_prompts: str | None = None  # local copies of pinned or a benchmark's unpinned prompt files (--judge-prompts)
    judge_protocol: str | None = None  # overrides the judge config's protocol (--judge-protocol)
    editor_config: str | None = None  # a YAML file of editor options (--editor-config)
    benchmark_root: str | None = None  # a local copy of the benchmark's data (--benchmark-root): nothing to fetch

    def to_dict(self) -> dict[str, Any]:
        return {"editors": list(self.editors), "preset": self.preset, "editor_args": list(self.editor_args),
                **({"editor_config": self.editor_config} if self.editor_config else {}),
                **({"benchmark_root": self.benchmark_root} if self.benchmark_root else {}),
                "dataset": self.dataset, "protocol": self.protocol,
                "metrics": list(self.metrics) if self.metrics is not None else None, "judge": self.judge,
                "score": self.score, "benchmark": self.benchmark, "judge_prompts": self.judge_prompts,
                "judge_protocol": self.judge_protocol}


@dataclass(frozen=True)
class PlannedFile:
    requirement: Requirement
    bundle_path: str  # where the file lives inside a bundle (a hub-cache / torch-hub / ciebench-cache layout)
    size: int | None  # bytes: hub metadata, the server's Content-Length, or the file on disk
    local: Path | None  # the file on this machine, when it is already here
    repo_file: str = ""  # hub: path inside the repository
    commit: str = ""  # hub: the commit the revision resolved to


@dataclass
class Plan:
    configuration: Configuration
    requirements: list[Requirement]
    files: list[PlannedFile] = field(default_factory=list)
    refs: dict[str, str] = field(default_factory=dict)  # bundle path of a hub ref file -> commit
    notes: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # requirements that could not be resolved, named

    @property
    def total_bytes(self) -> int:
        return sum(f.size or 0 for f in self.files)

    @property
    def to_download(self) -> list[PlannedFile]:
        return [f for f in self.files if f.local is None]


# ---- configuration -> requirements ----------------------------------------------------------------
def configuration_requirements(config: Configuration) -> tuple[list[Requirement], list[str]]:
    """Every requirement of `config`, deduplicated, and notes (editors that declare nothing, ...)."""
    from .editor import Editor
    from .editor_config import EditorConfigError, build_editor
    from .registry import RegistryError

    reqs: list[Requirement] = []
    notes: list[str] = []
    if config.preset and config.editors and not any(config.preset in _editor_presets(n) for n in config.editors):
        raise UsageError(f"no editor among {', '.join(config.editors)} has a preset {config.preset!r}")
    for name in config.editors:
        try:
            cls_preset = config.preset if config.preset and config.preset in _editor_presets(name) else None
            editor = build_editor(name, list(config.editor_args), config.editor_config, cls_preset)
        except (RegistryError, EditorConfigError, ValueError) as exc:
            text, prefix = str(exc), f"editor {name!r}"  # a rejected Config value names its editor already
            raise UsageError(text if text.startswith(prefix) else f"{prefix}: {text}",
                             hint=getattr(exc, "hint", None)) from exc
        # a wrapper (rewrite:EDITOR) declares its wrapped editor's assets: that one may declare nothing
        if any(type(e).required_assets is Editor.required_assets for e in (editor, getattr(editor, "inner", None)) if e):
            notes.append(f"editor {name} declares no assets (Editor.required_assets); whatever it downloads "
                         "at run time is not prefetched")
        reqs += editor.required_assets()
    if config.benchmark is not None:
        bench_reqs, dataset = benchmark_requirements(config)
        reqs += bench_reqs
        if dataset is None:  # a judge-scored benchmark: its judges score, no region models
            return dedupe(reqs), notes
        config = dataclasses.replace(config, dataset=dataset, benchmark=None)
    reqs += dataset_requirements(config.dataset)
    if config.score:
        from ciebench.metrics.region import RegionScorer

        from .scoring import ScoreOptions, resolve_metrics

        try:
            region, use_idcs = resolve_metrics(ScoreOptions(metrics=config.metrics, judge=config.judge))
        except ValueError as exc:
            raise UsageError(str(exc)) from exc
        protocol = config.protocol or default_protocol(config.dataset)
        reqs += RegionScorer.required_assets(protocol, region)
        if use_idcs:
            from ciebench.metrics.idcs import get_judge_config

            try:
                judge = get_judge_config(config.judge)
                if config.judge_protocol:  # as `evaluate --judge-protocol` overrides it (ciebench.judge.run)
                    judge = dataclasses.replace(judge, protocol=config.judge_protocol)
                reqs += judge.required_assets(prompts_dir=config.judge_prompts)
            except (ValueError, FileNotFoundError) as exc:
                raise UsageError(f"judge {config.judge!r}: {exc}") from exc
    return dedupe(reqs), notes


def _editor_presets(name: str) -> dict:
    from .registry import get_editor_class

    return get_editor_class(name).presets


def dataset_requirements(spec: str | None) -> list[Requirement]:
    from .requirements import local_path

    if spec is None or spec == "mini":
        return []  # embedded: read from the installed packages
    if spec == "ciebench":
        return [Requirement(DATASET, "ciebench", used_by="dataset ciebench")]
    if spec.startswith("hf:"):
        raise UsageError(f"prefetch does not bundle hub datasets ({spec}) yet",
                         hint="prepare it into a local folder with `ciebench data prepare` and use that folder")
    return [local_path(spec, used_by=f"dataset {spec}", detail="a local dataset: not copied into bundles")]


def benchmark_requirements(config: Configuration) -> tuple[list[Requirement], str | None]:
    """A benchmark's needs: its hub dataset (the files its loader reads), its pinned judge prompts and
    its judges' endpoints or local models. Also the dataset spec when the benchmark runs through the
    dataset pipeline (CIEBench, Reason-Edit), else None."""
    from ciebench.benchmarks import get_benchmark
    from ciebench.benchmarks.session import judge_configs

    from .requirements import hub_repo, local_path, pinned_asset

    bench = get_benchmark(config.benchmark)
    used_by = f"benchmark {bench.name}"
    if bench.pipeline == "dataset":
        try:
            return [], bench.dataset_for(config.benchmark_root)
        except ValueError as exc:
            raise UsageError(str(exc)) from exc
    reqs: list[Requirement] = []
    if bench.hub_id and not config.benchmark_root:  # a local copy is read instead of the hub's
        reqs.append(hub_repo(bench.hub_id, used_by=used_by, revision=bench.hub_revision, repo_type="dataset",
                             layout="files", files=bench.hub_files))
    reqs += [pinned_asset(a, used_by=used_by) for a in bench.pinned_assets()]
    if bench.prompts is None and config.judge_prompts:
        reqs.append(local_path(str(Path(config.judge_prompts) / bench.prompt_file), used_by=f"{used_by}: judge prompts",
                               detail=f"{bench.prompt_file} from {bench.prompt_source} (not pinned; not bundled)"))
    elif bench.prompts is None:
        raise UsageError(f"{bench.name}: its prompt file is not pinned by sha256; pass --judge-prompts DIR holding "
                         f"{bench.prompt_file} from {bench.prompt_source}")
    try:
        judges = judge_configs(bench, config.judge)
    except ValueError as exc:
        raise UsageError(str(exc)) from exc
    for role, llm in sorted(judges.items()):
        reqs += llm.required_assets(f"{used_by}: judge {role}")
    return reqs, None


def default_protocol(spec: str | None) -> str:
    if spec in (None, "mini", "ciebench"):
        return "cielr"
    from ciebench.datasets import DatasetError, read_dataset

    try:
        return read_dataset(spec).default_protocol
    except DatasetError:
        return "cielr"


# ---- requirements -> files --------------------------------------------------------------------------
def plan(config: Configuration, offline: bool | None = None) -> Plan:
    """Resolve `config` into files. Offline (default: HF_HUB_OFFLINE / CIEBENCH_OFFLINE), only what is
    already on this machine is found, and anything else is named in `missing`."""
    if offline is None:
        offline = is_offline()
    requirements, notes = configuration_requirements(config)
    result = Plan(config, requirements, notes=list(notes))
    for req in requirements:
        resolver = {HUB: _plan_hub, TORCH_CHECKPOINT: _plan_torch, ASSET: _plan_asset, DATASET: _plan_dataset,
                    ENDPOINT: _plan_endpoint, LOCAL: _plan_local}[req.kind]
        resolver(req, offline, result)
    return result


def is_offline() -> bool:
    return any(os.environ.get(k, "").strip().lower() in ("1", "true", "yes", "on")
               for k in ("HF_HUB_OFFLINE", "CIEBENCH_OFFLINE"))


def hub_cache() -> Path:
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def repo_folder(req: Requirement) -> str:
    return f"{req.repo_type}s--" + req.ref.replace("/", "--")


_COMMIT = re.compile(r"^[0-9a-f]{40}$")


def cached_commit(req: Requirement) -> str | None:
    """The commit the local hub cache resolves a hub requirement's revision to (what `from_pretrained`
    reads offline, and what it last fetched online), or None when the cache does not hold it."""
    revision = req.revision or "main"
    repo_dir = hub_cache() / repo_folder(req)
    commit = revision if _COMMIT.match(revision) else _read(repo_dir / "refs" / revision)
    return commit if commit and (repo_dir / "snapshots" / commit).is_dir() else None


def _plan_hub(req: Requirement, offline: bool, out: Plan) -> None:
    revision = req.revision or "main"
    if offline:
        repo_dir = hub_cache() / repo_folder(req)
        commit = cached_commit(req)
        snapshot = repo_dir / "snapshots" / commit if commit else None
        if snapshot is None or not snapshot.is_dir():
            out.missing.append(f"{req.describe()} for {req.used_by}: not in the hub cache {hub_cache()} "
                               "(offline: run `ciebench prefetch` where the hub is reachable)")
            return
        listing = {p.relative_to(snapshot).as_posix(): p for p in snapshot.rglob("*") if p.is_file()}
        sizes = {rel: path.stat().st_size for rel, path in listing.items()}
    else:
        from huggingface_hub import HfApi

        api = HfApi()
        try:
            getter = api.dataset_info if req.repo_type == "dataset" else api.model_info
            info = getter(req.ref, revision=req.revision, files_metadata=True)
        except Exception as exc:  # noqa: BLE001 (hub client errors: not found, gated, network)
            out.missing.append(f"{req.describe()} for {req.used_by}: the hub did not answer: {exc}")
            return
        commit = info.sha
        sizes = {s.rfilename: s.size for s in info.siblings or []}
        listing = {}
    chosen = select_hub_files(sizes, req)
    if not chosen:
        out.missing.append(f"{req.describe()} for {req.used_by}: no file matches what the loader reads "
                           f"(repository has {len(sizes)} file(s))")
        return
    folder = f"hub/{repo_folder(req)}"
    if not _COMMIT.match(revision):
        out.refs[f"{folder}/refs/{revision}"] = commit
    for rel in chosen:
        local = listing.get(rel) if offline else _cached_hub_file(req, rel, commit)
        out.files.append(PlannedFile(req, f"{folder}/snapshots/{commit}/{rel}", sizes.get(rel), local, rel, commit))


def _cached_hub_file(req: Requirement, rel: str, commit: str) -> Path | None:
    path = hub_cache() / repo_folder(req) / "snapshots" / commit / rel
    return path if path.is_file() else None


def torch_checkpoint_dir() -> Path:
    import torch

    return Path(torch.hub.get_dir()) / "checkpoints"


def _plan_torch(req: Requirement, offline: bool, out: Plan) -> None:
    path = torch_checkpoint_dir() / req.ref
    bundle_path = f"torch/hub/checkpoints/{req.ref}"
    if path.is_file():
        out.files.append(PlannedFile(req, bundle_path, path.stat().st_size, path))
    elif offline:
        out.missing.append(f"torchvision checkpoint {req.ref} for {req.used_by}: not in {path.parent}")
    else:
        out.files.append(PlannedFile(req, bundle_path, _content_length(req.url), None))


def _content_length(url: str) -> int | None:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=30) as resp:  # noqa: S310
            value = resp.headers.get("Content-Length")
        return int(value) if value else None
    except (OSError, ValueError):
        return None


def _plan_asset(req: Requirement, offline: bool, out: Plan) -> None:
    from .assets import cached_path, is_local_url
    from .cache import cache_root

    path = cached_path(req.asset)
    bundle_path = "ciebench/" + path.relative_to(cache_root()).as_posix()
    if path.is_file():
        out.files.append(PlannedFile(req, bundle_path, path.stat().st_size, path))
    elif offline and not is_local_url(req.asset.url):
        out.missing.append(f"asset {req.ref} for {req.used_by}: not cached at {path}")
    else:
        out.files.append(PlannedFile(req, bundle_path, None, None))


def _plan_dataset(req: Requirement, offline: bool, out: Plan) -> None:
    import datasets

    from ciebench.datasets.release import cache_dir

    converted = cache_dir() / "dataset"
    if not (converted / "state.json").is_file():
        if offline:
            out.missing.append(f"dataset ciebench: no converted copy at {converted}")
            return
        from ciebench.datasets import read_dataset

        read_dataset("ciebench")  # downloads, verifies against the shipped sha256 manifest, converts
    root = Path(datasets.config.HF_DATASETS_CACHE)
    for path in sorted(p for p in converted.rglob("*") if p.is_file()):
        out.files.append(PlannedFile(req, "datasets/" + path.relative_to(root).as_posix(), path.stat().st_size, path))


def _plan_endpoint(req: Requirement, offline: bool, out: Plan) -> None:
    out.notes.append(f"endpoint {req.ref} (model {req.detail}) for {req.used_by}: not a file; "
                     "`ciebench doctor` checks that it answers")


def _plan_local(req: Requirement, offline: bool, out: Plan) -> None:
    from .cache import cache_root

    path = Path(req.ref)
    if not path.exists():
        out.missing.append(f"{req.ref} for {req.used_by}: does not exist ({req.detail})")
        return
    root = cache_root().resolve()
    if not path.resolve().is_relative_to(root):
        out.notes.append(f"{req.ref} for {req.used_by}: a local path, not copied into bundles")
        return
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for p in files:
        inner = p.resolve().relative_to(root)
        out.files.append(PlannedFile(req, f"ciebench/{inner.as_posix()}", p.stat().st_size, p))


# ---- download -------------------------------------------------------------------------------------
def download(result: Plan, progress: bool = True) -> Plan:
    """Fetch every planned file not yet on this machine (hub files into the hub cache, checkpoints
    into torch's hub dir, assets into ciebench's cache); returns the plan with local paths filled."""
    from .assets import resolve_asset

    todo = result.to_download
    bar = tqdm(total=sum(f.size or 0 for f in todo), unit="B", unit_scale=True, desc="prefetch", disable=not progress)
    done = []
    try:
        for f in result.files:
            if f.local is not None:
                done.append(f)
                continue
            req = f.requirement
            if req.kind == HUB:
                from huggingface_hub import hf_hub_download

                try:
                    local = Path(hf_hub_download(req.ref, f.repo_file, revision=f.commit, repo_type=req.repo_type))
                except Exception as exc:  # noqa: BLE001
                    raise EnvironmentProblem(f"cannot download {f.repo_file} of {req.describe()}: {exc}") from exc
            elif req.kind == TORCH_CHECKPOINT:
                import torch

                local = torch_checkpoint_dir() / req.ref
                local.parent.mkdir(parents=True, exist_ok=True)
                prefix = re.search(r"-([0-9a-f]{8,})\.", req.ref)
                try:
                    torch.hub.download_url_to_file(req.url, str(local), hash_prefix=prefix.group(1) if prefix else None,
                                                   progress=False)
                except Exception as exc:  # noqa: BLE001
                    raise EnvironmentProblem(f"cannot download {req.url}: {exc}") from exc
            elif req.kind == ASSET:
                local = resolve_asset(req.asset).path
            else:
                raise EnvironmentProblem(f"{req.describe()}: nothing to download it with")
            size = local.stat().st_size
            done.append(PlannedFile(req, f.bundle_path, f.size if f.size is not None else size, local, f.repo_file, f.commit))
            bar.update(f.size or size)
    finally:
        bar.close()
    result.files = done
    return result


def human_bytes(n: int | None) -> str:
    if n is None:
        return "size unknown"
    value = float(n)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if value < 1000 or unit == "TB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.2f} {unit}"
        value /= 1000
    return f"{n} B"


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8").strip()
    except OSError:
        return ""
