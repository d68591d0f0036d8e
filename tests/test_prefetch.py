"""`ciebench prefetch` and offline bundles, from a pre-filled hub cache (no network): the bundle holds
every file a tiny-model `evaluate` loads, and a missing file is named."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ciebench.cli import app
from ciebench.requirements import hub_repo, select_hub_files

from tests.support.fixtures_editors import publish_tiny_instruct_pix2pix
from tests.support.fixtures_models import CLIP_VIT_L14_336, publish_clip, publish_squeezenet1_1

REPO = Path(__file__).resolve().parents[1]
runner = CliRunner()
METRICS = ["--metrics", "psnr,lpips,clip"]


def _prefetch(out: Path, *editor: str) -> Path:
    result = runner.invoke(app, ["prefetch", *editor, "--dataset", "mini", *METRICS, "--bundle", str(out)])
    assert result.exit_code == 0, result.output
    assert "total:" in result.output and "to download: 0 file(s)" in result.output
    return out


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    publish_clip(CLIP_VIT_L14_336)
    publish_squeezenet1_1()
    return _prefetch(tmp_path_factory.mktemp("bundle") / "b", "--editor", "identity")


def test_manifest_lists_every_file_with_its_sha256(bundle: Path):
    manifest = json.loads((bundle / "manifest.json").read_text())
    paths = {e["path"]: e for e in manifest["files"]}
    for entry in manifest["files"]:
        data = (bundle / entry["path"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == entry["sha256"] and len(data) == entry["size"]
    clip = {e["repo_file"] for e in manifest["files"] if e["ref"] == CLIP_VIT_L14_336}
    assert {"config.json", "model.safetensors", "preprocessor_config.json", "tokenizer_config.json",
            "vocab.json", "merges.txt"} <= clip
    assert "torch/hub/checkpoints/squeezenet1_1-b8a52dc0.pth" in paths
    assert manifest["total_bytes"] == sum(e["size"] for e in manifest["files"])
    # hub refs resolve main to the snapshot in the bundle
    ref = bundle / "hub" / "models--openai--clip-vit-large-patch14-336" / "refs" / "main"
    assert (ref.parent.parent / "snapshots" / ref.read_text()).is_dir()


def _evaluate_with_only_the_bundle(bundle: Path, out: Path, tmp: Path, *editor: str,
                                   data: tuple[str, ...] = ("--dataset", "mini")) -> subprocess.CompletedProcess:
    empty = tmp / "empty"
    env = dict(os.environ, CIEBENCH_BUNDLE=str(bundle), HF_HUB_OFFLINE="1",
               HF_HUB_CACHE=str(empty / "hub"), HF_HOME=str(empty / "hf"), TORCH_HOME=str(empty / "torch"),
               CIEBENCH_CACHE=str(empty / "cache"), PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-m", "ciebench", "evaluate", *(editor or ("--editor", "identity")),
                           *data, "--limit", "1", *METRICS, "--out", str(out)],
                          env=env, capture_output=True, text=True, timeout=300)


def test_tiny_evaluate_runs_offline_from_the_bundle_alone(bundle: Path, tmp_path: Path):
    proc = _evaluate_with_only_the_bundle(bundle, tmp_path / "run", tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["metrics"]["clip"]["n"] == 1 and summary["metrics"]["lpips"]["n"] == 1
    assert not (tmp_path / "empty" / "hub").exists() or not any((tmp_path / "empty" / "hub").rglob("*.safetensors"))


@pytest.mark.heavy
def test_diffusers_editor_runs_offline_from_its_bundle(tmp_path: Path):
    """The diffusers layout rule: the InstructPix2Pix pipeline loads from the bundle alone."""
    publish_tiny_instruct_pix2pix()
    publish_clip(CLIP_VIT_L14_336)
    publish_squeezenet1_1()
    out = _prefetch(tmp_path / "b", "--editor", "instructpix2pix")
    manifest = json.loads((out / "manifest.json").read_text())
    ip2p = {e["repo_file"] for e in manifest["files"] if e["ref"] == "timbrooks/instruct-pix2pix"}
    assert {"model_index.json", "unet/config.json", "unet/diffusion_pytorch_model.safetensors",
            "vae/diffusion_pytorch_model.safetensors", "text_encoder/model.safetensors",
            "scheduler/scheduler_config.json", "tokenizer/tokenizer_config.json"} <= ip2p
    proc = _evaluate_with_only_the_bundle(out, tmp_path / "run", tmp_path, "--editor", "instructpix2pix",
                                          "--editor-arg", "steps=1", "--editor-arg", "resolution=64")
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.heavy
def test_a_table_diffusers_editor_runs_offline_from_its_bundle_and_records_its_commit(tmp_path: Path):
    """`prefetch --editor flux-kontext --bundle`: the bundle holds the pipeline (it held nothing of it when
    the editor declared nothing), the editor loads from it alone, and invocations.json names the snapshot."""
    from tests.support.fixtures_diffusers_editors import FLUX_KONTEXT, publish_tiny_flux_kontext

    snapshot = publish_tiny_flux_kontext()
    publish_clip(CLIP_VIT_L14_336)
    publish_squeezenet1_1()
    out = _prefetch(tmp_path / "b", "--editor", "flux-kontext")
    manifest = json.loads((out / "manifest.json").read_text())
    bundled = {e["repo_file"] for e in manifest["files"] if e["ref"] == FLUX_KONTEXT}
    on_disk = {p.relative_to(snapshot).as_posix() for p in snapshot.rglob("*") if p.is_file()}
    assert "model_index.json" in bundled and "transformer/diffusion_pytorch_model.safetensors" in bundled
    assert bundled == on_disk  # the tiny repo holds only what the pipeline reads
    proc = _evaluate_with_only_the_bundle(out, tmp_path / "run", tmp_path, "--editor", "flux-kontext",
                                          "--editor-arg", "steps=1", "--editor-arg", "auto_resize=false",
                                          "--editor-arg", "max_area=4096")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    invocation = json.loads((tmp_path / "run" / "invocations.json").read_text())[0]
    assert invocation["editor_models"] == {f"{FLUX_KONTEXT}@main": snapshot.name}


def test_a_bundle_made_for_another_editor_is_refused_before_any_work(bundle: Path, tmp_path: Path):
    """The identity bundle holds no InstructPix2Pix: every sample failed offline with a network error that
    never named the bundle; now the command stops first (exit 4), naming the missing model and what the
    bundle was made for, and writes nothing."""
    proc = _evaluate_with_only_the_bundle(bundle, tmp_path / "run", tmp_path, "--editor", "instructpix2pix")
    assert proc.returncode == 4, proc.stdout + proc.stderr
    message = " ".join(proc.stderr.split())
    assert "does not hold" in message and "timbrooks/instruct-pix2pix" in message and '"identity"' in message
    assert not (tmp_path / "run").exists()
    # a benchmark read from a local copy (--benchmark-root) needs nothing of the hub: still runs from the bundle
    proc = _evaluate_with_only_the_bundle(bundle, tmp_path / "bench", tmp_path,
                                          data=("--benchmark", "ciebench", "--benchmark-root", "mini"))
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_an_editor_config_file_decides_what_is_fetched(tmp_path: Path):
    from ciebench.prefetch import Configuration, configuration_requirements

    (tmp_path / "opts.yaml").write_text("model_id: someone/another-instruct-pix2pix\n")
    requirements, _ = configuration_requirements(Configuration(
        editors=("instructpix2pix",), editor_config=str(tmp_path / "opts.yaml"), score=False))
    assert [r.ref for r in requirements] == ["someone/another-instruct-pix2pix"]


def test_a_missing_bundle_file_is_named(bundle: Path, tmp_path: Path):
    import shutil

    from ciebench.bundle import check_bundle

    broken = tmp_path / "broken"
    shutil.copytree(bundle, broken)
    manifest = json.loads((broken / "manifest.json").read_text())
    victim = next(e for e in manifest["files"] if e["ref"] == CLIP_VIT_L14_336 and e["repo_file"] == "config.json")
    (broken / victim["path"]).unlink()
    problems = [str(p) for p in check_bundle(broken)]
    assert problems == [f"{victim['path']}: missing (needed by protocol cielr: CLIP)"]


def test_a_run_refuses_a_bundle_file_that_is_not_the_manifests(bundle: Path, tmp_path: Path):
    """One flipped bit in the bundled CLIP weights: before, the run scored with them (clip 2.56 -> 0.0, exit 0,
    same recorded revision); now it stops with exit 6 naming the file, before anything is written."""
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(bundle, broken)
    manifest = json.loads((broken / "manifest.json").read_text())
    victim = next(e for e in manifest["files"] if e["ref"] == CLIP_VIT_L14_336 and e["repo_file"] == "model.safetensors")
    data = bytearray((broken / victim["path"]).read_bytes())
    data[len(data) // 2] ^= 0x10
    (broken / victim["path"]).write_bytes(bytes(data))
    proc = _evaluate_with_only_the_bundle(broken, tmp_path / "run", tmp_path)
    assert proc.returncode == 6, proc.stdout + proc.stderr
    assert f"{victim['path']}: sha256 differs from the manifest" in proc.stderr
    assert not (tmp_path / "run" / "summary.json").exists()


def test_offline_prefetch_names_what_is_not_cached():
    result = runner.invoke(app, ["prefetch", "--editor", "instructpix2pix", "--editor-arg", "model_id=nobody/absent",
                                 "--dataset", "mini", "--metrics", "psnr", "--dry-run"])
    assert result.exit_code == 4
    assert "hub model nobody/absent@main (diffusers) for editor instructpix2pix: not in the hub cache" in result.output


def test_declarations_of_existing_components():
    from ciebench.editor_config import build_editor
    from ciebench.metrics.idcs import get_judge_config
    from ciebench.metrics.region import RegionScorer

    assert build_editor("identity").required_assets() == []
    lite = {r.ref: r for r in build_editor("cielr", preset="lite").required_assets()}
    assert set(lite) == {"facebook/sam2.1-hiera-tiny", "google/owlv2-base-patch16-ensemble",
                         "depth-anything/Depth-Anything-V2-Small-hf",
                         "stable-diffusion-v1-5/stable-diffusion-inpainting", "Qwen/Qwen2.5-VL-3B-Instruct"}
    paper = {r.kind for r in build_editor("cielr", preset="paper").required_assets()}
    assert "endpoint" in paper  # DashScope for the language roles
    mb = build_editor("magicbrush").required_assets()
    assert [(r.ref, r.layout, r.skip) for r in mb] == [("vinesmsuic/magicbrush-jul7", "diffusers", ("safety_checker",))]
    smart = build_editor("smartedit").required_assets()
    assert [r.kind for r in smart] == ["local", "hub", "hub"]
    assert [r.ref for r in RegionScorer.required_assets("smartedit", ["clip"])] == ["openai/clip-vit-large-patch14"]
    assert RegionScorer.required_assets("cielr", ["psnr", "ssim"]) == []
    judge = get_judge_config("local").required_assets()
    assert {r.ref for r in judge} == {"Qwen/Qwen2.5-VL-7B-Instruct"} and {r.kind for r in judge} == {"hub"}


# A real repository's listing (timbrooks/instruct-pix2pix) and what diffusers reads from it with
# safety_checker=None: model_index.json and, per component, configs and the non-variant safetensors.
IP2P_LISTING = [
    ".gitattributes", "README.md", "instruct-pix2pix-00-22000.ckpt", "instruct-pix2pix-00-22000.safetensors",
    "model_index.json", "feature_extractor/preprocessor_config.json",
    "safety_checker/config.json", "safety_checker/model.safetensors", "safety_checker/pytorch_model.bin",
    "scheduler/scheduler_config.json", "text_encoder/config.json", "text_encoder/model.safetensors",
    "text_encoder/pytorch_model.bin", "tokenizer/merges.txt", "tokenizer/special_tokens_map.json",
    "tokenizer/tokenizer_config.json", "tokenizer/vocab.json", "unet/config.json",
    "unet/diffusion_pytorch_model.bin", "unet/diffusion_pytorch_model.safetensors",
    "unet/diffusion_pytorch_model.fp16.safetensors", "vae/config.json", "vae/diffusion_pytorch_model.bin",
    "vae/diffusion_pytorch_model.safetensors",
]


def test_diffusers_selection_on_a_real_listing():
    req = hub_repo("timbrooks/instruct-pix2pix", used_by="t", layout="diffusers", skip=("safety_checker",))
    assert sorted(select_hub_files(IP2P_LISTING, req)) == sorted([
        "model_index.json", "feature_extractor/preprocessor_config.json", "scheduler/scheduler_config.json",
        "text_encoder/config.json", "text_encoder/model.safetensors", "tokenizer/merges.txt",
        "tokenizer/special_tokens_map.json", "tokenizer/tokenizer_config.json", "tokenizer/vocab.json",
        "unet/config.json", "unet/diffusion_pytorch_model.safetensors", "vae/config.json",
        "vae/diffusion_pytorch_model.safetensors"])


def test_transformers_selection_prefers_safetensors_and_falls_back_to_bin():
    req = hub_repo("openai/clip-vit-large-patch14-336", used_by="t")
    listing = [".gitattributes", "README.md", "config.json", "flax_model.msgpack", "merges.txt", "model.safetensors",
               "preprocessor_config.json", "pytorch_model.bin", "special_tokens_map.json", "tf_model.h5",
               "tokenizer.json", "tokenizer_config.json", "vocab.json"]
    assert sorted(select_hub_files(listing, req)) == ["config.json", "merges.txt", "model.safetensors",
                                                      "preprocessor_config.json", "special_tokens_map.json",
                                                      "tokenizer.json", "tokenizer_config.json", "vocab.json"]
    no_safetensors = [f for f in listing if f != "model.safetensors"]
    assert "pytorch_model.bin" in select_hub_files(no_safetensors, req)


def test_online_prefetch_takes_sizes_from_the_hub_metadata_and_downloads(tmp_path: Path):
    """Against a Hub-compatible server on 127.0.0.1: the plan's sizes are the server's file metadata
    (before anything is downloaded), then the files arrive in an empty hub cache and the bundle."""
    from tests.support.fake_hub import serve_hub

    from ciebench.prefetch import human_bytes

    snapshot = publish_clip(CLIP_VIT_L14_336)
    with serve_hub({CLIP_VIT_L14_336: snapshot}) as hub:
        env = dict(os.environ, HF_HUB_OFFLINE="0", TRANSFORMERS_OFFLINE="0", HF_ENDPOINT=hub.endpoint,
                   HF_HUB_CACHE=str(tmp_path / "hub"), PYTHONPATH=str(REPO))
        proc = subprocess.run([sys.executable, "-m", "ciebench", "prefetch", "--editor", "identity", "--dataset", "mini",
                               "--metrics", "clip", "--bundle", str(tmp_path / "b")],
                              env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        served = {rel: p.stat().st_size for rel, p in hub.files(CLIP_VIT_L14_336).items()}
        assert any(path.startswith("/api/models/openai/clip-vit-large-patch14-336") for _, path in hub.requests)
    manifest = json.loads((tmp_path / "b" / "manifest.json").read_text())
    chosen = [e["repo_file"] for e in manifest["files"]]
    total = human_bytes(sum(served[rel] for rel in chosen))
    # printed before anything was downloaded: the sizes are the server's metadata, and nothing was cached
    assert f"total: {len(chosen)} file(s), {total}; to download: {len(chosen)} file(s), {total}" in proc.stdout
    manifest = json.loads((tmp_path / "b" / "manifest.json").read_text())
    got = {e["repo_file"]: e["sha256"] for e in manifest["files"]}
    for rel, digest in got.items():
        assert hashlib.sha256((snapshot / rel).read_bytes()).hexdigest() == digest
    assert "model.safetensors" in got
    commit = manifest["files"][0]["commit"]
    assert (tmp_path / "hub" / "models--openai--clip-vit-large-patch14-336" / "snapshots" / commit / "config.json").is_file()


def test_pinned_assets_are_fetched_and_bundled_where_resolve_asset_finds_them(tmp_path: Path, monkeypatch):
    from ciebench.assets import PinnedAsset, resolve_asset
    from ciebench.bundle import write_bundle
    from ciebench.prefetch import Configuration, Plan, _plan_asset, download
    from ciebench.requirements import pinned_asset

    source = tmp_path / "upstream" / "describe.txt"
    source.parent.mkdir()
    source.write_text("a stand-in prompt file served from file://\n")
    asset = PinnedAsset("test/describe", source.as_uri(), hashlib.sha256(source.read_bytes()).hexdigest(), "stand-in")
    monkeypatch.setenv("CIEBENCH_CACHE", str(tmp_path / "cache"))
    req = pinned_asset(asset, used_by="judge test")
    planned = Plan(Configuration(), [req])
    _plan_asset(req, True, planned)  # file:// stays usable offline
    assert not planned.missing and planned.files[0].local is None
    bundle = tmp_path / "bundle"
    write_bundle(download(planned, progress=False), bundle, progress=False)
    entry = json.loads((bundle / "manifest.json").read_text())["files"][0]
    assert entry["path"] == f"ciebench/assets/{asset.sha256[:2]}/{asset.sha256}/describe.txt"
    source.unlink()  # the bundle alone must serve it now
    monkeypatch.setenv("CIEBENCH_CACHE", str(bundle / "ciebench"))
    resolved = resolve_asset(asset, offline=True)
    assert resolved.origin == "cache" and resolved.verified and resolved.path.is_relative_to(bundle)


# ------------------------------------------------------------------------------------- benchmarks
def _publish_gedit_snapshot() -> Path:
    from tests.support.tinyhub import publish

    def save(folder: Path) -> None:
        (folder / "data").mkdir()
        (folder / "data" / "train-00000-of-00001.parquet").write_bytes(b"PAR1 stand-in rows PAR1")
        (folder / "README.md").write_text("GEdit-Bench stand-in\n")

    return publish("stepfun-ai/GEdit-Bench", save, repo_type="dataset")


def test_prefetch_takes_a_benchmark_its_hub_data_prompts_and_judges(tmp_path: Path, monkeypatch):
    """`prefetch --benchmark gedit`: the benchmark's hub dataset (every file its loader reads), its pinned
    prompt file and its judge's endpoint; then, from the bundle alone, the benchmark finds its data."""
    from ciebench.assets import PinnedAsset
    from ciebench.benchmarks.gedit import GEditBench

    snapshot = _publish_gedit_snapshot()
    # offline and not cached: the pinned prompt file is named, nothing is silently left out
    result = runner.invoke(app, ["prefetch", "--benchmark", "gedit", "--dry-run"])
    assert result.exit_code == 4, result.output
    assert "asset gedit" in result.output.lower() and "not cached" in result.output
    assert "hub dataset stepfun-ai/GEdit-Bench@main (files)" in result.output
    assert "endpoint" in result.output and "judge main" in result.output
    # with the prompt file reachable (a file:// stand-in here), the bundle holds data and prompts
    stand_in = tmp_path / "gedit_prompts.py"
    stand_in.write_text('SC_PROMPT = "rate {instruction}"\n')
    digest = hashlib.sha256(stand_in.read_bytes()).hexdigest()
    monkeypatch.setattr(GEditBench, "prompts", PinnedAsset("gedit/prompts", stand_in.as_uri(), digest, "stand-in"))
    bundle = tmp_path / "bundle"
    result = runner.invoke(app, ["prefetch", "--benchmark", "gedit", "--bundle", str(bundle)])
    assert result.exit_code == 0, result.output
    manifest = json.loads((bundle / "manifest.json").read_text())
    files = {e["repo_file"] for e in manifest["files"] if e["ref"] == "stepfun-ai/GEdit-Bench"}
    assert files == {"README.md", "data/train-00000-of-00001.parquet"}
    assert any(e["sha256"] == digest for e in manifest["files"])
    empty = tmp_path / "empty"
    env = dict(os.environ, CIEBENCH_BUNDLE=str(bundle), HF_HUB_OFFLINE="1", HF_HUB_CACHE=str(empty / "hub"),
               HF_HOME=str(empty / "hf"), CIEBENCH_CACHE=str(empty / "cache"), PYTHONPATH=str(REPO))
    code = ("from ciebench.bundle import activate_bundle; import os; activate_bundle(os.environ['CIEBENCH_BUNDLE']); "
            "from ciebench.benchmarks import get_benchmark; print(get_benchmark('gedit').hub_folder())")
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    folder = Path(proc.stdout.strip())
    assert folder.is_relative_to(bundle)
    assert (folder / "data" / "train-00000-of-00001.parquet").read_bytes() == \
        (snapshot / "data" / "train-00000-of-00001.parquet").read_bytes()


def test_prefetch_of_a_dataset_benchmark_is_its_dataset():
    """CIEBench runs through the dataset pipeline: prefetching the benchmark is prefetching the release."""
    from ciebench.prefetch import Configuration, configuration_requirements

    reqs, _ = configuration_requirements(Configuration(benchmark="ciebench", metrics=("psnr",)))
    assert [(r.kind, r.ref) for r in reqs] == [("dataset", "ciebench")]
