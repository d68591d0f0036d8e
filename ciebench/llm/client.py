"""The one LLM / VLM client layer: OpenAI-compatible HTTP and local transformers back ends.

    client = make_client(LLMConfig(model="gpt-4o-mini"), cache_dir="runs/.llm-cache")
    reply = client.complete(get_template("idcs_score"), {"instruction": ..., "description": ...},
                            schema=SCORE_SCHEMA)
    if reply.status == "ok":
        use(reply.parsed)
    else:
        record_failure(reply.error)   # complete() never raises for a failed or invalid reply

Every call is keyed by a content hash (see `LLMClient.cache_key`); successful replies are stored as
one JSON file per key under `cache_dir`, so a second identical call sends no request (unless it asks
`refresh`). Transport failures (timeouts, connection errors, HTTP 429 / 5xx) and invalid replies (unparsable, not matching
the JSON schema, rejected by the `validate` callback) are retried with exponential backoff and
jitter; after `max_retries` retries the reply comes back with status "error" and the reason.

The API key is read at request time from the environment variable *named* by
`LLMConfig.api_key_env`, or, when that is unset, from the variable that belongs to the provider the
endpoint is (OPENAI_API_KEY for api.openai.com, DASHSCOPE_API_KEY for DashScope, ...; see
`PROVIDER_KEY_ENVS`): a custom `base_url` never silently receives a provider's key. It is only ever
placed in the Authorization header of a request to the configured host (redirects are refused, see
transport.py), and is not part of the config, the cache key, cache files, replies, errors, stats or
logs (server messages that echo it are redacted). Sending a key over plain http to a host other than
this machine logs a warning.

Each failed reply carries a `failure` class (`FAILURE_CLASSES`), so judges can count transport
problems, rate limits, server errors, content filters and unusable answers apart; none of them is
ever a score.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import random
import re
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from PIL import Image

from ciebench.io import sha256_bytes, stable_hash

from .cache import CACHE_FORMAT, ReplyCache
from .config import BACKENDS, DEFAULT_LOCAL_MODEL, FAILURE_CLASSES, PROVIDER_KEY_ENVS, LLMConfig
from .exchange import ModelOutcome, ModelRequest, excerpt
from .http_backend import OpenAIBackend
from .local_backend import TransformersBackend, release_local_models
from .prompts import PromptTemplate
from .transport import is_loopback, redact_secret

log = logging.getLogger("ciebench.llm")

# A retry after an invalid reply resamples with seed + n * RETRY_SEED_STRIDE (n-th retry). Callers give
# several clients consecutive seeds (judge pass k: base + k; editor seeds 0, 1, 2): with seed + n, pass
# k's retry sent exactly pass k+1's request, so two "independent" passes were one draw. With the stride,
# retry seeds never equal any first-attempt seed base + k for k < RETRY_SEED_STRIDE, nor each other.
RETRY_SEED_STRIDE = 1_000_000


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
    failure: str | None = None  # one of FAILURE_CLASSES when status is "error"
    finish_reason: str | None = None
    refusal: str | None = None  # the provider's refusal text, if it refused
    provider_host: str | None = None
    http_status: int | None = None  # of the last request sent
    temperature: float | None = None  # as sent on the attempt that produced this reply
    seed: int | None = None
    response_format: str | None = None  # as sent: json_schema | json_object | prompt (fallback) | none

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def served_model(self) -> str | None:
        return self.model

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class LLMCall:
    """One `complete` call, for `complete_many`."""

    template: PromptTemplate
    variables: dict[str, Any] = field(default_factory=dict)
    images: Sequence[Image.Image | str] = ()
    schema: dict | None = None
    validate: Callable[[Any], str | None] | None = None
    text_first: bool = False


@dataclass(frozen=True)
class PreparedCall:
    """A call rendered exactly as it is sent: the request, its cache key, and what decides acceptance."""

    key: str
    request: ModelRequest
    image_shas: tuple[str, ...]
    template: PromptTemplate
    schema: dict | None = None


class LLMClient:
    def __init__(self, config: LLMConfig, cache_dir: str | Path | None = None):
        self.config = config
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self._cache = ReplyCache(self.cache_dir, config)
        self._sem = threading.BoundedSemaphore(config.concurrency)
        self._lock = threading.Lock()
        self._rng = random.Random()
        self._validators: dict[str, Any] = {}
        # per served model name, the calls it answered (live or from the cache): see `served_counts`
        self._served: Counter[str] = Counter()
        # Set when the provider rejected response_format once: later calls ask for JSON in the prompt.
        self.format_fallback = False
        self._warned_plain_http = False
        self._stats = dict(calls=0, requests=0, cache_hits=0, retries=0, failures=0, invalid_replies=0,
                           http_errors=0, timeouts=0, prompt_tokens=0, completion_tokens=0, cost=0.0)
        self._backend = OpenAIBackend(self) if config.backend == "openai" else TransformersBackend(self)

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
        """Model names that answered this client's calls (`served_counts`' keys, sorted)."""
        with self._lock:
            return sorted(self._served)

    @property
    def served_counts(self) -> dict[str, int]:
        """Per model name the server reported (or the local revision), how many of this client's calls
        it answered: the model named by each reply `complete` returned. A cache hit counts for the model
        recorded with the cached answer, so a re-score from the cache still names who gave its answers
        (and a run half from an older cache names both snapshots)."""
        with self._lock:
            return dict(sorted(self._served.items()))

    def complete(self, template: PromptTemplate, variables: dict[str, Any] | None = None,
                 images: Sequence[Image.Image | str] = (), schema: dict | None = None,
                 validate: Callable[[Any], str | None] | None = None, text_first: bool = False,
                 may_retry: Callable[[], bool] | None = None, refresh: bool = False) -> LLMReply:
        """Render `template` with `variables`, send it with `images` (in order, before the text unless
        `text_first`; a `str` among them is a text part in that place, for protocols that label their
        images) and return the reply. With `schema`, the reply must be JSON matching it;
        `validate(parsed)` may return a reason to reject an answer (None accepts it). `may_retry()` is
        asked before every retry (a cost cap reserves the attempt there); False ends the call with the
        last failure. `refresh` sends the call even when the cache holds a reply for it, and the fresh
        valid reply replaces the cached one: for a caller that found the cached answer unusable (a judge
        reply its parser could not read), since the cache accepts any reply `validate` lets through.
        Never raises for a failed call; template errors (missing or unexpected variables)
        and invalid schemas raise, as they are caller bugs."""
        t0 = time.monotonic()
        call = self.prepare(template, variables, images, schema, text_first)
        request, image_shas, key = call.request, list(call.image_shas), call.key
        with self._lock:
            self._stats["calls"] += 1
        hit = None if refresh else self._cached_reply(key, schema, validate, t0)
        if hit is not None:
            with self._lock:
                self._stats["cache_hits"] += 1
            self._note_served(hit.model)
            return hit
        usage = {"prompt_tokens": 0, "completion_tokens": 0, "cost": 0.0}
        attempts = 0
        last_error = "no attempt made"
        temperature, seed = self.config.temperature, self.config.seed
        served = None
        last: ModelOutcome | None = None
        failure = "transport"
        for attempt in range(self.config.max_retries + 1):
            if attempt:
                if may_retry is not None and not may_retry():
                    last_error += " (no retry: the caller's limit refused it)"
                    break
                with self._lock:
                    self._stats["retries"] += 1
            attempts += 1
            with self._sem:
                try:
                    outcome = self._backend.generate(request, temperature, seed)
                except Exception as exc:  # a back-end bug or a local model failure: never raise
                    outcome = ModelOutcome(error=f"{type(exc).__name__}: {exc}", kind="fatal", failure="server_error")
            self._redact_outcome(outcome)
            self._account(outcome, usage)
            served = outcome.served_model or served
            last = outcome
            if outcome.error is not None:
                last_error = outcome.error
                failure = outcome.failure or "transport"
                if not outcome.retryable or attempt == self.config.max_retries:
                    break
                delay = self._backoff(attempt + 1, outcome.retry_after)
                log.info("%s: attempt %d failed (%s); retrying in %.2fs", self.config.model_id, attempts,
                         last_error, delay)
                time.sleep(delay)
                continue
            parsed, problem, failure = self._check(outcome.text, schema, validate)
            if problem is None:
                self._cache.put(key, template, request, image_shas, outcome, parsed, usage, served,
                                attempts, temperature, seed)
                self._note_served(served)
                return LLMReply(text=outcome.text, parsed=parsed, status="ok", attempts=attempts, usage=usage,
                                latency_s=time.monotonic() - t0, key=key, model=served,
                                **self._reply_facts(outcome, temperature, seed))
            with self._lock:
                self._stats["invalid_replies"] += 1
            last_error = self.redact(f"invalid reply: {problem}")
            log.info("%s: attempt %d gave an invalid reply (%s)", self.config.model_id, attempts, last_error)
            if self.config.retry_temperature is not None and self.config.temperature is not None:
                temperature = max(self.config.temperature, self.config.retry_temperature)
            if self.config.seed is not None:  # the first attempt keeps config.seed (cache keys unchanged)
                seed = self.config.seed + (attempt + 1) * RETRY_SEED_STRIDE
        with self._lock:
            self._stats["failures"] += 1
        self._note_served(served)
        error = f"{last_error} [after {attempts} attempt{'s' if attempts != 1 else ''}]"
        log.warning("%s: call failed: %s", self.config.model_id, error)
        facts = self._reply_facts(last, temperature, seed) if last is not None else {}
        return LLMReply(text=None, parsed=None, status="error", error=error, attempts=attempts, usage=usage,
                        latency_s=time.monotonic() - t0, key=key, model=served, failure=failure, **facts)

    def lookup(self, template: PromptTemplate, variables: dict[str, Any] | None = None,
               images: Sequence[Image.Image | str] = (), schema: dict | None = None,
               validate: Callable[[Any], str | None] | None = None, text_first: bool = False) -> LLMReply | None:
        """The cached reply `complete` would return for this call, or None when it would send a request
        (for dry runs and cost limits). Sends nothing and counts nothing."""
        key = self.prepare(template, variables, images, schema, text_first).key
        return self._cached_reply(key, schema, validate, time.monotonic())

    def prepare(self, template: PromptTemplate, variables: dict[str, Any] | None = None,
                images: Sequence[Image.Image | str] = (), schema: dict | None = None,
                text_first: bool = False) -> PreparedCall:
        """The call `complete` would send, rendered and keyed, without sending it."""
        variables = dict(variables or {})
        text = template.render(**variables)
        system = template.render_system(**variables)
        if schema is not None:
            self._validator(schema)  # raises on an invalid schema
        prepared = [im if isinstance(im, str) else self.prepare_image(im) for im in images]
        image_shas = [f"text:{sha256_bytes(im.encode('utf-8'))}" if isinstance(im, str) else _image_sha256(im)
                      for im in prepared]
        key = self.cache_key(template, system, text, image_shas, schema, text_first)
        request = ModelRequest(system=system, text=text, images=prepared, schema=schema,
                               schema_name=_schema_name(schema, template.name), text_first=text_first)
        return PreparedCall(key, request, tuple(image_shas), template, schema)

    def request_body(self, call: PreparedCall) -> dict[str, Any]:
        """The exact JSON body a live HTTP call sends for `call` (for the Batch API's input file)."""
        if not isinstance(self._backend, OpenAIBackend):
            raise TypeError("request bodies exist for the OpenAI-compatible HTTP back end only")
        fmt = self.config.response_format if call.schema is not None else "none"
        return self._backend.body(call.request, self.config.temperature, self.config.seed, fmt)

    def accept(self, call: PreparedCall, http_status: int, body: bytes,
               validate: Callable[[Any], str | None] | None = None) -> tuple[bool, float]:
        """Take a reply obtained outside `complete` (a Batch API result line) as if it were a live one:
        parse, account, check against the schema and `validate`, and cache it when valid. Returns
        whether it was accepted (a rejected reply leaves the call to be sent live) and the cost its
        usage bills at list price, accepted or not."""
        if http_status >= 400 or not isinstance(self._backend, OpenAIBackend):
            return False, 0.0
        outcome = self._backend.parse(http_status, body)
        usage = {"prompt_tokens": 0, "completion_tokens": 0, "cost": 0.0}
        if outcome.error is not None:
            return False, 0.0
        self._redact_outcome(outcome)
        self._account(outcome, usage)
        parsed, problem, _ = self._check(outcome.text, call.schema, validate)
        if problem is not None:
            return False, usage["cost"]
        self._cache.put(call.key, call.template, call.request, list(call.image_shas), outcome, parsed, usage,
                        outcome.served_model, 1, self.config.temperature, self.config.seed)
        return True, usage["cost"]

    def _cached_reply(self, key: str, schema: dict | None, validate, t0: float) -> LLMReply | None:
        rec = self._cache.get(key)
        if rec is None:
            return None
        text_c = rec["text"]
        parsed_c, problem, _ = self._check(text_c, schema, validate)
        if problem is not None:  # e.g. a stricter validate() than when it was cached
            return None
        return LLMReply(text=text_c, parsed=parsed_c, status="ok", cached=True, attempts=0,
                        usage=dict(rec.get("usage") or {}), latency_s=time.monotonic() - t0, key=key,
                        model=rec.get("served_model"), finish_reason=rec.get("finish_reason"),
                        provider_host=self.config.host, temperature=rec.get("temperature_used"),
                        seed=rec.get("seed_used"), response_format=rec.get("response_format"))

    def complete_many(self, calls: Sequence[LLMCall]) -> list[LLMReply]:
        """Run `calls` concurrently (at most `config.concurrency` requests in flight); results in order."""
        calls = list(calls)
        if not calls:
            return []
        workers = min(len(calls), self.config.concurrency)
        if workers == 1:
            return [self.complete(c.template, c.variables, c.images, c.schema, c.validate, c.text_first)
                    for c in calls]
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="ciebench-llm") as pool:
            futures = [pool.submit(self.complete, c.template, c.variables, c.images, c.schema, c.validate,
                                   c.text_first) for c in calls]
            return [f.result() for f in futures]

    def cache_key(self, template: PromptTemplate, system: str | None, text: str, image_shas: Sequence[str],
                  schema: dict | None, text_first: bool = False) -> str:
        """sha256 over everything that determines the answer: back end, model, endpoint / revision,
        template (name, version, hash), rendered system and user text, decoding parameters, the schema
        and how it is sent, the images' preprocessing, the sha256 of every image, and for a local model
        its device type and dtype."""
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
            "decoding": {"temperature": c.temperature, "max_tokens": c.max_tokens, "seed": c.seed,
                         **({"token_limit_field": c.token_limit_field}
                            if c.token_limit_field != "max_tokens" else {})},
            "schema": schema,
            "response_format": c.response_format if schema is not None else None,
            "image_max_side": c.image_max_side,
            "images": list(image_shas),
        }
        if text_first:  # only when set, so existing cache keys stay valid
            material["text_first"] = True
        if c.backend == "transformers":
            # a local model's numerics: "auto" is bfloat16 on a GPU and float32 on a CPU, and greedy
            # decoding can answer differently in each, so a GPU run must not reuse a CPU run's verdicts
            from .local_models import canonical_device, canonical_dtype

            device = canonical_device(c.device)
            material["placement"] = {"device": device.split(":")[0], "dtype": canonical_dtype(c.dtype, device)}
        return stable_hash(material, length=64)

    # ------------------------------------------------------------------------------------ helpers
    def _reply_facts(self, outcome: ModelOutcome, temperature: float | None, seed: int | None) -> dict[str, Any]:
        return dict(finish_reason=outcome.finish_reason, refusal=outcome.refusal, provider_host=self.config.host,
                    http_status=outcome.http_status, temperature=temperature, seed=seed,
                    response_format=outcome.response_format)

    def _account(self, outcome: ModelOutcome, usage: dict[str, Any]) -> None:
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

    def _note_served(self, model: str | None) -> None:
        """Count one returned reply for the model that gave it (per call, not per attempt, so the counts
        match the served models the callers' records name)."""
        if model:
            with self._lock:
                self._served[model] += 1

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
               validate: Callable[[Any], str | None] | None) -> tuple[Any, str | None, str | None]:
        """(parsed, problem, failure class); problem None means the answer is accepted."""
        if not isinstance(text, str) or not text.strip():
            return None, "empty reply", "unparsable"
        parsed: Any = text
        if schema is not None:
            try:
                parsed = parse_json_reply(text)
            except ValueError as exc:
                return None, f"not valid JSON ({exc}): {excerpt(text)}", "unparsable"
            errors = sorted(self._validator(schema).iter_errors(parsed), key=lambda e: list(e.path))
            if errors:
                e = errors[0]
                where = "/" + "/".join(str(p) for p in e.path) if e.path else "the top level"
                return None, f"does not match the schema at {where}: {e.message}", "unparsable"
        if validate is not None:
            try:
                problem = validate(parsed)
            except Exception as exc:  # the caller's check failed: treat the answer as invalid
                problem = f"validate() raised {type(exc).__name__}: {exc}"
            if problem:
                return None, f"rejected: {problem}", "out_of_range"
        return parsed, None, None

    def prepare_image(self, image: Image.Image) -> Image.Image:
        """The image exactly as it is sent: RGB, downscaled to `image_max_side`."""
        if not isinstance(image, Image.Image):
            raise TypeError(f"images must be PIL images, got {type(image).__name__}")
        im = image if image.mode == "RGB" else image.convert("RGB")
        side = self.config.image_max_side
        if side and max(im.size) > side:
            scale = side / max(im.size)
            im = im.resize((max(1, round(im.width * scale)), max(1, round(im.height * scale))),
                           Image.Resampling.BICUBIC)
        return im

    def api_key(self) -> str | None:
        """The key for this endpoint from the environment, or None. Only back ends call this."""
        name = self.config.key_env
        value = os.environ.get(name) if name else None
        return value or None

    def warn_plain_http(self) -> None:
        """A key over plain http to another machine can be read on the way."""
        c = self.config
        if self._warned_plain_http or not c.endpoint or not c.endpoint.startswith("http://"):
            return
        if is_loopback(c.host):
            return
        self._warned_plain_http = True
        log.warning("sending the API key from %s over plain http to %s; use https", c.key_env, c.host)

    def redact(self, message: str) -> str:
        """`message` without this endpoint's key."""
        return redact_secret(message, self.api_key())

    def _redact_outcome(self, outcome: ModelOutcome) -> None:
        """Every text a server sent back, redacted: a server that echoes the key must not get it into
        caches, traces or verdict files."""
        for name in ("text", "served_model", "refusal", "finish_reason", "error"):
            if isinstance(getattr(outcome, name, None), str):
                setattr(outcome, name, self.redact(getattr(outcome, name)))


def make_client(config: LLMConfig, cache_dir: str | Path | None = None) -> LLMClient:
    return LLMClient(config, cache_dir=cache_dir)


# ------------------------------------------------------------------------------------------ parsing
_FENCE = re.compile(r"^```[A-Za-z0-9_-]*[ \t]*\n(.*?)\n?```$", re.DOTALL)


def parse_json_reply(text: str) -> Any:
    """Parse a JSON answer. Accepted: the JSON value alone, surrounded by whitespace, or as the whole
    content of one markdown code fence. NaN / Infinity and an object naming a key twice
    (`{"score": 1, "score": 5}`: which one the judge meant is unknowable) are rejected. Raises ValueError."""
    body = text.strip()
    m = _FENCE.match(body)
    if m:
        body = m.group(1).strip()

    def _reject(name: str) -> Any:
        raise ValueError(f"{name} is not JSON")

    def _unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        keys = [k for k, _ in pairs]
        twice = sorted({k for k in keys if keys.count(k) > 1})
        if twice:
            raise ValueError(f"the object names {', '.join(map(repr, twice))} more than once")
        return dict(pairs)

    return json.loads(body, parse_constant=_reject, object_pairs_hook=_unique)


def _schema_name(schema: dict | None, default: str) -> str:
    raw = (schema or {}).get("title") or default
    name = re.sub(r"[^A-Za-z0-9_-]+", "_", str(raw)).strip("_") or "answer"
    return name[:64]


def _image_sha256(image: Image.Image) -> str:
    """sha256 of the pixels as sent (mode, size and raw bytes): independent of PNG encoder versions."""
    header = f"{image.mode}:{image.width}x{image.height}:".encode()
    return sha256_bytes(header + image.tobytes())


__all__ = ["LLMConfig", "LLMReply", "LLMCall", "LLMClient", "make_client", "parse_json_reply",
           "release_local_models", "RETRY_SEED_STRIDE", "BACKENDS", "DEFAULT_LOCAL_MODEL", "FAILURE_CLASSES", "PROVIDER_KEY_ENVS"]
