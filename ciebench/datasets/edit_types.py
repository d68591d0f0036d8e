"""Derived edit types for benchmarks that do not annotate them (CIEBench).

The rule, applied to the *command* part of the instruction (the text after its last "?", or the
whole instruction when it has none), first match wins:

1. recolor  - the command mentions colour ("color", "colour");
2. replace  - it says replace / swap / substitute (and the data's typo "replease");
3. remove   - it says remove / erase / delete / get rid of / take away (and the typo "reomve");
4. add      - it says add / include / insert / put / place / draw;
5. otherwise: "remove" when every CLIP text names a background ("background", "wall", ...), else
   "replace".

Looking only at the command keeps words from the implicit question ("...to remove these substances
from the teeth? Please replace...") from deciding the type. On CIEBench this gives 43 replace,
39 remove, 2 add and 2 recolor.
"""
from __future__ import annotations

import re

_RULES = (
    ("recolor", re.compile(r"\bcolou?rs?\b", re.I)),
    ("replace", re.compile(r"\b(replace|replease|swap|substitute)\w*", re.I)),
    ("remove", re.compile(r"\b(remove|reomve|erase|delete|get rid of|take away)\w*", re.I)),
    ("add", re.compile(r"\b(add|include|insert|put|place|draw)\b", re.I)),
)
_BACKGROUND_WORDS = {"background", "wall", "white wall", "floor", "sky", "ground"}


def command_part(instruction: str) -> str:
    """The imperative part of an implicit instruction: what follows the last question mark."""
    tail = instruction.rsplit("?", 1)[-1].strip()
    return tail or instruction


def derive_edit_type(instruction: str, clip_text: list[str]) -> str:
    command = command_part(instruction)
    for name, pattern in _RULES:
        if pattern.search(command):
            return name
    if clip_text and all(t.strip().lower() in _BACKGROUND_WORDS for t in clip_text):
        return "remove"
    return "replace"
