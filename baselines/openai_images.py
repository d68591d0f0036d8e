"""`openai-images`: image-edit endpoints that speak OpenAI's `POST /v1/images/edits` (OpenAI's image
models, vLLM-Omni and other compatible servers).

    ciebench evaluate --editor openai-images --editor-arg model=gpt-image-1 --editor-arg max_cost=5 ...

The request is multipart/form-data: `model`, `prompt`, `n=1`, `size`, `quality` and the source as the
`image` file (PNG); with `use_mask=true` the editor is an oracle-mask editor and also sends `mask`, a PNG
of the source's size whose alpha is 0 where the edit may happen (the ground-truth region) and 255
elsewhere, as the API documents. The reply's `data[0].b64_json` is the image (a `url` is fetched without
the key); it is resized back to the source size.

The API key is read from the environment variable named by `api_key_env` at request time and sent only
in the Authorization header of requests to `base_url` (image URLs are fetched without it); it never
reaches traces, caches or errors. Requests go through the LLM client's bounded transport
(`ciebench.llm.transport`): an overall deadline of `timeout_s` from connect to last byte, a size cap on
the reply, and redirects refused. HTTP 429 / 5xx and connection errors are retried
with exponential backoff and jitter (Retry-After honoured, capped). A refusal (content filter /
moderation block) is the result status "refused" with the server's message, never an image.

Every answer, image or refusal, is cached under `cache_root()/images-api/` by a content hash of everything
that decides it (endpoint, model, prompt, image and mask pixels, size, quality, sample seed), so a rerun of
the same benchmark into another folder sends no request. Cost: `price_per_image` plus token prices on the
reply's `usage`; after `max_cost` USD is spent no further request is sent (those samples fail with a
clear error and can be redone with a higher budget and --retry-failed).
"""
from __future__ import annotations

import base64
import io
import json
import logging
import os
import random
import re
import threading
import time
import urllib.parse
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ciebench.cache import cache_root
from ciebench.editor import EditorConfig, EditRequest, EditResult, Editor
from ciebench.io import atomic_write_bytes, atomic_write_json, png_bytes, stable_hash
from ciebench.llm.config import is_provider_host, key_env_for
from ciebench.llm.http_backend import RETRY_STATUS, parse_retry_after
from ciebench.llm.transport import TransportError, encode_multipart, get, post, redact_secret
from ciebench.status import EDITOR_FAILURE, Status

log = logging.getLogger("ciebench.openai_images")

DEFAULT_BASE_URL = "https://api.openai.com/v1"
CACHE_FORMAT = 1
MAX_REPLY_BYTES = 64 * 1024 * 1024  # a base64 PNG at the largest API size is well under this
_REFUSAL_CODES = ("moderation_blocked", "content_policy_violation", "content_filter", "safety")
_REFUSAL_TEXT = re.compile(r"safety system|content polic|moderation|content filter|refus", re.IGNORECASE)


@dataclass(frozen=True)
class OpenAIImagesConfig(EditorConfig):
    model: str = "gpt-image-1"
    base_url: str | None = None  # None: https://api.openai.com/v1
    # The NAME of the environment variable holding the key. None: the provider's own variable for its
    # host (OPENAI_API_KEY for api.openai.com), and no key for any other host.
    api_key_env: str | None = None
    size: str = "auto"  # e.g. 1024x1024, 1536x1024, 1024x1536, auto
    quality: str = "auto"  # low | medium | high | auto (model-dependent)
    use_mask: bool = False  # send the GT region as the API's mask (makes this an oracle-mask editor)
    timeout_s: float = 180.0
    max_retries: int = 4
    backoff_base_s: float = 1.0
    backoff_max_s: float = 30.0
    concurrency: int = 4  # requests in flight for one batch
    price_per_image: float = 0.0  # USD per generated image
    price_per_1m_input_tokens: float = 0.0  # USD, applied to the reply's usage.input_tokens
    price_per_1m_output_tokens: float = 0.0
    max_cost: float | None = None  # USD: no request is sent once this much has been spent

    def __post_init__(self) -> None:
        if self.base_url is not None and not re.match(r"^https?://", self.base_url):
            raise ValueError(f"base_url must start with http:// or https://, got {self.base_url!r}")
        if self.api_key_env is not None and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", self.api_key_env):
            raise ValueError("api_key_env is the NAME of an environment variable (e.g. OPENAI_API_KEY), not the key")
        if self.max_retries < 0 or self.concurrency < 1 or self.timeout_s <= 0:
            raise ValueError("max_retries >= 0, concurrency >= 1, timeout_s > 0")

    @property
    def endpoint(self) -> str:
        return (self.base_url or DEFAULT_BASE_URL).rstrip("/")

    @property
    def host(self) -> str | None:
        return urllib.parse.urlsplit(self.endpoint).hostname

    @property
    def key_env(self) -> str | None:
        return key_env_for(self.host, self.api_key_env)


@dataclass
class _Answer:
    status: str  # Status.OK | Status.REFUSED | EDITOR_FAILURE
    image: Image.Image | None = None
    error: str | None = None
    usage: dict[str, Any] | None = None
    attempts: int = 0
    retryable: bool = False
    retry_after: float | None = None


class OpenAIImagesEditor(Editor):
    name = "openai-images"
    version = "1"
    track = "direct"
    requires = ("api_key:OPENAI_API_KEY (or api_key_env)",)
    Config = OpenAIImagesConfig
    presets = {"gpt-image-1": {"model": "gpt-image-1"}}

    def __init__(self, config=None, **options):
        super().__init__(config, **options)
        self.oracle_mask = self.config.use_mask  # the runner then passes the GT mask and reports it as such
        self._lock = threading.Lock()
        self._rng = random.Random()
        self.stats = {"requests": 0, "cache_hits": 0, "retries": 0, "refused": 0, "cost": 0.0}

    def required_assets(self) -> list:
        """The endpoint every request goes to (no files): `prefetch` names it, `doctor --offline` refuses
        one that is not on this machine. Not probed: a probe would be a paid image edit."""
        from ciebench.requirements import endpoint

        return [endpoint(self.config.endpoint, self.config.model, used_by=f"editor {self.name}")]

    # ------------------------------------------------------------------------------------ editing
    def edit(self, requests: list[EditRequest]) -> list[EditResult]:
        if len(requests) == 1 or self.config.concurrency == 1:
            return [self._edit_one(r) for r in requests]
        with ThreadPoolExecutor(max_workers=min(len(requests), self.config.concurrency)) as pool:
            return list(pool.map(self._edit_one, requests))

    def _edit_one(self, r: EditRequest) -> EditResult:
        started = time.perf_counter()
        source = r.image.convert("RGB")
        mask = self._api_mask(r) if self.config.use_mask else None
        key = self.cache_key(r.instruction, source, mask, r.seed)
        answer, cached = self._cache_get(key), True
        if answer is None:
            cached = False
            budget = self._over_budget()
            if budget:
                return EditResult.failure(budget, trace={"cache_key": key})
            answer = self._request(r.instruction, source, mask)
            if answer.status in (Status.OK, Status.REFUSED):
                self._cache_put(key, answer)
        trace = {"model": self.config.model, "endpoint": self.config.endpoint, "cache_key": key, "cached": cached,
                 "attempts": answer.attempts, "usage": answer.usage or {},
                 "cost": 0.0 if cached else self._cost(answer), "mask_sent": mask is not None}
        timings = {"edit_seconds": time.perf_counter() - started}
        if answer.status == Status.OK:
            return EditResult(image=answer.image.convert("RGB").resize(source.size, Image.BICUBIC), trace=trace,
                              timings=timings)
        return EditResult(image=None, status=answer.status, error=answer.error, trace=trace, timings=timings)

    @staticmethod
    def _api_mask(r: EditRequest) -> Image.Image:
        if r.mask is None:
            raise ValueError(f"sample {r.sample_id}: use_mask=true but the sample has no ground-truth mask")
        region = np.asarray(r.mask.convert("L").resize(r.image.size, Image.NEAREST)) > 127
        rgba = np.zeros((*region.shape, 4), dtype=np.uint8)
        rgba[..., 3] = np.where(region, 0, 255)  # transparent = may be edited
        return Image.fromarray(rgba, "RGBA")

    def cache_key(self, prompt: str, image: Image.Image, mask: Image.Image | None, seed: int) -> str:
        c = self.config
        return stable_hash({"format": CACHE_FORMAT, "endpoint": c.endpoint, "model": c.model, "prompt": prompt,
                            "image": _pixels_sha(image), "mask": _pixels_sha(mask) if mask is not None else None,
                            "size": c.size, "quality": c.quality, "seed": seed}, length=64)

    # ------------------------------------------------------------------------------------ HTTP
    def _request(self, prompt: str, image: Image.Image, mask: Image.Image | None) -> _Answer:
        c = self.config
        fields = {"model": c.model, "prompt": prompt, "n": "1", "size": c.size, "quality": c.quality}
        files = {"image": ("image.png", png_bytes(image), "image/png")}
        if mask is not None:
            files["mask"] = ("mask.png", png_bytes(mask), "image/png")
        body, content_type = encode_multipart(fields, files)
        answer = _Answer(status=EDITOR_FAILURE, error="no attempt made")
        for attempt in range(c.max_retries + 1):
            if attempt:
                with self._lock:
                    self.stats["retries"] += 1
                time.sleep(self._backoff(attempt, answer.retry_after))
            answer = self._post(body, content_type)
            answer.attempts = attempt + 1
            if not answer.retryable:
                break
            log.info("%s: attempt %d failed (%s)", c.endpoint, attempt + 1, answer.error)
        if answer.retryable:
            answer.error = f"{answer.error} [after {answer.attempts} attempts]"
        return answer

    def _post(self, body: bytes, content_type: str) -> _Answer:
        c = self.config
        url = f"{c.endpoint}/images/edits"
        headers = {"Content-Type": content_type, "Accept": "application/json", "User-Agent": "ciebench-images/1"}
        secret = self._secret()
        if secret:
            headers["Authorization"] = f"Bearer {secret}"
        elif c.key_env and is_provider_host(c.host):
            return _Answer(status=EDITOR_FAILURE, error=f"environment variable {c.key_env} is not set (the API key for {c.endpoint})")
        with self._lock:
            self.stats["requests"] += 1
        try:  # one bounded request: overall deadline, size cap, redirects refused (the key must not follow)
            resp = post(url, body, headers, deadline_s=c.timeout_s, max_bytes=MAX_REPLY_BYTES)
        except TransportError as exc:
            return _Answer(status=EDITOR_FAILURE, error=self._redact(str(exc)), retryable=exc.kind in ("timeout", "transport"))
        if resp.status >= 400:
            message = self._redact(_error_message(resp.body))
            if resp.status == 400 and _is_refusal(resp.body):
                return _Answer(status=Status.REFUSED, error=f"refused by the server's content filter: {message}")
            return _Answer(status=EDITOR_FAILURE, error=f"HTTP {resp.status} from {url}: {message}",
                           retryable=resp.status in RETRY_STATUS, retry_after=parse_retry_after(resp.headers))
        return self._parse(resp.body)

    def _parse(self, raw: bytes) -> _Answer:
        try:
            payload = json.loads(raw)
            item = payload["data"][0]
        except (ValueError, KeyError, IndexError, TypeError):
            if _is_refusal(raw):
                return _Answer(status=Status.REFUSED, error=f"refused: {self._redact(_error_message(raw))}")
            return _Answer(status=EDITOR_FAILURE, error=f"malformed reply (no data[0]): {raw[:200]!r}", retryable=True)
        usage = payload.get("usage") if isinstance(payload.get("usage"), dict) else {}
        try:
            if item.get("b64_json"):
                data = base64.b64decode(item["b64_json"], validate=True)
            elif item.get("url"):
                data = self._download(item["url"])
            else:
                reason = item.get("revised_prompt") or item.get("refusal") or "no image in the reply"
                return _Answer(status=Status.REFUSED if _REFUSAL_TEXT.search(str(reason)) else EDITOR_FAILURE, error=str(reason),
                               usage=usage)
            image = Image.open(io.BytesIO(data))
            image.load()
        except Exception as exc:  # noqa: BLE001 - a broken image is a failed answer, retried
            return _Answer(status=EDITOR_FAILURE, error=f"unreadable image in the reply: {type(exc).__name__}: {exc}",
                           retryable=True, usage=usage)
        return _Answer(status=Status.OK, image=image, usage=usage)

    def _download(self, url: str) -> bytes:
        """An image URL from the reply: fetched without the Authorization header (it may be another host)."""
        resp = get(url, {"User-Agent": "ciebench-images/1"}, deadline_s=self.config.timeout_s,
                   max_bytes=MAX_REPLY_BYTES)
        if resp.status >= 400:
            raise OSError(f"HTTP {resp.status} fetching the reply's image URL")
        return resp.body

    def _backoff(self, retry: int, retry_after: float | None) -> float:
        c = self.config
        if retry_after is not None:
            return max(0.0, min(retry_after, c.backoff_max_s))
        with self._lock:
            return min(c.backoff_max_s, c.backoff_base_s * 2 ** (retry - 1)) * self._rng.uniform(0.5, 1.0)

    def _secret(self) -> str | None:
        name = self.config.key_env
        return (os.environ.get(name) if name else None) or None

    def _redact(self, text: str) -> str:
        return redact_secret(text, self._secret())

    # ------------------------------------------------------------------------------------ cost
    def _cost(self, answer: _Answer) -> float:
        if answer.status != Status.OK and not answer.usage:
            return 0.0
        c, usage = self.config, answer.usage or {}
        cost = (c.price_per_image if answer.status == Status.OK else 0.0) \
            + _int(usage.get("input_tokens")) / 1e6 * c.price_per_1m_input_tokens \
            + _int(usage.get("output_tokens")) / 1e6 * c.price_per_1m_output_tokens
        with self._lock:
            self.stats["cost"] = round(self.stats["cost"] + cost, 8)
            self.stats["refused"] += answer.status == Status.REFUSED
        return round(cost, 8)

    def _over_budget(self) -> str | None:
        limit = self.config.max_cost
        with self._lock:
            spent = self.stats["cost"]
        if limit is not None and spent >= limit:
            return f"max_cost reached: {spent:.4f} USD spent of {limit:.4f}; no request sent"
        return None

    # ------------------------------------------------------------------------------------ cache
    def _cache_dir(self) -> Path:
        return cache_root() / "images-api"

    def _cache_get(self, key: str) -> _Answer | None:
        folder = self._cache_dir() / key[:2]
        try:
            rec = json.loads((folder / f"{key}.json").read_text(encoding="utf-8"))
            if rec.get("key") != key or rec.get("format") != CACHE_FORMAT:
                return None
            image = None
            if rec["status"] == Status.OK:
                image = Image.open(folder / f"{key}.png")
                image.load()
        except (OSError, ValueError, KeyError):
            return None  # missing or corrupt: a miss
        with self._lock:
            self.stats["cache_hits"] += 1
        return _Answer(status=rec["status"], image=image, error=rec.get("error"), usage=rec.get("usage"))

    def _cache_put(self, key: str, answer: _Answer) -> None:
        folder = self._cache_dir() / key[:2]
        try:
            if answer.image is not None:
                atomic_write_bytes(folder / f"{key}.png", png_bytes(answer.image.convert("RGB")))
            atomic_write_json(folder / f"{key}.json", {"format": CACHE_FORMAT, "key": key, "status": answer.status,
                                                       "error": answer.error, "usage": answer.usage or {},
                                                       "model": self.config.model, "endpoint": self.config.endpoint})
        except OSError as exc:
            log.warning("could not write image cache entry %s: %s", key, exc)


def _pixels_sha(image: Image.Image) -> str:
    from ciebench.io import sha256_bytes

    return sha256_bytes(f"{image.mode}:{image.width}x{image.height}:".encode() + image.tobytes())


def _error_message(raw: bytes) -> str:
    try:
        err = json.loads(raw).get("error")
        if isinstance(err, dict):
            return str(err.get("message") or err.get("code") or err)[:400]
        if err:
            return str(err)[:400]
    except (ValueError, AttributeError):
        pass
    return raw.decode("utf-8", errors="replace")[:400]


def _is_refusal(raw: bytes) -> bool:
    try:
        err = json.loads(raw).get("error")
    except (ValueError, AttributeError):
        return False
    if not isinstance(err, dict):
        return False
    code = " ".join(str(err.get(k) or "") for k in ("code", "type")).lower()
    return any(c in code for c in _REFUSAL_CODES) or bool(_REFUSAL_TEXT.search(str(err.get("message") or "")))


def _int(v: Any) -> int:
    try:
        return max(0, int(v))
    except (TypeError, ValueError):
        return 0
