"""Output folders: ciebench writes, replaces and deletes only what it wrote itself.

Every command that writes a folder (`data prepare`, `evaluate`, `score`, `leaderboard`) first calls
`claim(out, kind)`:

- a missing or empty folder is created and gets the marker file `.ciebench-output.json` ({"kind": ...});
- a folder with the marker of the same kind is ciebench's own earlier output and may be reused;
- a folder with another kind's marker, or a non-empty folder without a marker, is refused
  (`OutputConflict`, exit 5) with the name of the folder and what to do. A folder without a marker
  whose every entry belongs to the command's own layout (output of a ciebench version that wrote no
  marker) is adopted.

`clear(out, kind)` (what `--overwrite` does) deletes only the entries of the kind's layout, never
anything else a user put there. `lock(out)` makes a second process on the same folder fail at once
(an `fcntl.flock`, released by the kernel when its holder dies, even by SIGKILL, so it never goes
stale), and `clean_stale_temp` removes half-written temporary files left by a killed process.
"""
from __future__ import annotations

import contextlib
import fnmatch
import json
import os
import shutil
from pathlib import Path
from typing import Iterator

from .errors import OutputConflict
from .io import staging_dir

MARKER = ".ciebench-output.json"
LOCK = ".ciebench.lock"

# What each kind of output folder may hold (glob patterns of top-level entries); `clear` deletes
# exactly these. Temporary files of `io.atomic_write_bytes` (".<name>.<random>.tmp") belong to every kind.
LAYOUTS: dict[str, tuple[str, ...]] = {
    "run": ("spec.json", "images", "traces", "records", "samples.csv", "samples.jsonl", "summary.json",
            "invocations.json*"),
    "score": ("spec.json", "samples.csv", "samples.jsonl", "summary.json"),
    "leaderboard": ("leaderboard*.csv", "leaderboard.md", "by_edit_type*.csv", "significance*.csv", "tables.csv",
                    "plots", "gallery", "benchmarks.md", "benchmark__*.csv"),
    # `datasets.save_to_disk` / `to_parquet` / the Hub layout (README.md card, data/ shards) plus the
    # card `data prepare` writes
    # `--benchmark` runs of judge-scored benchmarks (evaluate, score, re-aggregation)
    "benchmark": ("spec.json", "images", "turns", "records", "verdicts.jsonl", "summary.json", "official_scores.csv",
                  "judge.json", ".llm-cache", "region_metrics.jsonl", "region_metrics.json"),
    "dataset": ("data-*.arrow", "dataset_info.json", "state.json", "data.parquet", "ciebench_card.json",
                "README.md", "data"),
}
_ALWAYS_OURS = (MARKER, LOCK, ".*.tmp")
DESCRIPTIONS = {"run": "an evaluate run", "score": "a score output", "leaderboard": "a leaderboard",
                "benchmark": "a benchmark run or score output",
                "dataset": "a prepared dataset"}


def _owned(name: str, kind: str) -> bool:
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in LAYOUTS[kind] + _ALWAYS_OURS)


def marker_kind(out: Path) -> str | None:
    """The kind recorded in `out`'s marker, or None when there is no readable marker."""
    try:
        data = json.loads((Path(out) / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    kind = data.get("kind") if isinstance(data, dict) else None
    return kind if isinstance(kind, str) else None


def foreign_entries(out: Path, kind: str) -> list[str]:
    """Entries of `out` that are not part of `kind`'s layout (sorted)."""
    return sorted(entry.name for entry in os.scandir(out) if not _owned(entry.name, kind))


def claim(out: str | os.PathLike, kind: str, *, exclusive_layout: bool = False) -> Path:
    """Make sure `out` is a folder this command may write (see the module doc), creating it and
    writing the marker when needed. `exclusive_layout`: the command replaces the whole folder (data
    prepare), so even a marked folder must hold nothing foreign. Returns `out` as a Path."""
    if kind not in LAYOUTS:
        raise ValueError(f"unknown output kind {kind!r}")
    out = Path(out)
    what = DESCRIPTIONS[kind]
    if out.exists() and not out.is_dir():
        raise OutputConflict(f"{out} exists and is not a folder", hint=f"choose a folder for {what}")
    if out.is_dir():
        found = marker_kind(out)
        if found is not None and found != kind:
            raise OutputConflict(f"{out} holds {DESCRIPTIONS.get(found, found)}, not {what}",
                                 hint="choose another --out; ciebench never reuses one kind of output folder for another")
        foreign = foreign_entries(out, kind)
        if foreign and (found is None or exclusive_layout):
            shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
            raise OutputConflict(
                f"{out} is not empty and holds files ciebench did not write ({shown})",
                hint="choose a new or empty folder for --out; ciebench never deletes files it did not write, "
                     "--overwrite included")
        if found == kind:
            return out
    out.mkdir(parents=True, exist_ok=True)
    write_marker(out, kind)
    return out


def write_marker(out: Path, kind: str) -> None:
    from . import __version__
    from .io import atomic_write_json

    atomic_write_json(Path(out) / MARKER, {"kind": kind, "written_by": f"ciebench {__version__}"})


def clear(out: str | os.PathLike, kind: str) -> None:
    """Delete `kind`'s own entries in `out` (what --overwrite replaces); the marker, the lock and
    anything outside the layout stay."""
    out = Path(out)
    for entry in os.scandir(out):
        if entry.name in (MARKER, LOCK) or not _owned(entry.name, kind):
            continue
        path = Path(entry.path)
        if entry.is_dir(follow_symlinks=False):
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)


def clean_stale_temp(out: str | os.PathLike, subdirs: tuple[str, ...] = ()) -> int:
    """Remove temporary files (".<name>.<random>.tmp") that a killed writer left in `out` and its
    `subdirs`. Call it only while holding `lock(out)`: then no live writer owns them."""
    removed = 0
    for folder in (Path(out), *(Path(out) / s for s in subdirs)):
        if not folder.is_dir():
            continue
        for path in folder.glob(".*.tmp"):
            if path.is_file() and not path.is_symlink():
                path.unlink(missing_ok=True)
                removed += 1
    return removed


@contextlib.contextmanager
def lock(out: str | os.PathLike) -> Iterator[None]:
    """Hold an exclusive lock on the output folder `out` (which must exist) for the block; a second
    holder fails at once with `OutputConflict`. The kernel drops the lock when its process dies."""
    path = Path(out) / LOCK
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            import fcntl
        except ImportError:  # Windows: no flock; concurrent runs are then not detected
            yield
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode("ascii", "replace").strip() or "?"
            raise OutputConflict(f"another ciebench process (pid {holder}) is writing {out}",
                                 hint="wait for it to finish, or use another --out") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode("ascii"), 0)
        try:
            yield
        finally:
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


@contextlib.contextmanager
def staged(out: Path) -> Iterator[Path]:
    """A staging folder beside `out`, filled by the caller: on success it replaces `out` in one rename
    (an earlier `out` is removed first), on any failure it is deleted, so no reader ever sees a
    half-written folder."""
    staging = staging_dir(out.parent if out.parent.exists() else None, prefix=f".{out.name}-")
    try:
        yield staging
        if out.exists():
            shutil.rmtree(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
