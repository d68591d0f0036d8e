"""A static, self-contained HTML gallery of a leaderboard's runs: `gallery/index.html`.

Per sample: the source image, the mask overlaid on it, and every run's output (per seed) with its
metric values and status; reasoning traces (when a run has `traces/<id>.json`) sit in collapsible
<details> and load only when opened. Filter by edit type, sort by any run's metric, paginate.

Everything lives under the gallery folder and is referenced relatively (images, thumbnails, trace
scripts); the page uses inline CSS and JS only and requests nothing from the network, so it works
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
from pathlib import Path
from typing import Any, Iterable

import numpy as np
from PIL import Image

from ..images import open_image_file
from ..io import atomic_write_bytes, atomic_write_text, png_bytes
from ..results import file_stem, id_stem, natural_key
from ..stats import json_number
from ..status import Status
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
    from ..datasets import read_dataset

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
                from ..schema import EditSample

                found[sample_id] = EditSample.from_row(loaded.dataset[i])
        if wanted <= set(found):
            break
    return found, notes


def _release_cached() -> bool:
    try:
        from ..datasets.release import cache_dir

        return (cache_dir() / "dataset" / "state.json").exists()
    except Exception:  # noqa: BLE001
        return False


def write_gallery(runs, out_dir: str | Path, *, dataset: str | None = None, page_size: int = PAGE_SIZE,
                  thumb_size: int = THUMB_SIZE, full_images: bool = True, title: str = "CIEBench gallery",
                  run_tables: dict[str, str] | None = None, styles: dict[str, dict] | None = None) -> Path:
    """Write `out_dir/index.html` (+ images and trace scripts under `out_dir`) for `runs` (paths or
    `Run`s). Source images come from `dataset` if given, else from each run's spec dataset.
    `run_tables` maps run directories (str(run.path)) to their leaderboard table, shown beside the
    label; `styles` maps labels to {"color"} (default: `plots.editor_styles`). Returns the page."""
    from .plots import editor_styles

    runs: list[Run] = load_runs(runs)
    styles = styles or editor_styles(r.label for r in runs)
    if run_tables is None and len({r.group_key() for r in runs}) > 1:
        # runs from several tables: tag each with what separates them (protocol, and dataset if it differs)
        several_datasets = len({(r.dataset_spec, r.dataset_revision) for r in runs}) > 1
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
            entry["source"] = _write_image(out, f"src/{safe}", sample.image, thumb_size, full_images)
            entry["overlay"] = _write_image(out, f"mask/{safe}", mask_overlay(sample.image, sample.aligned_mask()),
                                            thumb_size, full_images)
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
                                               raw=path.read_bytes() if path.suffix.lower() == ".png" else None)
                        except Exception as exc:  # noqa: BLE001 - a corrupt prediction is shown as such
                            log.warning("%s: unreadable prediction (%s)", path, exc)
                row: dict[str, Any] = {"seed": seed, "status": _text(rec.get("status")), "img": img,
                                       "m": [_compact(rec.get(m)) if m in rec else None for m in metrics]}
                trace = _write_trace(run, k, sid, seed, out, thumb_size)
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


def _write_image(out: Path, stem: str, image: Image.Image, thumb_size: int, full_images: bool,
                 raw: bytes | None = None) -> dict[str, Any]:
    thumb_rel = f"thumbs/{stem}.jpg"
    atomic_write_bytes(out / thumb_rel, _thumb(image, thumb_size))
    w, h = image.size
    scale = min(1.0, thumb_size / max(w, h))
    info: dict[str, Any] = {"thumb": thumb_rel, "w": max(1, round(w * scale)), "h": max(1, round(h * scale)),
                            "size": [w, h], "full": None}
    if full_images:
        full_rel = f"full/{stem}.png"
        atomic_write_bytes(out / full_rel, raw if raw is not None else png_bytes(image.convert("RGB")))
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


def _write_trace(run: Run, k: int, sample_id: str, seed: int, out: Path, thumb_size: int) -> str | None:
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
                info = _write_image(out, f"artifacts/r{k}/{stem}/{i}", im, thumb_size, True,
                                    raw=src.read_bytes() if src.suffix.lower() == ".png" else None)
            except Exception as exc:  # noqa: BLE001 - an unreadable artifact is skipped, the trace still shows
                log.warning("%s: unreadable trace artifact (%s)", src, exc)
                continue
            images.append({"name": str(name), **info})
    rel_js = f"traces/r{k}/{stem}.js"
    payload = json.dumps(trace, ensure_ascii=True, default=str)
    atomic_write_text(out / rel_js, "window.ciebenchTrace(%d, %s, %d, %s, %s);\n" % (
        k, json.dumps(sample_id, ensure_ascii=True), seed, payload, json.dumps(images, ensure_ascii=True)))
    return rel_js


def _script_json(data: Any) -> str:
    """JSON safe inside <script type="application/json"> (no '</script>' or '<!--' can appear)."""
    text = json.dumps(data, ensure_ascii=True, separators=(",", ":"), allow_nan=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def render_html(data: dict[str, Any]) -> str:
    parts = {"TITLE": html.escape(data["title"]), "DATA": _script_json(data), "CSS": _CSS, "JS": _JS}
    return re.sub(r"\{\{(TITLE|DATA|CSS|JS)\}\}", lambda m: parts[m.group(1)], _TEMPLATE)  # one pass


_CSS = r"""
:root { --fg:#1d1d1f; --muted:#5f6368; --line:#d9dce1; --bg:#f6f7f9; --card:#fff; --accent:#0072B2; --bad:#b3261e; }
* { box-sizing: border-box; }
body { margin:0; font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif; color:var(--fg); background:var(--bg); }
header { position:sticky; top:0; z-index:5; background:#fff; border-bottom:1px solid var(--line); padding:10px 16px; }
h1 { font-size:18px; margin:0 0 6px; }
.controls { display:flex; flex-wrap:wrap; gap:10px 16px; align-items:center; }
.controls label { color:var(--muted); font-size:13px; }
select, button { font:inherit; padding:3px 6px; border:1px solid var(--line); border-radius:6px; background:#fff; }
button:disabled { opacity:.45; }
.pager { display:flex; gap:6px; align-items:center; }
#status { color:var(--muted); font-size:13px; }
.notes { color:var(--bad); font-size:13px; margin:4px 0 0; }
main { padding:12px 16px 40px; }
.legend { display:flex; flex-wrap:wrap; gap:6px 14px; margin:0 0 10px; font-size:13px; }
.swatch { display:inline-block; width:12px; height:12px; border-radius:3px; margin-right:5px; vertical-align:-1px; }
.sample { background:var(--card); border:1px solid var(--line); border-radius:10px; padding:10px 12px; margin:0 0 14px; }
.sample h2 { font-size:15px; margin:0; display:flex; gap:8px; align-items:baseline; flex-wrap:wrap; }
.badge { font-size:12px; font-weight:600; padding:1px 8px; border-radius:10px; background:#e8f1f8; color:#0b4f7c; }
.instr { margin:4px 0 8px; color:#333; }
.clip { color:var(--muted); font-size:12px; }
.row { display:flex; gap:10px; overflow-x:auto; padding-bottom:4px; align-items:flex-start; }
figure { margin:0; flex:0 0 auto; width:calc(min(var(--tw), 260) * 1px + 2px); }
figure img { display:block; max-width:100%; height:auto; border:1px solid var(--line); border-radius:4px; background:#eee; }
figcaption { font-size:12px; margin-top:3px; }
.runname { font-weight:600; display:flex; align-items:center; }
.placeholder { display:flex; align-items:center; justify-content:center; text-align:center; border:1px dashed var(--bad); color:var(--bad); border-radius:4px; font-size:12px; padding:6px; background:#fff7f6; }
table.m { border-collapse:collapse; margin-top:2px; font-size:12px; width:100%; }
table.m td { padding:0 4px 0 0; white-space:nowrap; }
table.m td.v { text-align:right; font-variant-numeric:tabular-nums; }
.status-bad { color:var(--bad); font-weight:600; }
details { margin-top:4px; font-size:12px; }
details.trace { border-top:1px solid var(--line); padding-top:4px; }
details pre { max-height:420px; overflow:auto; background:#f3f4f6; padding:6px; border-radius:4px; white-space:pre-wrap; word-break:break-word; }
details details { margin-left:8px; }
summary { cursor:pointer; color:var(--accent); }
#allids { margin:18px 0 0; font-size:13px; }
#allids ol { columns:4 14em; margin:6px 0 0; padding-left:22px; }
#allids a { color:var(--accent); text-decoration:none; }
"""

_JS = r"""
(function () {
  "use strict";
  var DATA = JSON.parse(document.getElementById("gallery-data").textContent);
  var state = { type: "", sort: "id", dir: "asc", page: 0, size: DATA.page_size };
  var traceWaiters = {}, traceStore = {};
  var MAX_W = 260;  // displayed image width (px); the CSS caps figures at the same width
  var el = function (tag, attrs, children) {
    var n = document.createElement(tag);
    if (attrs) Object.keys(attrs).forEach(function (k) {
      if (k === "text") n.textContent = attrs[k];
      else if (k === "style") n.setAttribute("style", attrs[k]);
      else n.setAttribute(k, attrs[k]);
    });
    (children || []).forEach(function (c) { if (c) n.appendChild(c); });
    return n;
  };
  function num(v) { if (v === null || v === undefined) return NaN; if (v === "inf") return Infinity; if (v === "-inf") return -Infinity; return +v; }
  function fmt(v) {
    var x = num(v);
    if (isNaN(x)) return "–";
    if (!isFinite(x)) return x > 0 ? "∞" : "−∞";
    if (x !== 0 && (Math.abs(x) < 1e-3 || Math.abs(x) >= 1e5)) return x.toExponential(2);
    return String(+x.toPrecision(4));
  }
  function sampleScore(s, runIdx, metric) {
    var vals = [];
    s.outputs.forEach(function (o) {
      if (o.run !== runIdx) return;
      o.rows.forEach(function (r) { var x = num(r.m[metric]); if (!isNaN(x)) vals.push(x); });
    });
    if (!vals.length) return NaN;
    if (vals.some(function (x) { return !isFinite(x); })) return vals.reduce(function (a, b) { return a + b; });
    return vals.reduce(function (a, b) { return a + b; }, 0) / vals.length;
  }
  function natural(a, b) {  // ciebench.results.natural_key: digit runs as numbers, before text; spelling breaks ties
    var ra = a.match(/[0-9]+|[^0-9]+/g) || [], rb = b.match(/[0-9]+|[^0-9]+/g) || [];
    for (var i = 0; i < Math.min(ra.length, rb.length); i++) {
      var da = /^[0-9]/.test(ra[i]), db = /^[0-9]/.test(rb[i]);
      if (da !== db) return da ? -1 : 1;
      var x = da ? +ra[i] : ra[i].toLowerCase(), y = db ? +rb[i] : rb[i].toLowerCase();
      if (x !== y) return x < y ? -1 : 1;
    }
    if (ra.length !== rb.length) return ra.length - rb.length;
    return a < b ? -1 : a > b ? 1 : 0;
  }
  function filtered() {
    var list = DATA.samples.filter(function (s) { return !state.type || s.edit_type === state.type; });
    if (state.sort === "id") {
      list.sort(function (a, b) { return natural(a.id, b.id); });
      if (state.dir === "desc") list.reverse();
    } else {
      var parts = state.sort.split("|"), runIdx = +parts[0], metric = +parts[1];
      var keyed = list.map(function (s) { return { s: s, k: sampleScore(s, runIdx, metric) }; });
      keyed.sort(function (a, b) {
        var an = isNaN(a.k), bn = isNaN(b.k);
        if (an || bn) return an === bn ? natural(a.s.id, b.s.id) : (an ? 1 : -1);  // undefined last
        if (a.k === b.k) return natural(a.s.id, b.s.id);
        return state.dir === "asc" ? (a.k < b.k ? -1 : 1) : (a.k > b.k ? -1 : 1);
      });
      list = keyed.map(function (x) { return x.s; });
    }
    return list;
  }
  function imageFigure(info, caption, captionNode) {
    var tw = info ? info.w : 160;
    var fig = el("figure", { style: "--tw:" + tw });
    if (info) {
      var img = el("img", { src: info.thumb, width: String(info.w), height: String(info.h), loading: "lazy",
                            decoding: "async", alt: caption });
      fig.appendChild(info.full ? el("a", { href: info.full, target: "_blank", title: "full size " + info.size.join("×") }, [img]) : img);
    }
    var cap = el("figcaption");
    if (captionNode) cap.appendChild(captionNode); else cap.textContent = caption;
    fig.appendChild(cap);
    return fig;
  }
  function metricTable(row, run) {
    var t = el("table", { class: "m" });
    DATA.metrics.forEach(function (m, j) {
      if (!run.has[j]) return;
      t.appendChild(el("tr", null, [el("td", { text: m.title + (m.higher ? " ↑" : " ↓") }), el("td", { class: "v", text: fmt(row.m[j]) })]));
    });
    Object.keys(row.notes || {}).forEach(function (k) {
      t.appendChild(el("tr", null, [el("td", { text: k }), el("td", { class: "v status-bad", text: row.notes[k] })]));
    });
    return t;
  }
  function traceBlock(runIdx, sample, row, title) {
    var d = el("details", { class: "trace" });
    d.appendChild(el("summary", { text: title }));
    var body = el("div", { class: "trace-body" }, [el("span", { text: "loading…" })]);
    d.appendChild(body);
    d.addEventListener("toggle", function () {
      if (!d.open || d.getAttribute("data-loaded")) return;
      d.setAttribute("data-loaded", "1");
      var key = runIdx + "|" + sample.id + "|" + row.seed;
      if (traceStore[key]) { renderTrace(body, traceStore[key]); return; }
      traceWaiters[key] = function (t) { renderTrace(body, t); };
      var s = el("script", { src: row.trace });
      s.onerror = function () { body.textContent = "trace file could not be loaded: " + row.trace; };
      document.body.appendChild(s);
    });
    return d;
  }
  function renderTrace(body, t) {
    var trace = t.trace;
    body.textContent = "";
    if (t.images && t.images.length) {
      var strip = el("div", { class: "row" });
      t.images.forEach(function (info) { strip.appendChild(imageFigure(info, info.name)); });
      body.appendChild(strip);
    }
    if (trace && typeof trace === "object" && Array.isArray(trace.steps)) {
      var rest = {};
      Object.keys(trace).forEach(function (k) { if (k !== "steps") rest[k] = trace[k]; });
      if (Object.keys(rest).length) body.appendChild(el("pre", { text: JSON.stringify(rest, null, 2) }));
      trace.steps.forEach(function (step, i) {
        var name = (step && typeof step === "object") ? (step.name || step.step || step.stage || step.type || "") : String(step);
        body.appendChild(el("details", null, [el("summary", { text: "step " + (i + 1) + (name ? ": " + name : "") }),
                                              el("pre", { text: JSON.stringify(step, null, 2) })]));
      });
    } else {
      body.appendChild(el("pre", { text: JSON.stringify(trace, null, 2) }));
    }
    body.setAttribute("data-rendered", "1");
  }
  window.ciebenchTrace = function (runIdx, sampleId, seed, trace, images) {
    var key = runIdx + "|" + sampleId + "|" + seed;
    traceStore[key] = { trace: trace, images: images || [] };
    if (traceWaiters[key]) { traceWaiters[key](traceStore[key]); delete traceWaiters[key]; }
  };
  function sampleCard(s) {
    var card = el("section", { class: "sample", id: "s-" + s.id, "data-sample-id": s.id, "data-edit-type": s.edit_type });
    card.appendChild(el("h2", null, [el("span", { text: s.id }), el("span", { class: "badge", text: s.edit_type })]));
    if (s.instruction) card.appendChild(el("div", { class: "instr", text: s.instruction }));
    if (s.clip_text && s.clip_text.length) card.appendChild(el("div", { class: "clip", text: "CLIP text: " + s.clip_text.join(" · ") }));
    var row = el("div", { class: "row" }), traces = [];
    if (s.source) row.appendChild(imageFigure(s.source, "source"));
    if (s.overlay) row.appendChild(imageFigure(s.overlay, "mask (edit region)"));
    s.outputs.forEach(function (o) {
      var run = DATA.runs[o.run];
      o.rows.forEach(function (r) {
        var name = el("div", { class: "runname" }, [el("span", { class: "swatch", style: "background:" + run.colour }),
          el("span", { text: run.label + (o.rows.length > 1 ? " · seed " + r.seed : "") + (run.table ? " (" + run.table + ")" : "") })]);
        var cap = el("div", null, [name]);
        if (r.status !== "ok") cap.appendChild(el("div", { class: "status-bad", text: r.status + (r.error ? ": " + r.error : "") }));
        cap.appendChild(metricTable(r, run));
        var fig;
        if (r.img) fig = imageFigure(r.img, run.label, cap);
        else {
          var w0 = s.source ? s.source.w : 160, h0 = s.source ? s.source.h : 120;
          var w = Math.min(w0, MAX_W), h = Math.round(h0 * w / w0);
          fig = el("figure", { style: "--tw:" + w }, [el("div", { class: "placeholder", style: "width:" + w + "px;height:" + h + "px",
                     text: "no image (" + (r.status || "missing") + ")" }), el("figcaption", null, [cap])]);
        }
        if (r.trace) traces.push(traceBlock(o.run, s, r, "Reasoning trace: " + run.label + (o.rows.length > 1 ? " · seed " + r.seed : "")));
        row.appendChild(fig);
      });
    });
    card.appendChild(row);
    traces.forEach(function (t) { card.appendChild(t); });
    return card;
  }
  var cache = { key: null, list: null };
  function current() {  // the filtered, sorted list; recomputed (with the index) only when it changes
    var key = state.type + "\u0000" + state.sort + "\u0000" + state.dir;
    if (cache.key !== key) { cache.key = key; cache.list = filtered(); renderIndex(cache.list); }
    return cache.list;
  }
  function render() {
    var list = current();
    var pages = Math.max(1, Math.ceil(list.length / state.size));
    state.page = Math.min(Math.max(0, state.page), pages - 1);
    var start = state.page * state.size, end = Math.min(list.length, start + state.size);
    var box = document.getElementById("samples");
    box.textContent = "";
    list.slice(start, end).forEach(function (s) { box.appendChild(sampleCard(s)); });
    document.getElementById("status").textContent = list.length
      ? "Showing " + (start + 1) + "–" + end + " of " + list.length + " samples" + (state.type ? " (" + state.type + ")" : "")
      : "No samples";
    document.getElementById("pageinfo").textContent = "page " + (state.page + 1) + " / " + pages;
    document.getElementById("prev").disabled = state.page === 0;
    document.getElementById("next").disabled = state.page >= pages - 1;
    writeHash();
  }
  function renderIndex(list) {
    var ol = document.getElementById("idlist");
    var frag = document.createDocumentFragment();
    list.forEach(function (s, i) {
      var li = document.createElement("li"), a = document.createElement("a");
      a.href = "#s-" + encodeURIComponent(s.id); a.textContent = s.id;
      a.setAttribute("data-sample-id", s.id); a.setAttribute("data-pos", String(i));
      li.appendChild(a); frag.appendChild(li);
    });
    ol.textContent = "";
    ol.appendChild(frag);
    document.getElementById("idcount").textContent = list.length + " samples";
  }
  function onIndexClick(ev) {  // one delegated handler for thousands of links
    var a = ev.target.closest("a[data-pos]");
    if (!a) return;
    ev.preventDefault();
    state.page = Math.floor(+a.getAttribute("data-pos") / state.size);
    render();
    var target = document.getElementById("s-" + a.getAttribute("data-sample-id"));
    if (target) target.scrollIntoView();
  }
  function writeHash() {
    var h = "type=" + encodeURIComponent(state.type) + "&sort=" + encodeURIComponent(state.sort) + "&dir=" + state.dir + "&page=" + (state.page + 1) + "&size=" + state.size;
    if (location.hash.slice(1) !== h) history.replaceState(null, "", "#" + h);
  }
  function readHash() {
    location.hash.slice(1).split("&").forEach(function (kv) {
      var p = kv.split("="), k = p[0], v = decodeURIComponent(p[1] || "");
      if (k === "type") state.type = v;
      else if (k === "sort" && v) state.sort = v;
      else if (k === "dir" && (v === "asc" || v === "desc")) state.dir = v;
      else if (k === "page" && +v > 0) state.page = +v - 1;
      else if (k === "size" && +v > 0) state.size = +v;
    });
  }
  function setup() {
    readHash();
    var types = {};
    DATA.samples.forEach(function (s) { types[s.edit_type] = (types[s.edit_type] || 0) + 1; });
    var typeSel = document.getElementById("type");
    typeSel.appendChild(el("option", { value: "", text: "all (" + DATA.samples.length + ")" }));
    Object.keys(types).sort().forEach(function (t) { typeSel.appendChild(el("option", { value: t, text: t + " (" + types[t] + ")" })); });
    typeSel.value = state.type;
    var sortSel = document.getElementById("sort");
    sortSel.appendChild(el("option", { value: "id", text: "sample id" }));
    DATA.runs.forEach(function (r, i) {
      var group = el("optgroup", { label: r.label + (r.table ? " (" + r.table + ")" : "") });
      DATA.metrics.forEach(function (m, j) { if (r.has[j]) group.appendChild(el("option", { value: i + "|" + j, text: r.label + ": " + m.title })); });
      sortSel.appendChild(group);
    });
    sortSel.value = state.sort;
    if (sortSel.value !== state.sort) { state.sort = "id"; sortSel.value = "id"; }
    var dirSel = document.getElementById("dir"); dirSel.value = state.dir;
    var sizeSel = document.getElementById("size");
    [10, 20, 50, 100].concat([state.size]).filter(function (v, i, a) { return a.indexOf(v) === i; }).sort(function (a, b) { return a - b; })
      .forEach(function (v) { sizeSel.appendChild(el("option", { value: String(v), text: String(v) })); });
    sizeSel.value = String(state.size);
    typeSel.addEventListener("change", function () { state.type = typeSel.value; state.page = 0; render(); });
    sortSel.addEventListener("change", function () {
      state.sort = sortSel.value; state.page = 0;
      if (state.sort !== "id") {  // default to best-first for the chosen metric
        var m = DATA.metrics[+state.sort.split("|")[1]];
        state.dir = m && !m.higher ? "asc" : "desc"; dirSel.value = state.dir;
      }
      render();
    });
    dirSel.addEventListener("change", function () { state.dir = dirSel.value; state.page = 0; render(); });
    sizeSel.addEventListener("change", function () { state.size = +sizeSel.value; state.page = 0; render(); });
    document.getElementById("prev").addEventListener("click", function () { state.page -= 1; render(); window.scrollTo(0, 0); });
    document.getElementById("next").addEventListener("click", function () { state.page += 1; render(); window.scrollTo(0, 0); });
    document.getElementById("idlist").addEventListener("click", onIndexClick);
    var legend = document.getElementById("legend");
    DATA.runs.forEach(function (r) {
      legend.appendChild(el("span", null, [el("span", { class: "swatch", style: "background:" + r.colour }),
        el("span", { text: r.label + " — " + r.protocol + " on " + r.dataset })]));
    });
    var notes = document.getElementById("notes");
    DATA.notes.forEach(function (n) { notes.appendChild(el("div", { text: n })); });
    render();
  }
  window.ciebenchGallery = { data: DATA, state: state, render: render, filtered: filtered };
  setup();
})();
"""

_TEMPLATE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="Content-Security-Policy" content="default-src 'self' 'unsafe-inline' file: data:; connect-src 'none'">
<link rel="icon" href="data:,">
<title>{{TITLE}}</title>
<style>{{CSS}}</style>
</head>
<body>
<header>
  <h1>{{TITLE}}</h1>
  <div class="controls">
    <label>edit type <select id="type"></select></label>
    <label>sort by <select id="sort"></select></label>
    <label>order <select id="dir"><option value="asc">ascending</option><option value="desc">descending</option></select></label>
    <label>per page <select id="size"></select></label>
    <span class="pager"><button id="prev" type="button">&#8592; prev</button><span id="pageinfo"></span><button id="next" type="button">next &#8594;</button></span>
    <span id="status"></span>
  </div>
  <div id="notes" class="notes"></div>
</header>
<main>
  <noscript>This gallery needs JavaScript to render its samples.</noscript>
  <div id="legend" class="legend"></div>
  <div id="samples"></div>
  <details id="allids"><summary>All samples (<span id="idcount"></span>)</summary><ol id="idlist"></ol></details>
</main>
<script type="application/json" id="gallery-data">{{DATA}}</script>
<script>{{JS}}</script>
</body>
</html>
"""

__all__ = ["write_gallery", "mask_overlay", "render_html", "safe_name"]
