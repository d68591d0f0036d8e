"""`ciebench doctor`: every check has a passing and a failing case (files, endpoint, GPU memory through
a simulated device probe, disk, package versions, the offline bundle)."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from ciebench.cli import app
from ciebench.doctor import (MEMORY_OVERHEAD, DoctorOptions, check_bundle_files, check_packages, run_doctor)
from ciebench.prefetch import Configuration
from tests.support.fixtures_models import CLIP_VIT_L14_336, publish_clip, publish_squeezenet1_1
from tests.support.llm_server import error, json_reply, serve_llm

runner = CliRunner()
GB = 1_000_000_000


@dataclass
class FakeProbe:
    """Simulated device: free GPU memory (None = no CUDA) and free disk, in bytes."""

    gpu_free: int | None = 80 * GB
    disk_free: int = 500 * GB

    def gpu_free_bytes(self, device: str) -> int | None:
        return self.gpu_free

    def disk_free_bytes(self, path: Path) -> int:
        return self.disk_free


@pytest.fixture(scope="module")
def models() -> Path:
    snapshot = publish_clip(CLIP_VIT_L14_336)
    publish_squeezenet1_1()
    return snapshot


def _checks(config: Configuration, **kw):
    return {c.name: c for c in run_doctor(DoctorOptions(config, **kw))}


SCORING = Configuration(editors=("identity",), dataset="mini", metrics=("psnr", "lpips", "clip"))


def test_files_present_pass_and_a_missing_model_is_named(models):
    ok = _checks(SCORING, probe=FakeProbe())
    assert ok["model and dataset files"].ok
    missing = _checks(Configuration(editors=("instructpix2pix",), editor_args=("model_id=nobody/absent",),
                                    dataset="mini", metrics=("psnr",)), probe=FakeProbe())
    check = missing["model and dataset files"]
    assert not check.ok and "nobody/absent" in check.detail


def test_gpu_memory_per_stage_against_the_simulated_probe(models):
    from ciebench.prefetch import torch_checkpoint_dir

    weights = (models / "model.safetensors").stat().st_size + (torch_checkpoint_dir() / "squeezenet1_1-b8a52dc0.pth").stat().st_size
    need = int(weights * MEMORY_OVERHEAD)
    fits = _checks(SCORING, device="cuda", probe=FakeProbe(gpu_free=need + 1))
    assert fits["gpu memory: scoring"].ok
    short = _checks(SCORING, device="cuda", probe=FakeProbe(gpu_free=need - 1))
    assert not short["gpu memory: scoring"].ok
    no_cuda = _checks(SCORING, device="cuda", probe=FakeProbe(gpu_free=None))
    assert not no_cuda["gpu memory"].ok and "no CUDA device" in no_cuda["gpu memory"].detail


def test_disk_space_against_the_simulated_probe(models):
    assert _checks(SCORING, probe=FakeProbe(disk_free=500 * GB))["disk space"].ok
    assert not _checks(SCORING, probe=FakeProbe(disk_free=1000))["disk space"].ok


def test_package_floors():
    assert check_packages().ok
    bad = check_packages({"numpy": ">=999", "not-a-real-package-xyz": ">=1"})
    assert not bad.ok and "numpy" in bad.detail and "not-a-real-package-xyz not installed" in bad.detail


def _judge_file(tmp_path: Path, base_url: str) -> Path:
    side = {"backend": "openai", "base_url": base_url, "api_key_env": None, "model": "judge-model"}
    path = tmp_path / "judge.yaml"
    path.write_text(yaml.safe_dump({"vlm": side, "llm": side}))
    return path


def test_endpoint_answers_a_structured_call(tmp_path: Path):
    with serve_llm() as server:
        server.on(then=json_reply({"ok": True}, model="judge-model-2026-01-01"))
        checks = _checks(Configuration(dataset="mini", metrics=("psnr", "idcs"), judge=str(_judge_file(tmp_path, server.base_url))),
                         probe=FakeProbe())
        endpoint = [c for n, c in checks.items() if n.startswith("endpoint judge-model")]
        assert len(endpoint) == 1 and endpoint[0].ok  # one endpoint+model, probed once
        assert "served model judge-model-2026-01-01" in endpoint[0].detail
        assert "response_format=json_schema accepted" in endpoint[0].detail
        assert server.requests[0].response_format["type"] == "json_schema"
        assert server.count == 1


def test_endpoint_that_rejects_the_response_format_fails(tmp_path: Path):
    with serve_llm() as server:
        server.on(then=error(400, "response_format of type json_schema is not supported by this model"))
        result = runner.invoke(app, ["doctor", "--dataset", "mini", "--metrics", "psnr,idcs",
                                     "--judge", str(_judge_file(tmp_path, server.base_url))])
    assert result.exit_code == 1
    line = next(l for l in result.output.splitlines() if "endpoint judge-model" in l)
    assert line.startswith("FAIL") and "response_format=json_schema rejected" in line


def test_cli_exit_code_is_zero_only_when_all_pass(models):
    ok = runner.invoke(app, ["doctor", "--editor", "identity", "--dataset", "mini", "--metrics", "psnr,ssim"])
    assert ok.exit_code == 0, ok.output
    assert all(l.startswith("PASS") for l in ok.output.splitlines()[:-1])
    bad = runner.invoke(app, ["doctor", "--editor", "identity", "--dataset", "mini", "--metrics", "psnr", "--device", "cuda:7"])
    # this machine's probe: a CUDA device 7 is either absent or its memory answers; without CUDA it fails
    import torch

    if not torch.cuda.is_available():
        assert bad.exit_code == 1 and "FAIL gpu memory" in bad.output


def test_offline_checks_the_bundle_alone(models, tmp_path: Path):
    bundle = tmp_path / "bundle"
    result = runner.invoke(app, ["prefetch", "--editor", "identity", "--dataset", "mini", "--metrics", "clip",
                                 "--bundle", str(bundle)])
    assert result.exit_code == 0, result.output
    assert check_bundle_files(bundle).ok
    manifest = json.loads((bundle / "manifest.json").read_text())
    victim = manifest["files"][0]["path"]
    (bundle / victim).unlink()
    check = check_bundle_files(bundle)
    assert not check.ok and victim in check.detail
    assert not check_bundle_files(tmp_path / "not-a-bundle").ok
    checks = run_doctor(DoctorOptions(Configuration(dataset="mini", metrics=("clip",)), offline=True, bundle=bundle,
                                      probe=FakeProbe()))
    assert not checks[0].ok and victim in checks[0].detail


def test_offline_refuses_an_image_edit_api_on_another_machine(tmp_path: Path):
    """openai-images declares its endpoint: --offline fails on api.openai.com (unreachable from the node),
    passes on a server on this machine; neither is probed (a probe would be a paid edit)."""
    bundle = tmp_path / "bundle"
    result = runner.invoke(app, ["prefetch", "--dataset", "mini", "--metrics", "psnr", "--bundle", str(bundle)])
    assert result.exit_code == 0, result.output

    def endpoint_checks(*args: str) -> list:
        config = Configuration(editors=("openai-images",), editor_args=args, dataset="mini", metrics=("psnr",))
        checks = run_doctor(DoctorOptions(config, offline=True, bundle=bundle, probe=FakeProbe()))
        return [c for c in checks if c.name.startswith("endpoint")]

    [remote] = endpoint_checks()
    assert not remote.ok and remote.name == "endpoint gpt-image-1 (editor openai-images)"
    assert "https://api.openai.com/v1 is not on this machine" in remote.detail
    assert endpoint_checks("base_url=http://127.0.0.1:8000/v1") == []


def test_a_model_two_roles_share_counts_once_per_stage():
    from ciebench.doctor import stage_weight_bytes
    from ciebench.prefetch import Plan, PlannedFile
    from ciebench.requirements import hub_repo

    shared = hub_repo("Qwen/Qwen2.5-VL-3B-Instruct", used_by="editor cielr: llm; editor cielr: vlm; judge lite: vlm")
    plan = Plan(Configuration(), [shared], files=[
        PlannedFile(shared, "hub/x/snapshots/c/model.safetensors", 7 * GB, None, "model.safetensors", "c"),
        PlannedFile(shared, "hub/x/snapshots/c/config.json", 1000, None, "config.json", "c")])
    assert stage_weight_bytes(plan) == {"editor cielr": 7 * GB, "judge lite": 7 * GB}


def test_a_configuration_that_cannot_run_is_a_failing_check():
    checks = run_doctor(DoctorOptions(Configuration(editors=("no-such-editor",), dataset="mini"), probe=FakeProbe()))
    assert checks[0].name == "configuration" and not checks[0].ok and "no-such-editor" in checks[0].detail


def test_a_local_dataset_with_missing_or_corrupt_files_fails_the_files_check(tmp_path: Path, monkeypatch):
    """The folder existing is not enough: a truncated image and a missing mask are sample errors
    `data validate` reports, so the files check fails and names them (first few, then the count);
    the dataset is read once for this check, the disk check and the default protocol."""
    import ciebench.datasets

    from tests.support.fixtures_bad_data import write_jsonl_dataset

    root = tmp_path / "ds"
    write_jsonl_dataset(root, ["a", "b", "c", "d", "e", "f"])
    good = _checks(Configuration(editors=("identity",), dataset=str(root), metrics=("psnr",)), probe=FakeProbe())
    assert good["model and dataset files"].ok and "6 sample(s)" in good["disk space"].detail
    (root / "img0.png").write_bytes((root / "img0.png").read_bytes()[:40])  # truncated
    for i in (1, 2, 3, 4):
        (root / f"img{i}_mask.png").unlink()
    reads = []
    real = ciebench.datasets.read_dataset
    monkeypatch.setattr(ciebench.datasets, "read_dataset", lambda spec, **kw: reads.append(spec) or real(spec, **kw))
    checks = _checks(Configuration(editors=("identity",), dataset=str(root), metrics=("psnr",)), probe=FakeProbe())
    check = checks["model and dataset files"]
    assert not check.ok and f"dataset {root}: 5 sample error(s)" in check.detail
    assert "sample a: img0.png" in check.detail and "sample b: img1_mask.png: mask file is missing" in check.detail
    assert "... 2 more" in check.detail and "sample e:" not in check.detail  # the first three, then the count
    assert "1 sample(s)" in checks["disk space"].detail  # the one usable sample, from the same read
    assert reads == [str(root)]
    result = runner.invoke(app, ["doctor", "--editor", "identity", "--dataset", str(root), "--metrics", "psnr"])
    assert result.exit_code == 1 and "FAIL model and dataset files" in result.output
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "manifest.jsonl").write_text("")
    check = _checks(Configuration(editors=("identity",), dataset=str(empty), metrics=("psnr",)),
                    probe=FakeProbe())["model and dataset files"]
    assert not check.ok and "no usable samples" in check.detail
