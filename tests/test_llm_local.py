"""The local transformers back end, through the real from_pretrained path with HF_HUB_OFFLINE=1 and a
tiny random-weight Qwen2.5-VL from the temporary hub cache (tests/support/tiny_qwen.py)."""
from __future__ import annotations

import pytest
from PIL import Image

from ciebench.llm import LLMConfig, PromptTemplate, make_client
from ciebench.llm import local_backend as client_mod
from tests.support.tiny_qwen import ANSWER, publish_tiny_qwen

SCHEMA = {"type": "object", "properties": {"score": {"type": "integer", "enum": [1, 2, 3, 4, 5]}},
          "required": ["score"], "additionalProperties": False}
T = PromptTemplate("local_probe", 1, "Compare the images. {{note}}", system="Be brief.")


@pytest.fixture(scope="module")
def tiny_repo():
    pytest.importorskip("transformers")
    return publish_tiny_qwen()


def local(repo, **kw) -> LLMConfig:
    return LLMConfig(**{"backend": "transformers", "model": repo, "device": "cpu", "max_retries": 1, **kw})


def test_local_backend_generates_validates_caches_and_loads_once(tiny_repo, tmp_path):
    client_mod.release_local_models()
    images = [Image.new("RGB", (90, 70), "red"), Image.new("RGB", (60, 60), "blue")]
    text = make_client(local(tiny_repo, max_tokens=2), tmp_path)
    r = text.complete(T, {"note": "text"}, images=images)
    assert r.ok and r.text == ANSWER * 2 and r.attempts == 1  # greedy: deterministic
    assert r.usage["prompt_tokens"] > 20 and r.usage["completion_tokens"] == 2
    assert text.served_models and text.served_models[0].startswith(tiny_repo + "@")

    structured = make_client(local(tiny_repo, max_tokens=1), tmp_path)
    r = structured.complete(T, {"note": "json"}, images=images, schema=SCHEMA)
    assert r.ok and r.parsed == {"score": 3}
    assert len(client_mod._LOCAL_MODELS) == 1  # both clients share one loaded model

    # the same schema call, cached: no generation at all
    again = make_client(local(tiny_repo, max_tokens=1), tmp_path)
    r2 = again.complete(T, {"note": "json"}, images=images, schema=SCHEMA)
    assert r2.cached and r2.parsed == {"score": 3} and again.stats["requests"] == 0

    # invalid structured output (two JSON objects glued together) is retried, then an error
    bad = make_client(local(tiny_repo, max_tokens=2), tmp_path)
    r3 = bad.complete(T, {"note": "bad json"}, images=images, schema=SCHEMA)
    assert r3.status == "error" and r3.attempts == 2 and "not valid JSON" in r3.error
    assert bad.stats["invalid_replies"] == 2 and bad.stats["requests"] == 2


def test_local_backend_missing_model_is_an_error_not_a_crash(tmp_path):
    client = make_client(LLMConfig(backend="transformers", model="ciebench-tests/not-published", device="cpu"),
                         tmp_path)
    r = client.complete(T, {"note": "x"})
    assert r.status == "error" and "could not load local model" in r.error and r.attempts == 1


@pytest.fixture(scope="module")
def ending_repo():
    pytest.importorskip("transformers")
    return publish_tiny_qwen("ciebench-tests/tiny-qwen2.5-vl-ends", answer_ends=True)


def test_idcs_judge_with_the_local_backend(ending_repo, tmp_path):
    from ciebench.metrics.idcs import IDCSJudge, JudgeConfig, JudgeItem

    cfg = JudgeConfig(name="tiny-local", vlm=local(ending_repo, max_tokens=4, concurrency=1),
                      llm=local(ending_repo, max_tokens=4, concurrency=1))
    judge = IDCSJudge(cfg, cache_dir=tmp_path)
    (v,) = judge.judge([JudgeItem("7", Image.new("RGB", (64, 48), "red"), Image.new("RGB", (64, 48), "green"),
                                  "Remove the red thing.")])
    assert v.status == "ok" and v.score == 3 and v.sentence == ANSWER and v.calls == 2
    assert judge.model_ids()["vlm"] == f"transformers:{ending_repo}"


def test_a_local_reply_cut_off_at_max_tokens_is_reported_as_such(tiny_repo, ending_repo, tmp_path):
    # The same one-token reply: finished by an end token it is "stop", run into the limit it is "length",
    # which the judge refuses to score as a whole description (as for an HTTP judge).
    from ciebench.metrics.idcs import IDCSJudge, JudgeConfig, JudgeItem

    images = [Image.new("RGB", (64, 48), "red")]
    assert make_client(local(ending_repo, max_tokens=1), tmp_path).complete(T, {"note": "a"}, images).finish_reason \
        == "stop"
    assert make_client(local(tiny_repo, max_tokens=1), tmp_path).complete(T, {"note": "b"}, images).finish_reason \
        == "length"
    cfg = JudgeConfig(name="tiny-local", vlm=local(tiny_repo, max_tokens=1, concurrency=1),
                      llm=local(ending_repo, max_tokens=4, concurrency=1))
    (v,) = IDCSJudge(cfg, cache_dir=tmp_path).judge(
        [JudgeItem("7", Image.new("RGB", (64, 48), "red"), Image.new("RGB", (64, 48), "green"), "Remove it.")])
    assert v.score is None and v.failure == "unparsable" and "cut off at max_tokens" in v.error


def test_the_cache_key_tells_a_local_models_placements_apart(tmp_path):
    # "auto" is bfloat16 on a GPU and float32 on a CPU; greedy decoding can differ between them, so a
    # verdict cached on one must not answer for the other (no model is loaded to compute a key).
    def key(**kw) -> str:
        client = make_client(LLMConfig(backend="transformers", model="org/some-vlm", api_key_env=None, **kw), tmp_path)
        return client.prepare(T, {"note": "x"}).key

    cpu32, cpu16 = key(device="cpu", dtype="float32"), key(device="cpu", dtype="bfloat16")
    gpu_auto, gpu16 = key(device="cuda", dtype="auto"), key(device="cuda:1", dtype="bfloat16")
    assert len({cpu32, cpu16, gpu_auto}) == 3
    assert gpu_auto == gpu16  # auto on a GPU is bfloat16, and the GPU's index does not change numerics
    assert key(device="cpu", dtype="auto") == cpu32
