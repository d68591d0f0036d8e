"""The OpenAI-compatible chat-completions back end (OpenAI, vLLM, Ollama, llama.cpp, DashScope, ...)."""
from __future__ import annotations

import base64
import email.utils
import json
import logging
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from ciebench.io import png_bytes

from .config import is_provider_host
from .exchange import ModelOutcome, ModelRequest, excerpt
from .transport import TransportError, post

if TYPE_CHECKING:
    from .client import LLMClient

log = logging.getLogger("ciebench.llm")

RETRY_STATUS = frozenset({408, 409, 425, 429}) | frozenset(range(500, 600))
_MAX_ERROR_TEXT = 400


class OpenAIBackend:
    """POST {endpoint}/chat/completions, as served by OpenAI, vLLM, Ollama, llama.cpp and DashScope."""

    def __init__(self, client: "LLMClient"):
        self.client = client
        self.config = client.config
        self.url = f"{self.config.endpoint}/chat/completions"

    def body(self, req: ModelRequest, temperature: float | None, seed: int | None,
             response_format: str) -> dict[str, Any]:
        """The request body. `response_format`: json_schema | json_object | prompt | none, where
        "prompt" asks for JSON in the text (for providers that reject response_format)."""
        c = self.config
        text = req.text
        if req.schema is not None and response_format == "prompt":
            text += ("\n\nReply with only one JSON value, no other text, that matches this JSON schema:\n"
                     + json.dumps(req.schema, sort_keys=True))
        messages: list[dict[str, Any]] = []
        if req.system is not None:
            messages.append({"role": "system", "content": req.system})
        if req.images:
            content: list[dict[str, Any]] = [
                {"type": "text", "text": im} if isinstance(im, str) else
                {"type": "image_url",
                 "image_url": {"url": "data:image/png;base64," + base64.b64encode(png_bytes(im)).decode("ascii")}}
                for im in req.images]
            part = {"type": "text", "text": text}
            content = [part, *content] if req.text_first else [*content, part]
            messages.append({"role": "user", "content": content})
        else:
            messages.append({"role": "user", "content": text})
        body: dict[str, Any] = {"model": c.model, "messages": messages, c.token_limit_field: c.max_tokens,
                                "stream": False}
        if temperature is not None:
            body["temperature"] = temperature
        if seed is not None:
            body["seed"] = seed
        if req.schema is not None:
            if response_format == "json_schema":
                body["response_format"] = {"type": "json_schema", "json_schema": {
                    "name": req.schema_name, "schema": req.schema, "strict": True}}
            elif response_format == "json_object":
                body["response_format"] = {"type": "json_object"}
        return body

    def generate(self, req: ModelRequest, temperature: float | None, seed: int | None) -> ModelOutcome:
        c = self.config
        fmt = c.response_format if req.schema is not None else "none"
        if req.schema is not None and fmt != "none" and self.client.format_fallback:
            fmt = "prompt"
        outcome = self._send(req, temperature, seed, fmt)
        if outcome.http_status == 400 and fmt in ("json_schema", "json_object"):
            # Some providers reject response_format for some models (HTTP 400). Ask for JSON in the
            # prompt instead; the reply is validated against the schema locally as always.
            fallback = self._send(req, temperature, seed, "prompt")
            if fallback.error is None:
                if not self.client.format_fallback:
                    log.warning("%s rejected response_format %s (%s); asking for JSON in the prompt from now on, "
                                "validated locally", self.url, fmt, outcome.error)
                self.client.format_fallback = True
                return fallback
        return outcome

    def _send(self, req: ModelRequest, temperature: float | None, seed: int | None, fmt: str) -> ModelOutcome:
        c = self.config
        headers = {"Content-Type": "application/json", "Accept": "application/json",
                   "User-Agent": "ciebench-llm/1"}
        secret = self.client.api_key()
        if secret:
            headers["Authorization"] = f"Bearer {secret}"
            self.client.warn_plain_http()
        elif c.key_env and is_provider_host(c.host):
            # A provider's own API never works without a key: say so without a request.
            return ModelOutcome(error=f"environment variable {c.key_env} is not set (the API key for "
                                  f"{c.endpoint})", kind="fatal", failure="config")
        data = json.dumps(self.body(req, temperature, seed, fmt)).encode("utf-8")
        try:
            resp = post(self.url, data, headers, deadline_s=c.timeout_s, max_bytes=c.max_response_bytes)
        except TransportError as exc:
            kind = "timeout" if exc.kind == "timeout" else "transport"
            # A redirect or an oversized answer will not change on retry.
            return ModelOutcome(error=str(exc), kind=kind, retryable=exc.kind in ("timeout", "transport"),
                            failure="transport", response_format=fmt)
        if resp.status >= 400:
            hint = ""
            if resp.status in (401, 403) and c.key_env and not secret:
                hint = f" (environment variable {c.key_env} is not set)"
            failure = ("rate_limit" if resp.status == 429 else "server_error" if resp.status >= 500
                       else "request_rejected")
            return ModelOutcome(error=f"HTTP {resp.status} from {self.url}: "
                                  f"{excerpt(_decode(resp.body), _MAX_ERROR_TEXT)}{hint}",
                            kind="http", retryable=resp.status in RETRY_STATUS,
                            retry_after=parse_retry_after(resp.headers), failure=failure, http_status=resp.status,
                            response_format=fmt)
        outcome = self.parse(resp.status, resp.body)
        outcome.http_status = resp.status
        outcome.response_format = fmt
        return outcome

    def parse(self, status: int, raw: bytes) -> ModelOutcome:
        try:
            payload = json.loads(raw)
        except ValueError:
            return ModelOutcome(error=f"malformed response body (HTTP {status}, not JSON): {excerpt(_decode(raw))}",
                            kind="malformed", retryable=True, failure="server_error")
        if not isinstance(payload, dict):
            return ModelOutcome(error="malformed response body (not a JSON object)", kind="malformed", retryable=True,
                            failure="server_error")
        usage = payload.get("usage") if isinstance(payload.get("usage"), dict) else {}
        usage = {k: _int(usage.get(k)) for k in ("prompt_tokens", "completion_tokens")}
        served = payload.get("model") if isinstance(payload.get("model"), str) else None
        if "error" in payload and not payload.get("choices"):
            return ModelOutcome(error=f"server error: {excerpt(json.dumps(payload['error']), _MAX_ERROR_TEXT)}",
                            kind="http", retryable=True, usage=usage, served_model=served, failure="server_error")
        try:
            choice = payload["choices"][0]
            message = choice["message"]
        except (KeyError, IndexError, TypeError):
            return ModelOutcome(error="malformed response body (no choices[0].message)", kind="malformed",
                            retryable=True, usage=usage, served_model=served, failure="server_error")
        finish = choice.get("finish_reason") if isinstance(choice.get("finish_reason"), str) else None
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, list):  # some servers return content parts
            content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
        refusal = message.get("refusal") if isinstance(message, dict) else None
        refusal = refusal if isinstance(refusal, str) and refusal.strip() else None
        if refusal is not None or finish == "content_filter":
            # A refusal or a filtered answer is the provider's verdict on this input: recorded as such,
            # never a score, and not retried (the same input is refused again, at a cost).
            why = f"refusal: {excerpt(refusal)}" if refusal else "finish_reason content_filter"
            return ModelOutcome(error=f"the provider refused or filtered the answer ({why})", kind="refused",
                            usage=usage, served_model=served, failure="content_filter", finish_reason=finish,
                            refusal=refusal)
        # An empty or non-string content is an invalid *reply* (retried as such), not a transport error.
        return ModelOutcome(text=content if isinstance(content, str) else None, usage=usage, served_model=served,
                        finish_reason=finish)


def _decode(raw: bytes) -> str:
    return raw.decode("utf-8", errors="replace")


def _int(v: Any) -> int:
    try:
        return max(0, int(v))
    except (TypeError, ValueError):
        return 0


def parse_retry_after(headers) -> float | None:
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
