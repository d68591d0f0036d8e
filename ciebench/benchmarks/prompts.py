"""Official judge prompts, read at run time from the official repositories at pinned commits.

The prompts are module-level string constants of Python files (RISEBench's utils.py), or the string
values of a JSON object (ImgEdit's prompts.json). Nothing is executed: the file is parsed with `ast` and a prompt is the value of a top-level assignment
`NAME = "<string literal>"` (documented rule, tested on stand-in files). Filling follows `str.format`
for plain names only (`{instruct}`; `{{`/`}}` are literal braces); any other field form is refused.
"""
from __future__ import annotations

import ast
import string
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from ciebench.assets import PinnedAsset, ResolvedAsset, resolve_asset
from ciebench.errors import DataError


class PromptFileError(DataError, ValueError):
    pass


def extract_string_constants(source: str, filename: str = "<prompts>") -> dict[str, str]:
    """Every top-level `NAME = "literal"` of a Python source, without executing it."""
    try:
        tree = ast.parse(source, filename=filename)
    except SyntaxError as exc:
        raise PromptFileError(f"{filename}: not parseable Python ({exc})") from exc
    found: dict[str, str] = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str):
            for target in node.targets:
                if isinstance(target, ast.Name):
                    found[target.id] = node.value.value
    return found


def fill(template: str, variables: dict[str, str], what: str) -> str:
    """`template.format(**variables)` restricted to plain `{name}` fields (no attribute/index access)."""
    out = []
    for literal, field, spec, conversion in string.Formatter().parse(template):
        out.append(literal)
        if field is None:
            continue
        if not field.isidentifier() or spec or conversion:
            raise PromptFileError(f"{what}: unsupported field {{{field}}} in the official prompt")
        if field not in variables:
            raise PromptFileError(f"{what}: the official prompt needs {field!r}, which this case does not have")
        out.append(str(variables[field]))
    return "".join(out)


@dataclass(frozen=True)
class PromptSet:
    """The prompts of one pinned file (or several: `more`) and their provenance."""

    asset: ResolvedAsset
    prompts: dict[str, str]
    more: tuple[ResolvedAsset, ...] = ()

    @property
    def assets(self) -> tuple[ResolvedAsset, ...]:
        return (self.asset, *self.more)

    def source_of(self, filename: str) -> str:
        """The text of one of the pinned files, for rules that live outside module constants."""
        for resolved in self.assets:
            if resolved.asset.filename == filename:
                return resolved.read_text()
        raise PromptFileError(f"no pinned prompt file named {filename}")

    def get(self, name: str) -> str:
        if name not in self.prompts:
            raise PromptFileError(f"{self.asset.asset.source} has no prompt {name!r}")
        return self.prompts[name]


def extract_json_strings(source: str, filename: str = "<prompts>") -> dict[str, str]:
    """Every string value of a top-level JSON object (prompt files kept as JSON, e.g. ImgEdit's)."""
    import json

    try:
        data = json.loads(source)
    except ValueError as exc:
        raise PromptFileError(f"{filename}: not valid JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise PromptFileError(f"{filename}: expected a JSON object of prompts")
    return {k: v for k, v in data.items() if isinstance(v, str)}


@lru_cache(maxsize=8)
def _load(asset: PinnedAsset, local_dir: str | None, allow_unverified_local: bool) -> PromptSet:
    resolved = resolve_asset(asset, local_dir=local_dir, allow_unverified_local=allow_unverified_local)
    extract = extract_json_strings if asset.filename.endswith(".json") else extract_string_constants
    return PromptSet(resolved, extract(resolved.read_text(), str(resolved.path)))


def load_prompts(asset: PinnedAsset | tuple[PinnedAsset, ...], local_dir: str | Path | None = None,
                 allow_unverified_local: bool = False) -> PromptSet:
    """The prompts of one pinned file, or of several merged (names must not clash)."""
    assets = asset if isinstance(asset, tuple) else (asset,)
    sets = [_load(a, None if local_dir is None else str(local_dir), allow_unverified_local) for a in assets]
    merged: dict[str, str] = {}
    for s in sets:
        clash = set(merged) & set(s.prompts)
        if clash:
            raise PromptFileError(f"{s.asset.asset.source}: prompt names {sorted(clash)} are defined twice")
        merged.update(s.prompts)
    return PromptSet(sets[0].asset, merged, tuple(s.asset for s in sets[1:]))


def load_unpinned(path: str | Path, source: str, name: str) -> PromptSet:
    """Prompts from a file whose sha256 is not pinned yet (RISEBench++: no byte-exact copy was
    available when the pin was written). The actual sha256 is recorded as unverified."""
    from ciebench.io import sha256_file

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{name}: {path} does not exist; put {source} there")
    digest = sha256_file(path)
    asset = PinnedAsset(name=name, url=path.resolve().as_uri(), sha256=digest, source=source, filename=path.name)
    resolved = ResolvedAsset(asset, path, digest, False, "local")
    return PromptSet(resolved, extract_string_constants(resolved.read_text(), str(path)))
