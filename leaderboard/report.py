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
out), so that what is there is one leaderboard; files of other names are the user's and stay. The
whole leaderboard is written into a staging folder that then takes the folder's place in one step
(`replacing`, `ciebench.outdir.staged`): a leaderboard killed while writing leaves the earlier one,
never new tables beside old plots or an old leaderboard.md.
"""
from __future__ import annotations

import contextlib
import io
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator

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
    `out` changes in one step (`replacing`). `by_track`: separate tables per editor track."""
    return write_board(runs, (), out, primary=primary, alpha=alpha, plots=plots, gallery=gallery, dataset=dataset,
                       page_size=page_size, thumb_size=thumb_size, full_images=full_images, by_track=by_track,
                       replace=table_outputs)


def write_board(runs: Iterable[str | Path | Run], benchmark_runs: Iterable[str | Path], out: str | Path, *,
                primary: str | None = None, alpha: float = ALPHA, plots: bool = True, gallery: bool = True,
                dataset: str | None = None, page_size: int = 20, thumb_size: int = 320, full_images: bool = True,
                by_track: bool = False, replace: Callable[[Path], list[Path]] | None = None) -> LeaderboardOutput | None:
    """The tables of `runs` (options as `write_leaderboard`'s) and the boards of the judge-scored
    `benchmark_runs` (`benchmark_board`), written into `out` in one replacement (`replacing`): the files
    `replace(out)` finds there go unless written again (default: both kinds', what `ciebench leaderboard`
    does). Returns the tables' output, None without `runs`."""
    from .benchmark_board import benchmark_outputs, write_boards

    runs = [runs] if isinstance(runs, (str, Path, Run)) else list(runs)
    benchmark_runs = [Path(p) for p in benchmark_runs]
    tables = group_runs(runs, primary=primary, alpha=alpha, by_track=by_track) if runs else []
    replace = replace or (lambda folder: table_outputs(folder) + benchmark_outputs(folder))
    out = Path(out)
    with replacing(out, replace) as stage:
        if benchmark_runs:
            write_boards(benchmark_runs, stage, gallery)
        result = _write(tables, stage, plots=plots, gallery=gallery, dataset=dataset, page_size=page_size,
                        thumb_size=thumb_size, full_images=full_images) if tables else None
    if result is None:
        return None
    # the files as they now lie in `out`
    result.out, result.files = out, [out / p.relative_to(stage) for p in result.files]
    result.gallery = out / result.gallery.relative_to(stage) if result.gallery else None
    return result


@contextlib.contextmanager
def replacing(out: Path, replace: Callable[[Path], list[Path]]) -> Iterator[Path]:
    """Claim and lock the leaderboard folder `out` and yield an empty staging folder to write the new
    leaderboard into; when the block ends it takes `out`'s place in one step (`outdir.staged`), keeping
    every file of the earlier `out` except those `replace(out)` finds (an earlier leaderboard's, of the
    kinds written now) and those written anew: a user's notes stay, a table no longer given goes, and a
    kill at any moment leaves the earlier leaderboard or the new one, never a mix."""
    outdir.claim(out, "leaderboard")
    with outdir.lock(out):
        outdir.clean_stale_temp(out)
        outdir.clean_stale_staging(out)

        def keep(root: Path) -> list[Path]:
            # a folder linked into `out` from elsewhere is an entry kept as a link: its files are not ours
            replaced = set(replace(root))
            return [p for p in outdir.tree_entries(root) if p not in replaced]

        with outdir.staged(out, keep=keep) as stage:
            yield stage


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


__all__ = ["write_leaderboard", "write_board", "LeaderboardOutput"]
