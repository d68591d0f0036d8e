"""One bounded HTTP request (POST or GET) for model APIs: an overall deadline from connect to last byte, a cap on the
response size, and no redirects.

urllib's timeout applies per socket operation, so a server that dribbles one byte a second never
trips it; and urllib follows a 302 from a POST with the Authorization header still attached, to any
host. API endpoints have no reason to redirect, so a redirect is refused with its target named: the
user points `base_url` at the final address, and the key never travels further than they sent it.
Proxies from the usual environment variables (https_proxy, http_proxy, no_proxy) are honoured.
"""
from __future__ import annotations

import base64
import http.client
import socket
import ssl
import threading
import time
import urllib.parse
import urllib.request
import uuid
from dataclasses import dataclass
from email.message import Message


class TransportError(Exception):
    """The request did not produce a complete HTTP response. `kind`: timeout | transport | too_large | redirect."""

    def __init__(self, message: str, kind: str):
        super().__init__(message)
        self.kind = kind


@dataclass
class HTTPResponse:
    status: int
    headers: Message  # case-insensitive .get()
    body: bytes


_SSL_CONTEXT: ssl.SSLContext | None = None


def _ssl_context() -> ssl.SSLContext:
    global _SSL_CONTEXT
    if _SSL_CONTEXT is None:
        _SSL_CONTEXT = ssl.create_default_context()  # certificate and host name verification on
    return _SSL_CONTEXT


def post(url: str, body: bytes, headers: dict[str, str], *, deadline_s: float, max_bytes: int) -> HTTPResponse:
    """POST `body` to `url`. Raises TransportError; HTTP error statuses (4xx/5xx) are returned."""
    return request("POST", url, body, headers, deadline_s=deadline_s, max_bytes=max_bytes)


def get(url: str, headers: dict[str, str], *, deadline_s: float, max_bytes: int) -> HTTPResponse:
    """GET `url`, under the same deadline, size cap and redirect rule as `post`."""
    return request("GET", url, None, headers, deadline_s=deadline_s, max_bytes=max_bytes)


def request(method: str, url: str, body: bytes | None, headers: dict[str, str], *, deadline_s: float,
            max_bytes: int) -> HTTPResponse:
    parsed = urllib.parse.urlsplit(url)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise TransportError(f"unsupported URL {url!r}", "transport")
    start = time.monotonic()
    conn, target, proxy_headers = _connection(parsed, deadline_s)
    headers = {**headers, **proxy_headers}
    aborted = threading.Event()

    def _abort() -> None:
        aborted.set()
        sock = conn.sock
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    timer = threading.Timer(deadline_s, _abort)
    timer.daemon = True
    timer.start()
    try:
        conn.request(method, target, body=body, headers=headers)
        resp = conn.getresponse()
        if 300 <= resp.status < 400:
            location = resp.getheader("Location") or "(no Location)"
            raise TransportError(f"{url} answered HTTP {resp.status} redirecting to {location}; API calls do not "
                                 "follow redirects (the key must not follow): set base_url to the final address",
                                 "redirect")
        declared = resp.getheader("Content-Length")
        if declared and declared.isdigit() and int(declared) > max_bytes:
            raise TransportError(f"response from {url} declares {declared} bytes, over the {max_bytes}-byte cap",
                                 "too_large")
        chunks, total = [], 0
        while True:
            chunk = resp.read1(1 << 16) if hasattr(resp, "read1") else resp.read(1 << 16)
            if not chunk:
                break
            total += len(chunk)
            if total > max_bytes:
                raise TransportError(f"response from {url} exceeds the {max_bytes}-byte cap", "too_large")
            chunks.append(chunk)
            if time.monotonic() - start > deadline_s:
                raise TimeoutError
        if aborted.is_set():
            raise TimeoutError
        return HTTPResponse(resp.status, resp.msg, b"".join(chunks))
    except TransportError:
        raise
    except (TimeoutError, socket.timeout):
        raise TransportError(f"request to {url} timed out (overall deadline {deadline_s:g}s)", "timeout") from None
    except (OSError, http.client.HTTPException) as exc:
        if aborted.is_set():
            raise TransportError(f"request to {url} timed out (overall deadline {deadline_s:g}s)", "timeout") from None
        raise TransportError(f"connection error ({type(exc).__name__}: {exc})", "transport") from None
    finally:
        timer.cancel()
        conn.close()


def encode_multipart(fields: dict[str, str], files: dict[str, tuple[str, bytes, str]]) -> tuple[bytes, str]:
    """A multipart/form-data body and its Content-Type; `files`: name -> (filename, data, content type)."""
    boundary = f"ciebench-{uuid.uuid4().hex}"
    parts: list[bytes] = []
    for name, value in fields.items():
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode())
    for name, (filename, data, content_type) in files.items():
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
                     f"Content-Type: {content_type}\r\n\r\n".encode() + data + b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


def _connection(parsed: urllib.parse.SplitResult, deadline_s: float
                ) -> tuple[http.client.HTTPConnection, str, dict[str, str]]:
    """The connection, the request target, and headers for a plain-http proxy."""
    host = parsed.hostname or ""
    port = parsed.port
    path = urllib.parse.urlunsplit(("", "", parsed.path or "/", parsed.query, ""))
    proxy = None if urllib.request.proxy_bypass(host) else urllib.request.getproxies().get(parsed.scheme)
    if not proxy:
        if parsed.scheme == "https":
            return http.client.HTTPSConnection(host, port, timeout=deadline_s, context=_ssl_context()), path, {}
        return http.client.HTTPConnection(host, port, timeout=deadline_s), path, {}
    p = urllib.parse.urlsplit(proxy if "://" in proxy else f"http://{proxy}")
    proxy_headers = {}
    if p.username:
        creds = f"{urllib.parse.unquote(p.username)}:{urllib.parse.unquote(p.password or '')}"
        proxy_headers["Proxy-Authorization"] = "Basic " + base64.b64encode(creds.encode()).decode("ascii")
    if parsed.scheme == "https":  # CONNECT tunnel: the proxy never sees the request or its headers
        conn = http.client.HTTPSConnection(p.hostname, p.port or 8080, timeout=deadline_s, context=_ssl_context())
        conn.set_tunnel(host, port or 443, headers=proxy_headers)
        return conn, path, {}
    conn = http.client.HTTPConnection(p.hostname, p.port or 8080, timeout=deadline_s)
    return conn, urllib.parse.urlunsplit(parsed._replace(fragment="")), proxy_headers


def is_loopback(host: str | None) -> bool:
    return (host or "") in ("localhost", "127.0.0.1", "::1") or (host or "").startswith("127.")


def redact_secret(message: str, secret: str | None) -> str:
    """`message` with `secret` (an API key) replaced by ***, also its first 8 or more characters where
    an excerpt cut it short ("sk-abc12..." or at the very end). Keys under 4 characters are left
    alone: they would blank ordinary text."""
    if not secret or len(secret) < 4:
        return message
    message = message.replace(secret, "***")
    for n in range(len(secret) - 1, 7, -1):
        head = secret[:n]
        if head + "..." in message:
            message = message.replace(head + "...", "***...")
        if message.endswith(head):
            message = message[:-n] + "***"
    return message

