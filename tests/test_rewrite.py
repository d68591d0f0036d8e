"""`rewrite:EDITOR` with a scripted LLM server (tests/support/llm_server.py)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from ciebench.cli import app
from ciebench.editor import EditRequest, EditResult, Editor
from ciebench.editor_config import build_editor

from tests.support.fixtures_diffusers_editors import QWEN_EDIT_2511, diffusers_editor_hub, small_working_area  # noqa: F401
from tests.support.fixtures_editors import publish_tiny_instruct_pix2pix
from tests.support.llm_server import error, json_reply, respond, serve_llm

runner = CliRunner()
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CIEBENCH_CACHE", str(tmp_path / "cache"))


def _explicit(req):
    instruction = req.text.split("The editing instruction is:\n", 1)[1].split("\n", 1)[0]
    return json_reply({"instruction": f"EXPLICIT: {instruction[:30]}"})


def _rewriter_args(server) -> list[str]:
    return ["--editor-arg", f"rewriter_base_url={server.base_url}", "--editor-arg", "rewriter_api_key_env=none",
            "--editor-arg", "rewriter_model=scripted"]


def test_rewrite_identity_end_to_end_trace_holds_both_instructions_and_reruns_from_cache(tmp_path: Path):
    with serve_llm(latency_s=0.0) as server:
        server.on(then=respond(_explicit))
        args = ["--editor", "rewrite:identity", "--dataset", "mini", "--limit", "2", "--metrics", "psnr",
                *_rewriter_args(server)]
        result = runner.invoke(app, ["evaluate", "--out", str(tmp_path / "a"), *args])
        assert result.exit_code == 0, result.output + repr(result.exception)
        assert server.count == 2 and not server.problems
        assert all(len(r.image_urls) == 1 for r in server.requests)  # the source image goes with the instruction
        spec = json.loads((tmp_path / "a" / "spec.json").read_text())
        assert spec["notes"]["track"] == "rewrite" and spec["editor"]["name"] == "rewrite:identity"
        assert spec["editor"]["rewriter"]["template"] == "rewrite_instruction@v1"
        assert spec["editor"]["config"]["rewriter_model"] == "scripted"
        traces = [json.loads(p.read_text()) for p in sorted((tmp_path / "a" / "traces").glob("*.json"))]
        for trace in traces:
            assert trace["rewritten_instruction"] == f"EXPLICIT: {trace['instruction'][:30]}"
            assert trace["instruction"] in server.requests[0].text or trace["instruction"] in server.requests[1].text
        again = runner.invoke(app, ["evaluate", "--out", str(tmp_path / "b"), *args])
        assert again.exit_code == 0 and server.count == 2  # rewrites come from the cache


def test_rewrite_instructpix2pix_edits_with_the_rewritten_instruction():
    publish_tiny_instruct_pix2pix()
    source = Image.fromarray(np.random.default_rng(0).integers(0, 255, (48, 64, 3), dtype=np.uint8))
    with serve_llm(latency_s=0.0) as server:
        server.on("which thing keeps coffee hot", then=json_reply({"instruction": "make the mug red"}))
        server.on("impossible", then=error(400, "bad request"))
        wrapped = build_editor("rewrite:instructpix2pix", ["steps=2", "resolution=64", f"rewriter_base_url={server.base_url}",
                                                           "rewriter_api_key_env=none", "rewriter_model=m"])
        assert wrapped.track == "rewrite" and wrapped.inner.config.steps == 2
        out, failed = wrapped.edit([EditRequest("a", source, "which thing keeps coffee hot? paint it", seed=3),
                                    EditRequest("b", source, "impossible", seed=4)])
        # alone, like `out` (a batch of one ok sample): batched diffusion may differ by rounding
        reseeded = wrapped.edit([EditRequest("c", source, "which thing keeps coffee hot? paint it", seed=5)])[0]
    direct = build_editor("instructpix2pix", ["steps=2", "resolution=64"]).edit(
        [EditRequest("a", source, "make the mug red", seed=3)])[0]
    assert out.status == "ok" and np.array_equal(np.asarray(out.image), np.asarray(direct.image))
    # the request's seed reaches the inner editor: same rewrite, another seed, another image
    assert reseeded.trace["rewritten_instruction"] == "make the mug red"
    assert not np.array_equal(np.asarray(reseeded.image), np.asarray(out.image))
    assert out.trace["instruction"] == "which thing keeps coffee hot? paint it"
    assert out.trace["rewritten_instruction"] == "make the mug red" and "working_size" in out.trace["inner"]
    assert failed.status == "error" and "sample b: the rewriter failed" in failed.error and failed.image is None


def _spec(editor) -> "RunSpec":
    from ciebench.spec import RunSpec

    return RunSpec(editor=editor.describe(), dataset={}, seeds=(0,), protocol={}, metrics=(), judge=None)


def test_the_rewriter_is_part_of_the_config_hash():
    def config_hash(*args: str) -> str:
        return _spec(build_editor("rewrite:identity", list(args))).editor_config_hash

    assert config_hash("rewriter_model=a") == config_hash("rewriter_model=a")
    assert config_hash("rewriter_model=a") != config_hash("rewriter_model=b")
    assert config_hash() != config_hash("rewriter_with_image=false")
    assert build_editor("identity").describe()["version"] != build_editor("rewrite:identity").describe()["version"]


def test_rewrite_declares_the_wrapped_editors_assets_and_the_rewriters():
    """prefetch / doctor / editor_models see both halves: the wrapped editor's pipeline and the rewriter
    LLM (a local model's hub repo, or the endpoint its requests go to)."""
    from ciebench.prefetch import Configuration, configuration_requirements

    local = ("rewriter_backend=transformers", "rewriter_model=Qwen/Qwen2.5-VL-3B-Instruct")
    reqs, notes = configuration_requirements(Configuration(editors=("rewrite:instructpix2pix",), editor_args=local,
                                                           dataset="mini", metrics=("psnr",)))
    assert [(r.kind, r.ref, r.layout, r.used_by) for r in reqs] == [
        ("hub", "timbrooks/instruct-pix2pix", "diffusers", "editor instructpix2pix"),
        ("hub", "Qwen/Qwen2.5-VL-3B-Instruct", "transformers", "editor rewrite:instructpix2pix: rewriter")]
    assert notes == []
    http = build_editor("rewrite:identity", ["rewriter_base_url=http://127.0.0.1:9/v1", "rewriter_model=m"])
    assert [(r.kind, r.ref, r.detail) for r in http.required_assets()] == [("endpoint", "http://127.0.0.1:9/v1", "m")]
    # a wrapped editor that declares nothing is still reported as such
    _, notes = configuration_requirements(Configuration(
        editors=("rewrite:tests.support.editors_for_tests:NoisyEditor",), dataset="mini", metrics=("psnr",)))
    assert len(notes) == 1 and "declares no assets" in notes[0]


def test_rewrite_takes_the_cases_its_editor_takes_and_hands_multi_image_cases_over_whole(diffusers_editor_hub,
                                                                                          small_working_area):
    """`qwen-image-edit` (2511) declares multi_image per instance (its pipeline reads a list of reference
    images); wrapped, a two-image case must not be recorded unsupported, and the pipeline must get both
    images: the result is the direct editor's on the rewritten instruction (same seed, same images)."""
    from ciebench.turns import MULTI_IMAGE, unsupported_reason

    diffusers_editor_hub(QWEN_EDIT_2511)
    rng = np.random.default_rng(3)
    source, reference = (Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)) for _ in range(2))
    with serve_llm(latency_s=0.0) as server:
        server.on("combine them", then=json_reply({"instruction": "put the cup of image 2 on the table"}))
        llm = [f"rewriter_base_url={server.base_url}", "rewriter_api_key_env=none", "rewriter_model=m"]
        wrapped = build_editor("rewrite:qwen-image-edit", ["steps=2", *llm])
        assert unsupported_reason(wrapped, 2, 1) is None and MULTI_IMAGE in wrapped.describe()["supports"]
        # per instance: the first release (preset base, one-image pipeline) still refuses such cases
        assert "does not declare multi_image" in unsupported_reason(build_editor("rewrite:qwen-image-edit", llm,
                                                                                 preset="base"), 2, 1)
        pipe = wrapped.inner._pipeline()
        seen, original = [], type(pipe).__call__
        type(pipe).__call__ = lambda self, *a, **k: (seen.append(k["image"]), original(self, *a, **k))[1]
        try:
            out = wrapped.edit([EditRequest("m", source, "combine them", seed=4, images=[source, reference])])[0]
        finally:
            type(pipe).__call__ = original
    assert out.status == "ok" and out.trace["rewritten_instruction"] == "put the cup of image 2 on the table"
    assert len(seen) == 1 and [np.asarray(im).tolist() for im in seen[0]] == [np.asarray(source).tolist(),
                                                                              np.asarray(reference).tolist()]
    direct = build_editor("qwen-image-edit", ["steps=2"]).edit(
        [EditRequest("m", source, "put the cup of image 2 on the table", seed=4, images=[source, reference])])[0]
    assert np.array_equal(np.asarray(out.image), np.asarray(direct.image))


class WholeCase(Editor):
    """Takes a multi-turn case at once (`handles_turns`) and records the turns it was given."""

    name = "whole-case"
    supports = frozenset({"multi_image", "multi_turn"})
    handles_turns = True
    seen: list[EditRequest] = []

    def edit(self, requests):
        WholeCase.seen.extend(requests)
        return [EditResult(image=r.images[-1]) for r in requests]


def test_rewrite_of_an_editor_that_handles_turns_rewrites_every_turn():
    """The runner hands such an editor one request holding every turn; it reads `turns`, so each turn is
    rewritten (not only the first, which is also `instruction`)."""
    from ciebench.rewrite import rewrite_editor_class
    from ciebench.turns import drive_turns, unsupported_reason

    cls = rewrite_editor_class(WholeCase)
    assert cls.supports == WholeCase.supports and cls.handles_turns is True
    source, other = Image.new("RGB", (8, 8), (1, 2, 3)), Image.new("RGB", (8, 8), (4, 5, 6))
    WholeCase.seen.clear()
    with serve_llm(latency_s=0.0) as server:
        server.on(then=respond(_explicit))
        wrapped = cls(rewriter_base_url=server.base_url, rewriter_api_key_env="none", rewriter_model="m")
        assert unsupported_reason(wrapped, 2, 3) is None
        outcome = drive_turns(wrapped, EditRequest("c", source, "first", images=[source, other]),
                              ["first", "second", "third"], wrapped.edit)
    assert server.count == 3 and len(WholeCase.seen) == 1
    given = WholeCase.seen[0]
    assert given.turns == ["EXPLICIT: first", "EXPLICIT: second", "EXPLICIT: third"]
    assert given.instruction == "EXPLICIT: first" and given.images == [source, other]
    assert outcome.final.status == "ok" and outcome.final.image is other
    assert [t["rewritten_instruction"] for t in outcome.final.trace["turns"]] == given.turns


def test_the_wrapped_editors_resolved_settings_are_part_of_the_config_hash(monkeypatch):
    """README: a diffusers setting changed by --editor-arg or in the settings table changes the config
    hash. The wrapper's own config holds the inner options as given (steps=None: from the table), so a
    table edit must reach the hash through the inner editor's resolved config."""
    import copy

    from ciebench.baselines import diffusers_editors
    from ciebench.io import stable_hash
    from ciebench.verify import FAIL, PASS, check_spec

    llm = ["rewriter_api_key_env=none", "rewriter_model=m", "rewriter_base_url=http://127.0.0.1:9/v1"]

    def config_hash() -> str:
        return _spec(build_editor("rewrite:qwen-image-edit", llm)).editor_config_hash

    at_table = config_hash()
    assert at_table == config_hash()
    table = copy.deepcopy(diffusers_editors.settings_table())
    assert table["qwen-image-edit-2511"]["settings"]["steps"]["value"] != 50
    table["qwen-image-edit-2511"]["settings"]["steps"]["value"] = 50
    monkeypatch.setattr(diffusers_editors, "settings_table", lambda: table)
    edited = build_editor("rewrite:qwen-image-edit", llm)
    assert edited.inner.config.steps == 50 and edited.config.steps is None
    assert config_hash() != at_table and config_hash() == config_hash()

    # a run folder recorded before (hash of the wrapper's own class, version and config) still verifies;
    # any other recorded hash does not
    spec = _spec(edited).to_dict()
    assert check_spec(spec, {}).verdict == PASS
    old = stable_hash({k: spec["editor"][k] for k in ("class", "version", "config")})
    assert old != spec["editor_config_hash"]
    assert check_spec({**spec, "editor_config_hash": old}, {}).verdict == PASS
    assert check_spec({**spec, "editor_config_hash": "0" * 64}, {}).verdict == FAIL
