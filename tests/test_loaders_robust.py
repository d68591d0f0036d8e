"""Issue #11 §7: loaders report, never crash. Each bad line or entry is one problem naming the file and
line or sample; the rest loads. Reason-Edit pairs lines with images in the official sorted order."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image
from typer.testing import CliRunner

from ciebench.cli import app
from ciebench.datasets import iter_samples, read_dataset
from ciebench.datasets.reasonedit import natural_key

from tests.support.fixtures_bad_data import box_mask, picture, png_bytes, write_jsonl_dataset, write_manifest

runner = CliRunner()


def _by_file(loaded) -> dict[str, list]:
    out: dict[str, list] = {}
    for p in loaded.problems:
        out.setdefault(p.file, []).append(p)
    return out


# --- JSONL ----------------------------------------------------------------------------------------------

def test_each_bad_manifest_line_is_one_problem_and_the_rest_loads(tmp_path: Path):
    root = tmp_path / "ds"
    good = write_jsonl_dataset(root, ["a", "b"])
    base = {"image": "img0.png", "mask": "img0_mask.png", "instruction": "Please remove it."}
    bad_lines = [
        json.dumps([1, 2]),                                   # 3: not an object
        json.dumps("just a string"),                          # 4: not an object
        json.dumps({**base, "id": None}),                     # 5: id null
        json.dumps({**base, "id": "c", "clip_text": 5}),      # 6: wrong type
        json.dumps({**base, "id": "d", "mask": 5}),           # 7: wrong type
        json.dumps({**base, "id": "e", "instruction": ["x"]}),  # 8: wrong type
        json.dumps({**base, "id": True}),                     # 9: a boolean is not an id
        '{"id": "f", "image": ',                              # 10: not JSON
        json.dumps({**base, "id": "g", "image": 7}),          # 11: wrong type
        "[" * 100_000,                                        # 12: nesting deep enough to exhaust the parser
    ]
    text = "\n".join(json.dumps(e) for e in good) + "\n" + "\n".join(bad_lines) + "\n"
    data = b"\xef\xbb\xbf" + text.encode() + b'{"id": "h", "image": "img0.png", "instruction": "caf\xe9"}\n'  # 13: Latin-1
    (root / "manifest.jsonl").write_bytes(data)
    loaded = read_dataset(str(root))
    assert loaded.dataset["id"] == ["a", "b"]  # the BOM did not spoil line 1
    problems = _by_file(loaded)
    assert sorted(problems) == sorted(f"manifest.jsonl:{n}" for n in range(3, 14)), problems
    assert all(len(v) == 1 and v[0].severity == "error" for v in problems.values())
    messages = {k: v[0].message for k, v in problems.items()}
    assert "expected a JSON object, got a list" in messages["manifest.jsonl:3"]
    assert "'id' must be a non-empty string or an integer, got null" in messages["manifest.jsonl:5"]
    assert "'clip_text' must be a string or a list of strings, got a number" in messages["manifest.jsonl:6"]
    assert "'mask' must be" in messages["manifest.jsonl:7"] and problems["manifest.jsonl:7"][0].sample_id == "d"
    assert "got a boolean" in messages["manifest.jsonl:9"]
    assert "not UTF-8" in messages["manifest.jsonl:13"]
    result = runner.invoke(app, ["data", "validate", str(root)])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "2 usable samples, 11 error(s)" in result.output


def test_a_manifest_without_the_mask_key_is_refused_not_scored_over_the_whole_image(tmp_path: Path):
    """A misspelt "mask" key ("mask_path") used to load silently with no mask: every sample was then
    scored as if the whole image had to stay unchanged. Each line is now an error, and the unknown
    key is one warning naming the manifest's first line that holds it."""
    root = tmp_path / "ds"
    entries = write_jsonl_dataset(root, ["a", "b", "c"])
    for entry in entries:
        entry["mask_path"] = entry.pop("mask")
    write_manifest(root, entries)
    loaded = read_dataset(str(root))
    assert len(loaded.dataset) == 0
    errors = [(p.sample_id, p.file, p.message) for p in loaded.problems if p.severity == "error"]
    assert [e[:2] for e in errors] == [("a", "manifest.jsonl:1"), ("b", "manifest.jsonl:2"), ("c", "manifest.jsonl:3")]
    assert all("missing keys: ['mask']" in e[2] and '"mask": null' in e[2] for e in errors)
    warnings = [p for p in loaded.problems if p.severity == "warning"]
    assert len(warnings) == 1 and warnings[0].file == "manifest.jsonl:1"  # one per key, not per line
    assert "'mask_path'" in warnings[0].message and "3 lines (1, 2, 3)" in warnings[0].message
    assert "Did you mean 'mask'?" in warnings[0].message
    result = runner.invoke(app, ["data", "validate", str(root)])
    assert result.exit_code == 3 and "0 usable samples, 3 error(s), 1 warning(s)" in result.output
    result = runner.invoke(app, ["evaluate", "--editor", "identity", "--dataset", str(root),
                                 "--out", str(tmp_path / "run"), "--metrics", "psnr"])
    assert result.exit_code == 3 and "no usable samples" in result.output


def test_unknown_keys_and_a_missing_clip_text_are_warned_about_and_the_sample_loads(tmp_path: Path):
    root = tmp_path / "ds"
    entries = write_jsonl_dataset(root, ["a", "b"])
    entries[0]["category"] = "kitchen"
    del entries[1]["clip_text"]
    write_manifest(root, entries)
    loaded = read_dataset(str(root))
    assert loaded.dataset["id"] == ["a", "b"]
    found = sorted((p.file, p.severity, p.sample_id) for p in loaded.problems)
    assert found == [("manifest.jsonl:1", "warning", None), ("manifest.jsonl:2", "warning", "b")]
    by_file = {p.file: p.message for p in loaded.problems}
    assert "unknown key 'category' on line 1 is ignored" in by_file["manifest.jsonl:1"]
    assert "no 'clip_text'" in by_file["manifest.jsonl:2"] and "CLIP is NaN" in by_file["manifest.jsonl:2"]


def test_an_explicit_null_mask_is_warned_and_scored_over_the_whole_image_as_the_warning_says(tmp_path: Path):
    """`"mask": null` is the one way to say "no mask"; the warning states what scoring does with such a
    sample, checked here against MSE computed by hand over every pixel (the changed box included)."""
    root = tmp_path / "ds"
    entries = write_jsonl_dataset(root, ["a"])
    entries[0]["mask"] = None
    write_manifest(root, entries)
    loaded = read_dataset(str(root))
    assert loaded.dataset["id"] == ["a"]
    [warning] = loaded.problems
    assert (warning.severity, warning.sample_id, warning.file) == ("warning", "a", "manifest.jsonl:1")
    assert "cover the whole image" in warning.message and "CLIP" in warning.message and "NaN" in warning.message
    source = np.asarray(picture(0)).astype(np.int16)
    changed = source.copy()
    changed[4:10, 4:12] = (changed[4:10, 4:12] + 40) % 256  # inside the box the mask file would mark
    preds = tmp_path / "preds"
    preds.mkdir()
    Image.fromarray(changed.astype(np.uint8)).save(preds / "a.png")
    result = runner.invoke(app, ["score", "--dataset", str(root), "--predictions", str(preds), "--out",
                                 str(tmp_path / "run"), "--metrics", "mse", "--protocol", "exact"])
    assert result.exit_code == 0, result.output
    row = json.loads((tmp_path / "run" / "samples.jsonl").read_text().splitlines()[0])
    expected = float(np.mean(((changed - source) / 255.0) ** 2))  # every pixel and channel
    assert expected > 0 and row["mse"] == pytest.approx(expected, rel=1e-6)  # inputs are float32 uint8/255
    # the same sample from a table (what `data prepare` writes) carries the same warning
    loaded.dataset.to_parquet(str(tmp_path / "d.parquet"))
    [again] = read_dataset(str(tmp_path / "d.parquet")).problems
    assert again.severity == "warning" and again.sample_id == "a" and "cover the whole image" in again.message


def test_ids_are_opaque_strings_kept_exactly(tmp_path: Path):
    root = tmp_path / "ds"
    ids = ["NA", "null", "nan", "007", "寿司と天ぷらとラーメンと餃子と焼き鳥と味噌汁と抹茶", "a/b"]
    entries = write_jsonl_dataset(root, ids)
    entries.append({**entries[0], "id": 7})  # an integer id is its decimal string, distinct from "007"
    (root / "manifest.jsonl").write_text("\n".join(json.dumps(e) for e in entries) + "\n")
    loaded = read_dataset(str(root))
    assert loaded.dataset["id"] == ids + ["7"]
    assert loaded.problems == []


def test_extensions_match_case_insensitively(tmp_path: Path):
    root = tmp_path / "ds"
    root.mkdir()
    picture(0).save(root / "A.PNG")
    box_mask().save(root / "A_MASK.PNG", format="PNG")
    (root / "data.JSONL").write_text(json.dumps({"id": "a", "image": "A.PNG", "mask": "A_MASK.PNG",
                                                 "instruction": "Please remove it."}) + "\n")
    assert read_dataset(str(root / "data.JSONL")).dataset["id"] == ["a"]


# --- the authors' layout ----------------------------------------------------------------------------------

def test_authors_annotation_with_bom_and_wrong_types(tmp_path: Path):
    root = tmp_path / "ds"
    (root / "1").mkdir(parents=True)
    picture(1).save(root / "1" / "1.png")
    box_mask().save(root / "1" / "1_mask.png")
    entry = {"image path": "1/1.png", "mask path": ["1/1_mask.png"], "instruction": "x", "CLIP": ["y"]}
    annotation = {"1": entry, "2": {**entry, "mask path": 5}, "3": {**entry, "CLIP": 5},
                  "4": {**entry, "instruction": None}, "5": "not an entry", "": entry}
    (root / "updated_data.json").write_bytes(b"\xef\xbb\xbf" + json.dumps(annotation).encode())
    loaded = read_dataset(str(root))
    assert loaded.dataset["id"] == ["1"]
    errors = {p.sample_id: p for p in loaded.problems if p.severity == "error"}
    assert set(errors) == {"2", "3", "4", "5", None}
    assert "'mask path' must be" in errors["2"].message and errors["2"].file == "updated_data.json"
    assert "'CLIP' must be" in errors["3"].message
    assert "'instruction' must be a string, got null" in errors["4"].message


def test_authors_annotation_list_form_with_null_ids(tmp_path: Path):
    root = tmp_path / "ds"
    (root / "1").mkdir(parents=True)
    picture(1).save(root / "1" / "1.png")
    box_mask().save(root / "1" / "1_mask.png")
    entry = {"image path": "1/1.png", "mask path": "1/1_mask.png", "instruction": "x"}
    (root / "benchmark.json").write_text(json.dumps([{**entry, "id": "007"}, {**entry, "id": None}, {**entry, "id": 7}]))
    loaded = read_dataset(str(root))
    assert loaded.dataset["id"] == ["007", "7"]
    assert [p.sample_id for p in loaded.problems if p.severity == "error"] == [None]
    # no "CLIP" key: the sample loads, and the warning says its CLIP score will be NaN
    warned = {p.sample_id: p.message for p in loaded.problems if p.severity == "warning"}
    assert set(warned) >= {"007", "7"} and all("no 'CLIP' key: CLIP is NaN" in warned[i] for i in ("007", "7"))


def test_unparseable_annotation_is_one_clear_error(tmp_path: Path):
    root = tmp_path / "ds"
    root.mkdir()
    (root / "updated_data.json").write_bytes(b'{"1": {"instruction": "caf\xe9"}}')
    result = runner.invoke(app, ["data", "validate", str(root)])
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert "updated_data.json" in result.output and "cannot parse" in result.output


# --- Reason-Edit ----------------------------------------------------------------------------------------

def _reason_category(root: Path, name: str, stems: list[str], lines: int | None = None, mask_ext: str = "jpg",
                     skip_masks: tuple[str, ...] = ()) -> None:
    folder = root / name
    folder.mkdir(parents=True)
    for stem in stems:
        value = int("".join(ch for ch in stem if ch.isdigit()) or 0)
        Image.new("RGB", (16, 12), (value, 0, 0)).save(folder / f"{stem}.png")
        if stem not in skip_masks:
            box_mask((16, 12), (0, 0, value % 16 + 1, 12)).save(folder / f"{stem}_mask.{mask_ext}",
                                                                format="JPEG" if mask_ext.lower() in ("jpg", "jpeg") else "PNG")
    n = len(stems) if lines is None else lines
    # the lines in the order SmartEdit's scripts read them: prompt[i] for sorted(glob("*.png"))[i]
    ordered = [name[:-len(".png")] for name in sorted(f"{stem}.png" for stem in stems)]
    text = "\n".join(f"Edit picture {ordered[i] if i < len(ordered) else 'extra'} CLIP: thing {i}" for i in range(n))
    (folder / "prompts.txt").write_text(text + "\n")


def test_reasonedit_pairs_lines_with_images_in_the_official_sorted_order(tmp_path: Path):
    root = tmp_path / "reason"
    stems = [str(i) for i in range(1, 12)]  # 1..11: sorted names put 10.png and 11.png right after 1.png
    _reason_category(root, "1-Left-Right", stems, mask_ext="png")  # *_mask.png must not be taken as sources
    loaded = read_dataset(str(root))
    assert [p for p in loaded.problems if p.severity == "error"] == []
    samples = {s.id: s for s in iter_samples(loaded.dataset)}
    assert sorted(samples, key=lambda k: natural_key(k)) == [f"1-Left-Right/{s}" for s in stems]
    for stem in stems:
        s = samples[f"1-Left-Right/{stem}"]
        assert s.instruction == f"Edit picture {stem}"  # line i pairs with sorted(glob("*.png"))[i], as published
        assert np.asarray(s.image)[0, 0, 0] == int(stem)
        width = int((np.asarray(s.mask) > 127).any(0).sum())
        assert width == int(stem) % 16 + 1  # the mask of the same stem
    # the official scoring script pairs masks by index in their own sorted list: "10_mask.png" sorts before
    # "1_mask.png" while "1.png" sorts before "10.png", so it scored other masks; said, not copied
    warned = [p for p in loaded.problems if p.severity == "warning" and "metrics_evaluation.py" in p.message]
    assert len(warned) == 1 and warned[0].file == "1-Left-Right"
    padded = tmp_path / "padded"
    _reason_category(padded, "1-Left-Right", [f"{i:03d}" for i in range(1, 12)])
    assert not [p for p in read_dataset(str(padded)).problems if "metrics_evaluation.py" in p.message]


def test_reasonedit_pairing_mismatches_are_errors(tmp_path: Path):
    root = tmp_path / "reason"
    _reason_category(root, "1-Left-Right", ["1", "2", "3"], skip_masks=("2",))
    _reason_category(root, "2-Relative-Size", ["1", "2"], lines=3)
    (root / "1-Left-Right" / "9_mask.jpg").write_bytes((root / "1-Left-Right" / "1_mask.jpg").read_bytes())
    _reason_category(root, "3-Mirror", ["1"], mask_ext="JPG")
    (root / "3-Mirror" / "1.png").rename(root / "3-Mirror" / "1.PNG")
    loaded = read_dataset(str(root))
    assert sorted(loaded.dataset["id"]) == ["1-Left-Right/1", "1-Left-Right/3", "3-Mirror/1"]
    errors = [p for p in loaded.problems if p.severity == "error"]
    messages = {(p.sample_id, p.file): p.message for p in errors}
    assert "no mask 2_mask.jpg" in messages[("1-Left-Right/2", "1-Left-Right/2.png")]
    assert "no source image" in messages[(None, "1-Left-Right/9_mask.jpg")]
    assert "3 instruction lines but 2 source images" in messages[(None, "2-Relative-Size/prompts.txt")]
    assert len(errors) == 3


def test_natural_key_orders_numbers_numerically():
    assert sorted(["10", "9", "1", "a2", "a10", "100"], key=natural_key) == ["1", "9", "10", "100", "a2", "a10"]


# --- table datasets --------------------------------------------------------------------------------------

def test_parquet_rows_with_nulls_and_corrupt_bytes_are_reported(tmp_path: Path):
    png = png_bytes(picture(0))
    rows = {"id": ["ok", None, "bad-bytes", "null-text", "bad-meta", "ok"],
            "image": [{"bytes": png, "path": None}, {"bytes": png, "path": None}, {"bytes": png[:40], "path": None},
                      {"bytes": png, "path": None}, {"bytes": png, "path": None}, {"bytes": png, "path": None}],
            "mask": [None] * 6, "instruction": ["x", "x", "x", None, "x", "x"], "clip_text": [["y"]] * 6,
            "edit_type": ["remove"] * 6, "notes": [""] * 6, "meta": ["{}", "{}", "{}", "{}", "not json", "{}"]}
    pq.write_table(pa.table(rows), tmp_path / "d.parquet")
    loaded = read_dataset(str(tmp_path / "d.parquet"))
    assert loaded.dataset["id"] == ["ok"]
    errors = [(p.sample_id, p.file) for p in loaded.problems if p.severity == "error"]
    assert errors == [(None, "row 1"), ("bad-bytes", "row 2"), ("null-text", "row 3"), ("bad-meta", "row 4"),
                      ("ok", "row 5")]
    assert [s.id for s in iter_samples(loaded.dataset)] == ["ok"]


def test_unreadable_parquet_is_one_clear_error(tmp_path: Path):
    (tmp_path / "d.parquet").write_bytes(b"PAR1 not really")
    result = runner.invoke(app, ["data", "validate", str(tmp_path / "d.parquet")])
    assert result.exit_code != 0 and "Traceback" not in result.output and "d.parquet" in result.output


@pytest.mark.parametrize("column,value", [("id", [1.5]), ("clip_text", ["not a list"]), ("clip_text", [None]),
                                          ("mask", [{"bytes": b"GIF89a", "path": None}])])
def test_parquet_with_foreign_column_types(tmp_path: Path, column: str, value: list):
    rows = {"id": ["a"], "image": [{"bytes": png_bytes(picture(0)), "path": None}], "mask": [None],
            "instruction": ["x"], "clip_text": [["y"]], "edit_type": ["remove"], "notes": [""], "meta": ["{}"]}
    rows[column] = value
    pq.write_table(pa.table(rows), tmp_path / "d.parquet")
    result = runner.invoke(app, ["data", "validate", str(tmp_path / "d.parquet")])
    assert "Traceback" not in result.output, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "usable samples" in result.output or "d.parquet" in result.output
