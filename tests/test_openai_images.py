"""`openai-images` against a scripted local /v1/images/edits server."""
from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from typer.testing import CliRunner

from ciebench.cli import app
from ciebench.editor import EditRequest

from tests.support.images_server import Action, error, image_reply, png, refusal, serve_images, url_reply

runner = CliRunner()
KEY = "sk-test-0123456789abcdef"


@pytest.fixture(autouse=True)
def cache_and_key(tmp_path, monkeypatch):
    monkeypatch.setenv("CIEBENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("CIEB_IMAGES_KEY", KEY)


def _editor(server, **options):
    from ciebench.baselines.openai_images import OpenAIImagesEditor

    return OpenAIImagesEditor(base_url=server.base_url, api_key_env="CIEB_IMAGES_KEY", backoff_base_s=0.001,
                              **options)


def _request(sample_id="a", size=(40, 30), seed=0, mask=None):
    image = Image.fromarray(np.random.default_rng(seed).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))
    return EditRequest(sample_id, image, f"edit {sample_id}", seed=seed, mask=mask)


def test_evaluate_end_to_end_multipart_request_and_a_rerun_elsewhere_sends_nothing(tmp_path: Path):
    with serve_images() as server:
        server.default = image_reply((250, 0, 0), size=(64, 64), usage={"input_tokens": 100, "output_tokens": 1000})
        args = ["--editor", "openai-images", "--dataset", "mini", "--limit", "2", "--metrics", "psnr",
                "--editor-arg", f"base_url={server.base_url}", "--editor-arg", "api_key_env=CIEB_IMAGES_KEY",
                "--editor-arg", "model=gpt-image-1", "--editor-arg", "size=1024x1024", "--editor-arg", "quality=low",
                "--editor-arg", "price_per_image=0.01", "--editor-arg", "price_per_1m_output_tokens=40"]
        first = runner.invoke(app, ["evaluate", "--out", str(tmp_path / "a"), *args])
        assert first.exit_code == 0, first.output + repr(first.exception)
        assert server.count == 2 and not server.problems
        req = server.requests[0]
        assert req.fields == {"model": "gpt-image-1", "prompt": req.fields["prompt"], "n": "1", "size": "1024x1024",
                              "quality": "low"}
        assert req.headers["Authorization"] == f"Bearer {KEY}" and "mask" not in req.files
        sent = Image.open(io.BytesIO(req.files["image"]))
        assert sent.format == "PNG" and sent.size == (512, 512)
        trace = json.loads(next((tmp_path / "a" / "traces").glob("*.json")).read_text())
        assert trace["cached"] is False and trace["cost"] == pytest.approx(0.01 + 1000 / 1e6 * 40)
        with Image.open(next((tmp_path / "a" / "images").glob("*.png"))) as out:
            assert out.size == (512, 512) and out.getpixel((5, 5)) == (250, 0, 0)

        second = runner.invoke(app, ["evaluate", "--out", str(tmp_path / "b"), *args])
        assert second.exit_code == 0, second.output
        assert server.count == 2  # every answer came from the content-hash cache
        assert json.loads(next((tmp_path / "b" / "traces").glob("*.json")).read_text())["cached"] is True
    written = [p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()]
    assert not any(KEY.encode() in data for data in written)  # not in runs, traces, caches


def test_retries_on_429_and_5xx_then_succeeds_and_stops_on_other_errors():
    with serve_images() as server:
        server.script(error(429, "slow down", retry_after=0.01), error(503, "busy"), error(500), image_reply())
        out = _editor(server).edit([_request()])[0]
        assert out.status == "ok" and server.count == 4 and out.trace["attempts"] == 4
        server.script(error(400, "bad size", code="invalid_value"))
        bad = _editor(server).edit([_request(seed=1)])[0]
        assert bad.status == "error" and "HTTP 400" in bad.error and "bad size" in bad.error and server.count == 5
        server.script(error(502))
        gave_up = _editor(server, max_retries=2).edit([_request(seed=2)])[0]
        assert gave_up.status == "error" and "after 3 attempts" in gave_up.error and server.count == 8


def test_a_refusal_is_its_own_status_never_an_image(tmp_path: Path):
    with serve_images() as server:
        server.script(refusal())
        out = _editor(server).edit([_request()])[0]
        assert out.status == "refused" and out.image is None and "safety system" in out.error
        run = tmp_path / "run"
        result = runner.invoke(app, ["evaluate", "--editor", "openai-images", "--dataset", "mini", "--limit", "1",
                                     "--metrics", "psnr", "--out", str(run), "--editor-arg", f"base_url={server.base_url}",
                                     "--editor-arg", "api_key_env=CIEB_IMAGES_KEY"])
        assert result.exit_code == 1, result.output  # no sample succeeded: the exit code says so
        record = json.loads(next((run / "records").glob("*.json")).read_text())
        assert record["status"] == "refused" and not (run / "images").exists()
        assert pd.read_csv(run / "samples.csv")["status"].tolist() == ["refused"]


def test_mask_is_sent_as_documented_alpha_zero_where_the_edit_may_happen():
    region = np.zeros((30, 40), dtype=np.uint8)
    region[5:15, 10:30] = 255
    with serve_images() as server:
        editor = _editor(server, use_mask=True)
        assert editor.oracle_mask is True
        out = editor.edit([_request(mask=Image.fromarray(region, "L"))])[0]
        assert out.status == "ok" and out.trace["mask_sent"] is True
        mask = Image.open(io.BytesIO(server.requests[-1].files["mask"]))
        assert mask.mode == "RGBA" and mask.size == (40, 30)
        alpha = np.asarray(mask)[..., 3]
        assert np.array_equal(alpha == 0, region > 0) and set(np.unique(alpha)) == {0, 255}
        with pytest.raises(ValueError, match="sample a: use_mask=true"):
            editor.edit([_request()])


def test_the_key_goes_only_to_the_configured_host():
    with serve_images() as api, serve_images() as other:
        other.files_route["/img.png"] = png((0, 0, 255))
        api.script(url_reply(other.base_url.replace("/v1", "/img.png")))
        out = _editor(api).edit([_request()])[0]
        assert out.status == "ok" and np.asarray(out.image)[0, 0].tolist() == [0, 0, 255]
        assert api.requests[-1].headers["Authorization"] == f"Bearer {KEY}"
        assert [r.path for r in other.requests] == ["/img.png"] and "Authorization" not in other.requests[0].headers
        # a redirect is not followed: the key would go with it
        api.script(Action(307, b"", {"Location": other.base_url + "/images/edits"}))
        redirected = _editor(api).edit([_request(seed=5)])[0]
        assert redirected.status == "error" and len(other.requests) == 1


def test_max_cost_stops_sending_requests():
    with serve_images() as server:
        editor = _editor(server, price_per_image=0.5, max_cost=1.0, concurrency=1)
        results = editor.edit([_request(str(i), seed=i) for i in range(3)])
        assert [r.status for r in results] == ["ok", "ok", "error"] and "max_cost reached" in results[2].error
        assert server.count == 2 and editor.stats["cost"] == pytest.approx(1.0)


def test_config_rejects_a_key_in_place_of_a_variable_name():
    from ciebench.baselines.openai_images import OpenAIImagesEditor

    with pytest.raises(ValueError, match="NAME of an environment variable"):
        OpenAIImagesEditor(api_key_env="sk-abc-def")


def test_requests_share_the_clients_deadline_and_size_cap(monkeypatch):
    """openai-images sends through the same bounded transport as the LLM client: a server that dribbles
    its reply is cut at `timeout_s`, and a reply over the size cap fails without a retry."""
    import time

    from ciebench.baselines import openai_images
    from tests.support.dribbler import Dribbler

    d = Dribbler(gap=0.05, headers_too=True)
    try:
        from ciebench.baselines.openai_images import OpenAIImagesEditor

        editor = OpenAIImagesEditor(base_url=d.base_url, api_key_env="CIEB_IMAGES_KEY", backoff_base_s=0.001,
                                    timeout_s=0.5, max_retries=1)
        t0 = time.monotonic()
        slow = editor.edit([_request(seed=11)])[0]
        assert slow.status == "error" and "timed out" in slow.error and time.monotonic() - t0 < 2 * 0.5 + 1.0
    finally:
        d.close()
    with serve_images() as api:
        api.script(image_reply(size=(256, 256)))
        capped = _editor(api, max_retries=3)
        monkeypatch.setattr(openai_images, "MAX_REPLY_BYTES", 64)
        big = capped.edit([_request(seed=12)])[0]
        assert big.status == "error" and "64-byte cap" in big.error and api.count == 1
