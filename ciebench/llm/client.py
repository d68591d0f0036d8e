"""The one LLM / VLM client layer: OpenAI-compatible HTTP and local transformers back ends.

    client = make_client(LLMConfig(model="gpt-4o-mini"), cache_dir="runs/.llm-cache")
    reply = client.complete(get_template("idcs_score"), {"instruction": ..., "description": ...},
                            schema=SCORE_SCHEMA)
    if reply.status == "ok":
        use(reply.parsed)
    else:
        record_failure(reply.error)   # complete() never raises for a failed or invalid reply

Every call is keyed by a content hash (see `LLMClient.cache_key`); successful replies are stored as
one JSON file per key under `cache_dir`, so a second identical call sends no request. Transport
failures (timeouts, connection errors, HTTP 429 / 5xx) and invalid replies (unparsable, not matching
the JSON schema, rejected by the `validate` callback) are retried with exponential backoff and
jitter; after `max_retries` retries the reply comes back with status "error" and the reason.

The API key is read from the environment variable *named* by `LLMConfig.api_key_env` at request
time and only ever placed in the Authorization header: it is not part of the config, the cache key,
cache files, replies, errors, stats or logs (server messages that echo it are redacted).
"""
from __future__ import annotations

import base64
import dataclasses
import email.utils
import http.client
import json
import logging
import os
import random
import re
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Sequence

from PIL import Image

from ..io import atomic_write_json, png_bytes, sha256_bytes, stable_hash
from .prompts import PromptTemplate
from . import local_models

log = logging.getLogger("ciebench.llm")

BACKENDS = ("openai", "transformers")
RESPONSE_FORMATS = ("json_schema", "json_object", "none")
DEFAULT_OPENAI_BASE_URL = "https://api.openai.com/v1"
DEFAULT_OPENAI_MODEL = "gpt-4o-mini"
DEFAULT_LOCAL_MODEL = "Qwen/Qwen2.5-VL-7B-Instruct"
CACHE_FORMAT = 1
RETRY_STATUS = frozenset({408, 409, 425, 429}) | frozenset(range(500, 600))
_MAX_ERROR_TEXT = 400


@dataclass(frozen=True)
class LLMConfig:
    """How to reach one model. Part of run specs: JSON-able and free of secrets."""

    backend: str = "openai"  # "openai": any OpenAI-compatible server | "transformers": local model
    model: str | None = None  # None: gpt-4o-mini (openai) or Qwen/Qwen2.5-VL-7B-Instruct (transformers)
    base_url: str | None = None  # None: https://api.openai.com/v1 (openai backend only)
    api_key_env: str | None = "OPENAI_API_KEY"  # the NAME of the env variable holding the key
    temperature: float = 0.0
    max_tokens: int = 512
    seed: int | None = 0
    timeout_s: float = 60.0
    max_retries: int = 4  # retries after the first attempt
    concurrency: int = 8  # requests in flight at once through this client
    price_per_1k_input: float = 0.0  # USD per 1000 prompt tokens, for cost accounting
    price_per_1k_output: float = 0.0
    # How a JSON schema is sent: "json_schema" (structured outputs, strict), "json_object"
    # (JSON mode; for servers without json_schema) or "none". Replies are validated locally always.
    response_format: str = "json_schema"
    # Retries after an *invalid* reply resample with this temperature and seed + attempt, since a
    # greedy retry would repeat the same answer. None: retry with the original decoding parameters.
    retry_temperature: float | None = 0.7
    backoff_base_s: float = 1.0  # first backoff; doubles per retry, with jitter, up to backoff_max_s
    backoff_max_s: float = 30.0  # also caps a server's Retry-After
    image_max_side: int | None = None  # downscale images whose longer side exceeds this (None: as is)
    revision: str | None = None  # transformers: hub revision
    device: str | None = None  # transformers: None = cuda when available, else cpu
    dtype: str = "auto"  # transformers: auto (bf16 on GPU, fp32 on CPU) | float32 | bfloat16 | float16

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ValueError(f"LLMConfig.backend must be one of {BACKENDS}, got {self.backend!r}")
        if self.model is None:
            object.__setattr__(self, "model", DEFAULT_OPENAI_MODEL if self.backend == "openai" else DEFAULT_LOCAL_MODEL)
        if not self.model:
            raise ValueError("LLMConfig.model is empty")
        if self.base_url is not None and not re.match(r"^https?://", self.base_url):
            raise ValueError(f"LLMConfig.base_url must start with http:// or https://, got {self.base_url!r}")
        if self.response_format not in RESPONSE_FORMATS:
            raise ValueError(f"LLMConfig.response_format must be one of {RESPONSE_FORMATS}")
        if self.max_retries < 0 or self.concurrency < 1 or self.max_tokens < 1 or self.timeout_s <= 0:
            raise ValueError("LLMConfig: max_retries >= 0, concurrency >= 1, max_tokens >= 1, timeout_s > 0")
        if self.api_key_env is not None and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", self.api_key_env):
            raise ValueError("LLMConfig.api_key_env is the NAME of an environment variable (e.g. "
                             "OPENAI_API_KEY), not the key itself")

    @property
    def endpoint(self) -> str | None:
        if self.backend != "openai":
            return None
        return (self.base_url or DEFAULT_OPENAI_BASE_URL).rstrip("/")

    @property
    def model_id(self) -> str:
        """`backend:model[@endpoint or revision]`, for manifests."""
        where = self.endpoint if self.backend == "openai" else self.revision
        return f"{self.backend}:{self.model}" + (f"@{where}" if where else "")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def hash(self) -> str:
        return stable_hash(self.to_dict())

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "LLMConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown LLMConfig fields {unknown}; known: {sorted(known)}")
        return cls(**data)


@dataclass
class LLMReply:
    text: str | None
    parsed: Any | None  # the JSON value for schema calls, else the text
    status: str  # "ok" | "error"
    error: str | None = None
    cached: bool = False
    attempts: int = 0  # requests sent for this call (0 for a cache hit)
    usage: dict[str, Any] = field(default_factory=dict)  # prompt_tokens, completion_tokens, cost
    latency_s: float = 0.0
    key: str | None = None  # the cache key
    model: str | None = None  # the model name the server reported (e.g. a dated snapshot)

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class LLMCall:
    """One `complete` call, for `complete_many`."""

    template: PromptTemplate
    variables: dict[str, Any] = field(default_factory=dict)
    images: Sequence[Image.Image] = ()
    schema: dict | None = None
    validate: Callable[[Any], str | None] | None = None


@dataclass
class _Request:
    system: str | None
    text: str
    images: list[Image.Image]
    schema: dict | None
    schema_name: str


@dataclass
class _Outcome:
    text: str | None = None
    usage: dict[str, int] = field(default_factory=dict)
    served_model: str | None = None
    error: str | None = None
    kind: str = "ok"  # ok | transport | timeout | http | malformed | fatal
    retryable: bool = False
    retry_after: float | None = None


class LLMClient:
    def __init__(self, config: LLMConfig, cache_dir: str | Path | None = None):
        self.config = config
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self._sem = threading.BoundedSemaphore(config.concurrency)
        self._lock = threading.Lock()
        self._rng = random.Random()
        self._validators: dict[str, Any] = {}
        self._served: set[str] = set()
        self._stats = dict(calls=0, requests=0, cache_hits=0, retries=0, failures=0, invalid_replies=0,
                           http_errors=0, timeouts=0, prompt_tokens=0, completion_tokens=0, cost=0.0)
        self._backend = _OpenAIBackend(self) if config.backend == "openai" else _TransformersBackend(self)

    # ----------------------------------------------------------------------------------------- API
    @property
    def stats(self) -> dict[str, Any]:
        with self._lock:
            out = dict(self._stats)
        out["cost"] = round(out["cost"], 8)
        return out

    @property
    def model_id(self) -> str:
        return self.config.model_id

    @property
    def served_models(self) -> list[str]:
        """Model names the server reported in its replies (or the local revision)."""
        with self._lock:
            return sorted(self._served)

    def complete(self, template: PromptTemplate, variables: dict[str, Any] | None = None,
                 images: Sequence[Image.Image] = (), schema: dict | None = None,
                 validate: Callable[[Any], str | None] | None = None) -> LLMReply:
        """Render `template` with `variables`, send it with `images` (in order, before the text) and
        return the reply. With `schema`, the reply must be JSON matching it; `validate(parsed)` may
        return a reason to reject an answer (None accepts it). Never raises for a failed call; template
        errors (missing or unexpected variables) and invalid schemas raise, as they are caller bugs."""
        t0 = time.monotonic()
        variables = dict(variables or {})
        text = template.render(**variables)
        system = template.render_system(**variables)
        if schema is not None:
            self._validator(schema)  # raises on an invalid schema
        prepared = [self._prepare_image(im) for im in images]
        image_shas = [_image_sha256(im) for im in prepared]
        key = self.cache_key(template, system, text, image_shas, schema)
        with self._lock:
            self._stats["calls"] += 1

        cached = self._cache_get(key, schema, validate)
        if cached is not None:
            with self._lock:
                self._stats["cache_hits"] += 1
            text_c, parsed_c, rec = cached
            return LLMReply(text=text_c, parsed=parsed_c, status="ok", cached=True, attempts=0,
                            usage=dict(rec.get("usage") or {}), latency_s=time.monotonic() - t0, key=key,
                            model=rec.get("served_model"))

        request = _Request(system=system, text=text, images=prepared, schema=schema,
                           schema_name=_schema_name(schema, template.name))
        usage = {"prompt_tokens": 0, "completion_tokens": 0, "cost": 0.0}
        attempts = 0
        last_error = "no attempt made"
        temperature, seed = self.config.temperature, self.config.seed
        served = None
        for attempt in range(self.config.max_retries + 1):
            if attempt:
                with self._lock:
                    self._stats["retries"] += 1
            attempts += 1
            with self._sem:
                try:
                    outcome = self._backend.generate(request, temperature, seed)
                except Exception as exc:  # a back-end bug or a local model failure: never raise
                    outcome = _Outcome(error=f"{type(exc).__name__}: {exc}", kind="fatal")
            if outcome.text:  # a server that echoes the key must not get it into caches or traces
                outcome.text = self._redact(outcome.text)
            if outcome.served_model:
                outcome.served_model = self._redact(outcome.served_model)
            self._account(outcome, usage)
            served = outcome.served_model or served
            if outcome.error is not None:
                last_error = self._redact(outcome.error)
                if not outcome.retryable or attempt == self.config.max_retries:
                    break
                delay = self._backoff(attempt + 1, outcome.retry_after)
                log.info("%s: attempt %d failed (%s); retrying in %.2fs", self.config.model_id, attempts,
                         last_error, delay)
                time.sleep(delay)
                continue
            parsed, problem = self._check(outcome.text, schema, validate)
            if problem is None:
                self._cache_put(key, template, request, image_shas, outcome.text, parsed, usage, served,
                                attempts, temperature)
                return LLMReply(text=outcome.text, parsed=parsed, status="ok", attempts=attempts, usage=usage,
                                latency_s=time.monotonic() - t0, key=key, model=served)
            with self._lock:
                self._stats["invalid_replies"] += 1
            last_error = self._redact(f"invalid reply: {problem}")
            log.info("%s: attempt %d gave an invalid reply (%s)", self.config.model_id, attempts, last_error)
            if self.config.retry_temperature is not None:
                temperature = max(self.config.temperature, self.config.retry_temperature)
                seed = (self.config.seed or 0) + attempt + 1
        with self._lock:
            self._stats["failures"] += 1
        error = f"{last_error} [after {attempts} attempt{'s' if attempts != 1 else ''}]"
        log.warning("%s: call failed: %s", self.config.model_id, error)
        return LLMReply(text=None, parsed=None, status="error", error=error, attempts=attempts, usage=usage,
                        latency_s=time.monotonic() - t0, key=key, model=served)

    def complete_many(self, calls: Sequence[LLMCall]) -> list[LLMReply]:
        """Run `calls` concurrently (at most `config.concurrency` requests in flight); results in order."""
        calls = list(calls)
        if not calls:
            return []
        workers = min(len(calls), self.config.concurrency)
        if workers == 1:
            return [self.complete(c.template, c.variables, c.images, c.schema, c.validate) for c in calls]
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="ciebench-llm") as pool:
            futures = [pool.submit(self.complete, c.template, c.variables, c.images, c.schema, c.validate)
                       for c in calls]
            return [f.result() for f in futures]

    def cache_key(self, template: PromptTemplate, system: str | None, text: str, image_shas: Sequence[str],
                  schema: dict | None) -> str:
        """sha256 over everything that determines the answer: back end, model, endpoint / revision,
        template (name, version, hash), rendered system and user text, decoding parameters, the schema
        and how it is sent, the images' preprocessing and the sha256 of every image."""
        c = self.config
        material = {
            "format": CACHE_FORMAT,
            "backend": c.backend,
            "model": c.model,
            "endpoint": c.endpoint,
            "revision": c.revision,
            "template": {"name": template.name, "version": template.version, "hash": template.hash},
            "system": system,
            "text": text,
            "decoding": {"temperature": c.temperature, "max_tokens": c.max_tokens, "seed": c.seed},
            "schema": schema,
            "response_format": c.response_format if schema is not None else None,
            "image_max_side": c.image_max_side,
            "images": list(image_shas),
        }
        return stable_hash(material, length=64)

    # ------------------------------------------------------------------------------------ helpers
    def _account(self, outcome: _Outcome, usage: dict[str, Any]) -> None:
        p = int(outcome.usage.get("prompt_tokens") or 0)
        q = int(outcome.usage.get("completion_tokens") or 0)
        cost = p / 1000.0 * self.config.price_per_1k_input + q / 1000.0 * self.config.price_per_1k_output
        usage["prompt_tokens"] += p
        usage["completion_tokens"] += q
        usage["cost"] = round(usage["cost"] + cost, 8)
        with self._lock:
            if outcome.kind != "fatal" or outcome.usage:
                self._stats["requests"] += 1
            self._stats["prompt_tokens"] += p
            self._stats["completion_tokens"] += q
            self._stats["cost"] += cost
            if outcome.kind == "http":
                self._stats["http_errors"] += 1
            elif outcome.kind == "timeout":
                self._stats["timeouts"] += 1
            elif outcome.kind == "malformed":
                self._stats["invalid_replies"] += 1
            if outcome.served_model:
                self._served.add(outcome.served_model)

    def _backoff(self, retry: int, retry_after: float | None) -> float:
        c = self.config
        if retry_after is not None:
            return max(0.0, min(retry_after, c.backoff_max_s))
        base = min(c.backoff_max_s, c.backoff_base_s * (2 ** (retry - 1)))
        with self._lock:
            return base * self._rng.uniform(0.5, 1.0)

    def _validator(self, schema: dict):
        import jsonschema

        h = stable_hash(schema)
        with self._lock:
            v = self._validators.get(h)
        if v is None:
            cls = jsonschema.validators.validator_for(schema)
            cls.check_schema(schema)
            v = cls(schema)
            with self._lock:
                self._validators[h] = v
        return v

    def _check(self, text: str | None, schema: dict | None,
               validate: Callable[[Any], str | None] | None) -> tuple[Any, str | None]:
        if not isinstance(text, str) or not text.strip():
            return None, "empty reply"
        parsed: Any = text
        if schema is not None:
            try:
                parsed = parse_json_reply(text)
            except ValueError as exc:
                return None, f"not valid JSON ({exc}): {_excerpt(text)}"
            errors = sorted(self._validator(schema).iter_errors(parsed), key=lambda e: list(e.path))
            if errors:
                e = errors[0]
                where = "/" + "/".join(str(p) for p in e.path) if e.path else "the top level"
                return None, f"does not match the schema at {where}: {e.message}"
        if validate is not None:
            try:
                problem = validate(parsed)
            except Exception as exc:  # the caller's check failed: treat the answer as invalid
                problem = f"validate() raised {type(exc).__name__}: {exc}"
            if problem:
                return None, f"rejected: {problem}"
        return parsed, None

    def _prepare_image(self, image: Image.Image) -> Image.Image:
        if not isinstance(image, Image.Image):
            raise TypeError(f"images must be PIL images, got {type(image).__name__}")
        im = image if image.mode == "RGB" else image.convert("RGB")
        side = self.config.image_max_side
        if side and max(im.size) > side:
            scale = side / max(im.size)
            im = im.resize((max(1, round(im.width * scale)), max(1, round(im.height * scale))),
                           Image.Resampling.BICUBIC)
        return im

    def _secret(self) -> str | None:
        name = self.config.api_key_env
        value = os.environ.get(name) if name else None
        return value or None

    def _redact(self, message: str) -> str:
        secret = self._secret()
        if secret and len(secret) >= 4:
            message = message.replace(secret, "***")
        return message

    # -------------------------------------------------------------------------------------- cache
    def _cache_path(self, key: str) -> Path | None:
        return self.cache_dir / key[:2] / f"{key}.json" if self.cache_dir is not None else None

    def _cache_get(self, key: str, schema, validate) -> tuple[str, Any, dict] | None:
        path = self._cache_path(key)
        if path is None or not path.is_file():
            return None
        try:
            rec = json.loads(path.read_text(encoding="utf-8"))
            if rec.get("key") != key or rec.get("format") != CACHE_FORMAT:
                return None
            reply = rec["reply"]
            text = reply["text"]
        except (OSError, ValueError, KeyError, TypeError):
            return None  # a corrupt entry is a miss; a successful call overwrites it
        parsed, problem = self._check(text, schema, validate)
        if problem is not None:  # e.g. a stricter validate() than when it was cached
            return None
        return text, parsed, reply

    def _cache_put(self, key: str, template: PromptTemplate, request: _Request, image_shas: Sequence[str],
                   text: str, parsed: Any, usage: dict, served: str | None, attempts: int,
                   temperature: float) -> None:
        path = self._cache_path(key)
        if path is None:
            return
        c = self.config
        rec = {
            "format": CACHE_FORMAT,
            "key": key,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "backend": c.backend,
            "model": c.model,
            "endpoint": c.endpoint,
            "revision": c.revision,
            "template": template.to_dict(),
            "request": {"system": request.system, "text": request.text, "images": list(image_shas),
                        "schema": request.schema,
                        "decoding": {"temperature": c.temperature, "max_tokens": c.max_tokens, "seed": c.seed}},
            "reply": {"text": text, "parsed": parsed if request.schema is not None else None, "usage": usage,
                      "served_model": served, "attempts": attempts, "temperature_used": temperature},
        }
        try:
            atomic_write_json(path, rec)
        except (OSError, TypeError) as exc:
            log.warning("could not write LLM cache entry %s: %s", path, exc)


def make_client(config: LLMConfig, cache_dir: str | Path | None = None) -> LLMClient:
    return LLMClient(config, cache_dir=cache_dir)


# ------------------------------------------------------------------------------------------ parsing
_FENCE = re.compile(r"^```[A-Za-z0-9_-]*[ \t]*\n(.*?)\n?```$", re.DOTALL)


def parse_json_reply(text: str) -> Any:
    """Parse a JSON answer. Accepted: the JSON value alone, surrounded by whitespace, or as the whole
    content of one markdown code fence. NaN / Infinity are rejected. Raises ValueError."""
    body = text.strip()
    m = _FENCE.match(body)
    if m:
        body = m.group(1).strip()

    def _reject(name: str) -> Any:
        raise ValueError(f"{name} is not JSON")

    return json.loads(body, parse_constant=_reject)


def _schema_name(schema: dict | None, default: str) -> str:
    raw = (schema or {}).get("title") or default
    name = re.sub(r"[^A-Za-z0-9_-]+", "_", str(raw)).strip("_") or "answer"
    return name[:64]


def _image_sha256(image: Image.Image) -> str:
    """sha256 of the pixels as sent (mode, size and raw bytes): independent of PNG encoder versions."""
    header = f"{image.mode}:{image.width}x{image.height}:".encode()
    return sha256_bytes(header + image.tobytes())


def _excerpt(text: str, n: int = 160) -> str:
    text = text.strip().replace("\n", " ")
    return text if len(text) <= n else text[:n] + "..."


def _retry_after(headers) -> float | None:
    if headers is None:
        return None
    ms = headers.get("retry-after-ms")
    if ms:
        try:
            return max(0.0, float(ms) / 1000.0)
        except ValueError:
            pass
    value = headers.get("Retry-After")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
        return max(0.0, (when - datetime.now(timezone.utc)).total_seconds())
    except (TypeError, ValueError):
        return None


# -------------------------------------------------------------------------------- OpenAI over HTTP
class _OpenAIBackend:
    """POST {endpoint}/chat/completions, as served by OpenAI, vLLM, Ollama, llama.cpp and DashScope."""

    def __init__(self, client: LLMClient):
        self.client = client
        self.config = client.config
        self.url = f"{self.config.endpoint}/chat/completions"
        self._opener = urllib.request.build_opener()

    def body(self, req: _Request, temperature: float, seed: int | None) -> dict[str, Any]:
        c = self.config
        messages: list[dict[str, Any]] = []
        if req.system is not None:
            messages.append({"role": "system", "content": req.system})
        if req.images:
            content: list[dict[str, Any]] = [
                {"type": "image_url",
                 "image_url": {"url": "data:image/png;base64," + base64.b64encode(png_bytes(im)).decode("ascii")}}
                for im in req.images]
            content.append({"type": "text", "text": req.text})
            messages.append({"role": "user", "content": content})
        else:
            messages.append({"role": "user", "content": req.text})
        body: dict[str, Any] = {"model": c.model, "messages": messages, "temperature": temperature,
                                "max_tokens": c.max_tokens, "stream": False}
        if seed is not None:
            body["seed"] = seed
        if req.schema is not None:
            if c.response_format == "json_schema":
                body["response_format"] = {"type": "json_schema", "json_schema": {
                    "name": req.schema_name, "schema": req.schema, "strict": True}}
            elif c.response_format == "json_object":
                body["response_format"] = {"type": "json_object"}
        return body

    def generate(self, req: _Request, temperature: float, seed: int | None) -> _Outcome:
        c = self.config
        headers = {"Content-Type": "application/json", "Accept": "application/json",
                   "User-Agent": "ciebench-llm/1"}
        secret = self.client._secret()
        if secret:
            headers["Authorization"] = f"Bearer {secret}"
        elif c.api_key_env and c.base_url is None:
            return _Outcome(error=f"environment variable {c.api_key_env} is not set (the API key for "
                                  f"{c.endpoint})", kind="fatal")
        data = json.dumps(self.body(req, temperature, seed)).encode("utf-8")
        http_req = urllib.request.Request(self.url, data=data, headers=headers, method="POST")
        try:
            with self._opener.open(http_req, timeout=c.timeout_s) as resp:
                status, raw = resp.status, resp.read()
        except urllib.error.HTTPError as exc:
            try:
                raw = exc.read()
            except Exception:  # noqa: BLE001 - the body is informative only
                raw = b""
            hint = ""
            if exc.code in (401, 403) and c.api_key_env and not secret:
                hint = f" (environment variable {c.api_key_env} is not set)"
            return _Outcome(error=f"HTTP {exc.code} from {self.url}: {_excerpt(_decode(raw), _MAX_ERROR_TEXT)}{hint}",
                            kind="http", retryable=exc.code in RETRY_STATUS, retry_after=_retry_after(exc.headers))
        except (TimeoutError, OSError, http.client.HTTPException, urllib.error.URLError) as exc:
            reason = getattr(exc, "reason", None) or exc
            timeout = isinstance(reason, TimeoutError) or isinstance(exc, TimeoutError)
            what = f"timed out after {c.timeout_s:g}s" if timeout else f"{type(reason).__name__}: {reason}"
            return _Outcome(error=f"request to {self.url} {what}" if timeout else f"connection error ({what})",
                            kind="timeout" if timeout else "transport", retryable=True)
        return self.parse(status, raw)

    def parse(self, status: int, raw: bytes) -> _Outcome:
        try:
            payload = json.loads(raw)
        except ValueError:
            return _Outcome(error=f"malformed response body (HTTP {status}, not JSON): {_excerpt(_decode(raw))}",
                            kind="malformed", retryable=True)
        if not isinstance(payload, dict):
            return _Outcome(error="malformed response body (not a JSON object)", kind="malformed", retryable=True)
        usage = payload.get("usage") if isinstance(payload.get("usage"), dict) else {}
        usage = {k: _int(usage.get(k)) for k in ("prompt_tokens", "completion_tokens")}
        served = payload.get("model") if isinstance(payload.get("model"), str) else None
        if "error" in payload and not payload.get("choices"):
            return _Outcome(error=f"server error: {_excerpt(json.dumps(payload['error']), _MAX_ERROR_TEXT)}",
                            kind="http", retryable=True, usage=usage, served_model=served)
        try:
            message = payload["choices"][0]["message"]
        except (KeyError, IndexError, TypeError):
            return _Outcome(error="malformed response body (no choices[0].message)", kind="malformed",
                            retryable=True, usage=usage, served_model=served)
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, list):  # some servers return content parts
            content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
        refusal = message.get("refusal") if isinstance(message, dict) else None
        if refusal and not content:
            content = None
        # An empty or non-string content is an invalid *reply* (retried as such), not a transport error.
        return _Outcome(text=content if isinstance(content, str) else None, usage=usage, served_model=served)


def _decode(raw: bytes) -> str:
    return raw.decode("utf-8", errors="replace")


def _int(v: Any) -> int:
    try:
        return max(0, int(v))
    except (TypeError, ValueError):
        return 0


# -------------------------------------------------------------------------------- local transformers
_LOCAL_MODELS = local_models._MODELS  # one instance per canonical (model, device, dtype); see local_models.py


class _LocalModel:
    """One loaded model (+ processor), shared by every client with the same model/revision/device/dtype."""

    def __init__(self, model: str, revision: str | None, device: str | None, dtype: str):
        import torch
        import transformers

        self.lock = threading.Lock()
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        if dtype == "auto":
            torch_dtype = torch.bfloat16 if self.device.startswith("cuda") else torch.float32
        else:
            torch_dtype = getattr(torch, dtype)
        kwargs = dict(revision=revision, trust_remote_code=False)
        self.vision = True
        try:
            self.processor = transformers.AutoProcessor.from_pretrained(model, **kwargs)
            self.model = transformers.AutoModelForImageTextToText.from_pretrained(model, dtype=torch_dtype, **kwargs)
        except ValueError:  # not an image-text-to-text architecture: a text-only chat model
            self.vision = False
            self.processor = transformers.AutoTokenizer.from_pretrained(model, **kwargs)
            self.model = transformers.AutoModelForCausalLM.from_pretrained(model, dtype=torch_dtype, **kwargs)
        self.model.to(self.device).eval()
        commit = getattr(self.model.config, "_commit_hash", None)
        self.served = f"{model}@{commit or revision or 'main'}"

    def generate(self, req: _Request, temperature: float, seed: int | None, max_tokens: int) -> _Outcome:
        import torch

        if req.images and not self.vision:
            return _Outcome(error="this local model is text-only and cannot take images", kind="fatal")
        messages: list[dict[str, Any]] = []
        if self.vision:
            if req.system is not None:
                messages.append({"role": "system", "content": [{"type": "text", "text": req.system}]})
            messages.append({"role": "user", "content": [{"type": "image"} for _ in req.images]
                             + [{"type": "text", "text": req.text}]})
            prompt = self.processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            inputs = self.processor(text=[prompt], images=list(req.images) or None, return_tensors="pt")
            tokenizer = self.processor.tokenizer
        else:
            if req.system is not None:
                messages.append({"role": "system", "content": req.system})
            messages.append({"role": "user", "content": req.text})
            prompt = self.processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            inputs = self.processor([prompt], return_tensors="pt")
            tokenizer = self.processor
        inputs = inputs.to(self.device)
        n_in = int(inputs["input_ids"].shape[1])
        gen: dict[str, Any] = {"max_new_tokens": max_tokens}
        if temperature and temperature > 0:
            gen.update(do_sample=True, temperature=float(temperature), top_p=1.0, top_k=0)
        else:
            gen.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        if tokenizer.pad_token_id is None and tokenizer.eos_token_id is not None:
            gen["pad_token_id"] = tokenizer.eos_token_id
        with self.lock, torch.inference_mode():
            if gen["do_sample"]:
                torch.manual_seed(int(seed or 0))
            out = self.model.generate(**inputs, **gen)
        new = out[0, n_in:]
        text = tokenizer.decode(new, skip_special_tokens=True)
        return _Outcome(text=text, usage={"prompt_tokens": n_in, "completion_tokens": int(new.shape[0])},
                        served_model=self.served)


class _TransformersBackend:
    """A local transformers chat model (Qwen2.5-VL-class by default), loaded once per process."""

    def __init__(self, client: LLMClient):
        self.config = client.config
        self._model: _LocalModel | None = None
        self._error: str | None = None

    def load(self) -> _LocalModel:
        c = self.config
        key = local_models.model_key(c.model, c.revision, c.device, c.dtype)
        return local_models.shared(key, lambda: _LocalModel(c.model, c.revision, key[3], c.dtype))

    def generate(self, req: _Request, temperature: float, seed: int | None) -> _Outcome:
        if self._error is not None:
            return _Outcome(error=self._error, kind="fatal")
        if self._model is None:
            try:
                self._model = self.load()
            except Exception as exc:  # offline without the weights, out of memory, ...
                self._error = f"could not load local model {self.config.model!r}: {type(exc).__name__}: {exc}"
                return _Outcome(error=self._error, kind="fatal")
        return self._model.generate(req, temperature, seed, self.config.max_tokens)


def release_local_models() -> None:
    """Drop every loaded local model (frees memory; the next call loads again)."""
    local_models.release_all()


__all__ = ["LLMConfig", "LLMReply", "LLMCall", "LLMClient", "make_client", "parse_json_reply",
           "release_local_models", "BACKENDS", "DEFAULT_LOCAL_MODEL"]
