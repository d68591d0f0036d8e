"""Stand-ins for the judge tests: a Python source shaped like the authors' IDCS code (our own wording,
never theirs), a static file server on 127.0.0.1, and judge configs pointing at tests/support/llm_server.py."""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import threading
from contextlib import contextmanager
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Iterator

from PIL import Image

from ciebench.assets import PinnedAsset
from ciebench.llm import LLMConfig
from ciebench.metrics.idcs import JudgeConfig, JudgeItem

# Same structure as the pinned file (functions, assignments, a system dict, max_tokens keywords),
# different words, so the extraction rule is exercised without the authors' text in the repository.
STANDIN_SOURCE = '''import base64

def describe_image_changes(image_path1, image_path2, api_key, model_name="standin-vl"):
    prompt = """Look at picture one. \\
Then at picture two. \\
Tell me in one sentence what changed. \\
"""
    messages = [
        {'role': 'system', 'content': 'You are a stand-in inspector.'},
        {'role': 'user', 'content': [{'type': 'text', 'text': prompt}]},
    ]
    return client.chat.completions.create(model=model_name, messages=messages, stream=False, max_tokens=321)

def call_llm(prompt, api_key, model_name="standin-llm"):
    messages = [
        # {'role': 'system', 'content': 'ignored: commented out'},
        {'role': 'user', 'content': [{'type': 'text', 'text': prompt}]},
    ]
    return client.chat.completions.create(model=model_name, messages=messages, stream=False, max_tokens=17)

def llm_tt(instruction, sentence):
    prompt = f"""Grade the edit. \\
Be fair.\\n
The instruction is: {instruction}\\n
The sentence is: {sentence}\\n
Answer with one integer from 1 to 5.
"""
    return call_llm(prompt=prompt, api_key="", model_name="")
'''
# What Python makes of those literals (written out by hand: the independent expectation).
STANDIN_DESCRIBE = "Look at picture one. Then at picture two. Tell me in one sentence what changed. "
STANDIN_SYSTEM = "You are a stand-in inspector."
STANDIN_SCORE = ("Grade the edit. Be fair.\n\nThe instruction is: {{instruction}}\n\nThe sentence is: {{description}}\n\n"
                 "Answer with one integer from 1 to 5.\n")
SENTENCE = "The red apple on the table was replaced by a green pear."


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def standin_asset(url: str, data: bytes | None = None) -> PinnedAsset:
    data = STANDIN_SOURCE.encode() if data is None else data
    return PinnedAsset(name="idcs-paper/metrics_evaluation", url=url, sha256=sha256(data), source="stand-in",
                       filename="metrics_evaluation.py")


@dataclasses.dataclass
class FileServer:
    root: Path
    port: int
    hits: list[str]

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.port}/{name}"


@contextmanager
def serve_files(root: Path) -> Iterator[FileServer]:
    hits: list[str] = []

    class Handler(SimpleHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

        def do_GET(self) -> None:
            hits.append(self.path)
            super().do_GET()

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(root)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield FileServer(root, httpd.server_address[1], hits)
    finally:
        httpd.shutdown()
        httpd.server_close()


def judge_config(server, protocol: str = "idcs-v1", **kw) -> JudgeConfig:
    common = dict(base_url=server.base_url, api_key_env=None, timeout_s=1.0, max_retries=1,
                  backoff_base_s=0.01, backoff_max_s=0.05)
    common.update(kw)
    return JudgeConfig(name="test", vlm=LLMConfig(model="vlm-test", **common),
                       llm=LLMConfig(model="llm-test", **common), protocol=protocol)


def items(n: int, size: tuple[int, int] = (20, 16)) -> list[JudgeItem]:
    return [JudgeItem(str(i), Image.new("RGB", size, (10 * i, 0, 0)), Image.new("RGB", size, (0, 10 * i, 0)),
                      f"Replace the fruit of item-{i}.") for i in range(n)]
