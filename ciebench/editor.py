"""The editor contract: batch in, batch out. A minimal editor subclasses `Editor` and implements `edit`.

    class MyEditor(ciebench.Editor):
        def edit(self, requests):
            return [ciebench.EditResult(image=r.image) for r in requests]
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar

from PIL import Image


@dataclass
class EditRequest:
    sample_id: str
    image: Image.Image  # RGB source
    instruction: str
    seed: int = 0  # already derived from (sample id, run seed): use it as is
    mask: Image.Image | None = None  # the GT mask, given only to editors with `oracle_mask = True`
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class EditResult:
    image: Image.Image | None = None
    status: str = "ok"  # ok | error
    error: str | None = None
    trace: dict[str, Any] | None = None  # JSON-serialisable; written to traces/<id>.json
    timings: dict[str, float] = field(default_factory=dict)  # seconds, by stage

    @classmethod
    def failure(cls, error: str, trace: dict[str, Any] | None = None) -> "EditResult":
        return cls(image=None, status="error", error=error, trace=trace)


@dataclass(frozen=True)
class EditorConfig:
    """Base for editors' typed configs. Fields must be JSON-able: the config is part of the run spec."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class Editor:
    """Base class of every editor.

    Class attributes describe the editor for `ciebench editors` and the run manifest:
    `name`, `version`, `requires` (e.g. ("gpu",), ("api_key:OPENAI_API_KEY",)), `oracle_mask`
    (True for editors that need the GT mask: reported as such, not comparable with reasoning
    editors), `Config` (a frozen dataclass of options) and `presets` (named option sets)."""

    name: ClassVar[str] = ""
    version: ClassVar[str] = "0"
    requires: ClassVar[tuple[str, ...]] = ()
    oracle_mask: ClassVar[bool] = False
    track: ClassVar[str] = "direct"  # direct (instruction straight to the model) | rewrite | agentic
    Config: ClassVar[type] = EditorConfig
    presets: ClassVar[dict[str, dict[str, Any]]] = {}

    def __init__(self, config: Any = None, **options: Any):
        if config is None:
            config = self.Config(**options) if dataclasses.is_dataclass(self.Config) else None
        elif options:
            config = dataclasses.replace(config, **options)
        self.config = config
        self.device = "cpu"

    def to(self, device: str) -> "Editor":
        self.device = device
        return self

    def edit(self, requests: list[EditRequest]) -> list[EditResult]:
        raise NotImplementedError

    def close(self) -> None:
        """Release models; called once at the end of a run."""

    @classmethod
    def display_name(cls) -> str:
        return cls.name or cls.__name__

    def describe(self) -> dict[str, Any]:
        cfg = self.config.to_dict() if hasattr(self.config, "to_dict") else (
            dataclasses.asdict(self.config) if dataclasses.is_dataclass(self.config) else {})
        return {
            "name": self.display_name(),
            "class": f"{type(self).__module__}:{type(self).__qualname__}",
            "version": self.version,
            "requires": list(self.requires),
            "oracle_mask": self.oracle_mask,
            "config": cfg,
        }
