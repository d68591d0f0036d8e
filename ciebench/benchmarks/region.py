"""ciebench's region metrics for benchmark cases that carry a ground-truth image (ours, never official).

No official benchmark script measures how well an editor preserves what it should leave alone. Where
a case has a ground-truth image (UniREditBench's `reference_image_path`, KRIS-Bench's `gt_img`), the
region that must change is derived from source vs ground truth by `GroundTruthRule`, and the region
scorer (`ciebench.metrics.region.RegionScorer`, the one the dataset pipeline uses) computes PSNR / MSE
/ SSIM / LPIPS of the output against the source on the rest of the image, and edit locality against
that region. Rows stream to `region_metrics.jsonl` (appended, flushed; a rerun skips a case whose
final row was made for the output now on disk, as verdicts do), their means go to the summary under
`ours.region`, never into the official table or headline.
"""
from __future__ import annotations

import itertools
import json
import math
import os
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Container, Iterable, Iterator

import numpy as np
from tqdm.auto import tqdm

from ciebench.errors import DataError, OutputConflict, UsageError
from ciebench.io import atomic_write_json, json_text, sha256_file, stable_hash
from ciebench.metrics.timing import StageTimer
from ciebench.stats import from_json_number
from ciebench.status import Status

from .base import Benchmark, Case, RunningMean, find_output, misnamed_output

if TYPE_CHECKING:
    from PIL import Image

ROWS_FILE = "region_metrics.jsonl"
IDENTITY_FILE = "region_metrics.json"
# Metrics that need no model download: on by default. LPIPS (SqueezeNet trunk) only when asked for;
# CLIP needs a text naming the region, which the benchmarks do not carry.
DEFAULT_METRICS = ("psnr", "mse", "ssim", "locality")
ALLOWED_METRICS = ("psnr", "mse", "ssim", "lpips", "locality")
# Final for the output a row was made for (its `image_sha256`, as verdicts); an error is retried next run.
FINAL = (Status.OK, Status.NOT_APPLICABLE, Status.MISSING)


@dataclass(frozen=True)
class GroundTruthRule:
    """How the region that must change is derived when a case has a ground-truth image but no mask.

    1. The ground truth is brought to the source's size (PIL `resize` filter) when its aspect ratio is
       within `aspect_tolerance` (relative) of the source's; otherwise the case is not applicable.
    2. changed = max over RGB channels of |ground truth - source| > `threshold` (8-bit levels).
    3. A binary opening with an `opening` x `opening` square removes isolated changed pixels (codec and
       resampling noise in the ground-truth file, which is not an edit).
    4. A dilation by r = max(1, round(`dilation` x shorter side)) pixels (square of side 2r + 1) grows
       a margin around the region: soft edges, shadows and reflections of the edit are not counted as
       pixels that had to stay unchanged, so the preserved region is the conservative side.
    Borders replicate the edge pixel (scipy.ndimage mode "nearest")."""

    threshold: int = 16
    opening: int = 3
    dilation: float = 0.01
    aspect_tolerance: float = 0.01
    resize: str = "bicubic"

    def __post_init__(self) -> None:
        if not 0 <= self.threshold < 255 or self.opening < 1 or self.opening % 2 == 0 or self.dilation < 0:
            raise ValueError("GroundTruthRule: threshold in [0, 255), opening an odd side >= 1, dilation >= 0")

    def manifest(self) -> dict[str, Any]:
        data = asdict(self)
        return {**data, "hash": stable_hash(data)}

    def margin(self, width: int, height: int) -> int:
        return max(1, round(self.dilation * min(width, height))) if self.dilation > 0 else 0


class NotApplicable(Exception):
    """The case's ground truth cannot define a region (another aspect ratio, no file): a reason, no number."""


def change_mask(source: "Image.Image", truth: "Image.Image", rule: GroundTruthRule) -> "Image.Image":
    """The region that must change (mode L, 255 = must change) on the source's grid, by `rule`."""
    from PIL import Image
    from scipy import ndimage

    from ciebench.images import to_rgb8
    from ciebench.metrics.align import pil_filter

    sw, sh = source.size
    tw, th = truth.size
    if abs((tw / th) / (sw / sh) - 1) > rule.aspect_tolerance:
        raise NotApplicable(f"ground truth is {tw}x{th}, source {sw}x{sh}: aspect ratios differ by more than "
                            f"{rule.aspect_tolerance:.0%}, so no pixel correspondence exists")
    truth = to_rgb8(truth)
    if truth.size != source.size:
        truth = truth.resize(source.size, pil_filter(rule.resize))
    diff = np.abs(np.asarray(truth, dtype=np.int16) - np.asarray(to_rgb8(source), dtype=np.int16)).max(axis=2)
    changed = (diff > rule.threshold).astype(np.uint8)
    if rule.opening > 1:
        changed = ndimage.maximum_filter(ndimage.minimum_filter(changed, rule.opening, mode="nearest"),
                                         rule.opening, mode="nearest")
    r = rule.margin(sw, sh)
    if r:
        changed = ndimage.maximum_filter(changed, 2 * r + 1, mode="nearest")
    return Image.fromarray(changed * 255, mode="L")


@dataclass(frozen=True)
class RegionOptions:
    """What decides the region rows of a benchmark run (recorded in region_metrics.json and the summary)."""

    metrics: tuple[str, ...] = DEFAULT_METRICS
    protocol: str = "exact"
    device: str = "cpu"
    batch_size: int = 8
    rule: GroundTruthRule = field(default_factory=GroundTruthRule)

    def identity(self) -> dict[str, Any]:
        from ciebench.metrics.protocols import get_protocol

        return {"metrics": list(self.metrics), "protocol": get_protocol(self.protocol).manifest(),
                "rule": self.rule.manifest()}


def region_options(metrics: tuple[str, ...] | None, protocol: str | None, device: str = "cpu") -> RegionOptions | None:
    """`--metrics` / `--protocol` of a judge-scored benchmark run -> region options (None: `--metrics none`).
    An unknown or unavailable name fails here, before anything runs."""
    from ciebench.metrics.protocols import get_protocol
    from ciebench.metrics.region import region_metric_names

    if metrics is not None and tuple(metrics) == ("none",):
        return None
    chosen = DEFAULT_METRICS
    if metrics is not None:
        try:
            chosen = region_metric_names(metrics)
        except ValueError as exc:
            raise UsageError(f"--metrics: {exc} (with --benchmark: {', '.join(ALLOWED_METRICS)}, or none)") from exc
        refused = [m for m in chosen if m not in ALLOWED_METRICS]
        if refused:
            raise UsageError(f"--metrics {', '.join(refused)}: not available with --benchmark (no case names its "
                             f"region in text); choose from {', '.join(ALLOWED_METRICS)}, or none")
    get_protocol(protocol or "exact")  # an unknown name: exit 2 with a did-you-mean
    return RegionOptions(metrics=tuple(chosen), protocol=protocol or "exact", device=device)


def check_identity(out: Path, options: RegionOptions) -> None:
    """Region rows in one folder come from one set of options: record them, or refuse others."""
    path, identity = out / IDENTITY_FILE, options.identity()
    if path.exists() and (out / ROWS_FILE).exists():
        old = json.loads(path.read_text())
        if old != identity:
            def short(i: dict[str, Any]) -> str:
                return (f"metrics {','.join(i.get('metrics') or [])}, protocol {(i.get('protocol') or {}).get('name')} "
                        f"({(i.get('protocol') or {}).get('hash')}), rule {(i.get('rule') or {}).get('hash')}")

            raise OutputConflict(f"the region metrics in {out} were computed with other options ({short(old)}; now "
                                    f"{short(identity)}); delete {out / ROWS_FILE} to compute them again, or use "
                                    "another --out")
    atomic_write_json(path, identity)


def region_cases(benchmark: Benchmark, cases: Iterable[Case], predictions: Path, out: Path, options: RegionOptions,
                 *, progress: bool = True, total: int | None = None, timer: StageTimer | None = None) -> dict[str, int]:
    """Append one region row per case not yet final to out/region_metrics.jsonl; streaming (the scorer
    holds about two batches of images), so memory does not grow with the number of cases. `timer`
    (the run's) gets the decoding and the scorer's stages."""
    from ciebench.images import open_image_file, to_rgb8
    from ciebench.metrics.region import RegionScorer, ScoreItem

    from .run import UNRECORDED, _ends_with_newline, case_key, final_outputs, missing_output_error, predictions_root

    timer = timer if timer is not None else StageTimer()

    images = predictions_root(predictions)
    path = out / ROWS_FILE
    final = final_outputs(path, FINAL)
    counts: dict[str, int] = {"resumed": 0}
    pending: dict[str, tuple[Case, float, str]] = {}  # scorer input id -> case; bounded by the scorer's look-ahead
    serial = itertools.count()
    lock = threading.Lock()  # rows are written by the feeder thread (not applicable) and this one (scored)
    bar = tqdm(total=total, desc=f"region metrics {benchmark.name}", unit="case", disable=not progress)

    with open(path, "a", encoding="utf-8") as sink:
        if path.stat().st_size and not _ends_with_newline(path):
            sink.write("\n")  # a line torn by a kill stays a lone unreadable line; it is skipped on reading

        def write(case: Case, status: str, values: dict[str, Any], reason: str | None = None,
                  digest: str | None = None) -> None:
            row = {"id": case.id, "category": case.category, "output_folder": case.output_folder,
                   "status": str(status), "reason": reason, "image_sha256": digest, **values}
            with lock:
                counts[str(status)] = counts.get(str(status), 0) + 1
                sink.write(json_text(row, indent=None) + "\n")  # PSNR +inf (identical) as "inf", the one codec
                sink.flush()
                os.fsync(sink.fileno())
                bar.update(1)

        def items() -> Iterator[ScoreItem]:
            for case in cases:
                key = case_key(case)
                truth = case.ground_truth_image
                if truth is None:
                    not_applicable = "the case has no ground-truth image or mask"
                elif len(case.images) > 1:
                    not_applicable = (f"the case has several input images ({len(case.images)}): no single source "
                                      "whose unchanged region could be compared")
                else:
                    not_applicable = None
                # a case not applicable as such does not depend on its output: its row names none
                output = None if not_applicable else find_output(images / case.output_folder, case.id)
                digest = sha256_file(output) if output is not None else None
                if final.get(key, UNRECORDED) == digest:
                    with lock:
                        counts["resumed"] += 1
                        bar.update(1)
                    continue
                if not_applicable:
                    write(case, Status.NOT_APPLICABLE, {}, not_applicable)
                    continue
                if output is None:
                    write(case, Status.MISSING, {}, missing_output_error(
                        images, case, misnamed_output(images / case.output_folder, case.id)))
                    continue
                try:
                    with timer.stage("decode"):
                        source = to_rgb8(open_image_file(case.images[0]))
                        mask = change_mask(source, open_image_file(truth), options.rule)
                        prediction = open_image_file(output)
                except NotApplicable as exc:
                    write(case, Status.NOT_APPLICABLE, {}, str(exc), digest)
                    continue
                except (OSError, ValueError, DataError) as exc:  # unreadable input, truth or output: this case only
                    write(case, Status.METRIC_ERROR, {}, f"case {case.id}: {exc}", digest)
                    continue
                fraction = float(np.count_nonzero(np.asarray(mask))) / (mask.size[0] * mask.size[1])
                sid = f"{next(serial)}:{key}"  # unique even if an annotation repeats a key
                with lock:
                    pending[sid] = (case, fraction, digest)
                yield ScoreItem(sample_id=sid, source=source, mask=mask, prediction=prediction)

        scorer = RegionScorer(options.protocol, metrics=options.metrics, device=options.device,
                              batch_size=options.batch_size, timer=timer)
        try:
            for key, values in scorer.score(items()):
                with lock:
                    case, fraction, digest = pending.pop(key)
                values = {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in values.items()}
                error, note = values.pop("error", None), values.pop("note", None)
                values["region_fraction"] = fraction
                if error:
                    write(case, Status.METRIC_ERROR, values, error, digest)
                else:
                    write(case, Status.OK, values, note, digest)
        finally:
            bar.close()
    return counts


def latest_rows(path: Path, keys: Container[str] | None = None) -> Iterator[dict[str, Any]]:
    """Each case's last row (only the cases `keys` names, as `latest_verdicts`)."""
    from .run import latest_verdicts

    return latest_verdicts(path, keys)


def summarize(rows: Iterable[dict[str, Any]], options: RegionOptions, columns: list[str]) -> dict[str, Any]:
    """Means per column (None values, i.e. undefined metrics, skipped and counted out), overall and per
    category, with status counts and coverage; one pass, memory independent of the number of cases."""
    overall = {c: RunningMean() for c in columns}
    n_inf = dict.fromkeys(columns, 0)  # PSNR of an output identical to the source outside the region
    by_cat: dict[str, dict[str, RunningMean]] = {}
    status: dict[str, int] = {}
    reasons: dict[str, int] = {}
    cases = 0
    for row in rows:
        cases += 1
        status[row["status"]] = status.get(row["status"], 0) + 1
        if row["status"] == Status.NOT_APPLICABLE:
            reasons[row.get("reason") or "-"] = reasons.get(row.get("reason") or "-", 0) + 1
        if row["status"] != Status.OK:
            continue
        cat = by_cat.setdefault(row["category"], {c: RunningMean() for c in columns})
        for c in columns:
            value = None if row.get(c) is None else from_json_number(row[c])
            if value is not None and math.isinf(value):
                n_inf[c] += 1
            overall[c].add(value)
            cat[c].add(value)
    scored = status.get(str(Status.OK), 0)
    applicable = cases - status.get(str(Status.NOT_APPLICABLE), 0)

    def means(cells: dict[str, RunningMean]) -> dict[str, Any]:
        return {c: {"mean": m.mean, "n": m.n} for c, m in cells.items()}

    return {"note": "ciebench's region metrics (not part of any official score): the output against the source "
                    "outside the region that must change, derived from the ground-truth image by `rule`",
            **options.identity(), "files": {"rows": ROWS_FILE},
            "cases": cases, "applicable": applicable, "scored": scored,
            "coverage": scored / applicable if applicable else None,
            "status_counts": dict(sorted(status.items())), "not_applicable_reasons": dict(sorted(reasons.items())),
            "overall": {c: {**v, **({"n_inf": n_inf[c]} if n_inf[c] else {})} for c, v in means(overall).items()},
            "by_category": {k: means(v) for k, v in by_cat.items()}}


def region_columns(options: RegionOptions) -> list[str]:
    from ciebench.metrics.region import METRICS

    return [c for m in options.metrics for c in METRICS[m]] + ["region_fraction"]


def run_region(benchmark: Benchmark, cases: Iterable[Case], predictions: Path, out: Path, options: RegionOptions,
               *, progress: bool = True, total: int | None = None, timer: StageTimer | None = None,
               keys: Container[str] | None = None) -> tuple[dict[str, int], dict[str, Any]]:
    """Score the cases not yet done, then summarise the rows of the cases `keys` names (None: every row in
    the folder): (counts, summary block)."""
    check_identity(out, options)
    counts = region_cases(benchmark, cases, predictions, out, options, progress=progress, total=total, timer=timer)
    return counts, summarize(latest_rows(out / ROWS_FILE, keys), options, region_columns(options))
