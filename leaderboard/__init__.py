"""ciebench.leaderboard: tables, paired significance, plots and an HTML gallery from run directories.

Python use (every table is a pandas DataFrame)::

    from ciebench.leaderboard import leaderboard, by_edit_type, significance, write_leaderboard
    lb = leaderboard(["runs/cielr", "runs/ip2p"])          # one row per run, `table` column per protocol/dataset
    sig = significance(["runs/cielr", "runs/ip2p"])        # pairwise paired tests (long form)
    write_leaderboard(["runs/cielr", "runs/ip2p"], "board")  # CSV, Markdown, plots, gallery

The command line is `ciebench leaderboard RUN [RUN ...] --out DIR`; docs/leaderboard.md describes the
outputs and the statistics.
"""
from __future__ import annotations

from .report import LeaderboardOutput, write_leaderboard
from .runs import HIGHER_IS_BETTER, PRIMARY_ORDER, Run, RunError, load_run, load_runs
from .significance import compare_runs, holm, paired_test, significance_matrix
from .tables import Table, by_edit_type, group_runs, index_frame, leaderboard, markdown_document, significance


def plot_all(table: Table, out_dir, styles=None):
    """Write one table's plots (PNG + SVG) into `out_dir`; returns the written paths."""
    from .plots import editor_styles, write_plots

    return write_plots(table, out_dir, styles or editor_styles(r.label for r in table.runs))


def write_gallery(runs, out_dir, **kwargs):
    """Write the static HTML gallery for `runs` into `out_dir` (see `ciebench.leaderboard.gallery`)."""
    from .gallery import write_gallery as _write

    return _write(runs, out_dir, **kwargs)


__all__ = [
    "leaderboard", "by_edit_type", "significance", "significance_matrix", "group_runs", "index_frame",
    "markdown_document", "write_leaderboard", "write_gallery", "plot_all", "LeaderboardOutput", "Table",
    "Run", "RunError", "load_run", "load_runs", "paired_test", "compare_runs", "holm",
    "HIGHER_IS_BETTER", "PRIMARY_ORDER",
]
