"""`write_leaderboard`: every leaderboard output for a set of runs into one folder.

Layout of OUT (see docs/leaderboard.md):
  leaderboard.csv, by_edit_type.csv, significance.csv   all tables, each row labelled by `table`
  significance_pairs.csv                                 every pairwise test, long form
  leaderboard__<table>.csv, by_edit_type__<table>.csv,
  significance__<table>.csv                              one table each (the separate, labelled tables)
  tables.csv                                             index: one row per table
  leaderboard.md                                         every table rendered, with its significance matrix
  plots/<table>/*.png|svg                                bars, per-edit-type bars, trade-off scatter
  gallery/index.html                                     the browsable gallery
"""
from __future__ import annotations

import io
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import pandas as pd

from ciebench import outdir
from ciebench.io import atomic_write_text

from .runs import Run
from .significance import ALPHA, significance_matrix
from .tables import Table, group_runs, index_frame, markdown_document

log = logging.getLogger(__name__)


@dataclass
class LeaderboardOutput:
    out: Path
    tables: list[Table]
    files: list[Path] = field(default_factory=list)
    gallery: Path | None = None

    @property
    def leaderboard(self) -> pd.DataFrame:
        return pd.concat([t.leaderboard for t in self.tables], ignore_index=True)


# A cell starting with one of these is run as a formula by spreadsheets (CSV injection).
FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")


def neutralise_formula(value: object) -> object:
    """A text cell that a spreadsheet would run as a formula gets a leading apostrophe (OWASP's advice);
    numbers and other text are unchanged."""
    if isinstance(value, str) and value.startswith(FORMULA_PREFIXES):
        return "'" + value
    return value


def csv_text(frame: pd.DataFrame) -> str:
    """A table as CSV text, cells a spreadsheet would run as formulas neutralised."""
    frame = frame.copy()
    for col in frame.columns:
        if frame[col].dtype == object or pd.api.types.is_string_dtype(frame[col].dtype):
            frame[col] = frame[col].map(neutralise_formula)
    frame.columns = [neutralise_formula(str(c)) for c in frame.columns]
    buf = io.StringIO()
    frame.to_csv(buf, index=False)  # full float precision; inf written as "inf", NaN as empty
    return buf.getvalue()


def write_leaderboard(runs: Iterable[str | Path | Run], out: str | Path, *, primary: str | None = None,
                      alpha: float = ALPHA, plots: bool = True, gallery: bool = True, dataset: str | None = None,
                      page_size: int = 20, thumb_size: int = 320, full_images: bool = True,
                      by_track: bool = False) -> LeaderboardOutput:
    """Build the tables for `runs` and write every output into `out`: a new or empty folder, or an
    earlier leaderboard (`ciebench.outdir`: a folder holding anything else is refused, and a second
    process writing the same folder fails at once). `by_track`: separate tables per editor track."""
    out = Path(out)
    tables = group_runs([runs] if isinstance(runs, (str, Path, Run)) else list(runs), primary=primary, alpha=alpha,
                        by_track=by_track)
    outdir.claim(out, "leaderboard")
    with outdir.lock(out):
        outdir.clean_stale_temp(out)
        return _write(tables, out, plots=plots, gallery=gallery, dataset=dataset, page_size=page_size,
                      thumb_size=thumb_size, full_images=full_images)


def _write(tables: list[Table], out: Path, *, plots: bool, gallery: bool, dataset: str | None,
           page_size: int, thumb_size: int, full_images: bool) -> LeaderboardOutput:
    result = LeaderboardOutput(out=out, tables=tables)

    def write(name: str, text: str) -> None:
        atomic_write_text(out / name, text)
        result.files.append(out / name)

    for t in tables:
        write(f"leaderboard__{t.slug}.csv", csv_text(t.leaderboard))
        write(f"by_edit_type__{t.slug}.csv", csv_text(t.by_edit_type))
        write(f"significance__{t.slug}.csv", csv_text(significance_matrix(t.pairs, t.labels)))
    write("leaderboard.csv", csv_text(pd.concat([t.leaderboard for t in tables], ignore_index=True)))
    write("by_edit_type.csv", csv_text(pd.concat([t.by_edit_type for t in tables], ignore_index=True)))
    write("significance.csv", csv_text(pd.concat([significance_matrix(t.pairs, t.labels) for t in tables], ignore_index=True)))
    write("significance_pairs.csv", csv_text(pd.concat([t.pairs for t in tables], ignore_index=True)))
    write("tables.csv", csv_text(index_frame(tables)))
    write("leaderboard.md", markdown_document(tables, plots=plots))

    all_runs = [r for t in tables for r in t.runs]
    if plots:
        from .plots import editor_styles, write_plots

        styles = editor_styles(r.label for r in all_runs)
        for t in tables:
            result.files += write_plots(t, out / "plots" / t.slug, styles)
    if gallery:
        from .gallery import write_gallery
        from .plots import editor_styles

        run_tables = {str(r.path): t.slug for t in tables for r in t.runs} if len(tables) > 1 else None
        result.gallery = write_gallery(all_runs, out / "gallery", dataset=dataset, page_size=page_size,
                                       thumb_size=thumb_size, full_images=full_images, run_tables=run_tables,
                                       styles=editor_styles(r.label for r in all_runs))
        result.files.append(result.gallery)
    return result


__all__ = ["write_leaderboard", "LeaderboardOutput"]
