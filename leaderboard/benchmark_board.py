"""Leaderboard tables and gallery for judge-scored benchmark runs (RISEBench, RISEBench++, KRIS-Bench).

One table per benchmark, judge and data revision (`group_benchmark_runs`: runs of different
benchmarks, judged by different judges or on different data never share a ranking, as the dataset
tables never mix protocols or data): the official headline first (with its CI where the benchmark has
one), then the official overall row and every category row, then ciebench's own region metrics where
the run has them (columns "ours psnr", ...); a per-category table per table; and a static gallery
page per benchmark showing, for each case, every input image, every turn of a multi-turn case and each
run's final output.
"""
from __future__ import annotations

import html
import io
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from PIL import Image

from ciebench.io import atomic_write_bytes, atomic_write_text
from ciebench.stats import from_json_number
from ciebench.metrics import catalogue

from .report import GALLERY_FOLDERS, csv_text, replacing
from .runs import number_repeats, slugify
from .tables import md_escape

THUMB = 192
log = logging.getLogger(__name__)


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


@dataclass
class BenchTable:
    """The runs of one benchmark that may be ranked together: one judge, one data revision."""

    slug: str  # file names: benchmark__<slug>.csv; the benchmark's name alone when it has one table
    benchmark: str
    judge: tuple | None  # `judge_key` (None: not recorded)
    data: tuple | None  # `data_key` (None: not recorded)
    runs: list[tuple[Path, dict[str, Any]]]

    @property
    def judge_label(self) -> str:
        """The judge models, e.g. "gpt-4.1-2025-04-14", or "main: m1, quality: m2" with several roles."""
        if self.judge is None:
            return "not recorded"
        roles = self.judge[1]
        if len(roles) == 1:
            return str(roles[0][1])
        return ", ".join(f"{role}: {model}" for role, model, _ in roles)

    def heading(self) -> str:
        """The judge and data identity every run of the table shares, for benchmarks.md."""
        if self.judge is None:
            judge = "not recorded (re-aggregated from --verdicts, or written by an older ciebench)"
        else:
            prompts, roles = self.judge
            judge = "; ".join(f"{role} {model}, temperature {'not sent' if t is None else t}" for role, model, t in roles)
            judge += "; prompts sha256 " + ", ".join(str(h)[:12] for h in prompts)
        if self.data is None:
            data = "not recorded (written by an older ciebench)"
        else:
            hub_id, revision = self.data
            data = f"{hub_id or 'no hub id'}, revision {'not pinned' if revision is None else revision}"
        return f"Judge: {judge}. Data: {data}."


def judge_key(summary: dict[str, Any]) -> tuple | None:
    """What decides a run's verdicts, as its summary.json records it: the sha256 of each prompt file and
    each judge role's model and temperature (`benchmarks.session.judge_identity`, the identity a run
    folder keeps its verdicts to, less max_tokens and seed, which summary.json does not record; the
    endpoint is left out there and here). None when the summary records no judge."""
    judge = summary.get("judge")
    if not isinstance(judge, dict):
        return None
    prompts = tuple((p or {}).get("sha256") for p in [judge.get("prompts"), *(judge.get("more_prompts") or [])])
    roles = tuple(sorted((str(role), str(j.get("model")), j.get("temperature"))
                         for role, j in (judge.get("judges") or {}).items() if isinstance(j, dict)))
    return prompts, roles


def data_key(summary: dict[str, Any]) -> tuple | None:
    """The benchmark data a run read, as recorded: (hub id, hub revision; None where not pinned). None
    when the summary records no revision at all (an older ciebench)."""
    bench = summary["benchmark"]
    if "hub_revision" not in bench:
        return None
    return bench.get("hub_id"), bench["hub_revision"]


def release_cases(summary: dict[str, Any]) -> int | None:
    """The number of cases of the benchmark's whole release. The registered benchmark's own count where
    it is registered here (an older ciebench recorded a `--limit N` run's N as `ours.expected_cases`),
    else what the run recorded. Looked up by registered name only: a name in a run folder is never
    imported as a module path."""
    from ciebench.benchmarks import BENCHMARKS, get_benchmark
    from ciebench.registry import RegistryError

    name = summary["benchmark"]["name"]
    if name in BENCHMARKS.names():
        try:
            return get_benchmark(name).expected_cases()
        except RegistryError:  # a plugin's entry point that does not load here: the run's record
            pass
    recorded = (summary.get("ours") or {}).get("expected_cases")
    return recorded if isinstance(recorded, int) else None


def is_partial(summary: dict[str, Any]) -> bool:
    """The run's headline covers fewer cases than the whole release (`--limit`, a partial copy,
    unreadable inputs): said by `headline.incomplete` (`benchmarks.run.mark_completeness`) or, for a run
    an older ciebench wrote, by its case count against the release's."""
    cases, total = (summary.get("ours") or {}).get("cases"), release_cases(summary)
    return bool(summary["headline"].get("incomplete")) or (
        isinstance(cases, int) and total is not None and cases < total)


def group_benchmark_runs(paths: list[Path]) -> list[BenchTable]:
    """The runs `paths` split by (benchmark, `judge_key`, `data_key`), in order of first appearance. A run
    whose summary records no judge or no data revision loads, with a warning, in a table of the runs
    that lack the same."""
    groups: dict[tuple, list[tuple[Path, dict[str, Any]]]] = {}
    for path in paths:
        summary = json.loads((path / "summary.json").read_text())
        judge, data = judge_key(summary), data_key(summary)
        if judge is None:
            log.warning("%s: its summary.json records no judge (re-aggregated from --verdicts, or written by an "
                        "older ciebench); it is ranked only beside runs whose judge is not recorded either", path)
        if data is None:
            log.warning("%s: its summary.json records no benchmark data revision (written by an older ciebench); "
                        "it is ranked only beside runs that record none either", path)
        groups.setdefault((summary["benchmark"]["name"], judge, data), []).append((path, summary))
    tables = [BenchTable("", name, judge, data, runs) for (name, judge, data), runs in groups.items()]
    _assign_slugs(tables)
    return tables


def _assign_slugs(tables: list[BenchTable]) -> None:
    """The benchmark's name; where it has several tables, the part that tells them apart is added
    (`judge-<models>`, `data-<revision>`), then a count where that is not enough (same models, other
    prompts or temperature). The prefixes keep a slug from ending in "__categories"."""
    for t in tables:
        clash = [u for u in tables if u.benchmark == t.benchmark]
        extra = []
        if len({u.judge for u in clash}) > 1:
            extra.append("judge-" + (slugify(t.judge_label) if t.judge else "unrecorded"))
        if len({u.data for u in clash}) > 1:
            extra.append("data-" + ("unrecorded" if t.data is None else slugify(str(t.data[1] or "unpinned"))))
        t.slug = "__".join([t.benchmark, *extra])
    for t, slug in zip(tables, number_repeats([t.slug for t in tables], "-")):
        t.slug = slug


def benchmark_tables(paths: list[Path]) -> dict[str, tuple[pd.DataFrame, pd.DataFrame]]:
    """{table slug (the benchmark's name when all its runs share a judge and data): (main table,
    per-category table)}; see `group_benchmark_runs`."""
    return {t.slug: table_frames(t) for t in group_benchmark_runs(paths)}


def table_frames(table: BenchTable) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(main table, per-category table) of one `BenchTable`; rows sorted by the headline, best first (its
    direction from the metric catalogue; higher is better for a headline the catalogue does not know)."""
    runs = table.runs
    main_rows, cat_rows = [], []
    for path, s in runs:
        head = s["headline"]
        ci = head.get("ci95") or [None, None]
        ours = s.get("ours") or {}
        row: dict[str, Any] = {"run": _label(path, s), head["name"]: head["value"],
                               "ci95_low": ci[0], "ci95_high": ci[1],
                               # fewer cases than the official release, --limit included (see is_partial)
                               "partial": is_partial(s), "cases": ours.get("cases"),
                               "release_cases": release_cases(s), "judge": table.judge_label}
        official = s["official"]
        overall = official[0] if official else {}
        for key, value in overall.items():
            if not isinstance(value, str) and not str(key).endswith("(1-5)"):
                row[f"{row_label(overall)} {key}"] = value
        counts = ours.get("status_counts") or {}
        row.update({f"n_{k}": v for k, v in counts.items()})
        # ciebench's region metrics (cases with a ground-truth image): ours, named so, after the official columns
        region = ours.get("region") or {}
        for col, cell in (region.get("overall") or {}).items():
            if col != "region_fraction":
                row[f"ours {col}"] = None if cell["mean"] is None else from_json_number(cell["mean"])
        main_rows.append(row)
        for r in official[1:]:
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
    return main.reset_index(drop=True), pd.DataFrame(cat_rows)


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
    tables = group_benchmark_runs(paths)
    # a benchmark with several tables names each by its judge (numbered where the models are the same and the
    # prompts, temperature or data differ: the line under the heading says which)
    names = number_repeats([t.benchmark if t.slug == t.benchmark else f"{t.benchmark} (judge {t.judge_label})"
                            for t in tables], " #")
    for table, name in zip(tables, names):
        main, cats = table_frames(table)
        for stem, frame in ((f"benchmark__{table.slug}.csv", main), (f"benchmark__{table.slug}__categories.csv", cats)):
            atomic_write_text(out / stem, csv_text(frame))  # formulas neutralised
            written.append(out / stem)
        doc += [f"## {md_escape(name)}\n", md_escape(table.heading()) + "\n"]
        if sum(u.benchmark == table.benchmark for u in tables) > 1:
            doc.append(f"Other runs of {md_escape(table.benchmark)} were judged by another judge or on other data: they "
                       "are in their own tables, never ranked beside these.\n")
        doc.append(_markdown(main))
        if main["partial"].any():
            doc.append("\npartial: the run's headline covers fewer cases than the official release (a `--limit` run, a "
                       "partial copy, or unreadable inputs: its summary.json `headline.incomplete` says which; `cases` "
                       "against `release_cases`); not comparable with the published numbers, nor with the other "
                       "runs' over the whole release.\n")
        doc += [f"\n### {md_escape(name)}: categories\n", _markdown(cats), ""]
    if gallery:  # one page per benchmark: it shows outputs, whoever judged them
        bench_of = {path: t.benchmark for t in tables for path, _ in t.runs}
        for name in dict.fromkeys(bench_of.values()):
            write_benchmark_gallery(name, [p for p in paths if bench_of[p] == name], out / "gallery" / name, written)
    atomic_write_text(out / "benchmarks.md", "\n".join(doc))
    written.append(out / "benchmarks.md")
    return written


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
