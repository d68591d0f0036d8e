"""Field checks shared by the annotation loaders: sample ids and the JSON types of fields."""
from __future__ import annotations

from typing import Any, Callable

FieldTypes = tuple[tuple[str, str, Callable[[Any], bool]], ...]  # (key, what it must be, check)


def sample_id_of(value: Any) -> str | None:
    """An annotation's `id` as ciebench's opaque string id: strings are kept exactly ("007" stays
    "007", "NA" stays "NA"), integers are written in decimal; null, booleans, floats, containers and
    blank strings are not ids."""
    if isinstance(value, str):
        return value if value.strip() else None
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return None


def is_str(value: Any) -> bool:
    return isinstance(value, str)


def is_optional_str(value: Any) -> bool:
    return value is None or isinstance(value, str)


def is_texts(value: Any) -> bool:
    """null, a string, or a list of strings."""
    return value is None or isinstance(value, str) or (isinstance(value, list) and all(isinstance(t, str) for t in value))


def type_errors(entry: dict[str, Any], fields: FieldTypes) -> str | None:
    """One message listing every present field of the wrong JSON type, or None."""
    wrong = [f"{key!r} must be {expected}, got {json_type(entry[key])}"
             for key, expected, ok in fields if key in entry and not ok(entry[key])]
    return "; ".join(wrong) or None


def json_type(value: Any) -> str:
    if value is None:
        return "null"
    return {bool: "a boolean", int: "a number", float: "a number", str: "a string", list: "a list",
            dict: "an object"}.get(type(value), type(value).__name__)
