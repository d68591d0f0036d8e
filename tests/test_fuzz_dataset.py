"""Issue #11 acceptance: a property-based test that mutates a small generated dataset (truncated and
flipped bytes in images, masks and manifest; wrong JSON types; odd ids; paths to a file outside) and
runs `data validate`, `evaluate --editor identity`, `score` and `leaderboard` on it. Each command must
end without a traceback, every manifest line must end up as a scored sample or a reported problem,
and nothing outside the dataset folder may be opened.

Failures that belong to other parts of issue #11 (ids round-tripping through the run directory,
§2; run recording, §8) are collected and turned into one xfail naming the section, so the checks of
this part still run on every example; `_DEFERRED_SECTIONS` lists them.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from typer.testing import CliRunner

from ciebench.cli import app
from ciebench.datasets import read_dataset
from ciebench.datasets.fields import sample_id_of

from tests.support.fixtures_bad_data import picture, png_bytes, spy_on_opens, write_jsonl_dataset

runner = CliRunner()

LONG_ID = "中文标识符测试样本编号很长很长的名字用于检查文件名称"  # 26 characters, 78 UTF-8 bytes
ODD_IDS = ["a", "NA", "null", "nan", "None", "007", "7", LONG_ID,
           "x" * 40, "a b", "-1", "TRUE", "1e3", "ü"]
JSON_VALUES = [None, 5, 2.5, True, [1], {"a": 1}, "", "missing.png"]
FIELDS = ["id", "image", "mask", "instruction", "clip_text"]
N = 3
# The issue #11 sections a traceback outside the loaders is reported under.
_DEFERRED_SECTIONS = {"§2": "sample ids round-trip through the run directory, summary and leaderboard",
                      "§8": "recording a sample never crashes the run"}
_MINE = ("ciebench/datasets/", "ciebench/images.py", "ciebench/schema.py", "metrics/align.py")


@dataclass
class Case:
    ids: list[str]
    byte_edits: list[tuple[str, str, float, int]] = field(default_factory=list)  # (file, op, where, byte)
    type_edits: list[tuple[int, str, object]] = field(default_factory=list)
    outside: list[tuple[int, str, str]] = field(default_factory=list)  # (sample, field, style)


files = st.sampled_from([f"img{i}.png" for i in range(N)] + [f"img{i}_mask.png" for i in range(N)] + ["manifest.jsonl"])
cases = st.builds(
    Case,
    ids=st.lists(st.sampled_from(ODD_IDS), min_size=N, max_size=N),
    byte_edits=st.lists(st.tuples(files, st.sampled_from(["truncate", "flip"]), st.floats(0, 1), st.integers(0, 255)),
                        max_size=3),
    type_edits=st.lists(st.tuples(st.integers(0, N - 1), st.sampled_from(FIELDS), st.sampled_from(JSON_VALUES)), max_size=2),
    outside=st.lists(st.tuples(st.integers(0, N - 1), st.sampled_from(["image", "mask"]),
                               st.sampled_from(["absolute", "dotdot", "symlink"])), max_size=1),
)


def _build(case: Case, work: Path) -> tuple[Path, Path]:
    sentinel = work / "outside" / "sentinel.png"
    sentinel.parent.mkdir(parents=True)
    sentinel.write_bytes(png_bytes(picture(1234)))
    root = work / "ds"
    entries = write_jsonl_dataset(root, case.ids)
    for index, key, value in case.type_edits:
        if key == "id" and value == "missing.png":
            entries[index].pop("id")
        else:
            entries[index][key] = value
    for index, key, style in case.outside:
        if style == "absolute":
            entries[index][key] = str(sentinel)
        elif style == "dotdot":
            entries[index][key] = "../outside/sentinel.png"
        else:
            os.symlink(sentinel, root / f"link{index}.png")
            entries[index][key] = f"link{index}.png"
    (root / "manifest.jsonl").write_text("\n".join(json.dumps(e, ensure_ascii=False) for e in entries) + "\n")
    for name, op, where, byte in case.byte_edits:
        path = root / name
        data = bytearray(path.read_bytes())
        at = min(int(where * len(data)), len(data) - 1)
        if op == "truncate":
            del data[at:]
        else:
            data[at] ^= byte or 1
        path.write_bytes(bytes(data))
    return root, sentinel


def _expected_lines(manifest: Path) -> dict[int, str | None]:
    """Line number -> the sample id the line names (None: the line has no usable id)."""
    raw = manifest.read_bytes().removeprefix(b"\xef\xbb\xbf")
    out = {}
    for lineno, data in enumerate(raw.splitlines(), start=1):
        if not data.strip():
            continue
        try:
            entry = json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError):
            out[lineno] = None
            continue
        out[lineno] = sample_id_of(entry.get("id")) if isinstance(entry, dict) else None
    return out


def _traceback_owner(result) -> str | None:
    """None when the command ended cleanly, else 'mine' or the deferred section it belongs to."""
    exc = result.exception
    if exc is None or isinstance(exc, SystemExit):
        return "mine" if "Traceback (most recent call last)" in result.output else None
    files = [frame.filename.replace(os.sep, "/") for frame in traceback.extract_tb(exc.__traceback__)]
    ours = [f for f in files if "/ciebench/" in f or "/metrics/" in f or "/leaderboard/" in f]
    if any(part in f for f in ours[-1:] for part in _MINE):
        return "mine"  # the exception was raised in (or last passed through) this part's code
    if any(f.endswith("runner.py") for f in ours[-1:]) and not isinstance(exc, OSError):
        return "§8"
    return "§2"  # ids as file names (ENAMETOOLONG) or as pandas values (NA -> NaN) in results / leaderboard


def _check(case: Case, work: Path, deferred: list[str], monkeypatch) -> None:
    root, sentinel = _build(case, work)
    run, scored, board = work / "run", work / "scored", work / "board"
    with spy_on_opens(monkeypatch) as spy:
        results = {
            "validate": runner.invoke(app, ["data", "validate", str(root)]),
            "evaluate": runner.invoke(app, ["evaluate", "--editor", "identity", "--dataset", str(root), "--out", str(run),
                                            "--metrics", "psnr,mse", "--protocol", "exact"]),
        }
        if (run / "images").is_dir():
            results["score"] = runner.invoke(app, ["score", "--dataset", str(root), "--predictions", str(run / "images"),
                                                   "--out", str(scored), "--metrics", "psnr,mse", "--allow-missing"])
        runs = [str(d) for d in (run, scored) if (d / "samples.csv").exists()]
        if runs:
            results["leaderboard"] = runner.invoke(app, ["leaderboard", *runs, "--out", str(board), "--no-plots"])
        loaded = read_dataset(str(root))
    # 1. no traceback
    for name, result in results.items():
        owner = _traceback_owner(result)
        assert owner != "mine", f"{name}: traceback in this part's code\n{result.output}\n{result.exception!r}"
        if owner:
            deferred.append(f"{owner}: {name} raised {result.exception!r} for ids {case.ids}")
    # 2. nothing outside the dataset read, and no output holds the outside picture
    assert not spy.seen(sentinel), [p for p in spy.paths if "sentinel" in p]
    secret = np.asarray(picture(1234))
    for image in list(run.rglob("*.png")) + list(board.rglob("*.png")):
        with Image.open(image) as im:
            assert not (im.size == (24, 16) and np.array_equal(np.asarray(im.convert("RGB")), secret)), image
    # 3. every manifest line is a loaded sample or a reported problem naming its line or sample
    loaded_ids = set(loaded.dataset["id"])
    for lineno, sample_id in _expected_lines(root / "manifest.jsonl").items():
        reported = any(p.file == f"manifest.jsonl:{lineno}" or (sample_id is not None and p.sample_id == sample_id)
                       for p in loaded.problems)
        assert reported or sample_id in loaded_ids, (lineno, sample_id, [str(p) for p in loaded.problems])
    # 4. every loaded sample has its row in the run (ids as opaque strings)
    samples = run / "samples.jsonl"
    if samples.exists():
        rows = {json.loads(line)["sample_id"] for line in samples.read_text(encoding="utf-8").splitlines() if line.strip()}
        lost = loaded_ids - {str(r) for r in rows}
        if lost:
            deferred.append(f"§2: samples {sorted(lost)} of ids {case.ids} have no row in samples.jsonl")
    elif loaded_ids and results["evaluate"].exception is None:
        deferred.append(f"§2: evaluate wrote no samples.jsonl for ids {case.ids}")


@pytest.mark.heavy
def test_mutated_datasets_never_crash_and_never_read_outside(monkeypatch):
    deferred: list[str] = []

    @settings(max_examples=int(os.environ.get("CIEBENCH_FUZZ_EXAMPLES", "8")), deadline=None, derandomize=True,
              database=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
    @given(case=cases)
    def prop(case: Case) -> None:
        work = Path(tempfile.mkdtemp(prefix="ciebench-fuzz-"))
        try:
            _check(case, work, deferred, monkeypatch)
        finally:
            shutil.rmtree(work, ignore_errors=True)

    prop()
    if deferred:
        sections = sorted({d.split(":", 1)[0] for d in deferred})
        pytest.fail("issue #11 " + ", ".join(f"{s} ({_DEFERRED_SECTIONS.get(s, '?')})" for s in sections)
                     + " violated: " + "; ".join(deferred[:3]))


def test_known_odd_ids_case(monkeypatch, tmp_path: Path):
    """One fixed example of everything at once, so a plain run always covers it."""
    deferred: list[str] = []
    case = Case(ids=["NA", "007", LONG_ID], outside=[(1, "image", "absolute")])
    _check(case, tmp_path, deferred, monkeypatch)
    loaded = read_dataset(str(tmp_path / "ds"))
    assert loaded.dataset["id"] == ["NA", LONG_ID]
    assert [(p.sample_id, "escapes" in p.message) for p in loaded.problems] == [("007", True)]
    if deferred:
        pytest.fail("issue #11 violated: " + "; ".join(deferred))
