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

from .status import EDITOR_FAILURE, Status


@dataclass
class EditRequest:
    sample_id: str
    image: Image.Image  # RGB source
    instruction: str
    seed: int = 0  # already derived from (sample id, run seed): use it as is
    mask: Image.Image | None = None  # the GT mask, given only to editors with `oracle_mask = True`
    meta: dict[str, Any] = field(default_factory=dict)
    # Benchmarks with several inputs or turns (RISEBench++). Editors that ignore these keep working:
    # `images[0]` is always `image`; the runner only sends several images or turns to editors whose
    # `supports` says so, and records other such cases as `unsupported`.
    images: list[Image.Image] = field(default_factory=list)
    turns: list[str] = field(default_factory=list)  # set only for editors with handles_turns = True
    language: str = "en"

    def __post_init__(self) -> None:
        if not self.images:
            self.images = [self.image]
        elif self.image is None:
            self.image = self.images[0]
        elif self.images[0] is not self.image:
            # `image` wins, so `dataclasses.replace(request, image=x)` (written before `images` existed)
            # still changes the image the editor sees
            self.images = [self.image, *self.images[1:]]


@dataclass
class EditResult:
    image: Image.Image | None = None
    status: str = Status.OK  # Status.OK, REFUSED, UNSUPPORTED, or EDITOR_FAILURE (the row says Status.EDIT_ERROR)
    error: str | None = None
    trace: dict[str, Any] | None = None  # JSON-serialisable; written to traces/<id>.json
    timings: dict[str, float] = field(default_factory=dict)  # seconds, by stage

    @classmethod
    def failure(cls, error: str, trace: dict[str, Any] | None = None) -> "EditResult":
        return cls(image=None, status=EDITOR_FAILURE, error=error, trace=trace)


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
    # Case kinds beyond one image and one instruction: "multi_image" (reads request.images),
    # "multi_turn" (may be given a case of several turns). With `handles_turns = False` the runner
    # drives the turns itself (one request per turn, each fed the previous output); True hands the
    # editor one request holding every turn in `turns`.
    supports: ClassVar[frozenset[str]] = frozenset()
    handles_turns: ClassVar[bool] = False

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
        """Release models. Called when generation is over, before scoring (so the scorer gets their
        memory), and again when the command ends: it must be idempotent, and a later `edit` may load
        again."""

    def required_assets(self) -> list[Any]:
        """The files this configuration will load, as `ciebench.requirements.Requirement`s (hub repos at
        their revisions, torchvision checkpoints, pinned assets, local paths, endpoints), so
        `ciebench prefetch` can fetch them and `ciebench doctor` check them before a run. The base
        returns [] and `ciebench prefetch` warns that the editor declares nothing."""
        return []

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
            **({"supports": sorted(self.supports), "handles_turns": self.handles_turns} if self.supports else {}),
            "config": cfg,
        }
