"""Why a judged sample has no score: one class per cause, counted in its own column, never a score.

The class comes from the LLM client's reply (`LLMReply.failure`, set from the HTTP status, the
provider's ``finish_reason`` / ``refusal`` fields and the validators). Replies from a client that does
not set it are classified from their error text by the same rules. Validators mark a value outside
the protocol's range by starting their reason with `OUT_OF_RANGE`.
"""
from __future__ import annotations

import re
from collections import Counter
from typing import Any, Iterable

from ciebench.llm.config import FAILURE_CLASSES as CLIENT_FAILURE_CLASSES

# The client's classes (transport, rate_limit, server_error, request_rejected, content_filter,
# unparsable, out_of_range, config), then the judge's own: missing_prediction (nothing to judge) and
# not_judged (the run stopped issuing calls at --max-cost before this sample; a rerun judges it).
FAILURE_CLASSES = tuple(CLIENT_FAILURE_CLASSES) + ("missing_prediction", "not_judged")
OUT_OF_RANGE = "out of range"
_RANGE_REJECTION = f"invalid reply: rejected: {OUT_OF_RANGE}"  # how the client reports such a validator reason
_HTTP = re.compile(r"HTTP (\d{3})")


def classify(reply: Any) -> str | None:
    """The failure class of an `LLMReply`, or None for a successful one."""
    if getattr(reply, "status", "error") == "ok":
        return None
    error = str(getattr(reply, "error", "") or "")
    # Only the opening of the client's own message for a validator rejection says "range": the words
    # elsewhere (a quoted reply, a server's 400 body, torch's "index out of range") are not a verdict.
    if error.startswith(_RANGE_REJECTION):
        return "out_of_range"
    declared = getattr(reply, "failure", None)
    if declared == "out_of_range":  # the client marks every validator rejection so; ours say when it is range
        return "unparsable"
    if declared in FAILURE_CLASSES:
        return declared
    if getattr(reply, "finish_reason", None) == "content_filter" or getattr(reply, "refusal", None):
        return "content_filter"
    return classify_error(error)


def classify_error(error: str) -> str:
    m = _HTTP.search(error)
    if m:
        code = int(m.group(1))
        return "rate_limit" if code == 429 else ("server_error" if code >= 500 else "request_rejected")
    low = error.lower()
    if "content_filter" in low or "refus" in low:
        return "content_filter"
    if "timed out" in low or "connection error" in low or "environment variable" in low:
        return "transport"
    if "server error" in low:
        return "server_error"
    return "unparsable"  # invalid, empty or malformed replies


def failure_counts(classes: Iterable[str | None]) -> dict[str, int]:
    """Every class with its count (zeros included, so every summary has the same columns)."""
    counts = Counter(c for c in classes if c)
    return {c: int(counts.get(c, 0)) for c in FAILURE_CLASSES}


# Openings with which a describing model declines instead of describing ("I'm sorry, but I can't help
# with that"). A provider that marks no refusal (no `refusal` field, no content_filter finish) gets such
# text scored like a description, as an edit that failed. `reads_as_refusal` only flags it for a reader
# (summary.json, a warning): a real description may open the same way, and dropping it would lift the
# editor's mean.
_REFUSAL = re.compile(r"^\W*(?:i(?: am|'m) sorry|sorry\b|as an ai\b|i (?:can ?not|can't|won't|am unable to|'m unable to|"
                      r"am not able to) (?:help|assist|comply|fulfil))", re.IGNORECASE)


def reads_as_refusal(text: Any) -> bool:
    """Whether a describing model's text opens as a refusal does (see `_REFUSAL`)."""
    return isinstance(text, str) and bool(_REFUSAL.match(text.replace("\u2019", "'")))

