"""The on-disk reply cache: one JSON file per content-hash key, written atomically. A corrupt or
foreign entry is a miss; a successful call overwrites it."""
from __future__ import annotations

import json
import logging
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

from ciebench.io import atomic_write_json

from .config import LLMConfig
from .exchange import ModelOutcome, ModelRequest
from .prompts import PromptTemplate

log = logging.getLogger("ciebench.llm")

CACHE_FORMAT = 1


class ReplyCache:
    def __init__(self, directory: str | Path | None, config: LLMConfig):
        self.directory = Path(directory) if directory is not None else None
        self.config = config

    def path(self, key: str) -> Path | None:
        return self.directory / key[:2] / f"{key}.json" if self.directory is not None else None

    def get(self, key: str) -> dict[str, Any] | None:
        """The stored reply record of `key` ({"text", "parsed", "usage", ...}), or None."""
        path = self.path(key)
        if path is None or not path.is_file():
            return None
        try:
            rec = json.loads(path.read_text(encoding="utf-8"))
            if rec.get("key") != key or rec.get("format") != CACHE_FORMAT:
                return None
            reply = rec["reply"]
            if not isinstance(reply, dict) or not isinstance(reply.get("text"), str):
                return None
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return None
        return reply

    def put(self, key: str, template: PromptTemplate, request: ModelRequest, image_shas: Sequence[str],
            outcome: ModelOutcome, parsed: Any, usage: dict, served: str | None, attempts: int,
            temperature: float | None, seed: int | None) -> None:
        path = self.path(key)
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
            "reply": {"text": outcome.text, "parsed": parsed if request.schema is not None else None,
                      "usage": usage, "served_model": served, "attempts": attempts, "temperature_used": temperature,
                      "seed_used": seed, "finish_reason": outcome.finish_reason,
                      "response_format": outcome.response_format},
        }
        try:
            atomic_write_json(path, rec)
        except (OSError, TypeError) as exc:
            log.warning("could not write LLM cache entry %s: %s", path, exc)
