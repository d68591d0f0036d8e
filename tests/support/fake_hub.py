"""A Hub-compatible file server on 127.0.0.1 for tests: the two endpoints huggingface_hub uses to list
a repository with file sizes (`GET /api/models/ORG/NAME[/revision/REV]?blobs=true`) and to fetch a file
(`HEAD|GET /ORG/NAME/resolve/REV/PATH` with X-Repo-Commit, ETag and Content-Length headers).

    with serve_hub({"org/model": folder}) as hub:
        env["HF_ENDPOINT"] = hub.endpoint
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Iterator


class FakeHub:
    def __init__(self, repos: dict[str, Path]):
        self.repos = {repo: Path(folder) for repo, folder in repos.items()}
        self.requests: list[tuple[str, str]] = []
        self.server: ThreadingHTTPServer | None = None

    @staticmethod
    def commit(repo: str) -> str:
        return hashlib.sha1(f"fake-hub:{repo}".encode()).hexdigest()

    def files(self, repo: str) -> dict[str, Path]:
        root = self.repos[repo]
        return {p.relative_to(root).as_posix(): p for p in sorted(root.rglob("*")) if p.is_file()}

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"


@contextlib.contextmanager
def serve_hub(repos: dict[str, Path]) -> Iterator[FakeHub]:
    hub = FakeHub(repos)

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):  # quiet
            pass

        def _repo_and_rest(self, parts: list[str]) -> tuple[str | None, list[str]]:
            for n in (2, 1):
                repo = "/".join(parts[:n])
                if repo in hub.repos:
                    return repo, parts[n:]
            return None, parts

        def _send(self, status: int, body: bytes = b"", headers: dict | None = None, head: bool = False) -> None:
            self.send_response(status)
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if not head:
                self.wfile.write(body)

        def _handle(self, head: bool) -> None:
            path = urllib.parse.urlparse(self.path).path
            hub.requests.append((self.command, path))
            parts = [urllib.parse.unquote(p) for p in path.strip("/").split("/")]
            if parts[:2] == ["api", "models"]:
                repo, rest = self._repo_and_rest(parts[2:])
                if repo is None or (rest and (rest[0] != "revision" or rest[1] not in ("main", hub.commit(repo)))):
                    return self._send(404, b'{"error": "Repository not found"}', {"X-Error-Code": "RepoNotFound"}, head)
                siblings = [{"rfilename": rel, "size": p.stat().st_size,
                             "blobId": hashlib.sha1(p.read_bytes()).hexdigest()} for rel, p in hub.files(repo).items()]
                body = json.dumps({"id": repo, "sha": hub.commit(repo), "siblings": siblings}).encode()
                return self._send(200, body, {"Content-Type": "application/json"}, head)
            repo, rest = self._repo_and_rest(parts)
            if repo is None or len(rest) < 3 or rest[0] != "resolve" or rest[1] not in ("main", hub.commit(repo)):
                return self._send(404, b"not found", {"X-Error-Code": "EntryNotFound"}, head)
            file = hub.files(repo).get("/".join(rest[2:]))
            if file is None:
                return self._send(404, b"not found", {"X-Error-Code": "EntryNotFound", "X-Repo-Commit": hub.commit(repo)}, head)
            data = file.read_bytes()
            return self._send(200, data, {"X-Repo-Commit": hub.commit(repo), "ETag": f'"{hashlib.sha256(data).hexdigest()}"',
                                          "Content-Type": "application/octet-stream"}, head)

        def do_GET(self):  # noqa: N802
            self._handle(head=False)

        def do_HEAD(self):  # noqa: N802
            self._handle(head=True)

    hub.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=hub.server.serve_forever, daemon=True)
    thread.start()
    try:
        yield hub
    finally:
        hub.server.shutdown()
        hub.server.server_close()
