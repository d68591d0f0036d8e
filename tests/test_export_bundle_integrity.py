"""What `ciebench export` and a bundle vouch for: an export's card says a verification is stale when a
file it vouched for changed since, a row whose prediction file is gone refuses to export (as a changed
one does), and a bundle rewrite keeps an existing file only when it holds the source's bytes."""
from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from ciebench.cli import app
from ciebench.errors import IntegrityError
from tests.support.noisy_run import copy_of, evaluate_noisy

runner = CliRunner()


@pytest.fixture(scope="module")
def verified_run(tmp_path_factory) -> Path:
    run = evaluate_noisy(tmp_path_factory.mktemp("integrity") / "noisy", 2, "psnr")
    result = runner.invoke(app, ["verify", str(run), "--all"])
    assert result.exit_code == 0, result.output
    return run


@pytest.fixture
def run_copy(verified_run: Path, tmp_path: Path) -> Path:
    return copy_of(verified_run, tmp_path)


def _card(exported: Path) -> dict:
    return yaml.safe_load((exported / "README.md").read_text(encoding="utf-8").split("---\n", 2)[1])["ciebench"]


# ------------------------------------------------------------------------------ export: verification
def test_a_current_verification_is_exported_as_verified(run_copy: Path, tmp_path: Path):
    from ciebench.export import export_run

    record = json.loads((run_copy / "verify.json").read_text())
    verified = export_run(run_copy, tmp_path / "out")["ciebench"]["verified"]
    assert verified == {"status": "verified", "verified": True, "ciebench_version": record["ciebench_version"]}
    assert _card(tmp_path / "out")["verified"] == verified


def _edit_summary(run: Path) -> None:
    summary = json.loads((run / "summary.json").read_text())
    summary["note"] = "edited after verification"
    (run / "summary.json").write_text(json.dumps(summary))


def _edit_samples_csv(run: Path) -> None:
    frame = pd.read_csv(run / "samples.csv", dtype={"sample_id": str})
    frame.loc[0, "psnr"] = 99.0
    frame.to_csv(run / "samples.csv", index=False)


def _edit_samples_jsonl(run: Path) -> None:
    lines = (run / "samples.jsonl").read_text().splitlines()
    row = json.loads(lines[0])
    row["psnr"] = 99.0
    (run / "samples.jsonl").write_text("\n".join([json.dumps(row), *lines[1:]]) + "\n")


def test_a_verification_older_than_an_edit_is_exported_as_stale_with_a_warning(run_copy: Path, tmp_path: Path,
                                                                                caplog):
    from ciebench.leaderboard import leaderboard

    _edit_summary(run_copy)
    with caplog.at_level(logging.WARNING, logger="ciebench.export"):
        result = runner.invoke(app, ["export", str(run_copy), "--format", "hub", "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    verified = _card(tmp_path / "out")["verified"]
    assert verified["verified"] is False and verified.get("status") == "stale"
    assert "stale" in caplog.text and str(run_copy) in caplog.text and "ciebench verify" in caplog.text
    assert leaderboard([run_copy]).loc[0, "verified"].startswith("stale")  # as the leaderboard says of this folder


@pytest.mark.parametrize("edit", [_edit_samples_csv, _edit_samples_jsonl])
def test_an_edited_sample_table_is_not_exported(run_copy: Path, tmp_path: Path, edit):
    """Its numbers are no longer those its summary.json (protocol, models, means) was written with."""
    edit(run_copy)
    result = runner.invoke(app, ["export", str(run_copy), "--format", "hub", "--out", str(tmp_path / "out")])
    name = edit.__name__.removeprefix("_edit_").replace("_", ".")
    assert result.exit_code != 0 and f"{name} is not the table summary.json was written with" in result.output
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_an_unverified_run_exports_no_verification(run_copy: Path, tmp_path: Path):
    from ciebench.export import export_run

    (run_copy / "verify.json").unlink()
    assert export_run(run_copy, tmp_path / "out")["ciebench"]["verified"] is None


# ------------------------------------------------------------------------------ export: missing image
def test_a_deleted_prediction_refuses_to_export_like_a_changed_one(run_copy: Path, tmp_path: Path):
    from ciebench.export import export_run

    samples = pd.read_csv(run_copy / "samples.csv", dtype={"sample_id": str})
    row = samples[samples["status"] == "ok"].iloc[0]
    (run_copy / row["prediction"]).unlink()
    with pytest.raises(IntegrityError) as raised:
        export_run(run_copy, tmp_path / "out")
    assert row["sample_id"] in str(raised.value) and Path(row["prediction"]).name in str(raised.value)
    assert "missing" in str(raised.value) and not (tmp_path / "out").exists()
    result = runner.invoke(app, ["export", str(run_copy), "--out", str(tmp_path / "cli")])
    assert result.exit_code == 6 and Path(row["prediction"]).name in result.output


# ------------------------------------------------------------------------------ bundle rewrite
def _plan(source: Path):
    from ciebench.prefetch import Configuration, Plan, PlannedFile
    from ciebench.requirements import Requirement

    req = Requirement("local", str(source), used_by="integrity test")
    return Plan(Configuration(), [req], files=[PlannedFile(req, "ciebench/weights.bin", source.stat().st_size, source)])


def _bundled(tmp_path: Path) -> tuple[Path, Path, Path]:
    """(source file, bundle folder, the source's copy in it), the bundle written once."""
    from ciebench.bundle import write_bundle

    source = tmp_path / "weights.bin"
    source.write_bytes(b"the right weights" * 64)
    bundle = tmp_path / "bundle"
    write_bundle(_plan(source), bundle, progress=False)
    return source, bundle, bundle / "ciebench" / "weights.bin"


def test_a_bundle_rewrite_replaces_a_same_size_file_with_other_bytes(tmp_path: Path):
    from ciebench.bundle import check_bundle, write_bundle

    source, bundle, target = _bundled(tmp_path)
    target.write_bytes(b"a wrong file....." * 64)  # same size, other bytes
    manifest = write_bundle(_plan(source), bundle, progress=False)
    assert target.read_bytes() == source.read_bytes()
    assert manifest["files"][0]["sha256"] == hashlib.sha256(source.read_bytes()).hexdigest()
    assert check_bundle(bundle) == []


def test_a_bundle_rewrite_keeps_a_file_that_already_holds_the_sources_bytes(tmp_path: Path):
    from ciebench.bundle import write_bundle

    source, bundle, target = _bundled(tmp_path)
    os.utime(target, ns=(1_000_000_000, 1_000_000_000))  # a rewrite that copied would change it
    manifest = write_bundle(_plan(source), bundle, progress=False)
    assert target.stat().st_mtime_ns == 1_000_000_000
    assert manifest["files"][0]["sha256"] == hashlib.sha256(source.read_bytes()).hexdigest()


# ------------------------------------------------------------------------------ bundle use
def _flip_a_bit(path: Path, offset: int = 5) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 1
    path.write_bytes(bytes(data))


def test_using_a_bundle_verifies_it_and_rehashes_only_what_changed(tmp_path: Path, monkeypatch):
    """activate_bundle refuses a file whose bytes are not the manifest's (exit 6 class, the file named);
    a file verified before and untouched since is not hashed again, a touched one is."""
    import ciebench.bundle as bundle_mod
    from ciebench.bundle import activate_bundle, verify_bundle

    monkeypatch.setenv("CIEBENCH_CACHE", str(tmp_path / "user-cache"))
    for name in ("HF_HUB_CACHE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE", "HF_DATASETS_CACHE",
                 "TORCH_HOME", "CIEBENCH_OFFLINE", "CIEBENCH_BUNDLE"):
        monkeypatch.setenv(name, os.environ.get(name, ""))  # restored after the test: activation sets them
    _, bundle, target = _bundled(tmp_path)
    _flip_a_bit(target)
    with pytest.raises(IntegrityError) as raised:
        activate_bundle(bundle)
    assert "ciebench/weights.bin: sha256 differs from the manifest (needed by integrity test)" in str(raised.value)
    assert os.environ["CIEBENCH_CACHE"] == str(tmp_path / "user-cache")  # not activated
    _flip_a_bit(target)  # restored
    old = 1_000_000_000
    os.utime(target, ns=(old, old))  # long unchanged: not racy, so its verification is remembered
    hashed: list[str] = []
    real = bundle_mod.sha256_file
    monkeypatch.setattr(bundle_mod, "sha256_file", lambda p: hashed.append(Path(p).name) or real(p))
    verify_bundle(bundle)
    assert "weights.bin" in hashed
    hashed.clear()
    verify_bundle(bundle)
    assert hashed == [bundle_mod.MANIFEST]  # the weights were not read again
    time.sleep(0.05)  # past the filesystem's timestamp tick (coarse on Linux), as any real change is
    _flip_a_bit(target)
    os.utime(target, ns=(old, old))  # even with the old mtime back, the change (ctime) is seen
    with pytest.raises(IntegrityError, match="weights.bin: sha256 differs"):
        verify_bundle(bundle)
