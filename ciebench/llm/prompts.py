"""Versioned prompt templates.

A template is a name, an integer version and a text with ``{{variable}}`` placeholders, optionally
preceded by a system part. Rendering is a single pass of explicit substitution: each placeholder is
replaced by ``str(value)`` of the named variable, nothing else in the text is interpreted, and the
substituted values are never scanned again (a value that itself contains ``{{x}}`` or ``{x.__class__}``
stays literal text). Missing and unexpected variables are errors.

Packaged templates live in ``ciebench/llm/prompts/<name>.v<version>.txt``. A file may start with a
``[system]`` section; the text after a ``[user]`` line is the user message::

    [system]
    You are a careful judge.
    [user]
    Instruction: {{instruction}}

The template's ``hash`` covers name, version, system and text: it is part of every LLM cache key, so
editing a template's wording invalidates its cached answers even if the version was not bumped.
"""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

from ciebench.errors import UsageError

PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")
_FILE_NAME = re.compile(r"^(?P<name>[A-Za-z0-9_\-]+)\.v(?P<version>[0-9]+)\.txt$")


class PromptError(UsageError, ValueError):
    """A template problem in the caller's code: unknown template, missing or unexpected variables."""


@dataclass(frozen=True)
class PromptTemplate:
    name: str
    version: int
    text: str
    system: str | None = None

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[A-Za-z0-9_\-]+", self.name or ""):
            raise PromptError(f"invalid template name {self.name!r}")
        if not isinstance(self.version, int) or self.version < 0:
            raise PromptError(f"template {self.name}: version must be a non-negative int, got {self.version!r}")

    @property
    def id(self) -> str:
        return f"{self.name}@v{self.version}"

    @property
    def hash(self) -> str:
        payload = json.dumps([self.name, self.version, self.system, self.text], ensure_ascii=False)
        return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:16]

    @property
    def variables(self) -> frozenset[str]:
        found = set(PLACEHOLDER.findall(self.text))
        if self.system:
            found |= set(PLACEHOLDER.findall(self.system))
        return frozenset(found)

    def render(self, **variables: Any) -> str:
        """The user message with every ``{{name}}`` replaced by ``str(variables[name])``."""
        self._check(variables)
        return _substitute(self.text, variables)

    def render_system(self, **variables: Any) -> str | None:
        if self.system is None:
            return None
        self._check(variables)
        return _substitute(self.system, variables)

    def _check(self, variables: dict[str, Any]) -> None:
        needed = self.variables
        missing = sorted(needed - variables.keys())
        extra = sorted(variables.keys() - needed)
        if missing or extra:
            parts = []
            if missing:
                parts.append(f"missing {missing}")
            if extra:
                parts.append(f"unexpected {extra}")
            raise PromptError(f"template {self.id}: " + ", ".join(parts))

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version, "hash": self.hash}


def _substitute(text: str, variables: dict[str, Any]) -> str:
    # One pass over the template: replacement values are inserted verbatim and never re-scanned.
    return PLACEHOLDER.sub(lambda m: str(variables[m.group(1)]), text)


def parse_template_file(name: str, version: int, content: str) -> PromptTemplate:
    content = content.replace("\r\n", "\n")
    system = None
    if content.startswith("[system]\n"):
        head, sep, user = content[len("[system]\n"):].partition("\n[user]\n")
        if not sep:
            raise PromptError(f"template {name}.v{version}: a [system] section needs a following [user] line")
        system, content = head.strip("\n"), user
    elif content.startswith("[user]\n"):
        content = content[len("[user]\n"):]
    return PromptTemplate(name=name, version=version, text=content.strip("\n"), system=system)


def load_template_file(path: str | Path) -> PromptTemplate:
    """Load ``<name>.v<version>.txt`` from any folder (for user-supplied prompt variants)."""
    path = Path(path)
    m = _FILE_NAME.match(path.name)
    if not m:
        raise PromptError(f"{path.name}: template files are named <name>.v<version>.txt")
    return parse_template_file(m["name"], int(m["version"]), path.read_text(encoding="utf-8"))


@lru_cache(maxsize=None)
def _packaged() -> dict[tuple[str, int], PromptTemplate]:
    found = {}
    for entry in resources.files("ciebench.llm").joinpath("prompts").iterdir():
        m = _FILE_NAME.match(entry.name)
        if m:
            found[(m["name"], int(m["version"]))] = parse_template_file(
                m["name"], int(m["version"]), entry.read_text(encoding="utf-8"))
    return found


def list_templates() -> list[str]:
    """Packaged templates as ``name@vN``."""
    return [f"{n}@v{v}" for n, v in sorted(_packaged())]


def get_template(name: str, version: int | None = None) -> PromptTemplate:
    """A packaged template; the highest version when `version` is None."""
    versions = sorted(v for n, v in _packaged() if n == name)
    if not versions:
        raise PromptError(f"no prompt template named {name!r}; known: {', '.join(list_templates())}")
    if version is None:
        version = versions[-1]
    try:
        return _packaged()[(name, int(version))]
    except KeyError:
        raise PromptError(f"template {name!r} has no version {version}; known versions: {versions}") from None
