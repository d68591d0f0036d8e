"""A static, self-contained HTML gallery of a leaderboard's runs: `gallery/index.html`.

Per sample: the source image, the mask overlaid on it, and every run's output (per seed) with its
metric values and status; reasoning traces (when a run has `traces/<id>.json`) sit in collapsible
<details> and load only when opened. Filter by edit type, sort by any run's metric, paginate.

Everything lives under the gallery folder and is referenced relatively (images, thumbnails, trace
scripts); the page uses inline CSS and JS only (kept as package data, `assets/gallery.html`, `.css`
and `.js`, and inlined when the page is written) and requests nothing from the network, so it works
from file:// and from any static host. Thumbnails (JPEG, at most `thumb_size` px) keep pages light;
each links to the full-size PNG copy. Traces are written as small JS files
(`traces/r<k>/<id>.js`) that call `window.ciebenchTrace(...)`, because browsers refuse `fetch()` of
file:// URLs but do load `<script src>` from them.
"""
from __future__ import annotations

import html
import json
import logging
import math
import re
from importlib import resources
from pathlib import Path
from typing import Any, Iterable

import numpy as np
from PIL import Image

from ciebench.images import open_image_file
from ciebench.io import atomic_write_bytes, atomic_write_text, png_bytes
from ciebench.results import file_stem, id_stem, natural_key
from ciebench.stats import json_number
from ciebench.status import Status

from .runs import Run, load_runs, metric_title, order_metrics

log = logging.getLogger(__name__)

THUMB_SIZE = 320
PAGE_SIZE = 20
OVERLAY_RGB = (213, 94, 0)  # Okabe-Ito vermillion


def safe_name(sample_id: str) -> str:
    """A file-name-safe, collision-free stand-in for a sample id: `ciebench.results.id_stem`, the one rule."""
    return id_stem(sample_id)


def _thumb(image: Image.Image, size: int) -> bytes:
    import io

    img = image.convert("RGB")
    img.thumbnail((size, size), Image.LANCZOS)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=85, optimize=True)
    return buf.getvalue()


def mask_overlay(image: Image.Image, mask: Image.Image | None) -> Image.Image:
    """The source with the edit region tinted (45% vermillion) and its boundary drawn solid."""
    rgb = np.asarray(image.convert("RGB"), dtype=np.float64)
    if mask is None:
        return image.convert("RGB")
    if mask.size != image.size:
        mask = mask.resize(image.size, Image.NEAREST)
    m = np.asarray(mask.convert("L")) > 127
    out = rgb.copy()
    colour = np.array(OVERLAY_RGB, dtype=np.float64)
    out[m] = 0.55 * rgb[m] + 0.45 * colour
    edge = m & ~(_shift(m, 1, 0) & _shift(m, -1, 0) & _shift(m, 0, 1) & _shift(m, 0, -1))
    edge = edge | _shift(edge, 1, 0) | _shift(edge, 0, 1)
    out[edge] = colour
    return Image.fromarray(np.clip(np.rint(out), 0, 255).astype(np.uint8))


def _shift(a: np.ndarray, dy: int, dx: int) -> np.ndarray:
    out = np.zeros_like(a)
    h, w = a.shape
    ys, yd = (slice(0, h - dy), slice(dy, h)) if dy >= 0 else (slice(-dy, h), slice(0, h + dy))
    xs, xd = (slice(0, w - dx), slice(dx, w)) if dx >= 0 else (slice(-dx, w), slice(0, w + dx))
    out[yd, xd] = a[ys, xs]
    return out


def _load_sources(specs: Iterable[str], wanted: set[str]) -> tuple[dict[str, Any], list[str]]:
    """EditSamples by id from the first dataset spec that loads; notes about what failed."""
    from ciebench.datasets import read_dataset

    notes = []
    found: dict[str, Any] = {}
    for spec in dict.fromkeys(s for s in specs if s and s != "unknown"):
        if spec == "ciebench" and not _release_cached():
            notes.append("the CIEBench release is not in the local cache, so source images are not shown; "
                         "pass --dataset with a local copy (or run `ciebench data prepare`) to include them")
            continue
        try:
            loaded = read_dataset(spec)
        except Exception as exc:  # noqa: BLE001 - any failure only means "no source images"
            notes.append(f"dataset {spec!r} could not be loaded ({type(exc).__name__}: {exc}); "
                         "source images are not shown for its samples")
            continue
        ids = loaded.dataset["id"]
        for i, sample_id in enumerate(ids):
            if sample_id in wanted and sample_id not in found:
                from ciebench.schema import EditSample

                found[sample_id] = EditSample.from_row(loaded.dataset[i])
        if wanted <= set(found):
            break
    return found, notes


def _release_cached() -> bool:
    try:
        from ciebench.datasets.release import cache_dir

        return (cache_dir() / "dataset" / "state.json").exists()
    except Exception:  # noqa: BLE001
        return False


def write_gallery(runs, out_dir: str | Path, *, dataset: str | None = None, page_size: int = PAGE_SIZE,
                  thumb_size: int = THUMB_SIZE, full_images: bool = True, title: str = "CIEBench gallery",
                  run_tables: dict[str, str] | None = None, styles: dict[str, dict] | None = None,
                  written: list[Path] | None = None) -> Path:
    """Write `out_dir/index.html` (+ images and trace scripts under `out_dir`) for `runs` (paths or
    `Run`s). Source images come from `dataset` if given, else from each run's spec dataset.
    `run_tables` maps run directories (str(run.path)) to their leaderboard table, shown beside the
    label; `styles` maps labels to {"color"} (default: `plots.editor_styles`). Every file written is
    appended to `written` (the leaderboard removes an earlier gallery's other files). Returns the page."""
    from .plots import editor_styles

    written = [] if written is None else written

    runs: list[Run] = load_runs(runs)
    styles = styles or editor_styles(r.label for r in runs)
    if run_tables is None and len({r.group_key() for r in runs}) > 1:
        # runs from several tables: tag each with what separates them (protocol, and dataset if it differs)
        several_datasets = len({r.dataset_key for r in runs}) > 1
        run_tables = {str(r.path): r.protocol_name + (f" / {r.dataset_spec}" if several_datasets else "") for r in runs}
    out = Path(out_dir)
    metric_dirs: dict[str, bool] = {}
    for run in runs:
        for m, h in run.metrics.items():
            metric_dirs.setdefault(m, h)
    metrics = order_metrics(metric_dirs)
    sample_ids: dict[str, str] = {}  # id -> edit type
    for run in runs:
        for sid, et in zip(run.samples["sample_id"].astype(str), run.samples["edit_type"].astype(str)):
            sample_ids.setdefault(sid, et)
    ordered_ids = sorted(sample_ids, key=natural_key)
    specs = [dataset] if dataset else [r.dataset_spec for r in runs]
    sources, notes = _load_sources(specs, set(ordered_ids))
    missing_sources = [s for s in ordered_ids if s not in sources]
    if missing_sources and not notes:
        notes.append(f"{len(missing_sources)} sample(s) not found in the dataset; their source images are not shown")

    samples_data = []
    for sid in ordered_ids:
        safe = safe_name(sid)
        entry: dict[str, Any] = {"id": sid, "edit_type": sample_ids[sid], "instruction": "", "clip_text": [],
                                 "source": None, "overlay": None, "outputs": []}
        sample = sources.get(sid)
        if sample is not None:
            entry["instruction"] = sample.instruction
            entry["clip_text"] = list(sample.clip_text)
            entry["edit_type"] = sample.edit_type or entry["edit_type"]
            entry["source"] = _write_image(out, f"src/{safe}", sample.image, thumb_size, full_images, written)
            entry["overlay"] = _write_image(out, f"mask/{safe}", mask_overlay(sample.image, sample.aligned_mask()),
                                            thumb_size, full_images, written)
        samples_data.append(entry)
    by_id = {e["id"]: e for e in samples_data}

    for k, run in enumerate(runs):
        frame = run.samples.copy()
        frame["sample_id"] = frame["sample_id"].astype(str)
        for sid, g in frame.groupby("sample_id", sort=False):
            rows = []
            for rec in g.sort_values("seed").to_dict("records"):
                seed = int(rec["seed"]) if rec.get("seed") is not None and not _isnan(rec["seed"]) else 0
                img = None
                pred = rec.get("prediction")
                if isinstance(pred, str) and pred:
                    path = _inside(run, pred)
                    if path is None:
                        log.warning("%s: prediction %r of sample %s lies outside the run's folders; not copied",
                                    run.path, pred, sid)
                    elif path.is_file():
                        try:
                            im = open_image_file(path)  # regular files, allowed formats only
                            img = _write_image(out, f"out/r{k}/{file_stem(sid, seed)}", im, thumb_size, full_images,
                                               written, raw=path.read_bytes() if path.suffix.lower() == ".png" else None)
                        except Exception as exc:  # noqa: BLE001 - a corrupt prediction is shown as such
                            log.warning("%s: unreadable prediction (%s)", path, exc)
                row: dict[str, Any] = {"seed": seed, "status": _text(rec.get("status")), "img": img,
                                       "m": [_compact(rec.get(m)) if m in rec else None for m in metrics]}
                trace = _write_trace(run, k, sid, seed, out, thumb_size, written)
                if trace:
                    row["trace"] = trace
                if _text(rec.get("error")):
                    row["error"] = _text(rec.get("error"))
                row_notes = {f"{m}_status": _text(rec.get(f"{m}_status")) for m in metrics
                             if _text(rec.get(f"{m}_status")) not in ("", Status.OK)}
                if row_notes:
                    row["notes"] = row_notes
                rows.append(row)
            by_id[sid]["outputs"].append({"run": k, "rows": rows})

    data = {
        "title": title,
        "page_size": page_size,
        "notes": notes,
        "metrics": [{"name": m, "title": metric_title(m), "higher": metric_dirs[m]} for m in metrics],
        "runs": [{"label": r.label, "has": [m in r.samples.columns for m in metrics], "table": (run_tables or {}).get(str(r.path), ""), "protocol": r.protocol_name,
                  "dataset": r.dataset_spec, "colour": styles.get(r.label, {}).get("color", "#777777")} for r in runs],
        "samples": samples_data,
    }
    page = out / "index.html"
    atomic_write_text(page, render_html(data))
    written.append(page)
    return page


def _inside(run: Run, relative: str) -> Path | None:
    """`relative` (a samples.csv prediction path) resolved, when it lies inside the run folder, or inside
    the --predictions folder that a `ciebench score` run recorded in its spec.json; else None. The
    gallery copies nothing else, whatever a samples.csv says."""
    roots = [run.path.resolve()]
    predictions = run.spec.get("predictions") if run.spec.get("editor", "absent") is None else None
    if isinstance(predictions, str) and predictions:
        roots.append(Path(predictions).resolve())
    try:
        path = (run.path / relative).resolve()
    except (OSError, RuntimeError, ValueError):
        return None
    return path if any(path.is_relative_to(root) for root in roots) else None


def _compact(v: Any) -> Any:
    """A metric value for the page in the one JSON number form (`stats.json_number`), to 7 significant
    digits (display and sorting need no more)."""
    try:
        v = json_number(v)
    except (TypeError, ValueError):  # not a number: shown as it is
        return v
    return float(f"{v:.7g}") if isinstance(v, float) else v


def _isnan(v: Any) -> bool:
    try:
        return math.isnan(float(v))
    except (TypeError, ValueError):
        return False


def _text(v: Any) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    return str(v)


def _write_image(out: Path, stem: str, image: Image.Image, thumb_size: int, full_images: bool, written: list[Path],
                 raw: bytes | None = None) -> dict[str, Any]:
    thumb_rel = f"thumbs/{stem}.jpg"
    atomic_write_bytes(out / thumb_rel, _thumb(image, thumb_size))
    written.append(out / thumb_rel)
    w, h = image.size
    scale = min(1.0, thumb_size / max(w, h))
    info: dict[str, Any] = {"thumb": thumb_rel, "w": max(1, round(w * scale)), "h": max(1, round(h * scale)),
                            "size": [w, h], "full": None}
    if full_images:
        full_rel = f"full/{stem}.png"
        atomic_write_bytes(out / full_rel, raw if raw is not None else png_bytes(image.convert("RGB")))
        written.append(out / full_rel)
        info["full"] = full_rel
    return info


def trace_path(run_dir: Path, sample_id: str, seed: int) -> Path | None:
    """The trace of (sample, seed) in a run directory: `traces/<file_stem>.json` as the runner writes it,
    else the names of earlier versions (URL-quoted id) or the per-sample `traces/<id>.json`; never a
    file outside traces/."""
    import urllib.parse

    quoted = urllib.parse.quote(sample_id, safe="-_.")
    for name in (f"{file_stem(sample_id, seed)}.json", f"{quoted}__s{seed}.json", f"{quoted}.json",
                 f"{sample_id}__s{seed}.json", f"{sample_id}.json"):
        path = run_dir / "traces" / name
        try:
            if path.resolve().is_relative_to((run_dir / "traces").resolve()) and path.is_file():
                return path
        except (OSError, ValueError):
            continue
    return None


def _write_trace(run: Run, k: int, sample_id: str, seed: int, out: Path, thumb_size: int,
                 written: list[Path]) -> str | None:
    path = trace_path(run.path, sample_id, seed)
    if path is None:
        return None
    try:
        trace: Any = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        trace = {"unreadable_trace": path.name, "error": str(exc)}
    stem = file_stem(sample_id, seed)
    images = []
    artifacts = trace.get("artifacts") if isinstance(trace, dict) else None
    if isinstance(artifacts, dict):  # runner: {name: "<stem>/<file>"} relative to traces/
        root = (run.path / "traces").resolve()
        for i, (name, rel) in enumerate(artifacts.items()):
            src = (run.path / "traces" / str(rel)).resolve()
            if not (isinstance(rel, str) and src.is_relative_to(root) and src.is_file()):
                continue
            try:
                im = open_image_file(src)
                info = _write_image(out, f"artifacts/r{k}/{stem}/{i}", im, thumb_size, True, written,
                                    raw=src.read_bytes() if src.suffix.lower() == ".png" else None)
            except Exception as exc:  # noqa: BLE001 - an unreadable artifact is skipped, the trace still shows
                log.warning("%s: unreadable trace artifact (%s)", src, exc)
                continue
            images.append({"name": str(name), **info})
    rel_js = f"traces/r{k}/{stem}.js"
    payload = json.dumps(trace, ensure_ascii=True, default=str)
    atomic_write_text(out / rel_js, "window.ciebenchTrace(%d, %s, %d, %s, %s);\n" % (
        k, json.dumps(sample_id, ensure_ascii=True), seed, payload, json.dumps(images, ensure_ascii=True)))
    written.append(out / rel_js)
    return rel_js


def _script_json(data: Any) -> str:
    """JSON safe inside <script type="application/json"> (no '</script>' or '<!--' can appear)."""
    text = json.dumps(data, ensure_ascii=True, separators=(",", ":"), allow_nan=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _asset(name: str) -> str:
    """A file of the page (package data in ciebench/leaderboard/assets/): gallery.html is the template,
    gallery.css and gallery.js are inlined into it."""
    return resources.files("ciebench.leaderboard").joinpath("assets").joinpath(name).read_text(encoding="utf-8")


def render_html(data: dict[str, Any]) -> str:
    parts = {"TITLE": html.escape(data["title"]), "DATA": _script_json(data), "CSS": _asset("gallery.css"),
             "JS": _asset("gallery.js")}
    return re.sub(r"\{\{(TITLE|DATA|CSS|JS)\}\}", lambda m: parts[m.group(1)], _asset("gallery.html"))  # one pass


__all__ = ["write_gallery", "mask_overlay", "render_html", "safe_name"]
