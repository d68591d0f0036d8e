"""What the client hands a back end (`ModelRequest`) and what a back end hands back (`ModelOutcome`)."""
from __future__ import annotations

from dataclasses import dataclass, field

from PIL import Image


@dataclass
class ModelRequest:
    system: str | None
    text: str
    images: list[Image.Image | str]  # a str is a text part between images (interleaved protocols)
    schema: dict | None
    schema_name: str
    text_first: bool = False  # the text part before the images (some published protocols send it so)


@dataclass
class ModelOutcome:
    text: str | None = None
    usage: dict[str, int] = field(default_factory=dict)
    served_model: str | None = None
    error: str | None = None
    kind: str = "ok"  # ok | transport | timeout | http | malformed | refused | fatal
    retryable: bool = False
    retry_after: float | None = None
    failure: str | None = None  # FAILURE_CLASSES
    finish_reason: str | None = None
    refusal: str | None = None
    http_status: int | None = None
    response_format: str | None = None


def excerpt(text: str, n: int = 160) -> str:
    text = text.strip().replace("\n", " ")
    return text if len(text) <= n else text[:n] + "..."
