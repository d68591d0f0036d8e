"""Issue #11 §3: every loader reads images only from embedded bytes or inside the dataset's folder,
special files are refused unread, images decode only from allowed formats, and archives and
downloads stop at their limits while extracting."""
from __future__ import annotations

import io
import json
import os
import subprocess
import tarfile
import zipfile
from pathlib import Path

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from ciebench.datasets import DatasetError, read_dataset
from ciebench.datasets.files import decode_image
from ciebench.datasets.release import ExtractLimits, download, unpack
from ciebench.errors import DataError
from ciebench.images import ALLOWED_FORMATS, ImageRefused, open_image, read_regular_file
from ciebench.schema import FEATURES

from tests.support.fixtures_bad_data import box_mask, picture, png_bytes, spy_on_opens, write_jsonl_dataset, write_manifest

SECRET = b"top-secret-bytes"


def _sentinel(tmp_path: Path) -> Path:
    """A real PNG outside the dataset: were it read, it would load as a perfectly good sample."""
    outside = tmp_path / "outside"
    outside.mkdir()
    path = outside / "secret.png"
    path.write_bytes(png_bytes(picture(99)))
    return path


def _errors(loaded) -> dict[str, str]:
    return {p.sample_id: p.message for p in loaded.problems if p.severity == "error"}


# --- file loaders -----------------------------------------------------------------------------------

def test_manifest_paths_outside_the_folder_are_errors_and_never_opened(tmp_path: Path, monkeypatch):
    secret = _sentinel(tmp_path)
    root = tmp_path / "ds"
    entries = write_jsonl_dataset(root, ["ok", "abs", "dotdot", "link"])
    entries[1]["image"] = str(secret)
    entries[2]["mask"] = "../outside/secret.png"
    os.symlink(secret, root / "inner_link.png")  # a link inside the folder that points outside
    entries[3]["image"] = "inner_link.png"
    write_manifest(root, entries)
    with spy_on_opens(monkeypatch) as spy:
        loaded = read_dataset(str(root))
    assert loaded.dataset["id"] == ["ok"]
    errors = _errors(loaded)
    assert set(errors) == {"abs", "dotdot", "link"}
    assert all("escapes the dataset folder" in errors[k] for k in errors)
    assert not spy.seen(secret), [p for p in spy.paths if "secret" in p]


def test_authors_layout_refuses_outside_paths_and_special_files(tmp_path: Path, monkeypatch):
    secret = _sentinel(tmp_path)
    root = tmp_path / "ds"
    (root / "1").mkdir(parents=True)
    picture(1).save(root / "1" / "1.png")
    box_mask().save(root / "1" / "1_mask.png")
    os.mkfifo(root / "1" / "fifo.png")
    annotation = {
        "1": {"image path": "1/1.png", "mask path": ["1/1_mask.png"], "instruction": "x", "CLIP": ["y"]},
        "2": {"image path": str(secret), "mask path": ["1/1_mask.png"], "instruction": "x", "CLIP": ["y"]},
        "3": {"image path": "1/fifo.png", "mask path": ["1/1_mask.png"], "instruction": "x", "CLIP": ["y"]},
        "4": {"image path": "1", "mask path": ["1/1_mask.png"], "instruction": "x", "CLIP": ["y"]},
    }
    (root / "updated_data.json").write_text(json.dumps(annotation))
    with spy_on_opens(monkeypatch) as spy:
        loaded = read_dataset(str(root))  # a FIFO opened for reading would block here forever
    assert loaded.dataset["id"] == ["1"]
    errors = _errors(loaded)
    assert "escapes" in errors["2"]
    assert "a FIFO" in errors["3"] and "refused without reading" in errors["3"]
    assert "a folder" in errors["4"]
    assert not spy.seen(secret) and not spy.seen(root / "1" / "fifo.png")


def test_read_regular_file_refuses_devices_and_fifos_without_opening(tmp_path: Path, monkeypatch):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    with spy_on_opens(monkeypatch) as spy:
        with pytest.raises(ImageRefused, match="a character device"):
            read_regular_file("/dev/zero")
        with pytest.raises(ImageRefused, match="a FIFO"):
            read_regular_file(fifo)
    assert spy.paths == []  # refused on stat alone
    plain = tmp_path / "plain.bin"
    plain.write_bytes(b"abc")
    assert read_regular_file(plain) == b"abc"
    with pytest.raises(ImageRefused, match="limit"):
        read_regular_file(plain, max_bytes=2)


# --- table loaders (parquet, saved, hub): Image values that carry a path ------------------------------

def _table_rows(png: bytes, secret: Path, inside: Path) -> dict[str, list]:
    def value(data=None, path=None):
        return {"bytes": data, "path": path}

    images = [value(png), value(None, str(secret)), value(None, "in.png"), value(None, str(inside)),
              value(None, "../outside/secret.png")]
    n = len(images)
    return {"id": ["bytes", "abs-outside", "rel-inside", "abs-inside", "rel-outside"], "image": images,
            "mask": [None] * n, "instruction": ["Remove it."] * n, "clip_text": [["wall"]] * n,
            "edit_type": ["remove"] * n, "notes": [""] * n, "meta": ["{}"] * n}


def _write_saved(folder: Path, rows: dict[str, list]) -> None:
    """A save_to_disk folder whose arrow file holds bare paths (save_to_disk itself would embed the
    files, so the hostile table is written over a benign one with datasets' own writer)."""
    from datasets.arrow_writer import ArrowWriter

    n = len(rows["id"])
    benign = {k: [v[0]] * n for k, v in rows.items()}
    datasets.Dataset.from_dict(benign, features=FEATURES).save_to_disk(str(folder))
    arrow = next(folder.glob("*.arrow"))
    with ArrowWriter(path=str(arrow), features=FEATURES, embed_local_files=False) as writer:
        for i in range(n):
            writer.write({k: v[i] for k, v in rows.items()})
        writer.finalize()


@pytest.mark.parametrize("kind", ["parquet", "saved", "hub"])
def test_table_datasets_read_paths_only_inside_their_folder(tmp_path: Path, monkeypatch, kind: str):
    secret = _sentinel(tmp_path)
    root = tmp_path / "table"
    root.mkdir()
    png = png_bytes(picture(1))
    (root / "in.png").write_bytes(png)
    rows = _table_rows(png, secret, root / "in.png")
    if kind == "saved":
        _write_saved(root / "saved", rows)
        (root / "saved" / "in.png").write_bytes(png)
        spec = str(root / "saved")
    else:
        pq.write_table(pa.table(rows), root / "data.parquet")
        spec = str(root / "data.parquet") if kind == "parquet" else f"hf:{root}"
    with spy_on_opens(monkeypatch) as spy:
        loaded = read_dataset(spec)
    ids = loaded.dataset["id"]
    assert "bytes" in ids and "rel-inside" in ids
    assert ("abs-inside" in ids) == (kind != "saved")  # the saved folder is root/saved, in.png lies above it
    errors = _errors(loaded)
    assert "abs-outside" in errors and "rel-outside" in errors and "abs-outside" not in ids
    assert not spy.seen(secret)
    # paths that were read are embedded, so nothing is read by path later (whatever the cwd)
    raw = loaded.dataset.cast_column("image", datasets.Image(decode=False))
    assert all(v["bytes"] is not None and v["path"] is None for v in raw["image"])


def test_prepared_copy_of_a_hostile_parquet_holds_no_outside_file(tmp_path: Path):
    from ciebench.datasets.prepare import prepare

    secret = _sentinel(tmp_path)
    root = tmp_path / "table"
    root.mkdir()
    png = png_bytes(picture(1))
    (root / "in.png").write_bytes(png)
    pq.write_table(pa.table(_table_rows(png, secret, root / "in.png")), root / "data.parquet")
    loaded = prepare(str(root / "data.parquet"), tmp_path / "prepared")
    assert "abs-outside" not in loaded.dataset["id"]
    blob = b"".join(p.read_bytes() for p in (tmp_path / "prepared").rglob("*") if p.is_file())
    assert secret.read_bytes() not in blob


# --- decoding: the format allow-list -------------------------------------------------------------------

@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "BMP", "TIFF"])
def test_allowed_formats_decode(fmt: str):
    buf = io.BytesIO()
    picture(3).save(buf, format=fmt)
    assert open_image(buf.getvalue()).size == (24, 16)
    assert set(ALLOWED_FORMATS) == {"PNG", "JPEG", "WEBP", "BMP", "TIFF"}


def test_eps_and_other_formats_are_refused_without_running_anything(monkeypatch):
    calls = []
    monkeypatch.setattr(subprocess, "Popen", lambda *a, **k: calls.append(a) or (_ for _ in ()).throw(AssertionError("ran")))
    monkeypatch.setattr(subprocess, "check_call", lambda *a, **k: calls.append(a))
    eps = (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 16 16\n%%EndComments\n"
           b"newpath 0 0 moveto 16 16 lineto stroke showpage\n%%EOF\n")
    gif = io.BytesIO()
    picture(4).save(gif, format="GIF")
    for name, data in (("x.eps", eps), ("x.gif", gif.getvalue())):
        problems = []
        assert decode_image(data, name, "s1", "image", problems) is None
        assert len(problems) == 1 and problems[0].sample_id == "s1" and problems[0].file == name
        assert "PNG/JPEG/WEBP/BMP/TIFF" in problems[0].message
    assert calls == []
    # PIL itself would have identified EPS: the refusal is ours, not an unreadable file
    assert Image.open(io.BytesIO(eps)).format == "EPS"


# --- archives and downloads ---------------------------------------------------------------------------

def _zeros_zip(path: Path, mib: int) -> None:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        with zf.open("data/zeros.bin", "w", force_zip64=True) as out:
            block = bytes(1 << 20)
            for _ in range(mib):
                out.write(block)


def test_zip_bomb_stops_while_extracting_under_default_limits(tmp_path: Path):
    archive = tmp_path / "small.zip"
    _zeros_zip(archive, 160)  # ~160 KB of archive, 160 MiB once extracted
    assert archive.stat().st_size < 1 << 20
    dest = tmp_path / "out"
    with pytest.raises(DatasetError, match="expands to more than 100 MiB") as info:
        unpack(archive, dest)
    assert isinstance(info.value, DataError) and "CIEBENCH_MAX_EXTRACT" in info.value.one_line()
    written = sum(p.stat().st_size for p in dest.rglob("*") if p.is_file())
    assert written <= 100 << 20  # stopped at the budget, not after writing everything


def test_extract_limits_are_configurable(tmp_path: Path, monkeypatch):
    archive = tmp_path / "small.zip"
    _zeros_zip(archive, 3)
    with pytest.raises(DatasetError, match="expands to more than 2 MiB"):
        unpack(archive, tmp_path / "a", ExtractLimits(max_bytes=2 << 20))
    monkeypatch.setenv("CIEBENCH_MAX_EXTRACT_BYTES", str(4 << 20))
    unpack(archive, tmp_path / "b")
    assert (tmp_path / "b" / "data" / "zeros.bin").stat().st_size == 3 << 20
    many = tmp_path / "many.zip"
    with zipfile.ZipFile(many, "w") as zf:
        for i in range(5):
            zf.writestr(f"f{i}.txt", "x")
    monkeypatch.setenv("CIEBENCH_MAX_EXTRACT_FILES", "4")
    with pytest.raises(DatasetError, match="more than 4 files"):
        unpack(many, tmp_path / "c")
    monkeypatch.setenv("CIEBENCH_MAX_EXTRACT_FILES", "many")
    with pytest.raises(DatasetError, match="CIEBENCH_MAX_EXTRACT_FILES"):
        unpack(many, tmp_path / "d")


@pytest.mark.parametrize("kind,expected", [(tarfile.FIFOTYPE, "a FIFO"), (tarfile.CHRTYPE, "a device"),
                                           (tarfile.BLKTYPE, "a device")])
def test_special_tar_members_are_a_clear_error(tmp_path: Path, kind: bytes, expected: str):
    archive = tmp_path / "special.tar"
    with tarfile.open(archive, "w") as tf:
        data = b"hello"
        info = tarfile.TarInfo("ok.txt")
        info.size = len(data)
        tf.addfile(info, io.BytesIO(data))
        special = tarfile.TarInfo("dev/thing")
        special.type = kind
        tf.addfile(special)
    with pytest.raises(DatasetError, match=f"dev/thing is {expected}; refused"):
        unpack(archive, tmp_path / "out")
    assert not (tmp_path / "out" / "dev" / "thing").exists()


def test_truncated_archive_is_a_dataset_error(tmp_path: Path):
    archive = tmp_path / "t.tar.gz"
    with tarfile.open(archive, "w:gz") as tf:
        data = os.urandom(200_000)
        info = tarfile.TarInfo("a.bin")
        info.size = len(data)
        tf.addfile(info, io.BytesIO(data))
    archive.write_bytes(archive.read_bytes()[:50_000])
    with pytest.raises(DatasetError, match="cannot unpack"):
        unpack(archive, tmp_path / "out")


def test_download_stops_at_its_limit(tmp_path: Path):
    source = tmp_path / "big.bin"
    source.write_bytes(bytes(3 << 20))
    with pytest.raises(DatasetError, match="larger than 2 MiB"):
        download(source.as_uri(), tmp_path / "got", max_bytes=2 << 20)
    download(source.as_uri(), tmp_path / "got2", max_bytes=4 << 20)
    assert (tmp_path / "got2").stat().st_size == 3 << 20


def test_a_dataset_spec_that_is_a_fifo_is_refused(tmp_path: Path):
    os.mkfifo(tmp_path / "pipe.jsonl")
    with pytest.raises(DatasetError, match="neither a regular file nor a folder"):
        read_dataset(str(tmp_path / "pipe.jsonl"))
