"""The swappable components of the CIELR editor, declared as protocols: what the editor and the
reasoning scheduler ask of each, and nothing more. Any object with these methods can be swapped in
with `CIELREditor.use(...)` (e.g. a fine-tuned segmenter); no base class is needed.

| protocol | built-in implementations | `use(...)` keyword |
| --- | --- | --- |
| `Segmenter` | `segmenters.Sam2Segmenter`, `segmenters.SegmentAnythingSegmenter` | `segmenter` |
| `Labeller` | `labeller.Owlv2Labeller` | `labeller` |
| `DepthModel` | `depth.DepthEstimator` | `depth` |
| `Inpainter` | `executor.InpaintExecutor` (also the "sd-whole" remover), `lama.LamaRemover` | `executor`, `remover` |
| `Reasoner` | `ciebench.llm.LLMClient` (HTTP or local transformers) | `llm`, `vlm` |

The vision components and the inpainters count their work in a `CallStats` (`stats`), which the
editor reads per sample for the trace's `model_calls` and `timings`; `describe()` goes into the trace's
`models`. `keys` name the samples of a batch so that the counts land on the right sample.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Protocol, Sequence

import numpy as np
from PIL import Image

from .common import CallStats

if TYPE_CHECKING:  # only for annotations: keeps this module free of the model wrappers' imports
    from ciebench.llm import LLMConfig, LLMReply, PromptTemplate

    from .executor import InpaintJob, InpaintOutcome
    from .ssr import Detection


class Component(Protocol):
    """What every vision model and inpainter of the editor has."""

    stats: CallStats

    def describe(self) -> dict[str, Any]:
        """Backend, model id and settings, recorded in each trace's `models`."""
        ...


class Segmenter(Component, Protocol):
    def segment(self, images: Sequence[Image.Image], keys: Sequence[Any] = ()) -> list[list[np.ndarray]]:
        """Per image, its class-agnostic segments as boolean H x W masks."""
        ...


class Labeller(Component, Protocol):
    """Open-vocabulary detection. May also have `truncated(labels) -> {label: query sent}` for labels
    whose query was cut to the text encoder's length (recorded in the trace when present)."""

    def detect(self, images: Sequence[Image.Image], labels: Sequence[Sequence[str]],
               keys: Sequence[Any] = ()) -> list[list["Detection"]]:
        """Per image, the boxes found for that image's labels (each box with its best label)."""
        ...


class DepthModel(Component, Protocol):
    def estimate(self, images: Sequence[Image.Image], keys: Sequence[Any] = ()) -> list[np.ndarray]:
        """Per image, float32 H x W depth normalised to [0, 1], 0 = nearest."""
        ...


class Inpainter(Component, Protocol):
    def run(self, jobs: Sequence["InpaintJob"]) -> list["InpaintOutcome"]:
        """One outcome per job, in order; a failed job is an outcome with `error`, never an exception."""
        ...


class Reasoner(Protocol):
    """The LLM / VLM the chain asks (`Ask` requests)."""

    config: "LLMConfig"  # the scheduler reads `concurrency`; a local model's device follows the editor

    @property
    def model_id(self) -> str:
        ...

    def complete(self, template: "PromptTemplate", variables: dict[str, Any] | None = None,
                 images: Sequence[Image.Image | str] = (), schema: dict | None = None,
                 validate: Callable[[Any], str | None] | None = None) -> "LLMReply":
        """The reply to one rendered prompt; never raises for a failed call."""
        ...


__all__ = ["Component", "Segmenter", "Labeller", "DepthModel", "Inpainter", "Reasoner"]
