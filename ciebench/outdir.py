"""Output folders: ciebench writes, replaces and deletes only what it wrote itself.

Every command that writes a folder (`data prepare`, `evaluate`, `score`, `leaderboard`) first calls
`claim(out, kind)`:

- a missing or empty folder is created and gets the marker file `.ciebench-output.json` ({"kind": ...});
- a folder with the marker of the same kind is ciebench's own earlier output and may be reused;
- a folder with another kind's marker, or a non-empty folder without a marker, is refused
  (`OutputConflict`, exit 5) with the name of the folder, the entries ciebench did not write and what to
  do. A folder without a marker is adopted only when it demonstrably is the output of a ciebench
  version that wrote no marker: every entry belongs to the command's own layout *and* the file that
  version always wrote there says it is ciebench's (`EARLIER_OUTPUT`). Layout names alone prove
  nothing: a user's own `images/` or `summary.json` carries them too, and adopting it would let
  `--overwrite` (or a rewrite) delete the user's files.

`clear(out, kind)` (what `--overwrite` does) deletes only the entries of the kind's layout, never
anything else a user put there. `lock(out)` makes a second process on the same folder fail at once
(an `fcntl.flock`, released by the kernel when its holder dies, even by SIGKILL, so it never goes
stale), and `clean_stale_temp` removes half-written temporary files left by a killed process.
"""
from __future__ import annotations

import contextlib
import ctypes
import errno
import fnmatch
import glob
import json
import os
import shutil
import stat
import sys
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from .errors import OutputConflict
from .io import read_json_object, staging_dir

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


def _json_keys(name: str, *keys: str) -> Callable[[Path], bool]:
    """Evidence: `name` is a JSON object holding every one of `keys` ("a.b": key b of the object at key a);
    a file that is not a regular file or does not parse (a FIFO included) is no evidence."""
    def has(data: Any, key: str) -> bool:
        for part in key.split("."):
            if not isinstance(data, dict) or part not in data:
                return False
            data = data[part]
        return True

    def holds(out: Path) -> bool:
        try:
            data = read_json_object(out / name)
        except ValueError:  # unreadable or not UTF-8 (UnicodeDecodeError is a ValueError)
            return False
        return all(has(data, key) for key in keys)

    return holds


def _csv_header(name: str, *columns: str) -> Callable[[Path], bool]:
    """Evidence: the first line of `name` (a regular file, so a FIFO is never opened) starts with `columns`."""
    def holds(out: Path) -> bool:
        path = out / name
        if not path.is_file():
            return False
        try:
            with path.open(encoding="utf-8") as fh:
                first = fh.readline(4096)
        except (OSError, ValueError):
            return False
        return first.rstrip("\r\n").split(",")[:len(columns)] == list(columns)

    return holds


# What shows that a folder without a marker is the output of a ciebench version that wrote none (before
# markers): per kind, the file such a version wrote in every folder of that kind (first, where a run could
# be killed), in a form only ciebench writes; any one of them is enough.
EARLIER_OUTPUT: dict[str, tuple[str, tuple[Callable[[Path], bool], ...]]] = {
    # the frozen RunSpec, written before any sample is edited
    "run": ("spec.json of a ciebench run (with ciebench_version and spec_hash)",
            (_json_keys("spec.json", "ciebench_version", "spec_hash", "editor", "dataset"),)),
    # `score` wrote {"editor": null, "predictions", "dataset", "score_options"} first; later a RunSpec
    "score": ("spec.json of a ciebench score (with predictions and dataset)",
              (_json_keys("spec.json", "predictions", "dataset", "score_options"),
               _json_keys("spec.json", "predictions", "dataset", "ciebench_version", "spec_hash"))),
    # `--benchmark` runs wrote their spec (benchmark name, spec_hash) first; score and re-aggregation
    # only summary.json, which holds the benchmark's description
    "benchmark": ("spec.json or summary.json of a ciebench benchmark run",
                  (_json_keys("spec.json", "benchmark", "spec_hash", "editor"),
                   _json_keys("summary.json", "benchmark.name", "benchmark.hub_revision", "benchmark.headline"))),
    # the index of tables every leaderboard writes (`leaderboard.tables.index_frame`)
    "leaderboard": ("tables.csv of a ciebench leaderboard", (_csv_header("tables.csv", "table", "title", "protocol",
                                                                            "protocol_hash"),)),
    # the card `data prepare` writes beside every format
    "dataset": ("ciebench_card.json of a prepared dataset",
                (_json_keys("ciebench_card.json", "source", "kind", "revision", "n_samples"),)),
}


def _matches(name: str, patterns: Iterable[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns)


def _owned(name: str, kind: str) -> bool:
    return _matches(name, LAYOUTS[kind] + _ALWAYS_OURS)


def earlier_output(out: Path, kind: str) -> bool:
    """Whether `out`, which has no marker, demonstrably is `kind`'s output of an older ciebench."""
    return any(holds(Path(out)) for holds in EARLIER_OUTPUT[kind][1])


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
        foreign, unproven = foreign_entries(out, kind), ""
        if found is None and not earlier_output(out, kind):
            # names of the layout prove nothing (a user's own images/ or summary.json has them): with neither
            # the marker nor the file an older ciebench always wrote, none of the entries is ciebench's
            foreign = sorted(entry.name for entry in os.scandir(out) if not _matches(entry.name, _ALWAYS_OURS))
            unproven = f"; it has no marker {MARKER} and no {EARLIER_OUTPUT[kind][0]}"
        if foreign and (found is None or exclusive_layout):
            shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
            raise OutputConflict(
                f"{out} is not empty and holds files ciebench did not write ({shown}){unproven}",
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
def staged(out: Path, keep: Callable[[Path], Iterable[Path]] | None = None, replace: bool = True) -> Iterator[Path]:
    """A staging folder, filled by the caller, that then takes `out`'s place in one step, so no reader
    ever sees a half-written folder, or one half old and half new: on any failure it is deleted and
    `out` is as it was. `keep(out)` names paths of an earlier `out` (files, links, empty folders) that the
    new one keeps where the caller did not write the same path (a user's files beside a rewritten
    leaderboard); without it nothing of the earlier folder stays. With `replace=False` (a cache entry
    several processes may fill at once, each with the same content) an `out` that exists when the
    staging folder is done wins: it is left untouched, so no reader of it sees it swapped away.

    The staging folder lies beside `out` and the two are exchanged atomically (Linux `renameat2`
    RENAME_EXCHANGE), the kept paths linked into it first (hard links: same files, no copy). Where that
    cannot be done (another system, a file system without it, `out` a mount point or the working folder)
    the staged files are moved into `out` one by one once all are written (the staging folder then lies
    inside `out` where its parent cannot be written), then the paths neither written nor kept go: a kill
    during those moves can leave a mix, in a far shorter window than writing in place."""
    out = Path(out)
    real = Path(os.path.realpath(out))  # a link to a folder: the folder is replaced, the link stays
    # beside `out`, unless nothing can be renamed over it (a mount point), its parent is not ours to write,
    # or this process works inside it (`--out .`): swapped away, that folder would be deleted under the
    # process and the shell that started it
    inside = real.is_dir() and (os.path.ismount(real) or _holds_working_folder(real))
    try:
        staging = None if inside else _make_staging(real.parent, f".{real.name}.staging-")
    except PermissionError:
        if not real.is_dir():
            raise
        staging = None
    inside = staging is None
    staging = staging or _make_staging(real, ".ciebench-staging-")
    try:
        if real.is_dir():
            os.chmod(staging, stat.S_IMODE(real.stat().st_mode))
        yield staging
        kept = list(keep(real)) if keep is not None and real.is_dir() else []
        if not real.exists() or not replace:
            try:
                staging.rename(real)  # fails on a non-empty folder another writer put there meanwhile
            except OSError:
                if replace or not real.is_dir():
                    raise
                shutil.rmtree(staging, ignore_errors=True)  # the first writer's copy stays
            return
        if not inside:
            _link_into(real, staging, kept)
            if _exchange(staging, real):
                shutil.rmtree(staging, ignore_errors=True)  # the earlier folder, now at the staging path
                return
        _move_into(staging, real, kept)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def clean_stale_staging(out: str | os.PathLike) -> int:
    """Remove staging folders of `staged(out)` that a killed process left (beside `out`, or inside it when
    it is a mount point). Call it only while holding `lock(out)`."""
    real = Path(os.path.realpath(out))
    found = [*real.parent.glob(f".{glob.escape(real.name)}.staging-*"), *real.glob(".ciebench-staging-*")]
    stale = [p for p in found if p.is_dir() and not p.is_symlink()]
    for path in stale:
        shutil.rmtree(path, ignore_errors=True)
    return len(stale)


def tree_entries(root: Path) -> list[Path]:
    """Every file, link and empty folder under `root`, links not followed: what `staged`'s `keep` names."""
    found = []
    for folder, dirs, files in os.walk(root):
        base = Path(folder)
        found += [base / d for d in dirs if (base / d).is_symlink()]
        found += [base / f for f in files]
        if base != root and not dirs and not files:
            found.append(base)
    return found


def _holds_working_folder(folder: Path) -> bool:
    try:
        cwd = Path(os.getcwd()).resolve()
    except OSError:  # the working folder is already gone
        return False
    return cwd == folder or folder in cwd.parents


def _make_staging(parent: Path, prefix: str) -> Path:
    """A new staging folder in `parent` (created if needed), as readable as a plain `mkdir` makes it."""
    blocked = next((p for p in (parent, *parent.parents) if p.exists() and not p.is_dir()), None)
    if blocked is not None:  # mkdir would say "file exists", which hides what is wrong with the path
        raise NotADirectoryError(errno.ENOTDIR, "not a directory", str(blocked))
    parent.mkdir(parents=True, exist_ok=True)
    return staging_dir(parent, prefix)


def _link_into(old: Path, new: Path, kept: list[Path]) -> None:
    """Put each kept path of `old` at the same place in `new` (unless `new` has it): files as hard links
    (a copy where the file system has none), links as links, empty folders as folders."""
    for path in kept:
        rel = path.relative_to(old)
        dest = new / rel
        if os.path.lexists(dest) or any(os.path.lexists(new / p) and not (new / p).is_dir() for p in rel.parents):
            continue  # written anew (or a file of the new folder stands where a folder would be)
        dest.parent.mkdir(parents=True, exist_ok=True)
        if path.is_symlink():
            os.symlink(os.readlink(path), dest)
        elif path.is_dir():
            dest.mkdir(exist_ok=True)
        else:
            try:
                os.link(path, dest)
            except OSError:
                shutil.copy2(path, dest)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically (Linux `renameat2(RENAME_EXCHANGE)`); False where that is not available."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):  # a C library without it (glibc < 2.28, musl < 1.2.?)
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.EXDEV, errno.EBUSY, errno.EPERM):
        return False  # not supported here: the caller moves the files instead
    raise OSError(err, os.strerror(err), str(b))


def _move_into(staging: Path, out: Path, kept: list[Path]) -> None:
    """The fallback of `staged`: every staged file replaces its namesake in `out`, then the paths of `out`
    neither written nor kept are deleted (folders left empty by that too), then the staging folder."""
    written = set()
    for path in tree_entries(staging):
        dest = out / path.relative_to(staging)
        written.add(dest)
        if path.is_dir() and not path.is_symlink():
            dest.mkdir(parents=True, exist_ok=True)
            continue
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.replace(path, dest)  # a folder standing where a file goes is refused (IsADirectoryError), not deleted
    keep = set(kept) | written | {p for w in written for p in w.parents}
    gone = [p for p in tree_entries(out) if p not in keep and not p.is_relative_to(staging)]
    for path in gone:
        if not (path.is_dir() and not path.is_symlink()):
            path.unlink(missing_ok=True)
        elif not any(path.iterdir()):  # an empty folder, as `tree_entries` found it
            path.rmdir()
    for folder in sorted({p.parent for p in gone}, key=lambda f: len(f.parts), reverse=True):  # deepest first
        while folder != out and folder.is_dir() and not folder.is_symlink() and not any(folder.iterdir()):
            folder.rmdir()
            folder = folder.parent
    shutil.rmtree(staging, ignore_errors=True)
