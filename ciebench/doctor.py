"""`ciebench doctor`: will this `evaluate` run work here? One line per check, before hours of GPU time.

Checks: every file the configuration loads is present (or reachable), and a local dataset reads
without sample errors (what `data validate` reports); each judge / LLM endpoint
answers one real structured call (served model name, response format accepted); each stage's GPU
memory against what is free (through a `DeviceProbe`, which tests replace); disk space for the run
folder; installed package versions against ciebench's declared floors. `--offline` checks the bundle
alone. Exit 0 only when every check passes.
"""
from __future__ import annotations

import dataclasses
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from .prefetch import Configuration, Plan, human_bytes, plan
from .requirements import ENDPOINT, HUB, TORCH_CHECKPOINT, Requirement

# Weights are not all a stage holds: activations, CUDA context and allocator slack. The factor is a
# floor (a stage needing less is unusual), not a promise that a run with more fits.
MEMORY_OVERHEAD = 1.2
# Per generated image: the PNG (as large as the source at worst) and its trace; source bytes x this.
DISK_PER_IMAGE_FACTOR = 2.0
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pth", ".pt", ".ckpt")
PROBE_SCHEMA = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"],
                "additionalProperties": False}


@dataclass(frozen=True)
class DoctorCheck:
    name: str
    ok: bool
    detail: str

    def line(self) -> str:
        return f"{'PASS' if self.ok else 'FAIL'} {self.name:<28} {self.detail}"


class DeviceProbe(Protocol):
    def gpu_free_bytes(self, device: str) -> int | None: ...

    def disk_free_bytes(self, path: Path) -> int: ...


class SystemProbe:
    """The machine as it is: CUDA's free memory (torch.cuda.mem_get_info) and the filesystem's."""

    def gpu_free_bytes(self, device: str) -> int | None:
        import torch

        if not torch.cuda.is_available():
            return None
        index = int(device.split(":", 1)[1]) if ":" in device else torch.cuda.current_device()
        free, _total = torch.cuda.mem_get_info(index)
        return int(free)

    def disk_free_bytes(self, path: Path) -> int:
        return int(shutil.disk_usage(path).free)


@dataclass
class DoctorOptions:
    configuration: Configuration
    device: str = "cpu"
    out: Path | None = None  # the run folder (disk check)
    seeds: int = 1
    limit: int | None = None
    offline: bool = False
    bundle: Path | None = None
    probe: Any = field(default_factory=SystemProbe)


def run_doctor(options: DoctorOptions) -> list[DoctorCheck]:
    checks: list[DoctorCheck] = []
    if options.offline:
        checks.append(check_bundle_files(options.bundle))
        if not checks[-1].ok:
            return checks + [check_packages()]
    from .errors import UsageError

    config = options.configuration
    # Read once (every image decoded): for the file check, the disk check and the default protocol,
    # which `plan` would otherwise read the dataset again to learn.
    dataset = read_configured_dataset(config.dataset)
    if config.protocol is None and dataset.loaded is not None:
        config = dataclasses.replace(config, protocol=dataset.loaded.default_protocol)
    try:
        result = plan(config, offline=options.offline or None)
    except UsageError as exc:  # the command line itself would fail: say so as a check, keep checking
        return checks + [DoctorCheck("configuration", False, exc.one_line()), check_packages()]
    checks.append(check_files(result, dataset))
    checks += check_endpoints(result.requirements, offline=options.offline)
    checks += check_gpu_memory(result, options.device, options.probe)
    checks.append(check_disk(result, options, dataset))
    checks.append(check_packages())
    return checks


# ---- files ------------------------------------------------------------------------------------------
def check_bundle_files(bundle: Path | None) -> DoctorCheck:
    from .bundle import BUNDLE_ENV, check_bundle
    from .errors import CiebenchError

    folder = bundle or (Path(os.environ[BUNDLE_ENV]) if os.environ.get(BUNDLE_ENV) else None)
    if folder is None:
        return DoctorCheck("bundle", False, f"--offline needs a bundle: --bundle DIR or {BUNDLE_ENV}=DIR")
    try:
        problems = check_bundle(folder)
    except CiebenchError as exc:
        return DoctorCheck("bundle", False, exc.one_line())
    if problems:
        listed = "; ".join(map(str, problems[:5])) + (f"; ... {len(problems) - 5} more" if len(problems) > 5 else "")
        return DoctorCheck("bundle", False, f"{len(problems)} file(s) missing or changed: {listed}")
    return DoctorCheck("bundle", True, f"{folder}: every manifest file present with its sha256")


@dataclass(frozen=True)
class DatasetRead:
    """The configured dataset as read once by the doctor: `loaded`, or why it could not be read."""

    spec: str | None
    loaded: Any = None  # ciebench.datasets.LoadedDataset
    error: str | None = None

    @property
    def local(self) -> bool:
        """A dataset in this machine's files (the embedded `mini`, the verified release and hub
        datasets are checked where they are fetched)."""
        return bool(self.spec) and self.spec not in ("mini", "ciebench") and not self.spec.startswith("hf:")


def read_configured_dataset(spec: str | None) -> DatasetRead:
    from ciebench.datasets import DatasetError, read_dataset

    from .errors import CiebenchError

    if not spec:
        return DatasetRead(spec)
    try:
        return DatasetRead(spec, loaded=read_dataset(spec))
    except (DatasetError, OSError) as exc:
        return DatasetRead(spec, error=exc.one_line() if isinstance(exc, CiebenchError) else str(exc))


def dataset_problems(dataset: DatasetRead, shown: int = 3) -> list[str]:
    """Why a local dataset would fail samples in the run: the sample errors `data validate` reports
    (the first few and the count), a dataset that cannot be read, or one with no usable sample."""
    from ciebench.datasets.problems import errors

    if not dataset.local:
        return []
    validate = f"`ciebench data validate {dataset.spec}` lists every problem"
    if dataset.error is not None:
        # a path that is not there is already named by the plan's missing files
        return [f"dataset: {dataset.error}"] if Path(dataset.spec).expanduser().exists() else []
    bad = errors(dataset.loaded.problems)
    if bad:
        more = f"; ... {len(bad) - shown} more" if len(bad) > shown else ""
        return [f"dataset {dataset.spec}: {len(bad)} sample error(s) ({validate}): "
                + "; ".join(str(p) for p in bad[:shown]) + more]
    if len(dataset.loaded.dataset) == 0:
        return [f"dataset {dataset.spec}: no usable samples ({validate})"]
    return []


def check_files(result: Plan, dataset: DatasetRead) -> DoctorCheck:
    failed = list(result.missing) + dataset_problems(dataset)
    if failed:
        return DoctorCheck("model and dataset files", False, "; ".join(failed))
    here = len(result.files) - len(result.to_download)
    detail = f"{len(result.files)} file(s), {human_bytes(result.total_bytes)}: {here} present"
    if result.to_download:
        detail += (f", {len(result.to_download)} reachable to download "
                   f"({human_bytes(sum(f.size or 0 for f in result.to_download))}; `ciebench prefetch` fetches them)")
    return DoctorCheck("model and dataset files", True, detail)


# ---- endpoints --------------------------------------------------------------------------------------
def check_endpoints(requirements: list[Requirement], offline: bool = False) -> list[DoctorCheck]:
    """One real structured call per distinct endpoint and model, with the config that will be used. An
    endpoint declared without an LLM config (an image-edit API: a probe would be a paid edit) is not
    called; offline, one that is not on this machine fails."""
    checks = []
    for req in requirements:
        if req.kind != ENDPOINT:
            continue
        name = f"endpoint {req.detail} ({req.used_by})"
        if req.config is not None:
            checks.append(probe_endpoint(req.config, name, offline=offline))
        elif offline and (refused := _off_machine(req.ref, name)) is not None:
            checks.append(refused)
    return checks


def _off_machine(url: str, name: str) -> DoctorCheck | None:
    """The failing check for an endpoint another machine serves, under --offline; None for a local one."""
    from .assets import is_local_url

    if is_local_url(url):
        return None
    return DoctorCheck(name, False, f"{url} is not on this machine and --offline is set")


def probe_endpoint(config: Any, name: str, offline: bool = False) -> DoctorCheck:
    from ciebench.llm.client import make_client
    from ciebench.llm.prompts import PromptTemplate

    refused = _off_machine(config.endpoint, name) if offline else None
    if refused is not None:
        return refused
    client = make_client(dataclasses.replace(config, max_retries=0, max_tokens=32), cache_dir=None)
    template = PromptTemplate("doctor_probe", 1, 'Reply with exactly this JSON object: {"ok": true}')
    reply = client.complete(template, schema=PROBE_SCHEMA)
    fmt = config.response_format
    if reply.ok:
        return DoctorCheck(name, True, f"{config.endpoint} answers; served model {reply.model or 'not reported'}; "
                                       f"response_format={fmt} accepted")
    rejected = "response_format" in (reply.error or "") or "json_schema" in (reply.error or "")
    why = f"response_format={fmt} rejected" if rejected else "no valid structured answer"
    return DoctorCheck(name, False, f"{config.endpoint}: {why}: {reply.error}; served model {reply.model or 'unknown'}")


# ---- GPU memory -------------------------------------------------------------------------------------
def stage_weight_bytes(result: Plan) -> dict[str, int]:
    """Weight bytes per stage (editor, scoring, judge), from the planned files' metadata sizes."""
    stages: dict[str, int] = {}
    for f in result.files:
        req = f.requirement
        if req.kind not in (HUB, TORCH_CHECKPOINT) or not f.bundle_path.endswith(WEIGHT_SUFFIXES):
            continue
        for stage in {_stage_of(user) for user in req.used_by.split("; ")}:  # a model two roles share: once
            stages[stage] = stages.get(stage, 0) + (f.size or 0)
    return stages


def _stage_of(used_by: str) -> str:
    head = used_by.split(":", 1)[0].strip()
    return "scoring" if head.startswith("protocol") else head


def check_gpu_memory(result: Plan, device: str, probe: Any) -> list[DoctorCheck]:
    if not device.startswith("cuda"):
        return [DoctorCheck("gpu memory", True, f"device {device}: no GPU needed")]
    free = probe.gpu_free_bytes(device)
    if free is None:
        return [DoctorCheck("gpu memory", False, f"--device {device} but no CUDA device is available")]
    checks = []
    # stages run one after another (generation, then scoring, then the judge): each must fit alone
    for stage, weights in sorted(stage_weight_bytes(result).items()):
        need = int(weights * MEMORY_OVERHEAD)
        ok = need <= free
        checks.append(DoctorCheck(f"gpu memory: {stage}", ok, f"needs about {human_bytes(need)} (weights "
                                  f"{human_bytes(weights)} x {MEMORY_OVERHEAD}), {human_bytes(free)} free on {device}"))
    return checks or [DoctorCheck("gpu memory", True, f"no model weights to load; {human_bytes(free)} free")]


# ---- disk -------------------------------------------------------------------------------------------
def check_disk(result: Plan, options: DoctorOptions, dataset: DatasetRead) -> DoctorCheck:
    out = Path(options.out) if options.out else Path.cwd()
    existing = next((p for p in [out, *out.parents] if p.exists()), Path("/"))
    per_sample, n = _dataset_bytes(dataset, options.limit)
    run_need = int(per_sample * n * options.seeds * DISK_PER_IMAGE_FACTOR * max(1, len(options.configuration.editors)))
    download_need = sum(f.size or 0 for f in result.to_download) if _same_fs(existing) else 0
    need = run_need + download_need
    free = options.probe.disk_free_bytes(existing)
    detail = (f"{existing}: {human_bytes(free)} free; run folder needs about {human_bytes(run_need)} "
              f"({n} sample(s) x {options.seeds} seed(s))"
              + (f" + downloads {human_bytes(download_need)}" if download_need else ""))
    return DoctorCheck("disk space", need <= free, detail)


def _same_fs(path: Path) -> bool:
    from .prefetch import hub_cache

    try:
        cache = next((p for p in [hub_cache(), *hub_cache().parents] if p.exists()), Path("/"))
        return os.stat(cache).st_dev == os.stat(path).st_dev
    except OSError:
        return True


def _dataset_bytes(dataset: DatasetRead, limit: int | None) -> tuple[float, int]:
    """(mean stored bytes of a source image, samples to run); (0, 0) when the dataset is not readable here."""
    if dataset.loaded is None:
        return 0.0, 0
    import datasets

    raw = dataset.loaded.dataset.cast_column("image", datasets.Image(decode=False))
    n = len(raw) if limit is None else min(limit, len(raw))
    sizes = [len(v["bytes"]) if v.get("bytes") is not None else Path(v["path"]).stat().st_size
             for v in raw.select(range(n))["image"]] if n else []
    return (sum(sizes) / len(sizes) if sizes else 0.0), n


# ---- packages ---------------------------------------------------------------------------------------
def declared_floors() -> dict[str, str]:
    """ciebench's own dependency declarations (pyproject.toml, as installed): name -> specifier."""
    from importlib import metadata

    from packaging.requirements import Requirement as PkgRequirement

    floors = {}
    for text in metadata.requires("ciebench") or []:
        req = PkgRequirement(text)
        if req.marker is not None and "extra" in str(req.marker):
            continue
        floors[req.name] = str(req.specifier)
    return floors


def check_packages(floors: dict[str, str] | None = None) -> DoctorCheck:
    from importlib import metadata

    from packaging.specifiers import SpecifierSet
    from packaging.version import InvalidVersion, Version

    floors = declared_floors() if floors is None else floors
    bad = []
    for name, spec in sorted(floors.items()):
        try:
            installed = metadata.version(name)
        except metadata.PackageNotFoundError:
            bad.append(f"{name} not installed (needs {spec})")
            continue
        try:
            if spec and Version(installed) not in SpecifierSet(spec):
                bad.append(f"{name} {installed} (needs {spec})")
        except InvalidVersion:
            bad.append(f"{name} {installed}: unreadable version (needs {spec})")
    if bad:
        return DoctorCheck("package versions", False, "; ".join(bad))
    return DoctorCheck("package versions", True, f"{len(floors)} package(s) meet ciebench's declared floors")
