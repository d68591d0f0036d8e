"""The Python front door (`ciebench.evaluate`, `ciebench.score`) on `mini`: run folders, resume, the
score spec's shape, the backends it accepts (local, a caller's `Backend`, Ray), and the README example."""
from __future__ import annotations

import csv
import dataclasses
import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import ciebench
from ciebench.backend import Backend, LocalBackend
from ciebench.errors import OutputConflict, UsageError

REPO = Path(__file__).resolve().parents[1]
FAST = dict(metrics=["psnr", "ssim"], progress=False)


def _csv(run: Path, drop=("edit_seconds",)) -> list[dict[str, str]]:
    with open(run / "samples.csv", newline="") as fh:
        return [{k: v for k, v in row.items() if k not in drop} for row in csv.DictReader(fh)]


def test_evaluate_by_name_writes_a_run_folder_and_resumes_only_what_is_missing(tmp_path: Path):
    out, log = tmp_path / "run", tmp_path / "edits.txt"
    result = ciebench.evaluate("tests.support.editors_for_tests:CountingEditor", "mini", out, limit=3,
                               editor_args=[f"log={log}"], **FAST)
    first = _csv(out)
    assert isinstance(result, ciebench.RunResult) and result.run_dir == out
    with pytest.raises(dataclasses.FrozenInstanceError):
        result.run_dir = tmp_path  # type: ignore[misc]
    ids = [s["id"] for s in json.loads((REPO / "data" / "mini.json").read_text())["samples"]][:3]
    assert log.read_text().split() == ids
    assert (result.stats.generated, result.stats.skipped, result.stats.failed) == (3, 0, 0)
    assert result.summary == json.loads((out / "summary.json").read_text())
    assert sorted(p.name for p in (out / "images").iterdir()) == sorted(f"{i}__s0.png" for i in ids)
    # an identity edit: the prediction is the source, so SSIM is exactly 1 and PSNR infinite
    assert [r["sample_id"] for r in result.rows] == ids and all(r["status"] == "ok" for r in result.rows)
    assert all(r["ssim"] == 1.0 and r["psnr"] == float("inf") for r in result.rows)
    assert result.metrics["ssim"] == 1.0 and result.metrics["psnr"] == float("inf")
    assert sorted(result.samples()["sample_id"]) == sorted(ids)
    spec = json.loads((out / "spec.json").read_text())
    assert spec["editor"]["name"] == "counting" and spec["dataset"]["n"] == 3 and spec["predictions"] is None

    # the same call again: nothing is edited; with one record gone, that sample alone is redone
    again = ciebench.evaluate("tests.support.editors_for_tests:CountingEditor", "mini", out, limit=3,
                              editor_args=[f"log={log}"], **FAST)
    assert (again.stats.generated, again.stats.skipped) == (0, 3) and len(log.read_text().split()) == 3
    (out / "records" / f"{ids[1]}__s0.json").unlink()
    again = ciebench.evaluate("tests.support.editors_for_tests:CountingEditor", "mini", out, limit=3,
                              editor_args=[f"log={log}"], **FAST)
    assert (again.stats.generated, again.stats.skipped) == (1, 2) and log.read_text().split() == ids + [ids[1]]
    assert _csv(out) == first and [r["ssim"] for r in again.rows] == [1.0] * 3
    # a different spec in the same folder is refused, as on the command line
    with pytest.raises(OutputConflict):
        ciebench.evaluate("identity", "mini", out, limit=3, **FAST)


def test_an_editor_instance_and_a_loaded_dataset_give_the_run_of_the_name_and_the_spec(tmp_path: Path):
    from ciebench.baselines.identity import IdentityEditor

    ciebench.evaluate("identity", "mini", tmp_path / "a", limit=2, **FAST)
    loaded = ciebench.read_dataset("mini")
    ciebench.evaluate(IdentityEditor(), loaded, tmp_path / "b", limit=2, **FAST)
    ciebench.evaluate(IdentityEditor(), ciebench.load_dataset("mini"), tmp_path / "c", limit=2, **FAST)
    specs = [json.loads((tmp_path / d / "spec.json").read_text()) for d in "abc"]
    # the spec hash covers the editor's class and config and the dataset's content, not how they were given
    assert specs[0]["spec_hash"] == specs[1]["spec_hash"]
    assert specs[0]["editor_config_hash"] == specs[2]["editor_config_hash"]
    # a dataset handed over in memory is recorded as such, with the content revision of the same rows
    assert specs[2]["dataset"] == {"spec": "<in-memory dataset>", "kind": "memory", "revision": loaded.revision, "n": 2}
    assert _csv(tmp_path / "a") == _csv(tmp_path / "b") == _csv(tmp_path / "c")
    with pytest.raises(UsageError, match="used as built"):
        ciebench.evaluate(IdentityEditor(), "mini", tmp_path / "d", preset="lite", **FAST)
    with pytest.raises(UsageError, match="unknown backend"):
        ciebench.evaluate("identity", "mini", tmp_path / "e", backend="spark", **FAST)
    with pytest.raises(UsageError, match="unknown metric"):
        ciebench.evaluate("identity", "mini", tmp_path / "f", metrics=["psnrr"])
    assert not (tmp_path / "d").exists() and not (tmp_path / "e").exists() and not (tmp_path / "f").exists()


def test_score_writes_a_spec_of_the_run_shape_that_the_readers_accept(tmp_path: Path):
    from ciebench.leaderboard import load_run
    from ciebench.spec import RunSpec
    from ciebench.verify import SKIP, check_spec

    run = ciebench.evaluate("identity", "mini", tmp_path / "run", limit=3, **FAST)
    predictions = tmp_path / "preds"
    predictions.mkdir()
    for i, row in enumerate(run.rows):  # one prediction changed, one missing
        image = Image.open(run.run_dir / row["prediction"])
        if i == 1:
            image = Image.fromarray(255 - np.asarray(image))
        if i != 2:
            image.save(predictions / f"{row['sample_id']}.png")
    scored = ciebench.score("mini", predictions, tmp_path / "scored", limit=3, **FAST)
    assert scored.stats is None and [r["status"] for r in scored.rows] == ["ok", "ok", "missing"]
    assert scored.rows[0]["ssim"] == 1.0 and scored.rows[1]["ssim"] < 1.0

    run_spec = json.loads((run.run_dir / "spec.json").read_text())
    spec = json.loads((tmp_path / "scored" / "spec.json").read_text())
    # the run's fields, editor null, the folder scored; no spec hash (the predictions decide the numbers)
    assert set(spec) == set(run_spec) - {"spec_hash", "editor_config_hash"}
    assert spec["editor"] is None and spec["predictions"] == str(predictions.resolve())
    assert spec["protocol"] == run_spec["protocol"] and spec["dataset"] == run_spec["dataset"]
    assert spec["metrics"] == run_spec["metrics"] == ["psnr", "ssim"]
    RunSpec(**{k: (tuple(v) if k in ("seeds", "metrics") else v) for k, v in spec.items()})
    assert check_spec(spec, scored.summary).verdict == SKIP
    board_run = load_run(tmp_path / "scored")
    assert board_run.editor == {} and board_run.track == "" and board_run.config_hash == ""


class RecordingBackend(Backend):
    """The local backend, recording what the runner and the scorer ask of it."""

    name = "recording"

    def __init__(self) -> None:
        self.local = LocalBackend()
        self.calls: list[tuple[str, int]] = []
        self.closed = False

    def generate(self, editor, pending, out, options, stats):
        self.calls.append(("generate", len(pending)))
        self.local.generate(editor, pending, out, options, stats)

    def score_regions(self, loaded, protocol, metrics, options, entries, timer):
        entries = list(entries)
        self.calls.append(("score_regions", len(entries)))
        return self.local.score_regions(loaded, protocol, metrics, options, entries, timer)

    def model_ids(self):
        return self.local.model_ids()

    def close(self):
        self.closed = True


def test_a_backend_instance_does_the_generation_and_the_region_scoring_and_is_left_open(tmp_path: Path):
    backend = RecordingBackend()
    result = ciebench.evaluate("identity", "mini", tmp_path / "run", limit=3, backend=backend, **FAST)
    ciebench.evaluate("identity", "mini", tmp_path / "run", limit=3, backend=backend, **FAST)  # resumed
    ciebench.score("mini", tmp_path / "run" / "images", tmp_path / "scored", limit=2, backend=backend, **FAST)
    assert backend.calls == [("generate", 3), ("score_regions", 3), ("generate", 0), ("score_regions", 3),
                             ("score_regions", 2)]
    assert not backend.closed  # the caller's: it may serve more runs
    assert _csv(tmp_path / "run") == _csv(ciebench.evaluate("identity", "mini", tmp_path / "local", limit=3,
                                                               **FAST).run_dir)
    assert [r["ssim"] for r in result.rows] == [1.0] * 3
    with pytest.raises(UsageError, match="carries its own options"):
        ciebench.evaluate("identity", "mini", tmp_path / "x", backend=backend, num_workers=2, **FAST)


@pytest.mark.heavy  # a local Ray and its worker processes: about a minute on 2 shared cores
def test_the_front_door_on_ray_writes_the_run_of_the_local_backend(tmp_path: Path):
    ray = pytest.importorskip("ray", reason="the ray backend tests need Ray: pip install 'ciebench[ray]'")
    from ciebench.distributed import RayBackend, RayOptions

    editor = "tests.support.editors_for_ray:PatchEditor"
    metrics = dict(metrics=["psnr", "mse"], progress=False)
    local = ciebench.evaluate(editor, "mini", tmp_path / "local", limit=4, batch_size=2, **metrics)
    if ray.is_initialized():  # pragma: no cover - another module left one running
        ray.shutdown()
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, runtime_env={"env_vars": {"PYTHONPATH": path}})
    try:
        on_ray = ciebench.evaluate(editor, "mini", tmp_path / "ray", limit=4, batch_size=2, backend="ray",
                                   num_workers=2, **metrics)
        assert (on_ray.stats.generated, on_ray.stats.failed) == (4, 0)
        assert ray.is_initialized()  # a Ray the call did not start is left running
        with RayBackend(RayOptions(num_workers=1)) as backend:
            scored = ciebench.score("mini", tmp_path / "local" / "images", tmp_path / "scored", limit=4,
                                    backend=backend, **metrics)
    finally:
        ray.shutdown()
    assert _csv(tmp_path / "ray") == _csv(tmp_path / "local")
    assert all((tmp_path / "ray" / "images" / p.name).read_bytes() == p.read_bytes()
               for p in (tmp_path / "local" / "images").iterdir())
    assert on_ray.summary["metrics"] == local.summary["metrics"]
    keep = ("sample_id", "status", "psnr", "mse")
    assert [{k: r[k] for k in keep} for r in scored.rows] == [{k: r[k] for k in keep} for r in local.rows]
    assert "region_remote" in scored.summary["timing"]["stages"]


def test_the_readme_python_example_runs(tmp_path: Path, monkeypatch):
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("### Python API"):]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "README.md (Python API)", "exec"), {"__name__": "readme_example"})
    assert (tmp_path / "runs" / "identity" / "summary.json").is_file()
    spec = json.loads((tmp_path / "runs" / "identity-scored" / "spec.json").read_text())
    assert spec["editor"] is None and spec["dataset"]["n"] == 4


def test_a_device_this_machine_lacks_fails_before_any_sample_is_edited(tmp_path: Path, monkeypatch):
    """`device="cuda"` without a GPU is refused up front, not after the editor has run on every sample."""
    import torch

    from ciebench.errors import EnvironmentProblem

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(EnvironmentProblem, match="no CUDA device"):
        ciebench.evaluate("identity", "mini", tmp_path / "run", device="cuda", metrics=["psnr"])
    assert not (tmp_path / "run" / "images").exists()
    with pytest.raises(EnvironmentProblem, match="no CUDA device"):
        ciebench.score("mini", tmp_path, tmp_path / "scored", device="cuda", metrics=["psnr"])
    assert not (tmp_path / "scored").exists()
