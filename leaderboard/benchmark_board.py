"""Leaderboard tables and gallery for judge-scored benchmark runs (RISEBench, RISEBench++, KRIS-Bench).

One table per benchmark (runs of different benchmarks never mix): the official headline first (with
its CI where the benchmark has one), then the official overall row and every category row, then
ciebench's own region metrics where the run has them (columns "ours psnr", ...); a
per-category table per benchmark; and a static gallery page per benchmark showing, for each case,
every input image, every turn of a multi-turn case and each run's final output.
"""
from __future__ import annotations

import html
import io
import json
from pathlib import Path
from typing import Any

import pandas as pd
from PIL import Image

from ciebench.io import atomic_write_bytes, atomic_write_text
from ciebench.stats import from_json_number
from ciebench.metrics import catalogue

from .report import GALLERY_FOLDERS, csv_text, replacing
from .tables import md_escape

THUMB = 192


def is_benchmark_run(path: str | Path) -> bool:
    """A run directory written by `--benchmark` for a judge-scored benchmark."""
    summary = Path(path) / "summary.json"
    if not summary.is_file():
        return False
    try:
        data = json.loads(summary.read_text())
    except (OSError, json.JSONDecodeError):
        return False
    return isinstance(data.get("benchmark"), dict) and "official" in data and "headline" in data


def _label(path: Path, summary: dict[str, Any]) -> str:
    editor = ((summary.get("run") or {}).get("editor") or {}).get("name")
    return f"{editor or 'predictions'} ({path.name})"


def row_label(row: dict[str, Any]) -> str:
    """The name of an official table row: its "-" cell (RISEBench style), else its text cells joined
    (e.g. "en / fullset / color_alter" for GEdit-Bench)."""
    if isinstance(row.get("-"), str):
        return row["-"]
    return " / ".join(str(v) for v in row.values() if isinstance(v, str)) or "Overall"


def benchmark_tables(paths: list[Path]) -> dict[str, tuple[pd.DataFrame, pd.DataFrame]]:
    """{benchmark name: (main table, per-category table)}; rows sorted by the headline, best first (its
    direction from the metric catalogue; higher is better for a headline the catalogue does not know)."""
    by_bench: dict[str, list[tuple[Path, dict]]] = {}
    for path in paths:
        summary = json.loads((path / "summary.json").read_text())
        by_bench.setdefault(summary["benchmark"]["name"], []).append((path, summary))
    out = {}
    for name, runs in by_bench.items():
        main_rows, cat_rows = [], []
        for path, s in runs:
            head = s["headline"]
            ci = head.get("ci95") or [None, None]
            row: dict[str, Any] = {"run": _label(path, s), head["name"]: head["value"],
                                   "ci95_low": ci[0], "ci95_high": ci[1],
                                   # fewer cases than the official release (see mark_completeness)
                                   "partial": bool(head.get("incomplete"))}
            table = s["official"]
            overall = table[0] if table else {}
            for key, value in overall.items():
                if not isinstance(value, str) and not str(key).endswith("(1-5)"):
                    row[f"{row_label(overall)} {key}"] = value
            counts = (s.get("ours") or {}).get("status_counts") or {}
            row.update({f"n_{k}": v for k, v in counts.items()})
            # ciebench's region metrics (cases with a ground-truth image): ours, named so, after the official columns
            region = (s.get("ours") or {}).get("region") or {}
            for col, cell in (region.get("overall") or {}).items():
                if col != "region_fraction":
                    row[f"ours {col}"] = None if cell["mean"] is None else from_json_number(cell["mean"])
            main_rows.append(row)
            for r in table[1:]:
                label = row_label(r)
                if label.startswith(("subcategory/", "task_type/")) or "_" in label and label.split("_")[-1] in (
                        "Reasoning", "Consistency", "Quality", "ApprConsistency", "VisualPlausibility", "total"):
                    continue
                cat_rows.append({"run": row["run"], "category": label,
                                 **{k: v for k, v in r.items()
                                    if not isinstance(v, str) and not str(k).endswith("(1-5)")}})
        headline = runs[0][1]["headline"]["name"]
        main = pd.DataFrame(main_rows).sort_values(headline, ascending=not catalogue.higher_is_better(headline),
                                                    na_position="last", kind="stable")
        out[name] = (main.reset_index(drop=True), pd.DataFrame(cat_rows))
    return out


def _markdown(frame: pd.DataFrame) -> str:
    if frame.empty:
        return "_no rows_\n"
    cols = list(frame.columns)
    lines = ["| " + " | ".join(md_escape(c) for c in cols) + " |", "|" + "---|" * len(cols)]
    for _, r in frame.iterrows():
        lines.append("| " + " | ".join("-" if pd.isna(v) else (f"{v:.4f}" if isinstance(v, float) else md_escape(v))
                                        for v in r.tolist()) + " |")
    return "\n".join(lines) + "\n"


def write_benchmark_boards(paths: list[str | Path], out: str | Path, gallery: bool = True) -> list[Path]:
    """benchmarks.md, benchmark__<name>.csv (+ __categories) and gallery/<name>/ for the benchmark runs
    `paths`, into the leaderboard folder `out`, which changes in one step (`report.replacing`); an
    earlier leaderboard's benchmark files that this one does not rewrite are removed. Returns the files
    written."""
    out = Path(out)
    with replacing(out, benchmark_outputs) as stage:
        written = write_boards([Path(p) for p in paths], stage, gallery)
    return [out / p.relative_to(stage) for p in written]


def benchmark_outputs(out: Path) -> list[Path]:
    """Every file in `out` of a kind the benchmark boards are made of: benchmarks.md, benchmark__*.csv,
    and each gallery/<benchmark>/ page with its numbered thumbnails (the tables' gallery has the other
    folders of gallery/)."""
    found = [out / "benchmarks.md", *out.glob("benchmark__*.csv")]
    for page in out.glob("gallery/*/index.html"):
        if page.parent.name not in GALLERY_FOLDERS:
            found += [page, *page.parent.glob("[0-9]*.png")]
    return [p for p in found if p.is_file() or p.is_symlink()]


def write_boards(paths: list[Path], out: Path, gallery: bool) -> list[Path]:
    """Write the boards of the benchmark runs `paths` into the folder `out` as it is (see `write_benchmark_boards`)."""
    written: list[Path] = []
    doc = ["# Benchmark leaderboards\n"]
    for name, (main, cats) in benchmark_tables(paths).items():
        for stem, frame in ((f"benchmark__{name}.csv", main), (f"benchmark__{name}__categories.csv", cats)):
            atomic_write_text(out / stem, csv_text(frame))  # formulas neutralised
            written.append(out / stem)
        doc += [f"## {md_escape(name)}\n", _markdown(main)]
        if main["partial"].any():
            doc.append("\npartial: the run's headline covers fewer cases than the official release (a partial copy, or "
                       "unreadable inputs: its summary.json `headline.incomplete` says which); not "
                       "comparable with the published numbers.\n")
        doc += [f"\n### {md_escape(name)}: categories\n", _markdown(cats), ""]
        if gallery:
            write_benchmark_gallery(name, [p for p in paths if _bench_name(p) == name], out / "gallery" / name,
                                    written)
    atomic_write_text(out / "benchmarks.md", "\n".join(doc))
    written.append(out / "benchmarks.md")
    return written


def _bench_name(path: Path) -> str:
    return json.loads((path / "summary.json").read_text())["benchmark"]["name"]


def _thumb(src: Path, dest: Path, written: list[Path]) -> str:
    with Image.open(src) as im:
        im = im.convert("RGB")
        im.thumbnail((THUMB, THUMB))
        buf = io.BytesIO()
        im.save(buf, format="PNG")
    atomic_write_bytes(dest, buf.getvalue())
    written.append(dest)
    return dest.name


def write_benchmark_gallery(name: str, runs: list[Path], out: Path, written: list[Path] | None = None) -> Path:
    """index.html: one block per case (inputs, then per run: every turn and the final output). Every
    file written is appended to `written`."""
    from ciebench.benchmarks.run import output_image_path

    written = [] if written is None else written
    cases: dict[str, dict[str, Any]] = {}
    for k, run in enumerate(runs):
        for record_path in sorted((run / "records").glob("*/*.json")):
            record = json.loads(record_path.read_text())
            key = f"{record_path.parent.name}/{record_path.stem}"
            case = cases.setdefault(key, {"inputs": record.get("inputs") or [], "instruction": record.get("instruction", ""),
                                          "runs": []})
            images = [(f"turn {t['turn']}", run / t["image"]) for t in record.get("turns") or [] if t.get("image")]
            final = output_image_path(run, record_path.parent.name, record_path.stem)
            if final.is_file():
                images.append(("output", final))
            case["runs"].append((k, record.get("status"), record.get("error"), images))
    parts = [f"<!doctype html><meta charset='utf-8'><title>{html.escape(name)} gallery</title>",
             "<style>body{font-family:sans-serif}figure{display:inline-block;margin:4px}"
             "figcaption{font-size:12px}.case{border-top:1px solid #ccc;padding:8px}</style>",
             f"<h1>{html.escape(name)}</h1><p>Runs: " +
             ", ".join(f"{k}: {html.escape(str(p))}" for k, p in enumerate(runs)) + "</p>"]
    n = 0
    for key, case in cases.items():
        parts.append(f"<div class='case'><h3>{html.escape(key)}</h3><pre>{html.escape(case['instruction'])}</pre>")
        for i, src in enumerate(case["inputs"]):
            if Path(src).is_file():
                n += 1
                parts.append(f"<figure><img src='{_thumb(Path(src), out / f'{n}.png', written)}'>"
                             f"<figcaption>input {i + 1}</figcaption></figure>")
        for k, status, error, images in case["runs"]:
            parts.append(f"<div>run {k}: {html.escape(str(status))}"
                         + (f" ({html.escape(str(error))})" if error else "") + "</div>")
            for caption, path in images:
                n += 1
                parts.append(f"<figure><img src='{_thumb(path, out / f'{n}.png', written)}'>"
                             f"<figcaption>{html.escape(caption)}</figcaption></figure>")
        parts.append("</div>")
    atomic_write_text(out / "index.html", "\n".join(parts))
    written.append(out / "index.html")
    return out / "index.html"
