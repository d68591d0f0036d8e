"""How to reach one model: `LLMConfig`, part of run specs (JSON-able, hashable, free of secrets), and
the facts about providers it relies on (which key belongs to which host, which request fields exist)."""
from __future__ import annotations

import dataclasses
import re
import urllib.parse
from dataclasses import dataclass
from typing import Any

from ciebench.io import stable_hash

BACKENDS = ("openai", "transformers")
RESPONSE_FORMATS = ("json_schema", "json_object", "none")
DEFAULT_OPENAI_BASE_URL = "https://api.openai.com/v1"
DEFAULT_OPENAI_MODEL = "gpt-4o-mini"
DEFAULT_LOCAL_MODEL = "Qwen/Qwen2.5-VL-7B-Instruct"
TOKEN_LIMIT_FIELDS = ("max_tokens", "max_completion_tokens")
# Why a call failed, for judges' failure counts: the transport (connection, deadline, size cap,
# redirect), HTTP 429, HTTP 5xx or a malformed body, another HTTP 4xx, the provider's content filter or
# refusal, an answer that is not valid JSON for the schema, an answer the caller's validator rejected,
# and a configuration problem found before any request (missing key, local model not loadable).
FAILURE_CLASSES = ("transport", "rate_limit", "server_error", "request_rejected", "content_filter", "unparsable",
                   "out_of_range", "config")
# The environment variable that holds each provider's key, and the hosts it may be sent to.
PROVIDER_KEY_ENVS: dict[str, tuple[str, ...]] = {
    "OPENAI_API_KEY": ("api.openai.com",),
    "DASHSCOPE_API_KEY": ("dashscope.aliyuncs.com", "dashscope-intl.aliyuncs.com"),
    "GEMINI_API_KEY": ("generativelanguage.googleapis.com",),
    "OPENROUTER_API_KEY": ("openrouter.ai",),
    "DEEPSEEK_API_KEY": ("api.deepseek.com",),
    "TOGETHER_API_KEY": ("api.together.xyz",),
}



def key_env_for(host: str | None, named: str | None) -> str | None:
    """The environment variable whose value may be sent to `host` as its API key: the one the user
    named, else the variable of the provider `host` belongs to, else none (a custom endpoint never
    silently receives a provider's key)."""
    if named is not None:
        return named
    for env, hosts in PROVIDER_KEY_ENVS.items():
        if (host or "") in hosts:
            return env
    return None


def is_provider_host(host: str | None) -> bool:
    """A provider's own API (which never works without a key)."""
    return any((host or "") in hosts for hosts in PROVIDER_KEY_ENVS.values())


@dataclass(frozen=True)
class LLMConfig:
    """How to reach one model. Part of run specs: JSON-able and free of secrets."""

    backend: str = "openai"  # "openai": any OpenAI-compatible server | "transformers": local model
    model: str | None = None  # None: gpt-4o-mini (openai) or Qwen/Qwen2.5-VL-7B-Instruct (transformers)
    base_url: str | None = None  # None: https://api.openai.com/v1 (openai backend only)
    # The NAME of the env variable holding the key. None: the variable of the provider the endpoint
    # belongs to (PROVIDER_KEY_ENVS), and no key at all for any other host.
    api_key_env: str | None = None
    temperature: float | None = 0.0  # 0-2; None: send none (models that only accept their default)
    max_tokens: int = 512
    # The request field that carries max_tokens: reasoning models (o-series, GPT-5 class) reject
    # "max_tokens" and take "max_completion_tokens".
    token_limit_field: str = "max_tokens"
    seed: int | None = 0  # None: no seed is sent, on retries neither
    timeout_s: float = 60.0  # overall deadline of one request, connect to last byte
    max_response_bytes: int = 8 * 1024 * 1024
    max_retries: int = 4  # retries after the first attempt
    concurrency: int = 8  # requests in flight at once through this client
    price_per_1k_input: float = 0.0  # USD per 1000 prompt tokens, for cost accounting
    price_per_1k_output: float = 0.0
    # How a JSON schema is sent: "json_schema" (structured outputs, strict), "json_object"
    # (JSON mode; for servers without json_schema) or "none". Replies are validated locally always.
    response_format: str = "json_schema"
    # Retries after an *invalid* reply resample with this temperature (0-2) and seed + n * 1,000,000 for
    # the n-th retry (RETRY_SEED_STRIDE: never a neighbouring pass's or editor seed's own), since a
    # greedy retry would repeat the same answer. None, or temperature None: retry with the original
    # decoding parameters.
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
        if self.max_response_bytes < 1024:
            raise ValueError("LLMConfig.max_response_bytes must be at least 1024")
        for name in ("temperature", "retry_temperature"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                      or not 0.0 <= float(value) <= 2.0):
                raise ValueError(f"LLMConfig.{name} must be a number from 0 to 2 (or null), got {value!r}")
        if self.token_limit_field not in TOKEN_LIMIT_FIELDS:
            raise ValueError(f"LLMConfig.token_limit_field must be one of {TOKEN_LIMIT_FIELDS}, "
                             f"got {self.token_limit_field!r}")
        if self.api_key_env is not None and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", self.api_key_env):
            raise ValueError("LLMConfig.api_key_env is the NAME of an environment variable (e.g. "
                             "OPENAI_API_KEY), not the key itself")

    @property
    def endpoint(self) -> str | None:
        if self.backend != "openai":
            return None
        return (self.base_url or DEFAULT_OPENAI_BASE_URL).rstrip("/")

    @property
    def host(self) -> str | None:
        """The provider host requests go to (recorded with verdicts; never the key)."""
        return urllib.parse.urlsplit(self.endpoint).hostname if self.endpoint else None

    @property
    def key_env(self) -> str | None:
        """The environment variable whose value is sent as the key: the named one, else the provider's."""
        if self.backend != "openai":
            return None
        return key_env_for(self.host, self.api_key_env)

    @property
    def model_id(self) -> str:
        """`backend:model[@endpoint or revision]`, for manifests."""
        where = self.endpoint if self.backend == "openai" else self.revision
        return f"{self.backend}:{self.model}" + (f"@{where}" if where else "")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def required_assets(self, used_by: str) -> list:
        """A local model's hub files, or the endpoint a request goes to (see ciebench.requirements)."""
        from ciebench.requirements import endpoint, hub_repo

        if self.backend == "transformers":
            return [hub_repo(self.model, used_by=used_by, revision=self.revision)]
        return [endpoint(self.endpoint, self.model, used_by=used_by, config=self)]

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
