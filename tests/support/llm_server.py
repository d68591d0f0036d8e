"""A scripted OpenAI-compatible chat/completions server on 127.0.0.1, for tests and benchmarks.

A real HTTP server (``ThreadingHTTPServer`` in a daemon thread, ephemeral port) that speaks
``POST /v1/chat/completions`` and replays scripted answers, so client code runs its real network path
(sockets, timeouts, retries, concurrency) without any outside service::

    from .llm_server import serve_llm, reply, json_reply, error, hang, raw, drop, respond

    with serve_llm(latency_s=0.0) as server:
        server.on("how consistent", json_reply({"score": 4}))                 # match on prompt text
        server.on(has_images=True, then=reply("The red cup was removed."))     # the VLM call
        server.on("flaky", then=[error(429, retry_after=0.05), hang(5), raw("{oops"), reply("fine")])
        server.on(then=respond(lambda req: reply(req.text.upper())))          # dynamic answer
        cfg = LLMConfig(base_url=server.base_url, api_key_env=None, model="m")
        ...
        assert server.count == 5 and server.max_in_flight <= 8

Scripting
- ``server.on(contains=None, *, then, model=None, has_images=None, where=None, repeat=True)`` adds a
  rule. Rules are tried in the order added; a rule matches when every given condition holds:
  ``contains`` is a substring of the request's text (system + user text parts joined by newlines),
  ``model`` equals the requested model, ``has_images`` says whether images were sent, ``where(req)``
  is true. ``then`` is one action or a list of actions served in order, one per matching request;
  when the list is used up the last action repeats (``repeat=True``) or the rule stops matching and
  later rules are tried (``repeat=False``). ``server.script(a, b, c)`` is ``on(then=[a, b, c],
  repeat=False)``: answers in arrival order for any request. With concurrent clients, arrival order
  is not deterministic: prefer matching on content.
- A request that no rule matches gets ``server.default`` (HTTP 400 "no scripted answer", which
  clients do not retry, so a missing script fails fast and visibly).

Actions
- ``reply(content, delay=0, usage=None, model=None, finish_reason="stop")``: a normal completion.
- ``json_reply(obj, ...)``: ``reply(json.dumps(obj))``.
- ``error(status, message=None, retry_after=None, delay=0, headers=None)``: an HTTP error with an
  OpenAI-style JSON error body (``retry_after`` sets the Retry-After header, in seconds).
- ``hang(seconds)``: hold the request without answering, then close the connection: with a client
  timeout shorter than ``seconds`` this is a timeout. Interrupted at once when the server stops.
- ``raw(body, status=200, content_type="application/json")``: any bytes, e.g. a malformed JSON body.
- ``drop()``: close the connection without any response (a connection error on the client).
- ``respond(fn)``: call ``fn(request) -> action | str | dict`` (str: a reply, dict: a JSON reply).

Observation
- ``server.requests``: every request received, as ``RecordedRequest`` (headers, body, text, images,
  model, times); ``server.count``; ``server.count_where(contains=..., has_images=...)``;
  ``server.max_in_flight`` (peak concurrent requests); ``server.problems``: malformed requests the
  server rejected (HTTP 400: wrong path, bad JSON, bad messages, images not base64 data URLs, a bad
  ``response_format``), so tests can assert the client speaks the protocol.
- ``server.reset()`` forgets recorded requests and counters (``reset(rules=True)`` also the rules).

Bounds: ``latency_s`` is added before every answer; the server answers HTTP 503 after
``max_requests`` requests and stops itself after ``lifetime_s`` seconds, so a broken test never
leaves it running. All threads are daemons.
"""
from __future__ import annotations

import base64
import binascii
import io
import json
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Iterator, Sequence


# ----------------------------------------------------------------------------------------- actions
@dataclass(frozen=True)
class Reply:
    content: str | None
    delay: float = 0.0
    usage: dict | None = None
    model: str | None = None
    finish_reason: str = "stop"


@dataclass(frozen=True)
class Error:
    status: int
    message: str | None = None
    retry_after: float | None = None
    delay: float = 0.0
    headers: dict | None = None


@dataclass(frozen=True)
class Hang:
    seconds: float


@dataclass(frozen=True)
class Raw:
    body: bytes
    status: int = 200
    content_type: str = "application/json"
    delay: float = 0.0


@dataclass(frozen=True)
class Drop:
    pass


@dataclass(frozen=True)
class Respond:
    fn: Callable[["RecordedRequest"], Any]


Action = Any  # Reply | Error | Hang | Raw | Drop | Respond


def reply(content: str | None, delay: float = 0.0, usage: dict | None = None, model: str | None = None,
          finish_reason: str = "stop") -> Reply:
    return Reply(content, delay, usage, model, finish_reason)


def json_reply(obj: Any, **kw: Any) -> Reply:
    return reply(json.dumps(obj), **kw)


def error(status: int, message: str | None = None, retry_after: float | None = None, delay: float = 0.0,
          headers: dict | None = None) -> Error:
    return Error(status, message, retry_after, delay, headers)


def hang(seconds: float) -> Hang:
    return Hang(seconds)


def raw(body: bytes | str, status: int = 200, content_type: str = "application/json", delay: float = 0.0) -> Raw:
    return Raw(body.encode("utf-8") if isinstance(body, str) else body, status, content_type, delay)


def drop() -> Drop:
    return Drop()


def respond(fn: Callable[["RecordedRequest"], Any]) -> Respond:
    return Respond(fn)


# ---------------------------------------------------------------------------------------- requests
@dataclass
class RecordedRequest:
    index: int
    path: str
    headers: dict[str, str]  # lower-case names
    body: dict[str, Any]
    text: str  # system and user text parts, joined by newlines
    image_urls: list[str]
    model: str | None
    started: float
    finished: float | None = None
    action: str | None = None  # what the server did, e.g. "reply", "error 429", "hang"
    done: bool = False  # no longer counted as in flight

    @property
    def has_images(self) -> bool:
        return bool(self.image_urls)

    def images(self) -> list:
        """The sent images, decoded as PIL images."""
        from PIL import Image

        out = []
        for url in self.image_urls:
            data = base64.b64decode(url.split(",", 1)[1])
            out.append(Image.open(io.BytesIO(data)))
        return out

    @property
    def response_format(self) -> dict | None:
        return self.body.get("response_format")


@dataclass
class Rule:
    contains: str | None
    actions: list
    model: str | None = None
    has_images: bool | None = None
    where: Callable[[RecordedRequest], bool] | None = None
    repeat: bool = True
    served: int = 0

    def matches(self, req: RecordedRequest) -> bool:
        if not self.repeat and self.served >= len(self.actions):
            return False
        if self.contains is not None and self.contains not in req.text:
            return False
        if self.model is not None and self.model != req.model:
            return False
        if self.has_images is not None and self.has_images != req.has_images:
            return False
        if self.where is not None and not self.where(req):
            return False
        return True

    def take(self) -> Action:
        action = self.actions[min(self.served, len(self.actions) - 1)]
        self.served += 1
        return action


# ------------------------------------------------------------------------------------------ server
class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256
    allow_reuse_address = True

    def handle_error(self, request: Any, client_address: Any) -> None:  # dropped connections: quiet
        return


class LLMServer:
    def __init__(self, latency_s: float = 0.0, max_requests: int = 10_000, lifetime_s: float = 300.0,
                 default: Action | None = None):
        self.latency_s = latency_s
        self.max_requests = max_requests
        self.lifetime_s = lifetime_s
        self.default = default if default is not None else error(400, "no scripted answer matched this request")
        self.rules: list[Rule] = []
        self.requests: list[RecordedRequest] = []
        self.problems: list[str] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._timer: threading.Timer | None = None

    # lifecycle
    def start(self) -> "LLMServer":
        server = self

        class Handler(_Handler):
            owner = server

        self._httpd = _HTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="llm-test-server", daemon=True)
        self._thread.start()
        self._timer = threading.Timer(self.lifetime_s, self.stop)
        self._timer.daemon = True
        self._timer.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._timer is not None and self._timer is not threading.current_thread():
            self._timer.cancel()
        httpd, self._httpd = self._httpd, None
        if httpd is not None:
            httpd.shutdown()
            httpd.server_close()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)

    def __enter__(self) -> "LLMServer":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    @property
    def port(self) -> int:
        assert self._httpd is not None, "server not started"
        return self._httpd.server_address[1]

    @property
    def base_url(self) -> str:
        """The OpenAI-style base URL (``http://127.0.0.1:PORT/v1``) for ``LLMConfig.base_url``."""
        return f"http://127.0.0.1:{self.port}/v1"

    # scripting
    def on(self, contains: str | None = None, *, then: Action | Sequence[Action], model: str | None = None,
           has_images: bool | None = None, where: Callable[[RecordedRequest], bool] | None = None,
           repeat: bool = True) -> Rule:
        actions = list(then) if isinstance(then, (list, tuple)) else [then]
        if not actions:
            raise ValueError("a rule needs at least one action")
        rule = Rule(contains, actions, model, has_images, where, repeat)
        with self._lock:
            self.rules.append(rule)
        return rule

    def script(self, *actions: Action) -> Rule:
        """Answers for any request, in arrival order, each used once."""
        return self.on(then=list(actions), repeat=False)

    def reset(self, rules: bool = False) -> None:
        with self._lock:
            self.requests.clear()
            self.problems.clear()
            self.max_in_flight = self.in_flight
            if rules:
                self.rules.clear()

    # observation
    @property
    def count(self) -> int:
        with self._lock:
            return len(self.requests)

    def count_where(self, contains: str | None = None, has_images: bool | None = None) -> int:
        with self._lock:
            return sum(1 for r in self.requests
                       if (contains is None or contains in r.text)
                       and (has_images is None or r.has_images == has_images))

    # internals
    def _record(self, req: RecordedRequest, scripted: bool = True) -> Action:
        with self._lock:
            req.index = len(self.requests)
            self.requests.append(req)
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            if not scripted:
                return None
            if req.index >= self.max_requests:
                return error(503, f"test server request budget ({self.max_requests}) exhausted")
            for rule in self.rules:
                try:
                    hit = rule.matches(req)
                except Exception:  # noqa: BLE001 - a faulty `where` must not kill the handler
                    hit = False
                if hit:
                    return rule.take()
            return self.default

    def _done(self, req: RecordedRequest | None) -> None:
        """Once per request: called just before its response is written (so a client that already has
        its answer and sends the next request is never counted twice), or when it ends without one."""
        with self._lock:
            if req is not None and req.done:
                return
            self.in_flight -= 1
            if req is not None:
                req.done = True
                req.finished = time.monotonic()

    def _wait(self, seconds: float) -> bool:
        """Sleep, interruptibly; False when the server is stopping."""
        if seconds <= 0:
            return not self._stop.is_set()
        return not self._stop.wait(seconds)


def _problem(body: Any) -> str | None:
    if not isinstance(body, dict):
        return "body is not a JSON object"
    if not isinstance(body.get("model"), str) or not body["model"]:
        return "missing 'model'"
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return "missing 'messages'"
    for m in messages:
        if not isinstance(m, dict) or m.get("role") not in ("system", "user", "assistant", "tool", "developer"):
            return f"bad message {str(m)[:80]}"
        content = m.get("content")
        if isinstance(content, list):
            for part in content:
                kind = part.get("type") if isinstance(part, dict) else None
                if kind == "text" and isinstance(part.get("text"), str):
                    continue
                if kind == "image_url":
                    url = (part.get("image_url") or {}).get("url", "")
                    if not url.startswith("data:image/") or ";base64," not in url:
                        return "image_url is not a base64 data URL"
                    try:
                        base64.b64decode(url.split(",", 1)[1], validate=True)
                    except (binascii.Error, ValueError):
                        return "image data URL is not valid base64"
                    continue
                return f"bad content part {str(part)[:80]}"
        elif not isinstance(content, str):
            return "message content must be a string or a list of parts"
    rf = body.get("response_format")
    if rf is not None:
        if not isinstance(rf, dict) or rf.get("type") not in ("json_schema", "json_object", "text"):
            return "bad response_format"
        if rf["type"] == "json_schema":
            js = rf.get("json_schema")
            if not isinstance(js, dict) or not isinstance(js.get("name"), str) or not isinstance(js.get("schema"), dict):
                return "response_format.json_schema needs a name and a schema"
    return None


def _text_and_images(body: dict) -> tuple[str, list[str]]:
    texts, images = [], []
    for m in body.get("messages", []):
        content = m.get("content")
        if isinstance(content, str):
            texts.append(content)
        elif isinstance(content, list):
            for part in content:
                if part.get("type") == "text":
                    texts.append(part.get("text", ""))
                elif part.get("type") == "image_url":
                    images.append(part["image_url"]["url"])
    return "\n".join(texts), images


class _Handler(BaseHTTPRequestHandler):
    owner: LLMServer
    protocol_version = "HTTP/1.0"

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        return

    def do_GET(self) -> None:  # /v1/models, for clients that probe
        if self.path.rstrip("/").endswith("/models"):
            self._json(200, {"object": "list", "data": [{"id": "scripted", "object": "model"}]})
        else:
            self._json(404, {"error": {"message": "not found"}})

    def do_POST(self) -> None:
        owner = self.owner
        started = time.monotonic()
        try:
            length = int(self.headers.get("Content-Length") or 0)
            data = self.rfile.read(length)
        except (OSError, ValueError):
            return
        headers = {k.lower(): v for k, v in self.headers.items()}
        try:
            body = json.loads(data)
        except ValueError:
            body = None
        problem = None
        if not self.path.rstrip("/").endswith("/chat/completions"):
            problem = f"unexpected path {self.path}"
        else:
            problem = _problem(body)
        text, images = _text_and_images(body) if problem is None else ("", [])
        req = RecordedRequest(index=-1, path=self.path, headers=headers, body=body if isinstance(body, dict) else {},
                              text=text, image_urls=images,
                              model=body.get("model") if isinstance(body, dict) else None, started=started)
        action = owner._record(req, scripted=problem is None)
        self._req = req
        try:
            if problem is not None:
                with owner._lock:
                    owner.problems.append(problem)
                req.action = "rejected"
                self._json(400, {"error": {"message": f"bad request: {problem}", "type": "invalid_request_error"}})
                return
            if not owner._wait(owner.latency_s):
                return
            self._act(action, req)
        except (BrokenPipeError, ConnectionResetError, ConnectionAbortedError):
            pass  # the client gave up (e.g. its timeout fired): nothing to do
        finally:
            owner._done(req)

    def _act(self, action: Action, req: RecordedRequest) -> None:
        owner = self.owner
        if isinstance(action, Respond):
            try:
                action = action.fn(req)
            except Exception as exc:  # noqa: BLE001 - report the test's bug as a 500 with the reason
                action = error(500, f"respond() raised {type(exc).__name__}: {exc}")
            if isinstance(action, str) or action is None:
                action = reply(action)
            elif isinstance(action, dict):
                action = json_reply(action)
            return self._act(action, req)
        if isinstance(action, Reply):
            req.action = "reply"
            if not owner._wait(action.delay):
                return
            prompt_tokens = len(req.text.split()) + 64 * len(req.image_urls)
            completion_tokens = max(1, len((action.content or "").split()))
            usage = action.usage or {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                                     "total_tokens": prompt_tokens + completion_tokens}
            self._json(200, {
                "id": f"chatcmpl-{req.index}", "object": "chat.completion", "created": int(time.time()),
                "model": action.model or req.model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": action.content},
                             "finish_reason": action.finish_reason}],
                "usage": usage,
            })
        elif isinstance(action, Error):
            req.action = f"error {action.status}"
            if not owner._wait(action.delay):
                return
            extra = dict(action.headers or {})
            if action.retry_after is not None:
                extra["Retry-After"] = f"{action.retry_after:g}"
            message = action.message or f"scripted HTTP {action.status}"
            self._json(action.status, {"error": {"message": message, "type": "scripted", "code": action.status}},
                       extra)
        elif isinstance(action, Hang):
            req.action = "hang"
            owner._wait(action.seconds)
            self.close_connection = True
        elif isinstance(action, Raw):
            req.action = f"raw {action.status}"
            if not owner._wait(action.delay):
                return
            self._send(action.status, action.body, action.content_type)
        elif isinstance(action, Drop):
            req.action = "drop"
            self.close_connection = True
            try:
                import socket

                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        else:
            req.action = "bad action"
            self._json(500, {"error": {"message": f"unknown scripted action {action!r}"}})

    def _json(self, status: int, obj: Any, headers: dict | None = None) -> None:
        self._send(status, json.dumps(obj).encode("utf-8"), "application/json", headers)

    def _send(self, status: int, body: bytes, content_type: str, headers: dict | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, str(v))
        if getattr(self, "_req", None) is not None:
            self.owner._done(self._req)
        self.end_headers()
        self.wfile.write(body)
        self.wfile.flush()


@contextmanager
def serve_llm(**kwargs: Any) -> Iterator[LLMServer]:
    """Start an `LLMServer` (keyword arguments as its constructor) and stop it on exit."""
    server = LLMServer(**kwargs).start()
    try:
        yield server
    finally:
        server.stop()


__all__ = ["LLMServer", "RecordedRequest", "Rule", "serve_llm", "reply", "json_reply", "error", "hang", "raw",
           "drop", "respond", "Reply", "Error", "Hang", "Raw", "Drop", "Respond"]
