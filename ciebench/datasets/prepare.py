"""`ciebench data prepare`: any source (dataset spec, archive file or URL) -> an HF dataset on disk."""
from __future__ import annotations

import json
import shutil
import tarfile
import tempfile
import zipfile
from pathlib import Path

from ciebench import outdir
from ciebench.errors import DISK_FULL_ERRNOS, UsageError
from ciebench.io import atomic_write_text

from . import PREPARED_CARD, LoadedDataset, read_dataset
from .problems import DatasetError
from .release import download, locate_release, unpack

ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz")


def prepare(source: str, out: Path, *, fmt: str = "arrow", verify: bool = True) -> LoadedDataset:
    """Convert `source` and write it to `out` (`save_to_disk` folder, `data.parquet` with fmt="parquet", or
    the Hub's dataset repository layout with fmt="hub": see `hub_layout`).
    The folder is written beside `out` and renamed into place, so `out` is whole or absent. `out` must be
    new, empty or an earlier prepared dataset (`outdir.claim`): a folder with anything else is refused,
    never deleted."""
    out = Path(out)
    if fmt not in ("arrow", "parquet", "hub"):
        raise UsageError(f"format must be 'arrow', 'parquet' or 'hub', not {fmt!r}")
    existed = out.exists()
    outdir.claim(out, "dataset", exclusive_layout=True)
    try:
        return _prepare_into(source, out, fmt, verify)
    except BaseException:
        if not existed and out.is_dir() and not outdir.foreign_entries(out, "dataset"):
            outdir.clear(out, "dataset")  # nothing was there before: leave nothing behind
            (out / outdir.MARKER).unlink(missing_ok=True)
            out.rmdir()
        raise


def _prepare_into(source: str, out: Path, fmt: str, verify: bool) -> LoadedDataset:
    with tempfile.TemporaryDirectory() as tmp:
        loaded = _read_any(source, Path(tmp), verify)
        with outdir.staged(out) as staging:
            if fmt == "arrow":
                loaded.dataset.save_to_disk(str(staging))
            elif fmt == "hub":
                from .hub_layout import write_hub_layout

                write_hub_layout(loaded, staging, source=source)
            else:
                loaded.dataset.to_parquet(str(staging / "data.parquet"))
            atomic_write_text(staging / PREPARED_CARD, json.dumps({
                "source": source, "kind": loaded.kind, "revision": loaded.revision, "n_samples": len(loaded.dataset),
                "problems": [str(p) for p in loaded.problems], "format": fmt,
                # read back on load: a Reason-Edit copy stays `smartedit`, a release copy names its release
                "default_protocol": loaded.default_protocol, **({"release": loaded.release} if loaded.release else {}),
            }, indent=2))
            outdir.write_marker(staging, "dataset")
    return loaded


def _read_any(source: str, tmp: Path, verify: bool) -> LoadedDataset:
    is_url = source.startswith(("http://", "https://", "file://"))
    if is_url or (Path(source).is_file() and source.endswith(ARCHIVE_SUFFIXES)):
        archive = tmp / "archive"
        try:
            if is_url:
                download(source, archive)
            else:
                shutil.copyfile(source, archive)
            unpack(archive, tmp / "tree")
        except (OSError, DatasetError, zipfile.BadZipFile, tarfile.TarError) as exc:  # as fetch_release reports a source
            if isinstance(exc, OSError) and exc.errno in DISK_FULL_ERRNOS:
                raise  # the machine's problem (exit 4), not the source's
            raise DatasetError(f"{source}: cannot download or unpack it ({exc})",
                               hint="check the URL or path and the network, or pass a local folder") from exc
        root = locate_release(tmp / "tree", None) or _single_top(tmp / "tree")
        loaded = read_dataset(str(root), verify=verify)
        loaded.spec = source
        return loaded
    return read_dataset(source, verify=verify)


def _single_top(tree: Path) -> Path:
    children = [p for p in tree.iterdir() if p.is_dir()]
    return children[0] if len(children) == 1 and not any(p.is_file() for p in tree.iterdir()) else tree
