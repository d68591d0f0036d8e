"""Where a run's work happens: the `Backend` contract and the local backend.

A backend does the two heavy steps of a run: generating the missing (sample, seed) pairs with the
editor, and computing the region metrics of predictions. The runner and the scorer do everything else
(claiming the folder, resume, writing rows and the summary, the judge) the same way for every
backend, so a run directory is the same whichever backend wrote it. `LocalBackend` works in this
process; `ciebench.distributed.RayBackend` shards both steps to Ray actors.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Iterator

if TYPE_CHECKING:  # the runner and the scorer import this module: no import back at run time
    from ciebench.datasets import LoadedDataset
    from ciebench.metrics.timing import StageTimer

    from .editor import Editor
    from .runner import PendingSamples, RunOptions, RunStats
    from .scoring import ScoreEntry, ScoreOptions

Key = tuple[str, int]  # (sample id, run seed)


class Backend(ABC):
    """Generation and region scoring for `runner.run` and `scoring.score`.

    Use it as a context manager (or call `close()`): a backend may hold a connection (Ray) that it
    opens on first use and releases on close. One backend may serve several runs."""

    name: str = ""

    @abstractmethod
    def generate(self, editor: Editor, pending: PendingSamples, out: Path, options: RunOptions,
                 stats: RunStats) -> None:
        """Edit every pending (sample, seed) and commit each result into the run folder `out`
        (`runner.commit_result`: atomic, record last), counting into `stats`."""

    @abstractmethod
    def score_regions(self, loaded: LoadedDataset, protocol: Any, metrics: list[str], options: ScoreOptions,
                      entries: Iterable[ScoreEntry], timer: StageTimer) -> Iterator[tuple[Key, dict[str, Any]]]:
        """The region metrics of each entry as (key, values), in any order; `values` holds
        `scoring.UNREADABLE` for a prediction that does not decode, "error" for a metric failure and
        "note" for why a metric is undefined. Time spent goes into `timer`'s stages."""

    @abstractmethod
    def model_ids(self) -> dict[str, str]:
        """The metric models (name -> hub id and revision) of the last `score_regions`, for summary.json."""

    def editor_models(self, editor: Editor) -> dict[str, str] | None:
        """The hub commit of each model `editor` declares, as the processes that made the last
        `generate`'s images resolved it (`runner.editor_models`): here, this machine's hub cache."""
        from .runner import editor_models

        return editor_models(editor)

    def close(self) -> None:
        """Release what the backend holds; idempotent."""

    def __enter__(self) -> "Backend":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class LocalBackend(Backend):
    """Everything in this process: the editor on `options.device`, one `RegionScorer` (models loaded
    once, batched, streaming)."""

    name = "local"

    def __init__(self) -> None:
        self._scoring: Any = None  # the last scoring.LocalRegionScoring, which knows its models

    def generate(self, editor: Editor, pending: PendingSamples, out: Path, options: RunOptions,
                 stats: RunStats) -> None:
        from .runner import generate_local

        generate_local(editor, pending, out, options, stats)

    def score_regions(self, loaded: LoadedDataset, protocol: Any, metrics: list[str], options: ScoreOptions,
                      entries: Iterable[ScoreEntry], timer: StageTimer) -> Iterator[tuple[Key, dict[str, Any]]]:
        from .scoring import LocalRegionScoring

        self._scoring = LocalRegionScoring(timer)
        return self._scoring.score(loaded, protocol, metrics, options, entries)

    def model_ids(self) -> dict[str, str]:
        return self._scoring.model_ids() if self._scoring is not None else {}
