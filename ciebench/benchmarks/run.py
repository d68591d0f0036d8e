"""Running an editor on a benchmark and scoring outputs with the benchmark's official rules.

Run directory (also a valid `--predictions` folder; what each official script needs to read it is in
docs/benchmarks.md): `spec.json`, `images/<CATEGORY>/<INDEX>.png` (final outputs, with any file the
official script needs beside each, `Benchmark.output_companions`), `turns/<CATEGORY>/<INDEX>/turn_<k>.png`
(every turn of a multi-turn case), `records/<CATEGORY>/<INDEX>.json` (done-marker, written last),
`verdicts.jsonl` (one judged case per line, appended and flushed; each names the sha256 of the output it
judged, and resume skips a case whose final verdict was made for the output now on disk),
`summary.json` and `official_scores.csv` (the official table under its official names).
"""
from __future__ import annotations

import csv
import io
import json
import logging
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Container, Iterable, Iterator

from PIL import Image
from tqdm.auto import tqdm

from ciebench.editor import Editor, EditRequest, EditResult
from ciebench.errors import OutputConflict
from ciebench.images import check_image
from ciebench.io import (
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    png_bytes,
    read_json_object,
    sha256_bytes,
    sha256_file,
    stable_hash,
)
from ciebench.spec import derive_seed, spec_differences
from ciebench.status import Status
from ciebench.turns import drive_turns, unsupported_reason

from .base import OUTPUT_SUFFIXES, Benchmark, Case, find_output, misnamed_output

if TYPE_CHECKING:  # the runner loads the scoring stack: imported when generation runs
    from ciebench.runner import RunStats

log = logging.getLogger("ciebench.benchmarks")

# A verdict with one of these is final for the output it was made for (its `image_sha256`; None: no
# output); judge errors are retried. An output regenerated (--retry-failed) or added later is judged again.
DONE_STATUSES = (Status.OK, Status.MISSING, Status.UNSUPPORTED, Status.INPUT_ERROR)
# Run-record statuses the judge step takes over as the case's verdict instead of looking for an output:
# the editor could not take the case, or the benchmark's own input could not be read.
RECORD_VERDICTS = (Status.UNSUPPORTED, Status.INPUT_ERROR)


def record_path(out: Path, case: Case) -> Path:
    return out / "records" / case.output_folder / f"{case.id}.json"


def output_image_path(out: Path, folder: str, case_id: str) -> Path:
    """Where a run writes a case's final image: images/<output folder>/<case id>.png, beside its record
    records/<output folder>/<case id>.json (the leaderboard's gallery finds it by this rule)."""
    return out / "images" / folder / f"{case_id}.png"


def prepare_run(out: Path, spec: dict[str, Any], overwrite: bool) -> None:
    """Write spec.json, or check that the run in `out` has the same spec (then it resumes)."""
    spec = {**spec, "spec_hash": stable_hash(spec)}
    path = out / "spec.json"
    if path.exists():
        try:
            old = read_json_object(path)  # {} for another JSON value
        except ValueError:
            old = {}  # unreadable: said so in the refusal
        if old.get("spec_hash") == spec["spec_hash"]:
            return
        if not overwrite:
            changed = spec_differences({k: v for k, v in old.items() if k != "spec_hash"},
                                       {k: v for k, v in spec.items() if k != "spec_hash"}) if old else []
            raise OutputConflict(f"{out} holds a different run (benchmark {old.get('benchmark')}, spec_hash "
                                 f"{old.get('spec_hash')} != {spec['spec_hash']}); recorded -> now: "
                                 + ("; ".join(changed) if changed else f"{path} is unreadable"),
                                 hint="rerun with the recorded options to resume it, use another --out, or pass "
                                      "--overwrite to discard that run")
        import shutil

        for sub in ("images", "turns", "records"):
            shutil.rmtree(out / sub, ignore_errors=True)
        for name in ("verdicts.jsonl", "summary.json", "official_scores.csv", "region_metrics.jsonl",
                     "region_metrics.json"):
            (out / name).unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, spec)


def _write_companions(benchmark: Benchmark, out: Path, case: Case, only_missing: bool = False) -> None:
    """The files the official script needs beside the case's output (`Benchmark.output_companions`)."""
    folder = output_image_path(out, case.output_folder, case.id).parent
    for name, source in benchmark.output_companions(case).items():
        if not (only_missing and (folder / name).is_file()):
            folder.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(folder / name, source.read_bytes())


def _done(out: Path, case: Case, retry_failed: bool) -> bool:
    path = record_path(out, case)
    try:
        record = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return False
    if record.get("status") == Status.UNSUPPORTED:
        return True
    if record.get("status") != Status.OK:
        return not retry_failed
    image = output_image_path(out, case.output_folder, case.id)
    return image.is_file() and sha256_file(image) == record.get("image_sha256")


def _edit(editor: Editor, requests: list[EditRequest], stats: RunStats) -> list[EditResult]:
    from ciebench.runner import edit_isolated

    return edit_isolated(editor, requests, stats)


def generate(benchmark: Benchmark, editor: Editor, cases: Iterable[Case], out: Path, *, seed: int = 0,
             retry_failed: bool = False, progress: bool = True, total: int | None = None) -> RunStats:
    """Edit every case not yet done into the official layout under `out`; one case at a time."""
    from ciebench.runner import RunStats

    stats = RunStats()
    bar = tqdm(total=total, desc=f"{benchmark.name} ({editor.display_name()})", unit="case", disable=not progress)
    try:
        for case in cases:
            bar.update(1)
            if _done(out, case, retry_failed):
                # a case finished by an earlier ciebench may lack the files the official script needs
                if output_image_path(out, case.output_folder, case.id).is_file():
                    _write_companions(benchmark, out, case, only_missing=True)
                stats.skipped += 1
                continue
            record: dict[str, Any] = {"id": case.id, "category": case.category, "status": Status.OK, "error": None,
                                      "image_sha256": None, "n_images": len(case.images), "n_turns": len(case.turns),
                                      "inputs": [str(p) for p in case.images], "instruction": case.instruction}
            reason = unsupported_reason(editor, len(case.images), len(case.turns))
            if reason:
                record.update(status=Status.UNSUPPORTED, error=reason)
                stats.unsupported += 1
                atomic_write_json(record_path(out, case), record)
                continue
            try:
                images = [_read_rgb(p) for p in case.images]
            except OSError as exc:
                record.update(status=Status.INPUT_ERROR, error=f"cannot read input image of case {case.id}: {exc}")
                stats.failed += 1
                atomic_write_json(record_path(out, case), record)
                continue
            request = EditRequest(sample_id=case.id, image=images[0], images=images, instruction=case.turns[0],
                                  seed=derive_seed(case.id, seed), language=case.language,
                                  meta={"run_seed": seed, "category": case.category, "benchmark": benchmark.name})
            started = time.perf_counter()
            if len(case.turns) > 1:
                outcome = drive_turns(editor, request, list(case.turns), lambda reqs: _edit(editor, reqs, stats))
                result, turns = outcome.final, outcome.turns
            else:
                result, turns = _edit(editor, [request], stats)[0], []
            record["timings"] = {"edit_seconds": time.perf_counter() - started}
            record["turns"] = _write_turns(out, case, turns)
            if result.status == Status.OK:
                # the dataset runner's check: an out-of-range or unusable output is its own status, never
                # clipped, zeroed or wrapped into a scored image (any size: benchmarks take any output size)
                image, status, problem = check_image(result.image)
            else:  # the editor's failure, or a turn's output that failed the check (drive_turns)
                image, problem = None, result.error or "editor reported failure without a message"
                status = result.status if result.status in (Status.OUT_OF_RANGE, Status.INVALID, Status.REFUSED) \
                    else Status.EDIT_ERROR
            if image is not None:
                png = png_bytes(image)
                _write_companions(benchmark, out, case)  # before the output: a kill never leaves it alone
                atomic_write_bytes(output_image_path(out, case.output_folder, case.id), png)
                record["image_sha256"] = sha256_bytes(png)
                stats.generated += 1
            else:
                record.update(status=status, error=f"case {case.id}: {problem}")
                stats.failed += 1
            atomic_write_json(record_path(out, case), record)
    finally:
        bar.close()
    return stats


def _read_rgb(path: Path) -> Image.Image:
    with Image.open(path) as im:
        return im.convert("RGB")


def _write_turns(out: Path, case: Case, turns: list[EditResult]) -> list[dict[str, Any]]:
    """Each driven turn's entry for the record, and its image (already checked by `drive_turns`)."""
    written = []
    for k, turn in enumerate(turns, start=1):
        entry: dict[str, Any] = {"turn": k, "instruction": case.turns[k - 1], "status": turn.status, "error": turn.error}
        if turn.status == Status.OK and turn.image is not None:
            rel = f"turns/{case.output_folder}/{case.id}/turn_{k}.png"
            png = png_bytes(turn.image)
            atomic_write_bytes(out / rel, png)
            entry.update(image=rel, image_sha256=sha256_bytes(png))
        written.append(entry)
    return written


def predictions_root(predictions: Path) -> Path:
    """The folder holding images/<CATEGORY>/ in the official layout (outputs/MODEL, or its images/)."""
    if (predictions / "images").is_dir():
        return predictions / "images"
    return predictions


def judge_cases(benchmark: Benchmark, cases: Iterable[Case], predictions: Path, out: Path, judge: Any,
                *, records: Path | None = None, progress: bool = True, total: int | None = None) -> dict[str, int]:
    """Append one verdict per case not yet final to out/verdicts.jsonl. `records` (a run directory)
    marks cases the editor could not take as `unsupported` and cases whose input image could not be read
    as `input_error` (left out of the official numbers by `aggregate`). `judge` is a `BenchJudge` (None: only
    cases without an output can be scored; others are judge errors)."""
    images = predictions_root(predictions)
    verdicts = out / "verdicts.jsonl"
    last = last_outputs(verdicts)
    final = final_outputs(verdicts, DONE_STATUSES, last)
    # cases whose last verdict is a judge error: judged again with the LLM cache bypassed, since it holds
    # the very replies that made the error (any decodable text is cached) and would answer them again
    failed = final_outputs(verdicts, (Status.JUDGE_ERROR,), last)
    counts: dict[str, int] = {"resumed": 0}
    misnamed: list[str] = []  # outputs saved under a suffix that is not read (see `_verdict`)
    bar = tqdm(total=total, desc=f"judging {benchmark.name}", unit="case", disable=not progress)
    with open(verdicts, "a", encoding="utf-8") as sink:
        if verdicts.stat().st_size and not _ends_with_newline(verdicts):
            sink.write("\n")  # a line torn by a kill stays a lone unreadable line; it is skipped on reading
        for case in cases:
            bar.update(1)
            taken = _record_verdict(records, case)
            # the editor could not take the case (or never got it): whatever file lies there is not its output
            output = None if taken is not None else find_output(images / case.output_folder, case.id)
            digest = sha256_file(output) if output is not None else None
            key = case_key(case)
            if final.get(key, UNRECORDED) == digest:
                counts["resumed"] += 1
                continue
            row = _verdict(benchmark, case, images, output, judge, taken, refresh=key in failed)
            if row["status"] == Status.MISSING and row.get("misnamed_output"):
                misnamed.append(row["misnamed_output"])
            row["image_sha256"] = digest
            counts[row["status"]] = counts.get(row["status"], 0) + 1
            sink.write(json.dumps(row, ensure_ascii=False, sort_keys=True) + "\n")
            sink.flush()
            os.fsync(sink.fileno())
    bar.close()
    if misnamed:
        log.warning("%d case(s) scored as missing have a file under a suffix that is not read (e.g. %s); only "
                    ".%s (lower case) are read, as the official scripts read them: save those outputs as PNG and "
                    "score again", len(misnamed), misnamed[0], ", .".join(OUTPUT_SUFFIXES))
    return counts


def _ends_with_newline(path: Path) -> bool:
    with open(path, "rb") as f:
        f.seek(-1, os.SEEK_END)
        return f.read(1) == b"\n"


def _record_verdict(records: Path | None, case: Case) -> dict[str, Any] | None:
    """The run record of a case whose status is its verdict (`RECORD_VERDICTS`; None: another status,
    or no run records)."""
    if records is None:
        return None
    try:
        record = json.loads(record_path(records, case).read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return record if isinstance(record, dict) and record.get("status") in RECORD_VERDICTS else None


def _verdict(benchmark: Benchmark, case: Case, images: Path, output: Path | None, judge: Any,
             record: dict[str, Any] | None, refresh: bool = False) -> dict[str, Any]:
    if record is not None and record["status"] == Status.INPUT_ERROR:
        # the benchmark's data failed, not the editor: no score at all (never the missing-output minimum)
        return benchmark.verdict_row(case, Status.INPUT_ERROR, {}, error=record.get("error"))
    if record is not None:
        return benchmark.verdict_row(case, Status.UNSUPPORTED, benchmark.missing_verdict(case),
                                     error=record.get("error"))
    if output is None:
        # a file under a suffix that is not read (.PNG, .webp) stays missing, as for the official scripts,
        # but the row names it (and judge_cases warns) rather than leave the minimum unexplained
        other = misnamed_output(images / case.output_folder, case.id)
        return benchmark.verdict_row(case, Status.MISSING, benchmark.missing_verdict(case),
                                     error=missing_output_error(images, case, other),
                                     **({"misnamed_output": str(other)} if other is not None else {}))
    if judge is None:
        return benchmark.verdict_row(case, Status.JUDGE_ERROR, {}, error="no judge configured")
    try:
        judged = judge.judge(case, output, refresh=refresh)
    except (ValueError, OSError) as exc:  # a malformed case or unreadable file: this case only
        return benchmark.verdict_row(case, Status.JUDGE_ERROR, {}, error=f"case {case.id}: {exc}")
    status = Status.JUDGE_ERROR if judged.errors else Status.OK
    return benchmark.verdict_row(case, status, judged.dims, replies=judged.replies,
                                 error="; ".join(judged.errors.values()) or None)


def missing_output_error(images: Path, case: Case, other: Path | None = None) -> str:
    """Why a case has no output, naming `other`, a file saved under a suffix that is not read
    (`misnamed_output`)."""
    error = f"no output {case_key(case)}.({'|'.join(OUTPUT_SUFFIXES)}) in {images}"
    if other is not None:
        error += (f"; {other.name} is there, but only .{', .'.join(OUTPUT_SUFFIXES)} (lower case) are read, as the "
                  "official scripts read them: save it as PNG")
    return error


# Stands for the output of a row that names none (written before rows recorded it): never equal to a
# digest or None, so such a case is done again (an unchanged image is then answered by the judge cache).
UNRECORDED = object()


def last_outputs(path: Path) -> dict[str, tuple[Any, Any]]:
    """{case key: (status of its last row, sha256 of the output that row was made for: None without one,
    `UNRECORDED` when the row names none)}, in one read of the file."""
    return {row_key(row): (row.get("status"), row.get("image_sha256", UNRECORDED)) for row in iter_verdicts(path)}


def final_outputs(path: Path, statuses: Iterable[str], last: dict[str, tuple[Any, Any]] | None = None
                  ) -> dict[str, Any]:
    """{case key: sha256 of the output its last row was made for} for each case whose last row has one of
    `statuses` (from `last`, `last_outputs` already read, or the file). A row is final only for that
    output: a caller redoes a case whose output on disk now differs (regenerated by --retry-failed, or
    added after a missing verdict)."""
    statuses = set(statuses)
    last = last_outputs(path) if last is None else last
    return {key: digest for key, (status, digest) in last.items() if status in statuses}


def iter_verdicts(path: Path) -> Iterator[dict[str, Any]]:
    """Verdict rows one at a time; for a case judged more than once (a retried judge error) the
    aggregation uses the last line (see `latest_verdicts`). A torn last line is skipped."""
    if not path.exists():
        return
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                yield json.loads(line)
            except json.JSONDecodeError:
                continue


def case_key(case: Case) -> str:
    """The key a case's rows are found by in verdicts.jsonl / region_metrics.jsonl (`output_folder/id`)."""
    return f"{case.output_folder}/{case.id}"


def row_key(row: dict[str, Any]) -> str:
    """`case_key` of the case a verdict or region row was written for."""
    return f"{row['output_folder']}/{row['id']}"


def latest_verdicts(path: Path, keys: Container[str] | None = None) -> Iterator[dict[str, Any]]:
    """Each case's last verdict, in file order. Holds only a key -> line number map, not the rows.
    `keys` (`case_key`s): only those cases' rows. A folder scored again with another case selection (a
    different --limit or copy of the benchmark) keeps the other cases' rows, which must not be counted
    in numbers labelled with this call's selection; None: every case in the file (`--verdicts`)."""
    last: dict[str, int] = {}
    for n, row in enumerate(iter_verdicts(path)):
        key = row_key(row)
        if keys is None or key in keys:
            last[key] = n
    wanted = set(last.values())
    for n, row in enumerate(iter_verdicts(path)):
        if n in wanted:
            yield row


def aggregate(benchmark: Benchmark, rows: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """The official numbers over the verdict rows. A case whose input image could not be read
    (`input_error`) is the benchmark data's failure: it is left out of the official numbers (scoring it
    would charge the editor) and counted in `ours.input_errors` (the headline is then incomplete:
    `mark_completeness`)."""
    agg = benchmark.aggregator()
    input_errors = 0
    for row in rows:
        if row.get("status") == Status.INPUT_ERROR:
            input_errors += 1
            continue
        agg.add(benchmark.checked_verdict(row))
    result = agg.result()
    if input_errors:
        result["ours"] = {**(result.get("ours") or {}), "input_errors": input_errors}
    return result


def mark_completeness(benchmark: Benchmark, result: dict[str, Any], limit: int | None = None) -> dict[str, Any]:
    """Record `ours.expected_cases` (the official release's number of cases, whatever `limit` was) and,
    when the official numbers cover fewer cases (`--limit`, a partial local copy, a data error), say so
    in `headline.incomplete`: such a headline is not comparable with the published numbers, nor with
    another run's over the whole release (the leaderboard marks the run partial)."""
    expected = benchmark.expected_cases()
    ours = result.setdefault("ours", {})
    ours["expected_cases"] = expected
    cases = ours.get("cases")
    if expected is not None and isinstance(cases, int) and cases < expected:
        why = f"; {ours['input_errors']} with an unreadable input image" if ours.get("input_errors") else ""
        asked = f" (--limit {limit})" if limit is not None and limit < expected else ""
        result["headline"] = {**result["headline"], "incomplete": (
            f"over {cases} of the {expected} cases of {benchmark.title or benchmark.name}{asked}{why}: not "
            "comparable with the published numbers")}
    return result


def write_summary(benchmark: Benchmark, out: Path, result: dict[str, Any], header: dict[str, Any]) -> dict[str, Any]:
    summary = {"benchmark": benchmark.describe(), **header, **result}
    atomic_write_json(out / "summary.json", summary)
    buf = io.StringIO()
    table = result.get("official") or []
    if table:
        writer = csv.DictWriter(buf, fieldnames=list(table[0]))
        writer.writeheader()
        writer.writerows(table)
        atomic_write_text(out / "official_scores.csv", buf.getvalue())
    return summary
