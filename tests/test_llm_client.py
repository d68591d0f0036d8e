"""The LLM / VLM client layer against a real HTTP server on 127.0.0.1 (tests/support/llm_server.py)."""
from __future__ import annotations

import json
import logging
import time

import pytest
from PIL import Image

from ciebench.llm import (LLMCall, LLMConfig, PromptError, PromptTemplate, get_template, list_templates,
                          load_template_file, make_client, parse_json_reply)
from tests.support.handler_server import QuietHandler, serve_handler
from tests.support.llm_server import drop, error, hang, json_reply, raw, reply, respond, serve_llm

SCHEMA = {"type": "object", "properties": {"score": {"type": "integer", "enum": [1, 2, 3, 4, 5]}},
          "required": ["score"], "additionalProperties": False}
ASK = PromptTemplate("ask", 1, "Question {{i}}: {{q}}", system="Answer briefly.")


@pytest.fixture
def server():
    with serve_llm() as s:
        yield s


def http_config(server, **kw) -> LLMConfig:
    base = dict(base_url=server.base_url, model="test-model", api_key_env=None, timeout_s=2.0, max_retries=3,
                backoff_base_s=0.01, backoff_max_s=0.5)
    base.update(kw)
    return LLMConfig(**base)


def img(color, size=(24, 16)) -> Image.Image:
    return Image.new("RGB", size, color)


# ------------------------------------------------------------------------------------------ prompts
def test_render_is_explicit_single_pass_and_strict():
    t = PromptTemplate("t", 1, "A {{a}} B {{ b }} {c} {a.__class__}")
    out = t.render(a="{{b}} {0.__class__} {x}", b=2)
    assert out == "A {{b}} {0.__class__} {x} B 2 {c} {a.__class__}"  # values never re-expanded
    with pytest.raises(PromptError, match="missing"):
        t.render(a=1)
    with pytest.raises(PromptError, match="unexpected"):
        t.render(a=1, b=2, zzz=3)
    assert t.variables == {"a", "b"}
    assert PromptTemplate("t", 2, t.text).hash != t.hash
    assert PromptTemplate("t", 1, t.text + " ").hash != t.hash


def test_packaged_templates_and_template_files(tmp_path):
    assert {"idcs_describe@v1", "idcs_score@v1"} <= set(list_templates())
    describe = get_template("idcs_describe")
    assert describe.variables == frozenset() and "first image" in describe.text and describe.system
    score = get_template("idcs_score", 1)
    assert score.variables == {"instruction", "description"} and '{"score": N}' in score.text
    with pytest.raises(PromptError):
        get_template("idcs_score", 99)
    f = tmp_path / "mine.v3.txt"
    f.write_text("[system]\nBe terse.\n[user]\nSay {{x}}.\n")
    t = load_template_file(f)
    assert (t.name, t.version, t.system, t.render(x="hi")) == ("mine", 3, "Be terse.", "Say hi.")


def test_parse_json_reply():
    assert parse_json_reply(' {"score": 2} ') == {"score": 2}
    assert parse_json_reply('```json\n{"score": 2}\n```') == {"score": 2}
    # a key named twice is ambiguous (json.loads alone would keep the last value)
    for bad in ('score: 2', '{"score": NaN}', '{"score": 2} trailing', "``` {} ", '{"score": 1, "score": 5}',
                '{"a": {"score": 1, "score": 5}}'):
        with pytest.raises(ValueError):
            parse_json_reply(bad)


def test_config_is_json_able_and_rejects_keys_as_names():
    c = LLMConfig(model="m", base_url="http://localhost:8000/v1")
    assert LLMConfig.from_dict(json.loads(json.dumps(c.to_dict()))) == c
    assert c.model_id == "openai:m@http://localhost:8000/v1"
    assert LLMConfig(backend="transformers").model == "Qwen/Qwen2.5-VL-7B-Instruct"
    with pytest.raises(ValueError, match="NAME"):
        LLMConfig(api_key_env="sk-abc-123")
    with pytest.raises(ValueError):
        LLMConfig.from_dict({"model": "m", "api_key": "x"})
    with pytest.raises(ValueError):
        LLMConfig(backend="nope")


# ------------------------------------------------------------------------------------- requests
def test_request_shape_images_in_order_and_accounting(server, tmp_path):
    server.on(then=reply("A red cup was replaced by a blue cup."))
    client = make_client(http_config(server, price_per_1k_input=1.0, price_per_1k_output=2.0, seed=7), tmp_path)
    r = client.complete(ASK, {"i": 1, "q": "what changed?"}, images=[img("red"), img("blue", (8, 8))])
    assert r.ok and r.text.startswith("A red cup") and r.parsed == r.text and r.attempts == 1 and not r.cached
    assert server.problems == []
    req = server.requests[0]
    body = req.body
    assert body["model"] == "test-model" and body["temperature"] == 0.0 and body["seed"] == 7
    assert body["max_tokens"] == 512 and "response_format" not in body
    assert body["messages"][0] == {"role": "system", "content": "Answer briefly."}
    parts = body["messages"][1]["content"]
    assert [p["type"] for p in parts] == ["image_url", "image_url", "text"]
    assert parts[2]["text"] == "Question 1: what changed?"
    sent = req.images()
    assert [im.size for im in sent] == [(24, 16), (8, 8)]
    assert sent[0].convert("RGB").getpixel((0, 0)) == (255, 0, 0)
    assert sent[1].convert("RGB").getpixel((0, 0)) == (0, 0, 255)
    assert "authorization" not in req.headers  # api_key_env=None: no key sent
    usage = r.usage
    assert usage["prompt_tokens"] > 0 and usage["completion_tokens"] > 0
    expected = usage["prompt_tokens"] / 1000 + 2 * usage["completion_tokens"] / 1000
    assert usage["cost"] == pytest.approx(expected)
    s = client.stats
    assert s["requests"] == 1 and s["calls"] == 1 and s["cost"] == pytest.approx(expected)
    assert s["prompt_tokens"] == usage["prompt_tokens"] and client.served_models == ["test-model"]


def test_schema_sent_validated_and_invalid_replies_retried(server, tmp_path):
    server.on(then=[reply("Score: 4"), json_reply({"score": 9}), json_reply({"score": 4})])
    client = make_client(http_config(server), tmp_path)
    r = client.complete(ASK, {"i": 2, "q": "rate"}, schema=SCHEMA)
    assert r.ok and r.parsed == {"score": 4} and r.attempts == 3
    rf = server.requests[0].response_format
    assert rf == {"type": "json_schema", "json_schema": {"name": "ask", "schema": SCHEMA, "strict": True}}
    # an invalid reply is resampled: retry_temperature and a seed n million above (deterministic sequence)
    assert [q.body["temperature"] for q in server.requests] == [0.0, 0.7, 0.7]
    assert [q.body["seed"] for q in server.requests] == [0, 1_000_000, 2_000_000]
    s = client.stats
    assert s["invalid_replies"] == 2 and s["retries"] == 2 and s["failures"] == 0


def test_invalid_replies_exhaust_retries_then_error_not_cached(server, tmp_path):
    server.on(then=json_reply({"score": 9}))
    client = make_client(http_config(server, max_retries=2), tmp_path)
    r = client.complete(ASK, {"i": 3, "q": "rate"}, schema=SCHEMA)
    assert r.status == "error" and r.parsed is None and r.attempts == 3 and server.count == 3
    assert "does not match the schema" in r.error and "after 3 attempts" in r.error
    assert not list(tmp_path.rglob("*.json"))  # failures are never cached
    r2 = client.complete(ASK, {"i": 3, "q": "rate"}, schema=SCHEMA)
    assert r2.status == "error" and server.count == 6 and client.stats["failures"] == 2


def test_validate_callback_rejects_then_accepts(server, tmp_path):
    server.on(then=[json_reply({"score": 2}), json_reply({"score": 5})])
    client = make_client(http_config(server), tmp_path)
    r = client.complete(ASK, {"i": 4, "q": "q"}, schema=SCHEMA,
                        validate=lambda p: None if p["score"] == 5 else f"id {p['score']} does not exist")
    assert r.ok and r.parsed == {"score": 5} and r.attempts == 2
    server.on("never", then=json_reply({"score": 1}))
    r = client.complete(ASK, {"i": 5, "q": "never"}, schema=SCHEMA, validate=lambda p: 1 / 0)
    assert r.status == "error" and "validate() raised ZeroDivisionError" in r.error


def test_429_retry_after_is_respected(server, tmp_path):
    server.on(then=[error(429, retry_after=0.4), reply("fine")])
    client = make_client(http_config(server, backoff_max_s=2.0), tmp_path)
    t0 = time.monotonic()
    r = client.complete(ASK, {"i": 6, "q": "q"})
    assert r.ok and r.attempts == 2 and time.monotonic() - t0 >= 0.4
    assert client.stats["http_errors"] == 1 and client.stats["retries"] == 1


def test_timeouts_5xx_drops_and_malformed_bodies_are_retried(server, tmp_path):
    server.on(then=[error(503), hang(5), drop(), raw("{not json"), raw('{"choices": []}'), reply("finally")])
    client = make_client(http_config(server, timeout_s=0.3, max_retries=5), tmp_path)
    r = client.complete(ASK, {"i": 7, "q": "q"})
    assert r.ok and r.text == "finally" and r.attempts == 6
    s = client.stats
    assert s["timeouts"] == 1 and s["http_errors"] == 1 and s["invalid_replies"] == 2 and s["retries"] == 5


def test_errors_are_reported_not_raised(server, tmp_path):
    server.on("bad", then=error(400, "unsupported parameter"))
    server.on("down", then=error(500))
    client = make_client(http_config(server, max_retries=2), tmp_path)
    r = client.complete(ASK, {"i": 8, "q": "bad"})
    assert r.status == "error" and r.attempts == 1 and "HTTP 400" in r.error and "unsupported" in r.error
    r = client.complete(ASK, {"i": 9, "q": "down"})
    assert r.status == "error" and r.attempts == 3 and "HTTP 500" in r.error
    # nothing listens on port 9: a connection error, retried, then reported
    dead = make_client(LLMConfig(base_url="http://127.0.0.1:9/v1", model="m", api_key_env=None, max_retries=1,
                                 backoff_base_s=0.01), tmp_path)
    r = dead.complete(ASK, {"i": 10, "q": "q"})
    assert r.status == "error" and "connection error" in r.error and r.attempts == 2


def test_missing_key_for_the_official_api_fails_without_a_request(monkeypatch, tmp_path):
    monkeypatch.delenv("CIEBENCH_TEST_NO_SUCH_KEY", raising=False)
    client = make_client(LLMConfig(model="gpt-4o-mini", api_key_env="CIEBENCH_TEST_NO_SUCH_KEY"), tmp_path)
    r = client.complete(ASK, {"i": 1, "q": "q"})
    assert r.status == "error" and "CIEBENCH_TEST_NO_SUCH_KEY is not set" in r.error
    assert client.stats["requests"] == 0


# ---------------------------------------------------------------------------------------- cache
def test_cache_second_identical_call_makes_zero_requests(server, tmp_path):
    server.on(has_images=True, then=respond(lambda req: f"seen {len(req.image_urls)} images"))
    server.on(then=respond(lambda req: {"score": 3}))
    client = make_client(http_config(server), tmp_path / "cache")
    calls = [LLMCall(ASK, {"i": 1, "q": "a"}, [img("red"), img("green")]),
             LLMCall(ASK, {"i": 2, "q": "b"}, schema=SCHEMA)]
    first = client.complete_many(calls)
    assert [r.ok for r in first] == [True, True] and server.count == 2
    files = sorted((tmp_path / "cache").rglob("*.json"))
    assert len(files) == 2 and all(json.loads(f.read_text())["key"] == f.stem for f in files)

    again = make_client(http_config(server), tmp_path / "cache")  # a fresh client: a new run
    second = again.complete_many(calls)
    assert server.count == 2 and again.stats["requests"] == 0 and again.stats["cache_hits"] == 2
    assert [(r.text, r.parsed, r.cached, r.attempts) for r in second] == \
        [(r.text, r.parsed, True, 0) for r in first]

    # anything that changes the answer changes the key
    misses = [
        (client, ASK, {"i": 1, "q": "a"}, [img("red"), img("blue")], None),  # one pixel colour
        (client, PromptTemplate("ask", 2, ASK.text, ASK.system), {"i": 1, "q": "a"}, [img("red"), img("green")], None),
        (client, ASK, {"i": 1, "q": "a "}, [img("red"), img("green")], None),  # text
        (make_client(http_config(server, temperature=0.5), tmp_path / "cache"), ASK, {"i": 1, "q": "a"},
         [img("red"), img("green")], None),
        (make_client(http_config(server, model="other"), tmp_path / "cache"), ASK, {"i": 1, "q": "a"},
         [img("red"), img("green")], None),
    ]
    for n, (c, t, v, ims, schema) in enumerate(misses, start=1):
        c.complete(t, v, ims, schema)
        assert server.count == 2 + n

    # a corrupt entry is a miss and gets rewritten
    files[0].write_text("{truncated")
    before = server.count
    assert all(r.ok for r in make_client(http_config(server), tmp_path / "cache").complete_many(calls))
    assert server.count == before + 1
    json.loads(files[0].read_text())


def test_refresh_sends_a_cached_call_again_and_replaces_the_entry(server, tmp_path):
    """`refresh=True`: the call is sent although the cache holds a reply for it, and the new answer is what
    later calls get from the cache (a caller that could not use the cached text asks again)."""
    server.script(reply("I cannot score this."), reply("Final Score: 4"))
    client = make_client(http_config(server), tmp_path / "cache")
    assert client.complete(ASK, {"i": 1, "q": "a"}).text == "I cannot score this."
    assert client.complete(ASK, {"i": 1, "q": "a"}).cached and server.count == 1
    fresh = client.complete(ASK, {"i": 1, "q": "a"}, refresh=True)
    assert (fresh.text, fresh.cached, fresh.attempts, server.count) == ("Final Score: 4", False, 1, 2)
    later = make_client(http_config(server), tmp_path / "cache").complete(ASK, {"i": 1, "q": "a"})
    assert (later.text, later.cached, server.count) == ("Final Score: 4", True, 2)


def test_api_key_never_leaks(server, tmp_path, monkeypatch, caplog):
    secret = "sk-test-9f8e7d6c5b4a-SECRET"
    monkeypatch.setenv("CIEBENCH_TEST_KEY", secret)
    seen = []

    def echo(req):  # a server that echoes the Authorization header back in errors and content
        seen.append(req.headers.get("authorization"))
        auth = req.headers.get("authorization")
        if len(seen) == 1:
            return error(401, f"Incorrect API key provided: {auth}")
        if len(seen) == 2:
            return error(500, f"internal error for {auth}")
        return reply(f"you sent {auth}", model=f"model-for-{auth}")

    server.on(then=respond(echo))
    caplog.set_level(logging.DEBUG)
    cfg = http_config(server, api_key_env="CIEBENCH_TEST_KEY", max_retries=2)
    client = make_client(cfg, tmp_path)
    r1 = client.complete(ASK, {"i": 1, "q": "first"})
    r2 = client.complete(ASK, {"i": 2, "q": "second"})
    assert seen[0] == f"Bearer {secret}"  # the key is sent where it belongs
    assert r1.status == "error" and "HTTP 401" in r1.error and "***" in r1.error and r1.attempts == 1
    assert r2.ok and r2.attempts == 2 and r2.text == "you sent Bearer ***"
    blobs = [json.dumps(r1.to_dict()), json.dumps(r2.to_dict()), json.dumps(client.stats),
             json.dumps(cfg.to_dict()), repr(cfg), caplog.text, json.dumps(client.served_models)]
    blobs += [f.read_text() for f in tmp_path.rglob("*") if f.is_file()]
    assert len(blobs) > 7  # a cache file was written
    for blob in blobs:
        assert secret not in blob
    assert "retrying" in caplog.text  # the logs did record the failed attempt


def test_a_key_echoed_in_a_refusal_or_cut_short_in_an_excerpt_never_leaks(server, tmp_path, monkeypatch):
    from ciebench.judge.batch import BatchAPI
    from ciebench.llm.transport import redact_secret

    secret = "sk-test-9f8e7d6c5b4a-SECRET"
    monkeypatch.setenv("CIEBENCH_TEST_KEY", secret)
    body = {"model": "m", "choices": [{"finish_reason": "stop", "message": {
        "role": "assistant", "content": None, "refusal": f"Refused (request auth: Bearer {secret})"}}]}
    server.on(then=raw(json.dumps(body)))
    client = make_client(http_config(server, api_key_env="CIEBENCH_TEST_KEY"), tmp_path)
    r = client.complete(ASK, {"i": 1, "q": "x"})
    assert r.failure == "content_filter" and r.refusal == "Refused (request auth: Bearer ***)"
    assert secret not in json.dumps(r.to_dict())

    class Echo(QuietHandler):  # a Batch API that echoes the key in its 401
        def do_POST(self):
            self.rfile.read(int(self.headers.get("content-length") or 0))
            self.reply(401, json.dumps({"error": {"message": f"Incorrect key: {self.headers.get('authorization')}"}}).encode())

    with serve_handler(Echo) as base:
        batch_client = make_client(LLMConfig(base_url=f"{base}/v1", model="m", api_key_env="CIEBENCH_TEST_KEY"), None)
        with pytest.raises(Exception) as raised:
            BatchAPI(batch_client).upload(b"{}")
    assert "HTTP 401" in str(raised.value) and "Bearer ***" in str(raised.value) and secret not in str(raised.value)
    # an excerpt that cut the key short still loses what is left of it
    assert redact_secret(f"said: Bearer {secret[:12]}...", secret) == "said: Bearer ***..."
    assert redact_secret(f"said: Bearer {secret[:9]}", secret) == "said: Bearer ***"
    assert redact_secret("sk-t... is a prefix too short to tell", secret) == "sk-t... is a prefix too short to tell"


def test_concurrency_overlaps_calls_and_is_bounded(tmp_path):
    with serve_llm(latency_s=0.2) as server:
        server.on(then=respond(lambda req: "answer to " + req.text.splitlines()[-1].split(":")[0]))
        client = make_client(http_config(server, concurrency=8), None)  # no cache
        calls = [LLMCall(ASK, {"i": i, "q": "x"}) for i in range(20)]
        t0 = time.monotonic()
        replies = client.complete_many(calls)
        elapsed = time.monotonic() - t0
    assert [r.text for r in replies] == [f"answer to Question {i}" for i in range(20)]  # in order
    assert elapsed < 0.5 * 20 * 0.2, elapsed  # sequential would take 4 s; 3 waves of 8 take ~0.6 s
    assert 2 <= server.max_in_flight <= 8 and server.count == 20


def test_semaphore_bounds_requests_from_many_threads(tmp_path):
    """Callers with their own thread pools (e.g. the judge) still get at most `concurrency` requests."""
    from concurrent.futures import ThreadPoolExecutor

    with serve_llm(latency_s=0.1) as server:
        server.on(then=reply("ok"))
        client = make_client(http_config(server, concurrency=3), None)
        with ThreadPoolExecutor(12) as pool:
            replies = list(pool.map(lambda i: client.complete(ASK, {"i": i, "q": "x"}), range(12)))
    assert all(r.ok for r in replies) and server.max_in_flight <= 3
