"""A server too slow to finish: deadlines must cut it off, whatever the client."""
from __future__ import annotations

import json
import socket
import threading
import time


class Dribbler:
    """A raw TCP server that sends a valid HTTP response one byte every `gap` seconds."""

    def __init__(self, gap: float, headers_too: bool):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(4)
        self.gap, self.headers_too = gap, headers_too
        self.stop = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.sock.getsockname()[1]}/v1"

    def _serve(self) -> None:
        self.sock.settimeout(0.2)
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            threading.Thread(target=self._dribble, args=(conn,), daemon=True).start()

    def _dribble(self, conn: socket.socket) -> None:
        body = json.dumps({"choices": [{"message": {"content": "x" * 200}, "finish_reason": "stop"}]}).encode()
        head = f"HTTP/1.0 200 OK\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode()
        try:
            conn.recv(65536)
            if not self.headers_too:
                conn.sendall(head)
            for b in (head + body if self.headers_too else body):
                if self.stop.is_set():
                    break
                conn.sendall(bytes([b]))
                time.sleep(self.gap)
        except OSError:
            pass
        finally:
            conn.close()

    def close(self) -> None:
        self.stop.set()
        self.sock.close()
