"""The dataset layer: every loader, validation problems, the release download, edit types."""
from __future__ import annotations

import collections
import http.server
import io
import json
import shutil
import struct
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

import ciebench
from ciebench.cli import app
from ciebench.datasets import ChecksumError, DatasetError, read_dataset
from ciebench.datasets.edit_types import derive_edit_type
from ciebench.errors import ExitCode
from ciebench.schema import EditSample
from tests.support.handler_server import serve_handler

runner = CliRunner()


def _rows_by_id(dataset):
    return {row["id"]: EditSample.from_row(row) for row in dataset}


# --- the real release -------------------------------------------------------------------------------

def test_prepare_real_release_round_trips_pixels(ciebench_root: Path, tmp_path: Path):
    out = tmp_path / "arrow"
    result = runner.invoke(app, ["data", "prepare", str(ciebench_root), "--out", str(out)])
    assert result.exit_code == 0, result.output
    dataset = ciebench.load_dataset(str(out))
    assert len(dataset) == 86
    annotations = json.loads((ciebench_root / "updated_data.json").read_text())
    for row in dataset:
        entry = annotations[row["id"]]
        source = Image.open(ciebench_root / entry["image path"])
        mask = Image.open(ciebench_root / entry["mask path"][0])
        assert np.array_equal(np.asarray(row["image"]), np.asarray(source)), row["id"]
        assert np.array_equal(np.asarray(row["mask"]), np.asarray(mask)), row["id"]
        assert row["instruction"] == entry["instruction"]
        assert row["clip_text"] == entry["CLIP"]

    parquet = tmp_path / "parquet"
    result = runner.invoke(app, ["data", "prepare", str(ciebench_root), "--out", str(parquet), "--format", "parquet"])
    assert result.exit_code == 0, result.output
    from_parquet = ciebench.load_dataset(str(parquet))
    assert from_parquet["id"] == dataset["id"]
    for a, b in zip(dataset, from_parquet):
        assert {k: v for k, v in a.items() if k not in ("image", "mask")} == {k: v for k, v in b.items() if k not in ("image", "mask")}
        assert np.array_equal(np.asarray(a["image"]), np.asarray(b["image"]))
        assert np.array_equal(np.asarray(a["mask"]), np.asarray(b["mask"]))


def test_real_release_notes_edit_types_and_sample5(ciebench_root: Path):
    loaded = read_dataset(str(ciebench_root))
    samples = _rows_by_id(loaded.dataset)
    assert collections.Counter(s.edit_type for s in samples.values()) == {"replace": 43, "remove": 39, "add": 2, "recolor": 2}
    assert {k for k, s in samples.items() if s.notes == "special case"} == {"11", "19", "28", "29", "30", "57", "84"}
    assert samples["52"].notes == "maybe false"
    # sample 5: mask 320x240 on a 796x597 image; kept raw, aligned by nearest neighbour on demand
    assert samples["5"].mask.size == (320, 240) and samples["5"].image.size == (796, 597)
    aligned = samples["5"].aligned_mask()
    assert aligned.size == (796, 597)
    assert set(np.unique(np.asarray(aligned))) <= set(np.unique(np.asarray(samples["5"].mask)))
    assert [str(p) for p in loaded.problems] == [
        "WARNING: sample 5: 5/5_mask.png: mask is 320x240 but the image is 796x597; resized with nearest "
        "neighbour to the image size when used, as the protocols do"]


def test_validate_real_release_warns_about_sample5_and_exits_0(ciebench_root: Path):
    result = runner.invoke(app, ["data", "validate", str(ciebench_root)])
    assert result.exit_code == 0, result.output
    assert "sample 5" in result.output and "320x240" in result.output
    assert "86 usable samples, 0 error(s), 1 warning(s)" in result.output


def _corrupted_copy(ciebench_root: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "broken"
    shutil.copytree(ciebench_root, copy)
    png = copy / "3" / "3.png"
    png.write_bytes(png.read_bytes()[: png.stat().st_size // 2])  # truncated PNG
    (copy / "7" / "7_mask.png").unlink()  # missing mask
    text = (copy / "updated_data.json").read_text()
    data = json.loads(text)
    data["9"]["image path"] = "../outside.png"  # escapes the folder
    body = json.dumps(data, indent=1)
    # a duplicate id: JSON objects can repeat keys in text; the loader must see it
    dup = '"12": ' + json.dumps(data["12"]) + ",\n"
    body = body.replace('"0": {', dup + '"0": {', 1)
    (copy / "updated_data.json").write_text(body)
    return copy


def test_validate_corrupted_copy_reports_each_problem_and_exits_1(ciebench_root: Path, tmp_path: Path):
    copy = _corrupted_copy(ciebench_root, tmp_path)
    result = runner.invoke(app, ["data", "validate", str(copy)])
    assert result.exit_code == 1, result.output
    lines = [ln for ln in result.output.splitlines() if ln.startswith("ERROR")]
    assert any("sample 3" in ln and "3/3.png" in ln and "unreadable" in ln for ln in lines), lines
    assert any("sample 7" in ln and "7/7_mask.png" in ln and "missing" in ln for ln in lines), lines
    assert any("sample 9" in ln and "../outside.png" in ln and "escapes" in ln for ln in lines), lines
    assert any("sample 12" in ln and "duplicate" in ln for ln in lines), lines
    assert len(lines) == 4, lines
    # loading does not stop at the first bad sample: everything else is there
    loaded = read_dataset(str(copy))
    assert len(loaded.dataset) == 86 - 3


def test_absolute_paths_and_decompression_bombs_are_rejected(tmp_path: Path):
    root = tmp_path / "ds"
    (root / "a").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(root / "a" / "a.png")
    Image.new("L", (8, 8), 255).save(root / "a" / "a_mask.png")
    _write_bomb(root / "a" / "bomb.png", 20000, 20000)
    annotation = {
        "a": {"image path": "a/a.png", "instruction": "x", "mask path": ["a/a_mask.png"], "CLIP": ["y"]},
        "b": {"image path": str((root / "a" / "a.png").resolve()), "instruction": "x", "mask path": ["a/a_mask.png"], "CLIP": ["y"]},
        "c": {"image path": "a/bomb.png", "instruction": "x", "mask path": ["a/a_mask.png"], "CLIP": ["y"]},
    }
    (root / "benchmark.json").write_text(json.dumps(annotation))
    loaded = read_dataset(str(root))
    assert loaded.dataset["id"] == ["a"]
    messages = {p.sample_id: p.message for p in loaded.problems if p.severity == "error"}
    assert "escapes" in messages["b"]
    assert "decompression-bomb" in messages["c"]


def _write_bomb(path: Path, width: int, height: int) -> None:
    """A valid PNG header announcing a huge image (never decoded by the loader)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + chunk(b"IEND", b""))


# --- mini, Reason-Edit, JSONL, hub ------------------------------------------------------------------

def test_mini_is_embedded_and_offline(tmp_path: Path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # nothing is read relative to the working directory
    dataset = ciebench.load_dataset("mini")
    samples = _rows_by_id(dataset)
    assert 6 <= len(samples) <= 10
    assert {s.edit_type for s in samples.values()} >= {"remove", "replace", "recolor"}
    for s in samples.values():
        assert s.image.mode == "RGB" and s.mask.size == s.image.size
        area = (np.asarray(s.mask) == 255).mean()
        assert 0.001 < area < 0.5, (s.id, area)
        assert s.meta["source"].startswith("skimage.data.")


def test_reasonedit_layout_pairs_sorted_files(tmp_path: Path):
    root = tmp_path / "reason"
    for category, n in (("1-Left-Right", 2), ("6-Reasoning", 1)):
        folder = root / category
        folder.mkdir(parents=True)
        lines = []
        for i in range(n):
            Image.new("RGB", (16, 12), (i * 50, 0, 0)).save(folder / f"{i:03d}.png")
            Image.new("L", (16, 12), 255).save(folder / f"{i:03d}_mask.jpg")
            lines.append(f"Remove the thing number {i} CLIP: wall {i}")
        (folder / "instructions.txt").write_text("\n".join(lines) + "\n")
    loaded = read_dataset(str(root))
    assert loaded.kind == "reasonedit" and loaded.default_protocol == "smartedit"
    samples = _rows_by_id(loaded.dataset)
    assert set(samples) == {"1-Left-Right/000", "1-Left-Right/001", "6-Reasoning/000"}
    s = samples["1-Left-Right/001"]
    assert s.instruction == "Remove the thing number 1" and s.clip_text == ["wall 1"]
    assert s.edit_type == "left-right" and samples["6-Reasoning/000"].edit_type == "reasoning"
    assert np.asarray(s.image)[0, 0, 0] == 50


def test_jsonl_manifest_and_hub_spec(tmp_path: Path):
    root = tmp_path / "mine"
    root.mkdir()
    Image.new("RGB", (10, 10), (1, 2, 3)).save(root / "x.png")
    Image.new("L", (10, 10), 255).save(root / "x_mask.png")
    entries = [{"id": "x", "image": "x.png", "mask": "x_mask.png", "instruction": "Please remove it.", "clip_text": "background"},
               {"id": "y", "image": "missing.png", "mask": "x_mask.png", "instruction": "Please remove it.", "clip_text": ["wall"]}]
    (root / "manifest.jsonl").write_text("\n".join(json.dumps(e) for e in entries) + "\n")
    loaded = read_dataset(str(root))
    assert loaded.dataset["id"] == ["x"] and loaded.dataset["edit_type"] == ["remove"]
    assert [(p.sample_id, p.file) for p in loaded.problems] == [("y", "missing.png")]
    # parquet written by us loads through datasets.load_dataset (the hf: path) with the same rows
    pq = tmp_path / "pq"
    pq.mkdir()
    loaded.dataset.to_parquet(str(pq / "test.parquet"))
    via_hub = read_dataset(f"hf:{pq}")
    assert via_hub.dataset["id"] == ["x"] and via_hub.revision == loaded.revision


def test_unknown_spec_suggests_close_name():
    with pytest.raises(DatasetError, match="Did you mean 'mini'"):
        read_dataset("minii")


def test_edit_type_rule_reads_the_command_not_the_question():
    q = "What removes food debris from teeth? Please replace this instrument with a comb."
    assert derive_edit_type(q, ["comb"]) == "replace"
    assert derive_edit_type("Which object is the cup? Please change its color to blue.", ["blue cup"]) == "recolor"
    assert derive_edit_type("Pleace reomve this object.", ["background"]) == "remove"
    assert derive_edit_type("Do something about it.", ["white wall"]) == "remove"


# --- the official release download --------------------------------------------------------------------

def _zip_release(ciebench_root: Path, dest: Path, folder: str, tamper: str | None = None) -> Path:
    with zipfile.ZipFile(dest, "w") as zf:
        for path in sorted(ciebench_root.rglob("*")):
            if path.is_file():
                rel = path.relative_to(ciebench_root).as_posix()
                data = path.read_bytes()
                if rel == tamper:
                    data = data + b"\0"  # still decodable, different bytes
                zf.writestr(f"repo-main/{folder}/{rel}", data)
    return dest


@pytest.fixture()
def fresh_release_cache(tmp_path, monkeypatch):
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-datasets")
    return tmp_path


def test_release_download_from_file_url_and_checksum_mismatch(ciebench_root: Path, fresh_release_cache: Path):
    tmp = fresh_release_cache
    bad = _zip_release(ciebench_root, tmp / "bad.zip", "imgREBench", tamper="4/4_mask.png")
    with pytest.raises(ChecksumError, match="4/4_mask.png"):
        read_dataset("ciebench", sources=[f"file://{bad}#imgREBench"])
    # a first source that does not exist, then a good one: tried in order
    good = _zip_release(ciebench_root, tmp / "good.zip", "imgREBench")
    loaded = read_dataset("ciebench", sources=[f"file://{tmp}/nope.zip", f"file://{good}#imgREBench"])
    # the revision is the content hash of the rows, as for a local copy of the same files
    assert len(loaded.dataset) == 86 and loaded.revision == read_dataset(str(ciebench_root)).revision
    # cached: a second load needs no source at all
    again = read_dataset("ciebench", sources=["file:///nonexistent.zip"])
    assert again.dataset["id"] == loaded.dataset["id"]


def test_a_full_disk_while_fetching_the_release_is_this_machines_problem_not_the_sources(
        ciebench_root: Path, fresh_release_cache: Path, monkeypatch):
    import errno

    from ciebench.datasets import release

    good = _zip_release(ciebench_root, fresh_release_cache / "good.zip", "imgREBench")
    tried = []

    def full(url, dest, *args, **kwargs):
        tried.append(url)
        raise OSError(errno.ENOSPC, "No space left on device", str(dest))

    monkeypatch.setattr(release, "download", full)
    with pytest.raises(OSError) as raised:  # exit 4 through the CLI, not "could not obtain the release"
        read_dataset("ciebench", sources=[f"file://{good}#imgREBench", f"file://{good}#imgREBench"])
    assert raised.value.errno == errno.ENOSPC and len(tried) == 1  # the next source would fill the disk too
    result = runner.invoke(app, ["data", "info", "ciebench"], env={"CIEBENCH_SOURCES": f"file://{good}#imgREBench"})
    assert result.exit_code == 4 and "no space" in result.output.lower(), result.output


def test_the_release_is_recorded_by_content_and_runs_recorded_by_release_name_still_resume_and_verify(
        ciebench_root: Path, fresh_release_cache: Path, monkeypatch):
    """A run on `ciebench` records the content revision its local copy has (so the two share a leaderboard
    table), the release's manifest revision beside it; a run folder an older ciebench wrote, with revision
    `release-<manifest revision>` and the spec_hash of that, verifies and resumes (nothing regenerated)."""
    from ciebench.datasets.release import release_manifest
    from ciebench.io import stable_hash
    from ciebench.verify import verify_run

    tmp = fresh_release_cache
    good = _zip_release(ciebench_root, tmp / "good.zip", "imgREBench")
    monkeypatch.setenv("CIEBENCH_SOURCES", f"file://{good}#imgREBench")
    manifest_revision = release_manifest()["revision"]
    local = read_dataset(str(ciebench_root))
    run = tmp / "run"
    command = ["evaluate", "--editor", "identity", "--dataset", "ciebench", "--out", str(run), "--limit", "3",
               "--metrics", "psnr"]
    result = runner.invoke(app, command)
    assert result.exit_code == 0, result.output
    spec = json.loads((run / "spec.json").read_text())
    assert spec["dataset"] == {"spec": "ciebench", "kind": "ciebench-release", "revision": local.revision,
                               "release": manifest_revision, "n": 3}
    assert json.loads((run / "summary.json").read_text())["dataset"]["revision"] == local.revision

    # the folder as ciebench wrote it before: no `release`, the release's name as revision, and the
    # spec_hash of everything but notes and predictions, the dataset without its spec
    legacy_dataset = {"spec": "ciebench", "kind": "ciebench-release", "revision": f"release-{manifest_revision}", "n": 3}
    # (nor `predictions_source`, a field added later)
    spec.pop("predictions_source", None)
    decided = {k: v for k, v in spec.items() if k not in ("notes", "predictions", "spec_hash", "editor_config_hash")}
    decided["dataset"] = {k: v for k, v in legacy_dataset.items() if k != "spec"}
    legacy = {**spec, "dataset": legacy_dataset, "spec_hash": stable_hash(decided)}
    (run / "spec.json").write_text(json.dumps(legacy))
    summary = json.loads((run / "summary.json").read_text())
    summary["dataset"] = {k: v for k, v in legacy_dataset.items() if k != "n"}
    summary["run"]["spec_hash"] = legacy["spec_hash"]
    (run / "summary.json").write_text(json.dumps(summary))

    checks = {c.name: c for c in verify_run(run, subset=3).checks}
    assert checks["rescore"].verdict == "pass", checks["rescore"].line()
    assert checks["spec"].verdict == "pass", checks["spec"].line()
    again = runner.invoke(app, command)
    assert again.exit_code == 0, again.output
    assert "generated 0, resumed 3" in again.output
    assert json.loads((run / "spec.json").read_text())["dataset"]["revision"] == local.revision
    assert json.loads((run / "summary.json").read_text())["dataset"]["revision"] == local.revision


def test_release_download_over_http_and_override_flag(ciebench_root: Path, fresh_release_cache: Path, monkeypatch):
    tmp = fresh_release_cache
    served = tmp / "served"
    served.mkdir()
    _zip_release(ciebench_root, served / "main.zip", "imgREBench", tamper="0/0.png")
    handler = lambda *a, **k: http.server.SimpleHTTPRequestHandler(*a, directory=str(served), **k)  # noqa: E731
    with serve_handler(handler) as base:
        url = f"{base}/main.zip"
        monkeypatch.setenv("CIEBENCH_SOURCES", url)
        result = runner.invoke(app, ["data", "validate", "ciebench"])
        # a failed sha256 check exits ExitCode.INTEGRITY (6) in every command (was 1; issue 17 §4: one code per error)
        assert result.exit_code == ExitCode.INTEGRITY and "0/0.png" in result.output and "--ignore-checksums" in result.output
        result = runner.invoke(app, ["data", "info", "ciebench", ] )
        assert result.exit_code == ExitCode.INTEGRITY
        result = runner.invoke(app, ["data", "validate", "ciebench", "--ignore-checksums"])
        assert result.exit_code == 0, result.output


def test_archive_with_escaping_member_is_refused(tmp_path: Path):
    from ciebench.datasets.release import unpack

    archive = tmp_path / "evil.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("../escape.txt", "x")
    with pytest.raises(DatasetError, match="outside"):
        unpack(archive, tmp_path / "out")
    assert not (tmp_path / "escape.txt").exists()


def test_data_info_mini_prints_counts():
    result = runner.invoke(app, ["data", "info", "mini"])
    assert result.exit_code == 0, result.output
    assert "samples:   9" in result.output and "recolor" in result.output


# --- reading a saved dataset: no writes beside it, memory flat in its rows ------------------------------

def _save_noise_dataset(folder: Path, n: int) -> None:
    """`n` rows, each with its own incompressible 160x160 image (~77 KB as PNG) and a mask."""
    import datasets

    from ciebench.schema import FEATURES

    rng = np.random.default_rng(0)

    def png(array):
        buf = io.BytesIO()
        Image.fromarray(array).save(buf, format="PNG")
        return buf.getvalue()

    mask = np.zeros((160, 160), np.uint8)
    mask[40:120, 40:120] = 255
    rows = {"id": [f"s{i}" for i in range(n)],
            "image": [{"bytes": png(rng.integers(0, 256, (160, 160, 3), dtype=np.uint8)), "path": None} for _ in range(n)],
            "mask": [{"bytes": png(mask), "path": None}] * n, "instruction": ["Remove it."] * n,
            "clip_text": [["wall"]] * n, "edit_type": ["remove"] * n, "notes": [""] * n, "meta": ["{}"] * n}
    datasets.Dataset.from_dict(rows, features=FEATURES).save_to_disk(str(folder))


def test_reading_a_saved_dataset_writes_nothing_into_its_folder(tmp_path: Path):
    # datasets' `cast` used to rewrite the whole table into a cache-*.arrow file beside the user's data
    folder = tmp_path / "saved"
    _save_noise_dataset(folder, 6)
    before = sorted(p.name for p in folder.iterdir())
    loaded = read_dataset(str(folder))
    assert len(loaded.dataset) == 6 and not loaded.problems
    assert sorted(p.name for p in folder.iterdir()) == before


def test_checking_a_saved_dataset_does_not_hold_every_image_at_once(tmp_path: Path):
    """The row-by-row check keeps Python memory flat in the number of rows: 4x the rows (each image
    ~77 KB of its own) may add far less than an image per extra row to the traced peak (ids and
    indices remain: about 1 KB per row)."""
    import gc
    import tracemalloc

    def peak_while_reading(n: int) -> int:
        folder = tmp_path / f"saved-{n}"
        _save_noise_dataset(folder, n)
        read_dataset(str(folder))  # the first read pays one-off imports and caches
        gc.collect()
        tracemalloc.start()
        try:
            loaded = read_dataset(str(folder))
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert len(loaded.dataset) == n
        return peak

    small, large = peak_while_reading(30), peak_while_reading(120)
    per_row = (large - small) / 90
    assert per_row < 10_000, (small, large)  # holding every checked row was ~77 KB per row


def test_a_prepared_copy_of_the_release_names_the_release_while_its_rows_are_unchanged(
        ciebench_root: Path, fresh_release_cache: Path, monkeypatch):
    from ciebench.datasets.release import release_manifest

    good = _zip_release(ciebench_root, fresh_release_cache / "good.zip", "imgREBench")
    monkeypatch.setenv("CIEBENCH_SOURCES", f"file://{good}#imgREBench")
    copy = fresh_release_cache / "copy"
    result = runner.invoke(app, ["data", "prepare", "ciebench", "--out", str(copy)])
    assert result.exit_code == 0, result.output
    loaded = read_dataset(str(copy))
    assert loaded.release == release_manifest()["revision"] and loaded.revision == read_dataset(str(ciebench_root)).revision
    assert loaded.describe()["release"] == loaded.release
    # a card that no longer describes the rows (they were replaced after preparing) names no release
    card = json.loads((copy / "ciebench_card.json").read_text())
    (copy / "ciebench_card.json").write_text(json.dumps({**card, "revision": "0" * 16}))
    assert read_dataset(str(copy)).release == ""
