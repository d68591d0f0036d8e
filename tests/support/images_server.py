"""A scripted `POST /v1/images/edits` server on 127.0.0.1 (multipart in, OpenAI-style JSON out), for tests
and benchmarks of the `openai-images` editor.

    with serve_images() as server:
        server.script(error(429, retry_after=0.01), image_reply((255, 0, 0)))   # answers in order
        ... OpenAIImagesEditor(base_url=server.base_url, ...) ...
        assert server.count == 2 and server.requests[-1].files["image"]

Each request is parsed as multipart/form-data (a request that is not, or lacks `model`, `prompt` or an
`image` file, gets HTTP 400 and lands in `server.problems`). When the script is used up the last action
repeats; the default action is a solid grey image. `server.requests` records headers, form fields and
files (bytes). A second server can stand in for another host (`serve_images().base_url`), e.g. to check
where the API key goes.
"""
from __future__ import annotations

import base64
import io
import json
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from email.parser import BytesParser
from email.policy import HTTP
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable

from PIL import Image


@dataclass
class Recorded:
    path: str
    headers: dict[str, str]
    fields: dict[str, str] = field(default_factory=dict)
    files: dict[str, bytes] = field(default_factory=dict)


@dataclass
class Action:
    status: int
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)


def png(color=(128, 128, 128), size=(32, 32)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()


def image_reply(color=(128, 128, 128), size=(32, 32), usage: dict | None = None) -> Action:
    payload = {"created": 0, "data": [{"b64_json": base64.b64encode(png(color, size)).decode()}]}
    if usage is not None:
        payload["usage"] = usage
    return Action(200, json.dumps(payload).encode(), {"Content-Type": "application/json"})


def url_reply(url: str) -> Action:
    return Action(200, json.dumps({"created": 0, "data": [{"url": url}]}).encode(), {"Content-Type": "application/json"})


def error(status: int, message: str = "error", code: str | None = None, retry_after: float | None = None) -> Action:
    headers = {"Content-Type": "application/json"}
    if retry_after is not None:
        headers["Retry-After"] = str(retry_after)
    body = {"error": {"message": message, "type": "invalid_request_error" if status == 400 else "server_error",
                      "code": code}}
    return Action(status, json.dumps(body).encode(), headers)


def refusal() -> Action:
    return error(400, "Your request was rejected as a result of our safety system.", code="moderation_blocked")


class ImagesServer:
    def __init__(self):
        self.requests: list[Recorded] = []
        self.problems: list[str] = []
        self.default = image_reply()
        self._script: list[Action] = []
        self._lock = threading.Lock()
        self.files_route: dict[str, bytes] = {}  # GET path -> bytes (image URLs)
        self.on_request: Callable[[Recorded], Action | None] | None = None

    @property
    def count(self) -> int:
        return sum(r.path.endswith("/images/edits") for r in self.requests)

    def script(self, *actions: Action) -> None:
        self._script = list(actions)

    def _next(self) -> Action:
        with self._lock:
            if not self._script:
                return self.default
            return self._script.pop(0) if len(self._script) > 1 else self._script[0]


def _handler(server: ImagesServer):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):  # quiet
            pass

        def _send(self, action: Action) -> None:
            self.send_response(action.status)
            for k, v in action.headers.items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(action.body)))
            self.end_headers()
            self.wfile.write(action.body)

        def do_GET(self):  # noqa: N802
            server.requests.append(Recorded(self.path, dict(self.headers)))
            data = server.files_route.get(self.path)
            self._send(Action(200, data, {"Content-Type": "image/png"}) if data is not None else error(404, "not found"))

        def do_POST(self):  # noqa: N802
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length)
            rec = Recorded(self.path, dict(self.headers))
            server.requests.append(rec)
            problem = None
            if not self.path.endswith("/images/edits"):
                problem = f"wrong path {self.path}"
            elif not (self.headers.get("Content-Type") or "").startswith("multipart/form-data; boundary="):
                problem = "not multipart/form-data"
            else:
                message = BytesParser(policy=HTTP).parsebytes(
                    f"Content-Type: {self.headers['Content-Type']}\r\n\r\n".encode() + body)
                for part in message.iter_parts():
                    name = part.get_param("name", header="content-disposition")
                    if part.get_filename() is not None:
                        rec.files[name] = part.get_payload(decode=True)
                    else:
                        rec.fields[name] = part.get_payload(decode=True).decode()
                missing = [k for k in ("model", "prompt") if k not in rec.fields] + (["image"] if "image" not in rec.files else [])
                if missing:
                    problem = f"missing {missing}"
            if problem:
                server.problems.append(problem)
                return self._send(error(400, problem))
            action = server.on_request(rec) if server.on_request else None
            self._send(action or server._next())

    return Handler


@contextmanager
def serve_images():
    state = ImagesServer()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    state.base_url = f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    try:
        yield state
    finally:
        httpd.shutdown()
        httpd.server_close()
