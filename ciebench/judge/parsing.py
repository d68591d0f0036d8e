"""How a judge's answer becomes a number, and how sample data enters a prompt.

Validators return None for an acceptable answer or a reason; a reason starting with
`failures.OUT_OF_RANGE` marks a well-formed answer outside the protocol's range.
"""
from __future__ import annotations

import json
from typing import Any, Callable

from .failures import OUT_OF_RANGE


def json_score_validator(lo: int, hi: int) -> Callable[[Any], str | None]:
    """``{"score": N}`` with exactly that key and N a JSON integer (not 3.0, "3" or true) in lo..hi."""

    def validate(parsed: Any) -> str | None:
        if not isinstance(parsed, dict) or set(parsed) != {"score"}:
            return f'expected exactly {{"score": <integer {lo}..{hi}>}}'
        score = parsed["score"]
        if type(score) is not int:
            return f"score must be a JSON integer, got {json.dumps(score)}"
        if not lo <= score <= hi:
            return f"{OUT_OF_RANGE}: score {score} is outside {lo}..{hi}"
        return None

    return validate


def python_int(text: Any) -> int:
    """The authors' parsing: Python's ``int(reply)`` (surrounding whitespace, a sign, digits and single
    underscores between digits; "4.0", "Score: 4" and "" raise ValueError). Parsing, not evaluation."""
    if not isinstance(text, str):
        raise ValueError("not text")
    return int(text)


def python_int_validator(lo: int, hi: int) -> Callable[[Any], str | None]:
    def validate(parsed: Any) -> str | None:
        try:
            value = python_int(parsed)
        except ValueError:
            return "not an integer as int() parses it"
        if not lo <= value <= hi:
            return f"{OUT_OF_RANGE}: score {value} is outside {lo}..{hi}"
        return None

    return validate


def embed(value: str, embedding: str) -> str:
    """Sample data as it enters a prompt. "json": a JSON string literal, so no newline, quote or
    delimiter inside the value can end the field early or start a new section; "verbatim": as is."""
    if embedding == "json":
        return json.dumps(value, ensure_ascii=False)
    if embedding == "verbatim":
        return value
    raise ValueError(f"unknown embedding {embedding!r}")
