"""Prompt texts and call settings read out of another project's Python source, without running it.

The authors of a benchmark often keep their judge prompts inside a ``.py`` file. We pin that file
(`ciebench.assets.PinnedAsset`) and extract what we need by a fixed rule over its syntax tree
(`ast.parse`; the file is never imported or executed):

- `function_prompt(tree, function, variable)`: inside ``def <function>``, the first assignment
  ``<variable> = <string>``. A plain string literal is taken as Python evaluates it (escapes and
  backslash line continuations applied). An f-string becomes a template: its literal parts verbatim,
  each ``{name}`` field as the placeholder ``{{alias}}`` (``aliases`` renames, e.g. the authors'
  ``sentence`` to our ``description``). Fields with a conversion or format spec, fields that are not a
  plain name, and literal parts containing ``{{`` (our placeholder syntax) are refused.
- `system_prompt(tree, function)`: inside the function, the ``content`` string of the first dict
  literal whose ``role`` is ``"system"``; None when there is none (a commented-out system message is
  no system message, as at run time).
- `call_keyword(tree, function, keyword)`: the constant value of ``keyword=`` in the first call
  inside the function that passes it (e.g. ``max_tokens``).
- `default_argument(tree, function, argument)`: a parameter's constant default (e.g. a model name).

Anything not found is an `ExtractionError` naming the file and the rule, so a changed source fails
loudly instead of silently judging with a different prompt.
"""
from __future__ import annotations

import ast
from typing import Any


class ExtractionError(ValueError):
    pass


def parse_source(text: str, where: str) -> ast.Module:
    try:
        return ast.parse(text, filename=where)
    except SyntaxError as exc:
        raise ExtractionError(f"{where}: not parseable Python source ({exc})") from None


def _function(tree: ast.Module, name: str, where: str) -> ast.FunctionDef:
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name == name:
            return node
    raise ExtractionError(f"{where}: no function {name!r}")


def function_prompt(tree: ast.Module, function: str, variable: str, where: str,
                    aliases: dict[str, str] | None = None) -> str:
    aliases = aliases or {}
    fn = _function(tree, function, where)
    for node in ast.walk(fn):
        if not (isinstance(node, ast.Assign) and len(node.targets) == 1
                and isinstance(node.targets[0], ast.Name) and node.targets[0].id == variable):
            continue
        value = node.value
        if isinstance(value, ast.Constant) and isinstance(value.value, str):
            return _literal(value.value, function, where)
        if isinstance(value, ast.JoinedStr):
            parts = []
            for part in value.values:
                if isinstance(part, ast.Constant) and isinstance(part.value, str):
                    parts.append(_literal(part.value, function, where))
                elif (isinstance(part, ast.FormattedValue) and isinstance(part.value, ast.Name)
                      and part.conversion == -1 and part.format_spec is None):
                    parts.append("{{" + aliases.get(part.value.id, part.value.id) + "}}")
                else:
                    raise ExtractionError(f"{where}: {function}.{variable} has an f-string field that is not a "
                                          "plain name; refusing to guess its rendering")
            return "".join(parts)
        raise ExtractionError(f"{where}: {function}.{variable} is not a string literal or f-string")
    raise ExtractionError(f"{where}: no assignment {variable} = '...' in {function}")


def _literal(text: str, function: str, where: str) -> str:
    if "{{" in text or "}}" in text:
        raise ExtractionError(f"{where}: the prompt in {function} contains '{{{{' or '}}}}', which would be read as "
                              "a placeholder")
    return text


def system_prompt(tree: ast.Module, function: str, where: str) -> str | None:
    fn = _function(tree, function, where)
    for node in ast.walk(fn):
        if not isinstance(node, ast.Dict):
            continue
        entries = {k.value: v for k, v in zip(node.keys, node.values)
                   if isinstance(k, ast.Constant) and isinstance(k.value, str)}
        role = entries.get("role")
        if isinstance(role, ast.Constant) and role.value == "system":
            content = entries.get("content")
            if isinstance(content, ast.Constant) and isinstance(content.value, str):
                return content.value
            raise ExtractionError(f"{where}: the system message in {function} is not a string literal")
    return None


def call_keyword(tree: ast.Module, function: str, keyword: str, where: str) -> Any:
    fn = _function(tree, function, where)
    for node in ast.walk(fn):
        if isinstance(node, ast.Call):
            for kw in node.keywords:
                if kw.arg == keyword:
                    if isinstance(kw.value, ast.Constant):
                        return kw.value.value
                    raise ExtractionError(f"{where}: {keyword}= in {function} is not a constant")
    raise ExtractionError(f"{where}: no call passing {keyword}= in {function}")


def default_argument(tree: ast.Module, function: str, argument: str, where: str) -> Any:
    fn = _function(tree, function, where)
    args = fn.args.args
    defaults = fn.args.defaults
    offset = len(args) - len(defaults)
    for i, arg in enumerate(args):
        if arg.arg == argument:
            if i < offset:
                raise ExtractionError(f"{where}: {function}({argument}) has no default")
            value = defaults[i - offset]
            if not isinstance(value, ast.Constant):
                raise ExtractionError(f"{where}: the default of {function}({argument}) is not a constant")
            return value.value
    raise ExtractionError(f"{where}: {function} has no parameter {argument!r}")
