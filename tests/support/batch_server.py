"""A fake OpenAI-compatible Batch API on 127.0.0.1: /v1/files (multipart upload, content download) and
/v1/batches (create, retrieve). Batches stay "in_progress" until `release()` (or at once with
hold=False); each line is then answered by `answer(body) -> str` as a chat completion."""
from __future__ import annotations

import json
import threading
import uuid
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Iterator


class BatchServer:
    def __init__(self, answer: Callable[[dict], str], hold: bool = False):
        self.answer = answer
        self.files: dict[str, bytes] = {}
        self.batches: dict[str, dict[str, Any]] = {}
        self.released = threading.Event()
        if not hold:
            self.released.set()
        self.created = 0
        self.chat_calls = 0
        self.auth: list[str | None] = []
        self.lock = threading.Lock()

    def release(self) -> None:
        self.released.set()

    def _complete(self, batch: dict[str, Any]) -> None:
        out = []
        for line in self.files[batch["input_file_id"]].decode().splitlines():
            if not line.strip():
                continue
            req = json.loads(line)
            text = self.answer(req["body"])
            out.append(json.dumps({"id": "r-" + uuid.uuid4().hex[:8], "custom_id": req["custom_id"], "error": None,
                                   "response": {"status_code": 200, "body": {
                                       "id": "c", "object": "chat.completion", "model": req["body"]["model"] + "-snap",
                                       "choices": [{"index": 0, "finish_reason": "stop",
                                                    "message": {"role": "assistant", "content": text}}],
                                       "usage": {"prompt_tokens": 10, "completion_tokens": 2, "total_tokens": 12}}}}))
        fid = "file-out-" + uuid.uuid4().hex[:8]
        self.files[fid] = ("\n".join(out) + "\n").encode()
        batch.update(status="completed", output_file_id=fid)


def _handler(server: BatchServer):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def _json(self, status: int, obj: Any) -> None:
            data = json.dumps(obj).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            server.auth.append(self.headers.get("Authorization"))
            if self.path == "/v1/files":
                boundary = self.headers["Content-Type"].split("boundary=")[1].encode()
                parts = body.split(b"--" + boundary)
                filepart = next(p for p in parts if b'name="file"' in p)
                content = filepart.split(b"\r\n\r\n", 1)[1].rsplit(b"\r\n", 1)[0]
                purpose = next(p for p in parts if b'name="purpose"' in p).split(b"\r\n\r\n", 1)[1].strip()
                if purpose != b"batch":
                    return self._json(400, {"error": {"message": "purpose must be batch"}})
                fid = "file-" + uuid.uuid4().hex[:8]
                server.files[fid] = content
                return self._json(200, {"id": fid, "object": "file", "purpose": "batch"})
            if self.path == "/v1/batches":
                req = json.loads(body)
                if req.get("endpoint") != "/v1/chat/completions" or req.get("input_file_id") not in server.files:
                    return self._json(400, {"error": {"message": "bad batch"}})
                with server.lock:
                    server.created += 1
                    bid = "batch_" + uuid.uuid4().hex[:8]
                    server.batches[bid] = {"id": bid, "object": "batch", "status": "validating",
                                           "input_file_id": req["input_file_id"], "output_file_id": None}
                return self._json(200, server.batches[bid])
            if self.path.endswith("/chat/completions"):
                server.chat_calls += 1
                return self._json(500, {"error": {"message": "live calls are not expected in this test"}})
            self._json(404, {"error": {"message": "not found"}})

        def do_GET(self) -> None:
            if self.path.startswith("/v1/batches/"):
                batch = server.batches.get(self.path.rsplit("/", 1)[1])
                if batch is None:
                    return self._json(404, {"error": {"message": "no such batch"}})
                with server.lock:
                    if batch["status"] != "completed":
                        if server.released.is_set():
                            server._complete(batch)
                        else:
                            batch["status"] = "in_progress"
                return self._json(200, batch)
            if self.path.startswith("/v1/files/") and self.path.endswith("/content"):
                fid = self.path.split("/")[3]
                data = server.files.get(fid)
                if data is None:
                    return self._json(404, {"error": {"message": "no such file"}})
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
                return
            self._json(404, {"error": {"message": "not found"}})

    return Handler


@contextmanager
def serve_batches(answer: Callable[[dict], str], hold: bool = False) -> Iterator[tuple[BatchServer, str]]:
    state = BatchServer(answer, hold)
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield state, f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    finally:
        httpd.shutdown()
        httpd.server_close()
