"""Building an editor from the command line: name or module:Class, preset, YAML file, key=value args.

Values are typed by the editor's `Config` dataclass, so `--editor-arg steps=20` becomes an int and a
misspelt key is an error that lists the valid ones."""
from __future__ import annotations

import dataclasses
import typing
from pathlib import Path
from typing import Any

import yaml

from .editor import Editor
from .errors import UsageError, did_you_mean
from .registry import get_editor_class


class EditorConfigError(UsageError, ValueError):
    """A bad --preset, --editor-config or --editor-arg (exit code 2)."""


def build_editor(name: str, args: list[str] | None = None, config_file: str | Path | None = None,
                 preset: str | None = None) -> Editor:
    cls = get_editor_class(name)
    options: dict[str, Any] = {}
    if preset:
        if preset not in cls.presets:
            raise EditorConfigError(f"editor {name!r} has no preset {preset!r}; presets: {', '.join(cls.presets) or 'none'}")
        options.update(cls.presets[preset])
    if config_file:
        try:
            loaded = yaml.safe_load(Path(config_file).read_text(encoding="utf-8")) or {}
        except FileNotFoundError:
            raise EditorConfigError(f"--editor-config {config_file}: no such file") from None
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
            raise EditorConfigError(f"--editor-config {config_file}: cannot read it as YAML ({exc})") from None
        if not isinstance(loaded, dict):
            raise EditorConfigError(f"{config_file}: expected a mapping of option: value")
        options.update(loaded)
    for pair in args or []:
        key, sep, raw = pair.partition("=")
        if not sep:
            raise EditorConfigError(f"--editor-arg {pair!r}: expected key=value")
        options[key.strip()] = raw
    typed = typed_options(cls, options) if options else {}
    check_config(name, cls, typed)
    return cls(**typed) if typed else cls()


def check_config(name: str, cls: type[Editor], typed: dict[str, Any]) -> None:
    """Build the editor's `Config` on its own first: a value its validation rejects (a ValueError or
    TypeError from the dataclass or its `__post_init__`, e.g. `segmenter=foo`) is a bad option, exit
    2 with one line naming the editor. Only this step is translated: an error while the editor itself
    is constructed (a bug, a model that fails to load) keeps its own type and traceback."""
    if not dataclasses.is_dataclass(cls.Config):
        return
    try:
        cls.Config(**typed)
    except (ValueError, TypeError) as exc:
        raise EditorConfigError(f"editor {name!r}: {exc}",
                                hint="fix the --preset, --editor-config or --editor-arg value") from exc


def typed_options(cls: type[Editor], options: dict[str, Any]) -> dict[str, Any]:
    config_cls = cls.Config
    if not dataclasses.is_dataclass(config_cls):
        raise EditorConfigError(f"editor {cls.__name__} takes no options (it has no Config dataclass)")
    fields = {f.name: f for f in dataclasses.fields(config_cls)}
    hints = typing.get_type_hints(config_cls)
    typed = {}
    for key, value in options.items():
        if key not in fields:
            raise EditorConfigError(f"{cls.__name__} has no option {key!r}." + did_you_mean(key, fields)
                                    + f" Options: {', '.join(fields)}")
        typed[key] = coerce(value, hints[key], key) if isinstance(value, str) else conform(value, hints[key], key)
    return typed


def conform(value: Any, hint: Any, key: str) -> Any:
    """A value already typed by YAML or a preset, as its field's type holds it, so that a YAML file and
    `--editor-arg` give the same config (and spec hash): `scale: 2` for a float field is 2.0, `name: 12`
    for a str field "12", a list for a tuple field a tuple; a value of another kind (`steps: [1]` for an
    int field) is an error naming the option."""
    if isinstance(value, str):
        return coerce(value, hint, key)
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if _is_union(origin):
        return _first_member(value, hint, key, conform, value is None)
    if origin in (tuple, list) and isinstance(value, (list, tuple)):
        if origin is tuple and args and args[-1] is not Ellipsis:  # a fixed-length tuple: one type per place
            if len(args) != len(value):
                raise EditorConfigError(f"option {key}: expected {len(args)} values, got {len(value)}")
            items = [conform(v, a, key) for v, a in zip(value, args)]
        else:
            items = [conform(v, args[0], key) for v in value] if args else list(value)
        return tuple(items) if origin is tuple else items
    is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is float and is_number:
        return float(value)
    if hint is str and is_number:
        return str(value)
    if hint in (int, float, str, bool) and (type(value) is not hint):
        raise EditorConfigError(f"option {key}: cannot read {value!r} as {hint.__name__}")
    return value


def coerce(text: str, hint: Any, key: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if _is_union(origin):
        return _first_member(text, hint, key, coerce, text.lower() in ("none", "null"))
    if origin in (tuple, list):
        inner = args[0] if args else str
        parts = [coerce(p.strip(), inner, key) for p in text.split(",") if p.strip()]
        return tuple(parts) if origin is tuple else parts
    try:
        if hint is bool:
            if text.lower() in ("1", "true", "yes", "on"):
                return True
            if text.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(text)
        if hint in (int, float, str):
            return hint(text)
    except ValueError as exc:
        raise EditorConfigError(f"option {key}: cannot read {text!r} as {hint.__name__}") from exc
    return yaml.safe_load(text)


def _is_union(origin: Any) -> bool:
    return origin in (typing.Union, getattr(__import__("types"), "UnionType", None))


def _first_member(value: Any, hint: Any, key: str, read: Any, means_none: bool) -> Any:
    """`value` read as the first member of the union `hint` that takes it (`read`: `coerce` for text,
    `conform` for a typed value); None when it says none and the union allows it."""
    args = typing.get_args(hint)
    if means_none and type(None) in args:
        return None
    for arg in (a for a in args if a is not type(None)):
        try:
            return read(value, arg, key)
        except EditorConfigError:
            continue
    raise EditorConfigError(f"option {key}: cannot read {value!r} as {hint}")
