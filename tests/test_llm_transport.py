"""Limits and rules of the LLM client's HTTP layer: where keys go, deadlines, size caps, the request
fields reasoning models need, the response_format fallback and the failure classes."""
from __future__ import annotations

import json
import logging
import time

import pytest

from ciebench.llm import LLMConfig, PromptTemplate, make_client
from tests.support.dribbler import Dribbler
from tests.support.handler_server import QuietHandler, serve_handler
from tests.support.llm_server import error, json_reply, raw, reply, respond, serve_llm

ASK = PromptTemplate("ask", 1, "Question {{q}}", system="Answer briefly.")
SCHEMA = {"type": "object", "properties": {"score": {"type": "integer", "minimum": 1, "maximum": 5}},
          "required": ["score"], "additionalProperties": False}


def cfg(server, **kw) -> LLMConfig:
    base = dict(base_url=server.base_url, model="m", timeout_s=3.0, max_retries=2, backoff_base_s=0.01,
                backoff_max_s=0.05)
    base.update(kw)
    return LLMConfig(**base)


@pytest.fixture
def server():
    with serve_llm() as s:
        yield s


# ------------------------------------------------------------------------------------------ keys
def test_a_custom_base_url_never_receives_a_provider_key_it_was_not_given(server, monkeypatch, tmp_path):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-openai-secret-1")
    monkeypatch.setenv("DASHSCOPE_API_KEY", "sk-dashscope-secret-2")
    server.on(then=reply("fine"))
    r = make_client(cfg(server), tmp_path).complete(ASK, {"q": "a"})
    assert r.ok and "authorization" not in server.requests[-1].headers
    # naming the variable is how a user sends a key to their own server
    r = make_client(cfg(server, api_key_env="OPENAI_API_KEY"), tmp_path).complete(ASK, {"q": "b"})
    assert r.ok and server.requests[-1].headers["authorization"] == "Bearer sk-openai-secret-1"


def test_each_provider_host_gets_its_own_variable():
    assert LLMConfig(model="gpt-4.1").key_env == "OPENAI_API_KEY"
    assert LLMConfig(model="qwen-max", base_url="https://dashscope.aliyuncs.com/compatible-mode/v1").key_env \
        == "DASHSCOPE_API_KEY"
    assert LLMConfig(model="x", base_url="https://my-vllm.example.org/v1").key_env is None
    assert LLMConfig(model="x", base_url="https://my-vllm.example.org/v1", api_key_env="MY_KEY").key_env == "MY_KEY"
    assert LLMConfig(backend="transformers", model="Qwen/x").key_env is None


def test_a_key_over_plain_http_to_another_host_warns(monkeypatch, caplog, tmp_path):
    monkeypatch.setenv("MY_KEY", "sk-abcdef")
    client = make_client(LLMConfig(model="x", base_url="http://judge.example.invalid/v1", api_key_env="MY_KEY"), tmp_path)
    with caplog.at_level(logging.WARNING, logger="ciebench.llm"):
        client.warn_plain_http()
    assert "plain http" in caplog.text and "judge.example.invalid" in caplog.text and "sk-abcdef" not in caplog.text
    caplog.clear()
    local = make_client(LLMConfig(model="x", base_url="http://127.0.0.1:8000/v1", api_key_env="MY_KEY"), tmp_path)
    with caplog.at_level(logging.WARNING, logger="ciebench.llm"):
        local.warn_plain_http()
    assert "plain http" not in caplog.text


def test_redirects_are_refused_so_the_key_never_follows(monkeypatch, tmp_path):
    monkeypatch.setenv("MY_KEY", "sk-redirect-secret")
    with serve_llm() as elsewhere, serve_llm() as server:
        elsewhere.on(then=reply("you should not see this"))
        server.on(then=error(307, headers={"Location": elsewhere.base_url + "/chat/completions"}))
        r = make_client(cfg(server, api_key_env="MY_KEY"), tmp_path).complete(ASK, {"q": "a"})
        assert r.status == "error" and r.failure == "transport" and "redirect" in r.error
        assert r.attempts == 1  # a redirect does not change on retry
        assert elsewhere.count == 0


# ------------------------------------------------------------------------------ deadline and size
@pytest.mark.parametrize("headers_too", [False, True])
def test_a_dribbling_server_cannot_hang_a_call(tmp_path, headers_too):
    d = Dribbler(gap=0.05, headers_too=headers_too)
    try:
        client = make_client(LLMConfig(base_url=d.base_url, model="m", timeout_s=0.6, max_retries=1,
                                       backoff_base_s=0.01), tmp_path)
        t0 = time.monotonic()
        r = client.complete(ASK, {"q": "a"})
        took = time.monotonic() - t0
    finally:
        d.close()
    assert r.status == "error" and r.failure == "transport" and "timed out" in r.error
    assert r.attempts == 2 and took < 2 * 0.6 + 1.0  # two attempts, each cut at its deadline


def test_responses_over_the_size_cap_are_refused(server, tmp_path):
    server.on(then=reply("y" * 20_000))
    r = make_client(cfg(server, max_response_bytes=4096), tmp_path).complete(ASK, {"q": "a"})
    assert r.status == "error" and r.failure == "transport" and "4096-byte cap" in r.error and r.attempts == 1


# -------------------------------------------------------------------------------- request fields
def test_reasoning_models_get_max_completion_tokens_and_no_temperature(server, tmp_path):
    server.on(then=[reply("not json"), json_reply({"score": 3})])
    c = cfg(server, token_limit_field="max_completion_tokens", temperature=None, max_tokens=300)
    r = make_client(c, tmp_path).complete(ASK, {"q": "a"}, schema=SCHEMA)
    assert r.ok and r.parsed == {"score": 3} and server.count == 2
    for req in server.requests:
        assert req.body["max_completion_tokens"] == 300 and "max_tokens" not in req.body
        assert "temperature" not in req.body  # not on the retry either


def test_seed_null_sends_no_seed_on_retries(server, tmp_path):
    server.on(then=[reply("no"), reply("still no"), json_reply({"score": 2})])
    r = make_client(cfg(server, seed=None), tmp_path).complete(ASK, {"q": "a"}, schema=SCHEMA)
    assert r.ok and server.count == 3 and all("seed" not in q.body for q in server.requests)
    # with a seed, the n-th retry resamples with seed + n million at the retry temperature
    server.reset(rules=True)
    server.on(then=[reply("no"), json_reply({"score": 2})])
    r = make_client(cfg(server, seed=7, retry_temperature=0.5), tmp_path).complete(ASK, {"q": "b"}, schema=SCHEMA)
    assert [q.body["seed"] for q in server.requests] == [7, 1_000_007]
    assert [q.body["temperature"] for q in server.requests] == [0.0, 0.5]
    assert r.seed == 1_000_007 and r.temperature == 0.5


@pytest.mark.parametrize("field,value", [("temperature", 2.5), ("temperature", -0.1), ("temperature", True),
                                         ("retry_temperature", 3), ("temperature", "0.2")])
def test_temperatures_are_validated_when_the_config_is_built(field, value):
    with pytest.raises(ValueError, match=field):
        LLMConfig(model="m", **{field: value})


def test_unknown_token_limit_field_is_refused():
    with pytest.raises(ValueError, match="token_limit_field"):
        LLMConfig(model="m", token_limit_field="max_new_tokens")


# --------------------------------------------------------------------------- response_format fallback
def test_a_provider_that_rejects_response_format_falls_back_to_prompted_json(server, tmp_path, caplog):
    def answer(req):
        if req.body.get("response_format") is not None:
            return error(400, "response_format json_schema is not supported for this model")
        assert "JSON schema" in req.text
        return {"score": 4}

    server.on(then=respond(answer))
    client = make_client(cfg(server), tmp_path)
    with caplog.at_level(logging.WARNING, logger="ciebench.llm"):
        first = client.complete(ASK, {"q": "a"}, schema=SCHEMA)
        second = client.complete(ASK, {"q": "b"}, schema=SCHEMA)
    assert first.ok and first.parsed == {"score": 4} and first.response_format == "prompt"
    assert second.ok and second.response_format == "prompt"
    assert server.count == 3  # one rejected request, then each call asks in the prompt directly
    assert caplog.text.count("rejected response_format") == 1
    # the reply is still validated locally against the schema
    server.reset(rules=True)
    server.on(then=json_reply({"score": 9}))
    bad = client.complete(ASK, {"q": "c"}, schema=SCHEMA)
    assert bad.status == "error" and bad.failure == "unparsable"


def test_a_400_that_is_not_about_response_format_stays_an_error(server, tmp_path):
    server.on(then=error(400, "image too large"))
    r = make_client(cfg(server), tmp_path).complete(ASK, {"q": "a"}, schema=SCHEMA)
    assert r.status == "error" and r.failure == "request_rejected" and "image too large" in r.error
    assert r.http_status == 400 and r.response_format == "json_schema"


# ----------------------------------------------------------------------------------- failure classes
def _chat(message: dict, finish: str = "stop", model: str = "judge-2026-01-01") -> str:
    return json.dumps({"model": model, "choices": [{"index": 0, "message": {"role": "assistant", **message},
                                                    "finish_reason": finish}],
                       "usage": {"prompt_tokens": 3, "completion_tokens": 1}})


@pytest.mark.parametrize("action,failure,attempts", [
    (error(429, retry_after=0.01), "rate_limit", 3),
    (error(503), "server_error", 3),
    (raw("<html>oops</html>"), "server_error", 3),
    (error(401, "bad key"), "request_rejected", 1),
    (raw(_chat({"content": None, "refusal": "I can't help with that."})), "content_filter", 1),
    (raw(_chat({"content": ""}, finish="content_filter")), "content_filter", 1),
    (reply("a poem"), "unparsable", 3),
    (json_reply({"score": 5}), "out_of_range", 3),
])
def test_every_failure_is_classified_and_never_an_answer(server, tmp_path, action, failure, attempts):
    server.on(then=action)
    r = make_client(cfg(server), tmp_path).complete(
        ASK, {"q": "a"}, schema=SCHEMA, validate=lambda v: "5 is reserved" if v["score"] == 5 else None)
    assert r.status == "error" and r.parsed is None and r.failure == failure and r.attempts == attempts
    assert r.provider_host == "127.0.0.1"
    if failure == "content_filter":
        assert r.served_model == "judge-2026-01-01"


def test_successful_replies_carry_their_provenance(server, tmp_path):
    server.on(then=json_reply({"score": 2}, model="gpt-x-2026-05-01"))
    client = make_client(cfg(server, seed=3), tmp_path)
    r = client.complete(ASK, {"q": "a"}, schema=SCHEMA)
    assert (r.served_model, r.finish_reason, r.provider_host, r.http_status, r.seed, r.temperature,
            r.response_format) == ("gpt-x-2026-05-01", "stop", "127.0.0.1", 200, 3, 0.0, "json_schema")
    again = client.complete(ASK, {"q": "a"}, schema=SCHEMA)  # from the cache: same provenance
    assert again.cached and (again.served_model, again.seed, again.finish_reason) == ("gpt-x-2026-05-01", 3, "stop")


# ------------------------------------------------------------------------- text order and lookup
def test_text_first_puts_the_text_before_the_images_and_keys_the_cache_apart(server, tmp_path):
    from PIL import Image

    server.on(then=reply("ok"))
    client = make_client(cfg(server), tmp_path)
    im = Image.new("RGB", (8, 8), "red")
    assert client.complete(ASK, {"q": "a"}, [im, im]).ok
    assert client.complete(ASK, {"q": "a"}, [im, im], text_first=True).ok
    assert server.count == 2  # a different request, not a cache hit
    kinds = [[part["type"] for part in q.body["messages"][-1]["content"]] for q in server.requests]
    assert kinds == [["image_url", "image_url", "text"], ["text", "image_url", "image_url"]]


def test_lookup_answers_from_the_cache_without_sending(server, tmp_path):
    server.on(then=json_reply({"score": 1}))
    client = make_client(cfg(server), tmp_path)
    assert client.lookup(ASK, {"q": "a"}, schema=SCHEMA) is None and server.count == 0
    client.complete(ASK, {"q": "a"}, schema=SCHEMA)
    hit = client.lookup(ASK, {"q": "a"}, schema=SCHEMA)
    assert hit is not None and hit.cached and hit.parsed == {"score": 1} and server.count == 1
    assert client.stats["calls"] == 1


def test_text_parts_between_images_keep_their_place(server, tmp_path):
    from PIL import Image

    server.on(then=reply("ok"))
    client = make_client(cfg(server), tmp_path)
    a, b = Image.new("RGB", (8, 8), "red"), Image.new("RGB", (8, 8), "blue")
    assert client.complete(ASK, {"q": "a"}, ["Input image:", a, "Edited image:", b], text_first=True).ok
    content = server.requests[-1].body["messages"][-1]["content"]
    assert [p["type"] for p in content] == ["text", "text", "image_url", "text", "image_url"]
    assert [p.get("text") for p in content if p["type"] == "text"] == ["Question a", "Input image:", "Edited image:"]
    # a different label is a different request; the same one comes from the cache
    assert client.complete(ASK, {"q": "a"}, ["Source:", a, "Edited image:", b], text_first=True).ok
    assert client.complete(ASK, {"q": "a"}, ["Input image:", a, "Edited image:", b], text_first=True).cached
    assert server.count == 2


# ------------------------------------------------------------------ GET and multipart (the same rules)
def test_get_follows_the_same_deadline_cap_and_redirect_rules():
    from ciebench.llm.transport import TransportError, get

    class Files(QuietHandler):
        def do_GET(self):
            if self.path.endswith("/moved"):
                self.reply(302, headers={"Location": "http://127.0.0.1:1/elsewhere"})
                return
            self.reply(200, b"z" * (10_000 if self.path.endswith("/big") else 10))

    d = Dribbler(gap=0.05, headers_too=True)
    try:
        with serve_handler(Files) as base:
            assert get(base + "/small", {}, deadline_s=2.0, max_bytes=1024).body == b"z" * 10
            with pytest.raises(TransportError) as redirect:
                get(base + "/moved", {}, deadline_s=2.0, max_bytes=1024)
            assert redirect.value.kind == "redirect"
            with pytest.raises(TransportError) as big:
                get(base + "/big", {}, deadline_s=2.0, max_bytes=1024)
            assert big.value.kind == "too_large"
        t0 = time.monotonic()
        with pytest.raises(TransportError) as slow:
            get(d.base_url + "/files/x", {}, deadline_s=0.5, max_bytes=1 << 20)
        assert slow.value.kind == "timeout" and time.monotonic() - t0 < 1.5
    finally:
        d.close()


def test_multipart_bodies_parse_back_with_the_standard_library():
    """The encoder's output, read by an independent multipart parser (email), gives back every field
    and file byte for byte."""
    from email.parser import BytesParser
    from email.policy import HTTP

    from ciebench.llm.transport import encode_multipart

    data = bytes(range(256)) * 3
    body, content_type = encode_multipart({"model": "gpt-image-1", "prompt": "make it blue"},
                                          {"image": ("image.png", data, "image/png")})
    message = BytesParser(policy=HTTP).parsebytes(f"Content-Type: {content_type}\r\n\r\n".encode() + body)
    parts = {p.get_param("name", header="content-disposition"): p for p in message.iter_parts()}
    assert parts["model"].get_content() == "gpt-image-1" and parts["prompt"].get_content() == "make it blue"
    assert parts["image"].get_filename() == "image.png" and parts["image"].get_content_type() == "image/png"
    assert parts["image"].get_payload(decode=True) == data
