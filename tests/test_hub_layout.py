"""`ciebench data prepare SRC --format hub` and `ciebench data push`: the Hub's dataset layout, read back
by the plain `datasets` library, and an upload whose token never reaches a file."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import datasets
import numpy as np
import pytest
import yaml
from PIL import Image
from typer.testing import CliRunner

from ciebench.cli import app
from ciebench.schema import FEATURES

runner = CliRunner()


def _card(folder: Path) -> dict:
    text = (folder / "README.md").read_text(encoding="utf-8")
    assert text.startswith("---\n")
    header = text.split("---\n", 2)[1]
    return yaml.safe_load(header)


@pytest.fixture(scope="module")
def hub_ciebench(ciebench_root: Path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("hub") / "ciebench-hub"
    result = runner.invoke(app, ["data", "prepare", str(ciebench_root), "--format", "hub", "--out", str(out)])
    assert result.exit_code == 0, result.output
    return out


def test_plain_load_dataset_returns_the_86_rows_pixel_identical(hub_ciebench: Path, ciebench_root: Path):
    ds = datasets.load_dataset(str(hub_ciebench), split="test")
    annotations = json.loads((ciebench_root / "updated_data.json").read_text())
    assert len(ds) == 86 == len(annotations)
    assert sorted(ds["id"], key=int) == sorted(annotations, key=int)
    for row in ds:
        entry = annotations[row["id"]]
        assert row["instruction"] == entry["instruction"]
        assert row["clip_text"] == list(entry["CLIP"])
        with Image.open(ciebench_root / entry["image path"]) as src:
            assert np.array_equal(np.asarray(row["image"].convert("RGB")), np.asarray(src.convert("RGB"))), row["id"]
        if len(entry["mask path"]) == 1:
            with Image.open(ciebench_root / entry["mask path"][0]) as src_mask:
                expected = np.asarray(src_mask.convert("L"))
            assert np.array_equal(np.asarray(row["mask"].convert("L")), expected), row["id"]


def test_card_yaml_parses_and_matches_features_and_shards(hub_ciebench: Path):
    meta = _card(hub_ciebench)
    assert datasets.Features._from_yaml_list(meta["dataset_info"]["features"]) == FEATURES
    assert meta["configs"] == [{"config_name": "default", "data_files": [{"split": "test", "path": "data/test-*.parquet"}]}]
    assert meta["dataset_info"]["splits"][0]["name"] == "test"
    assert meta["dataset_info"]["splits"][0]["num_examples"] == 86
    assert meta["license"] and meta["ciebench"]["source_revision"]
    assert "@misc{cielr" in (hub_ciebench / "README.md").read_text()
    shards = sorted((hub_ciebench / "data").glob("test-*.parquet"))
    assert shards and {f"data/{p.name}" for p in shards} == set(meta["ciebench"]["checksums"])
    for p in shards:
        assert meta["ciebench"]["checksums"][f"data/{p.name}"] == "sha256:" + hashlib.sha256(p.read_bytes()).hexdigest()
    # the features the plain library reports are the ones the card declares
    assert datasets.load_dataset(str(hub_ciebench), split="test").features == FEATURES


def test_ciebench_reads_the_hub_folder_back_with_the_same_content(hub_ciebench: Path, ciebench_root: Path):
    from ciebench.datasets import read_dataset

    assert read_dataset(str(hub_ciebench)).revision == read_dataset(str(ciebench_root)).revision


def test_several_shards_when_the_data_is_large(tmp_path: Path):
    from ciebench.datasets import read_dataset
    from ciebench.datasets.hub_layout import write_hub_layout

    loaded = read_dataset("mini")
    write_hub_layout(loaded, tmp_path / "out", source="mini", max_shard_bytes=1_000_000)
    shards = sorted((tmp_path / "out" / "data").glob("test-*.parquet"))
    assert len(shards) > 1 and shards[0].name.endswith(f"-of-{len(shards):05d}.parquet")
    ds = datasets.load_dataset(str(tmp_path / "out"), split="test")
    assert ds["id"] == loaded.dataset["id"]


SECRET = "hf_TESTTOKENnever_written_1234567890"


def test_push_uploads_card_and_shards_and_never_writes_the_token(tmp_path: Path, monkeypatch):
    import huggingface_hub

    calls = []

    def create_repo(self, repo_id, **kwargs):
        calls.append(("create_repo", repo_id, kwargs, self.token))
        return f"https://hub.invalid/datasets/{repo_id}"

    def upload_folder(self, **kwargs):
        files = sorted(str(p.relative_to(kwargs["folder_path"])) for p in Path(kwargs["folder_path"]).rglob("*") if p.is_file())
        calls.append(("upload_folder", kwargs, files))
        return "https://hub.invalid/commit/1"

    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", create_repo)
    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", upload_folder)
    monkeypatch.setenv("HF_TOKEN", SECRET)
    out = tmp_path / "mini-hub"
    assert runner.invoke(app, ["data", "prepare", "mini", "--format", "hub", "--out", str(out)]).exit_code == 0
    result = runner.invoke(app, ["-v", "data", "push", str(out), "me/ciebench-mini"])
    assert result.exit_code == 0, result.output
    assert calls[0][0] == "create_repo" and calls[0][1] == "me/ciebench-mini" and calls[0][2]["repo_type"] == "dataset"
    upload = calls[1][1]
    assert upload["repo_id"] == "me/ciebench-mini" and upload["repo_type"] == "dataset"
    assert set(upload["allow_patterns"]) == {"README.md", "data/*.parquet", "run/*"}
    assert SECRET not in result.output
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path


def test_push_refuses_a_folder_that_is_not_hub_layout(tmp_path: Path):
    result = runner.invoke(app, ["data", "push", str(tmp_path), "me/x"])
    assert result.exit_code == 2 and "not a Hub-layout dataset" in result.output


def _reasonedit_folder(root: Path, seed: int = 0) -> Path:
    category = root / "6-Reasoning"
    category.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for i in range(2):
        Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(category / f"{i}.png")
        mask = np.zeros((64, 64), np.uint8)
        mask[10:30, 10:30] = 255
        Image.fromarray(mask).save(category / f"{i}_mask.jpg")
    (category / "instructions.txt").write_text("remove the cup CLIP: table\nremove the dog CLIP: grass\n")
    return root


def test_an_export_keeps_its_default_protocol(tmp_path: Path):
    # Reason-Edit is scored under `smartedit` (256 px, CLIP ViT-L/14 at 224); its hub export was
    # read back as `cielr` (512 px, the 336 px CLIP) with nothing said.
    from ciebench.datasets import read_dataset

    source = _reasonedit_folder(tmp_path / "reason")
    assert read_dataset(str(source)).default_protocol == "smartedit"
    out = tmp_path / "hub"
    result = runner.invoke(app, ["data", "prepare", str(source), "--format", "hub", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert _card(out)["ciebench"]["default_protocol"] == "smartedit"
    for spec in (f"hf:{out}", str(out), str(out / "data")):
        assert read_dataset(spec).default_protocol == "smartedit", spec
    (out / "README.md").write_text("---\nciebench: {default_protocol: no-such-protocol}\n---\n")
    assert read_dataset(f"hf:{out}").default_protocol == "cielr"  # unknown: the default stays (with a warning)
    # the other formats of `data prepare` too: a saved folder and a parquet file were read back as `cielr`
    for fmt in ("arrow", "parquet"):
        copy = tmp_path / fmt
        result = runner.invoke(app, ["data", "prepare", str(source), "--format", fmt, "--out", str(copy)])
        assert result.exit_code == 0, result.output
        assert read_dataset(str(copy)).default_protocol == "smartedit", fmt
    assert read_dataset(str(tmp_path / "parquet" / "data.parquet")).default_protocol == "smartedit"


def test_a_hub_ref_does_not_stand_for_the_content(tmp_path: Path):
    # `hf:NAME@main` names a ref that moves: the revision a run records (and resumes against) is the
    # content's hash, so two different datasets under the same ref are two revisions.
    from ciebench.datasets import read_dataset

    a, b = tmp_path / "a", tmp_path / "b"
    for folder, seed in ((a, 1), (b, 2)):
        source = _reasonedit_folder(tmp_path / f"source-{seed}", seed)
        result = runner.invoke(app, ["data", "prepare", str(source), "--format", "hub", "--out", str(folder)])
        assert result.exit_code == 0, result.output
    ref_a, ref_b = read_dataset(f"hf:{a}@main"), read_dataset(f"hf:{b}@main")
    assert ref_a.revision != ref_b.revision
    assert ref_a.revision == read_dataset(f"hf:{a}").revision
