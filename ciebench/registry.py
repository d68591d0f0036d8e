"""Lazy registries: names map to "module:Class" strings and nothing heavy is imported until used.

Editors come from three places, checked in this order: built-ins below, the entry-point group
`ciebench.editors` (third-party packages), and a literal `package.module:Class` reference.
"""
from __future__ import annotations

from dataclasses import dataclass
from importlib import import_module
from importlib.metadata import entry_points
from typing import Any


from .errors import UsageError, did_you_mean


class RegistryError(UsageError, LookupError):
    """An unknown or unloadable editor/metric name (exit code 2)."""


@dataclass(frozen=True)
class Registry:
    kind: str  # "editor" | "metric"
    builtins: dict[str, str]
    entry_point_group: str | None = None

    def names(self) -> dict[str, str]:
        """name -> "module:Class", built-ins first; entry points may not shadow built-ins."""
        found = dict(self.builtins)
        if self.entry_point_group:
            for ep in entry_points(group=self.entry_point_group):
                found.setdefault(ep.name, ep.value)
        return found

    def resolve(self, name: str) -> Any:
        known = self.names()
        target = known.get(name)
        if target is None and ":" in name:
            target = name
        if target is None:
            hint = did_you_mean(name, known)
            raise RegistryError(
                f"unknown {self.kind} {name!r}.{hint} Known: {', '.join(sorted(known))}; "
                f"or pass package.module:Class.")
        return load_object(target, self.kind)


def load_object(target: str, kind: str = "object") -> Any:
    module_name, _, attr = target.partition(":")
    try:
        module = import_module(module_name)
    except ImportError as exc:
        raise RegistryError(f"cannot import {kind} module {module_name!r}: {exc}") from exc
    obj = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise RegistryError(f"{module_name!r} has no attribute {attr!r} (from {kind} reference {target!r})")
        obj = getattr(obj, part)
    return obj


EDITORS = Registry(
    kind="editor",
    builtins={
        "identity": "ciebench.baselines.identity:IdentityEditor",
        "instructpix2pix": "ciebench.baselines.instructpix2pix:InstructPix2PixEditor",
        "magicbrush": "ciebench.baselines.instructpix2pix:MagicBrushEditor",
        "smartedit": "ciebench.baselines.smartedit:SmartEditEditor",
        "cielr": "ciebench.cielr_ref.editor:CIELREditor",
        "qwen-image-edit": "ciebench.baselines.diffusers_editors:QwenImageEditEditor",
        "flux-kontext": "ciebench.baselines.diffusers_editors:FluxKontextEditor",
        "flux2-klein": "ciebench.baselines.diffusers_editors:Flux2KleinEditor",
        "longcat-image-edit": "ciebench.baselines.diffusers_editors:LongCatImageEditEditor",
        "diffusers": "ciebench.baselines.diffusers_editors:DiffusersEditor",
        "openai-images": "ciebench.baselines.openai_images:OpenAIImagesEditor",
    },
    entry_point_group="ciebench.editors",
)


def get_editor_class(name: str) -> type:
    from .editor import Editor

    if name.startswith("rewrite:"):  # rewrite:EDITOR wraps any editor (see ciebench.rewrite)
        from .rewrite import PREFIX, rewrite_editor_class

        return rewrite_editor_class(get_editor_class(name[len(PREFIX):]))
    cls = EDITORS.resolve(name)
    if not (isinstance(cls, type) and issubclass(cls, Editor)):
        raise RegistryError(f"{name!r} resolves to {cls!r}, which is not a ciebench.Editor subclass")
    return cls
