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

Written again into the same folder, the leaderboard removes the files of these kinds that it does not
write this time (the tables of a protocol no longer given, their plots, gallery images of runs left
out), so that what is there is one leaderboard; files of other names are the user's and stay.
"""
from __future__ import annotations

import io
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import pandas as pd

from ciebench import outdir
from ciebench.io import atomic_write_text

from .runs import Run
from .significance import ALPHA, significance_matrix
from .tables import Table, group_runs, index_frame, markdown_document

log = logging.getLogger(__name__)


@dataclass
class LeaderboardOutput:
    """What `write_leaderboard` wrote into `out`: its tables, and `files`, every file written (the
    gallery's images included; `gallery` is its page)."""

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
    earlier leaderboard, whose files this one does not rewrite are removed (`ciebench.outdir`: a folder
    holding anything else is refused, and a second process writing the same folder fails at once).
    `by_track`: separate tables per editor track."""
    out = Path(out)
    tables = group_runs([runs] if isinstance(runs, (str, Path, Run)) else list(runs), primary=primary, alpha=alpha,
                        by_track=by_track)
    outdir.claim(out, "leaderboard")
    with outdir.lock(out):
        outdir.clean_stale_temp(out)
        result = _write(tables, out, plots=plots, gallery=gallery, dataset=dataset, page_size=page_size,
                        thumb_size=thumb_size, full_images=full_images)
        # only after everything is written: a write that fails leaves the earlier leaderboard's files
        remove_leftovers(out, table_outputs(out), result.files)
        return result


def remove_outputs(out: str | Path, outputs: Callable[[Path], list[Path]]) -> list[Path]:
    """Remove every file `outputs(out)` finds in the leaderboard folder `out`: an earlier leaderboard's
    tables (`table_outputs`) or benchmark boards (`benchmark_board.benchmark_outputs`), when this one
    has none. A missing folder has nothing to remove; a foreign one is refused as a write would be."""
    out = Path(out)
    if not out.is_dir():
        return []
    outdir.claim(out, "leaderboard")
    with outdir.lock(out):
        return remove_leftovers(out, outputs(out), ())


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
                                       styles=editor_styles(r.label for r in all_runs), written=result.files)
    return result


# What `_write` writes, by kind, as a later write finds it: top-level tables, plots/<table>/<plot>.<format>,
# and the gallery's page with its image and trace folders (by suffix). Benchmark boards (benchmark_board.py)
# have names of their own, their galleries in gallery/<benchmark>/.
# the layout's top-level files, less the benchmark boards' (benchmark_board.benchmark_outputs)
TABLE_FILES = tuple(p for p in outdir.LAYOUTS["leaderboard"]
                    if p not in ("plots", "gallery") and not p.startswith("benchmark"))
PLOT_PREFIXES = ("bars__", "by_edit_type__", "tradeoff__")
GALLERY_FOLDERS = {"thumbs": ".jpg", "full": ".png", "traces": ".js"}


def table_outputs(out: Path) -> list[Path]:
    """Every file in `out` of a kind the leaderboard's tables, plots and gallery are made of."""
    from .plots import FORMATS

    found = [p for pattern in TABLE_FILES for p in out.glob(pattern)]
    found += [p for p in out.glob("plots/*/*") if p.name.startswith(PLOT_PREFIXES) and p.suffix[1:] in FORMATS]
    found.append(out / "gallery" / "index.html")
    for folder, suffix in GALLERY_FOLDERS.items():
        found += (out / "gallery" / folder).rglob(f"*{suffix}")
    return [p for p in found if p.is_file() or p.is_symlink()]


def remove_leftovers(out: Path, outputs: Iterable[Path], written: Iterable[Path]) -> list[Path]:
    """Delete the `outputs` (files of an earlier leaderboard in `out`) not among `written` (this
    write's files), then the folders inside `out` that this leaves empty; returns what was deleted."""
    keep, root = set(written), out.resolve()
    # a folder linked into `out` from elsewhere holds files that are not the leaderboard's to delete
    removed = [p for p in outputs if p not in keep and p.parent.resolve().is_relative_to(root)]
    for path in removed:
        path.unlink(missing_ok=True)
    for folder in sorted({p.parent for p in removed}, key=lambda f: len(f.parts), reverse=True):  # deepest first
        while folder != out and folder.is_dir() and not folder.is_symlink() and not any(folder.iterdir()):
            folder.rmdir()
            folder = folder.parent
    return removed


__all__ = ["write_leaderboard", "LeaderboardOutput"]
