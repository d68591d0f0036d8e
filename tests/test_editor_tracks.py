"""Editor tracks (direct / rewrite / agentic): declared by every editor, recorded in runs, shown and
separable on the leaderboard."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ciebench.cli import app
from ciebench.editor import EditResult, Editor

from tests.support.llm_server import json_reply, serve_llm

runner = CliRunner()


class AgenticStub(Editor):
    """A multi-stage stand-in (returns the source), referenced by module:Class below."""

    name = "agentic-stub"
    track = "agentic"

    def edit(self, requests):
        return [EditResult(image=r.image.copy()) for r in requests]


def test_every_registered_editor_declares_a_known_track():
    from ciebench.registry import EDITORS, get_editor_class

    expected = {"cielr": "agentic", "identity": "direct", "qwen-image-edit": "direct", "openai-images": "direct",
                "diffusers": "direct", "rewrite:identity": "rewrite", "rewrite:qwen-image-edit": "rewrite"}
    for name, track in expected.items():
        assert get_editor_class(name).track == track, name
    assert all(get_editor_class(n).track in ("direct", "rewrite", "agentic") for n in EDITORS.names())


@pytest.fixture(scope="module")
def three_tracks(tmp_path_factory) -> list[Path]:
    root = tmp_path_factory.mktemp("tracks")
    common = ["--dataset", "mini", "--limit", "2", "--metrics", "psnr,mse"]
    with serve_llm(latency_s=0.0) as server, pytest.MonkeyPatch.context() as mp:
        mp.setenv("CIEBENCH_CACHE", str(root / "cache"))
        server.on(then=json_reply({"instruction": "remove the object"}))
        runs = []
        for name, editor, extra in (
                ("plain", "identity", []),
                ("rewritten", "rewrite:identity", ["--editor-arg", f"rewriter_base_url={server.base_url}",
                                                   "--editor-arg", "rewriter_api_key_env=none"]),
                ("pipeline", "tests.test_editor_tracks:AgenticStub", [])):
            result = runner.invoke(app, ["evaluate", "--editor", editor, "--out", str(root / name), *common, *extra])
            assert result.exit_code == 0, result.output + repr(result.exception)
            runs.append(root / name)
    return runs


def test_runs_record_their_track_and_the_leaderboard_shows_it(three_tracks, tmp_path: Path):
    from ciebench.leaderboard import group_runs

    assert [json.loads((r / "spec.json").read_text())["notes"]["track"] for r in three_tracks] == \
        ["direct", "rewrite", "agentic"]
    (table,) = group_runs(three_tracks)
    assert dict(zip(table.leaderboard["run"], table.leaderboard["track"])) == \
        {"identity": "direct", "rewrite:identity": "rewrite", "agentic-stub": "agentic"}
    out = tmp_path / "board"
    result = runner.invoke(app, ["leaderboard", *map(str, three_tracks), "--out", str(out), "--no-plots", "--no-gallery"])
    assert result.exit_code == 0, result.output
    md = (out / "leaderboard.md").read_text()
    assert "| # | run | track |" in md and "| rewrite:identity | rewrite |" in md and "| agentic-stub | agentic |" in md


def test_tables_can_be_separated_by_track(three_tracks, tmp_path: Path):
    from ciebench.leaderboard import group_runs

    tables = group_runs(three_tracks, by_track=True)
    assert sorted(t.track for t in tables) == ["agentic", "direct", "rewrite"]
    assert all(list(t.leaderboard["track"]) == [t.track] and t.title.endswith(f"track {t.track}") for t in tables)
    assert len({t.slug for t in tables}) == 3
    out = tmp_path / "board"
    result = runner.invoke(app, ["leaderboard", *map(str, three_tracks), "--out", str(out), "--no-plots", "--no-gallery",
                                 "--by-track"])
    assert result.exit_code == 0, result.output
    assert (out / "leaderboard.md").read_text().count("## protocol") == 3


def test_track_of_older_runs_comes_from_the_registered_class(three_tracks, tmp_path: Path):
    import shutil

    from ciebench.leaderboard.runs import load_run

    old = tmp_path / "old"
    shutil.copytree(three_tracks[0], old)
    spec = json.loads((old / "spec.json").read_text())
    spec["notes"].pop("track")
    spec["editor"]["name"] = "cielr"
    (old / "spec.json").write_text(json.dumps(spec))
    assert load_run(old).track == "agentic"
