"""The batched region scorer behind `ciebench score` / `ciebench evaluate`.

    scorer = RegionScorer("cielr", device="cuda", batch_size=16)
    for sample_id, row in scorer.score(items):   # streaming, in input order
        ...

Each model is loaded once per scorer. A feeder thread pulls the input items (so lazy decoding in
the caller's iterator runs off the main thread), worker threads convert, align and CLIP-preprocess
the next batch, and (where cores allow) the pixel metrics, SSIM and LPIPS of a batch run in a
thread beside its CLIP forward, all while the models work. LPIPS and CLIP forwards are batched (images of one size
together; pinned host memory and asynchronous copies on CUDA), and each distinct CLIP text is
encoded once. A sample whose preparation or computation fails yields NaNs plus an "error" entry;
the run goes on. Every stage is timed (`metrics.timing.StageTimer`, `RegionScorer.timing()`).
"""
from __future__ import annotations

import hashlib
import math
import os
import queue
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import torch
from PIL import Image
from torch import Tensor

from ciebench.devices import resolve_device
from ciebench.errors import did_you_mean
from ciebench.isolate import run_isolated

from . import catalogue
from .align import align, no_background
from .clipscore import CLIPPreprocessor, RegionCLIP, clip_texts, region_crop
from .locality import edit_locality
from .perceptual import TRUNK_FILE, SqueezeLPIPS, background_lpips, lpips_heads_path
from .pixel import background_mse_psnr
from .precision import forward_precision
from .protocols import Protocol, get_protocol
from .ssim import background_ssim
from .timing import StageTimer

# Region columns -> higher_is_better, and metric names a user can ask for -> the columns they
# produce, both in the scorer's column order: views of the catalogue (metrics.catalogue).
METRIC_INFO: dict[str, bool] = catalogue.directions(catalogue.columns(catalogue.REGION_FAMILIES))
METRICS: dict[str, tuple[str, ...]] = catalogue.metric_columns(catalogue.REGION_FAMILIES)
# Metrics of the unchanged region: NaN, with NO_BACKGROUND as the row's "note", when the mask covers
# the whole image.
PRESERVATION = frozenset({"psnr", "ssim", "lpips", "mse"})
NO_BACKGROUND = "psnr/mse/ssim/lpips undefined: the mask covers the whole image, no background is left to compare"
# Images of one size are stacked up to about this many pixels. A GPU wants large batches. On a CPU the
# stack must stay cache-sized: LPIPS's first feature maps of eight 512x512 pairs spill out of the
# last-level cache, and scoring them together took 2.7x as long as one pair at a time (same values).
_PIXELS_PER_CHUNK_GPU = 8 * 512 * 512
_PIXELS_PER_CHUNK_CPU = 512 * 512
_END = object()  # the feeder's end-of-input marker


def default_workers(device: torch.device) -> int:
    """Threads that decode, align and CLIP-preprocess (and, in `ciebench.scoring`, decode predictions).

    On a CPU, 2: the cores belong to the models' intra-op threads, and more threads only contend. On
    an accelerator the host does nothing but prepare. Preparing one 512x512 CIEBench sample costs
    about 24 ms of CPU, measured single-threaded (dataset row and prediction decode 11, source and
    mask decode and alignment 9, CLIP preprocessing 4), while a GPU's CLIP ViT-L and LPIPS forwards
    take a few ms per sample (an estimate from their FLOPs; not measured here). So half the cores this
    process may use (its CPU affinity, and torch's thread count, which OMP_NUM_THREADS and Ray's
    per-worker CPUs set), at most 8: the other half runs the other pool, and Python between the C
    calls holds the GIL."""
    if device.type == "cpu":
        return 2
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(2, min(8, min(cores, torch.get_num_threads()) // 2))


@dataclass
class ScoreItem:
    sample_id: str
    source: Image.Image  # RGB
    mask: Image.Image | None  # mode L, 255 = edit region; any size (nearest-resized), None = no region
    prediction: Image.Image  # any mode and size (see metrics.align.to_rgb and the protocol's resize)
    clip_text: list[str] = field(default_factory=list)  # a plain string is one text; blank texts are dropped


def region_metric_names(names: Sequence[str] | None) -> tuple[str, ...]:
    """Region metric names or column names (`locality_f1`) -> the region metrics that compute them, in
    the scorer's order (None: all of them)."""
    if names is None:
        return tuple(METRICS)
    wanted = set()
    for name in names:
        if name in METRICS:
            wanted.add(name)
            continue
        owner = next((m for m, cols in METRICS.items() if name in cols), None)
        if owner is None:
            hint = did_you_mean(name, list(METRICS) + list(METRIC_INFO))
            raise ValueError(f"unknown region metric {name!r}; known: {', '.join(METRICS)}.{hint}")
        wanted.add(owner)
    return tuple(m for m in METRICS if m in wanted)


@dataclass
class _Prepared:
    sample_id: str
    clip_text: list[str] = field(default_factory=list)
    error: str | None = None
    source: Tensor | None = None  # (3, H, W) float in [0, 1]
    prediction: Tensor | None = None
    mask: Tensor | None = None  # (1, H, W) float in [0, 1], 1 = edit region
    clip_pixels: Tensor | None = None  # (3, S, S), None = no box or no text

    @property
    def size(self) -> tuple[int, int]:
        return tuple(self.source.shape[-2:])


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class RegionScorer:
    """`workers`: preparation threads (default: `default_workers`). `overlap`: run the pixel metrics,
    SSIM and LPIPS of a batch in a thread beside its CLIP forward (results are identical either way).
    Default (None): on where cores allow, i.e. on CUDA (the CLIP forward runs on the device) or when the
    CPU has at least twice torch's intra-op threads (else the two threads' intra-op pools oversubscribe
    the cores). `timer`: a shared `StageTimer` (default: own)."""

    def __init__(self, protocol: Protocol | str = "cielr", metrics: Sequence[str] | None = None, device: str = "cpu",
                 batch_size: int = 8, workers: int | None = None, overlap: bool | None = None,
                 timer: StageTimer | None = None) -> None:
        if batch_size < 1 or (workers is not None and workers < 1):
            raise ValueError("batch_size and workers must be at least 1")
        self.protocol = get_protocol(protocol)
        self.metrics = region_metric_names(metrics)
        self.columns = [c for m in self.metrics for c in METRICS[m]]
        self._preservation = [c for c in self.columns if c in PRESERVATION]
        self.device = resolve_device(device)
        self.batch_size = batch_size
        self._pixels_per_chunk = _PIXELS_PER_CHUNK_CPU if self.device.type == "cpu" else _PIXELS_PER_CHUNK_GPU
        self.workers = workers if workers is not None else default_workers(self.device)
        if overlap is None:
            overlap = self.device.type == "cuda" or (os.cpu_count() or 1) >= 2 * torch.get_num_threads()
        self.overlap = overlap
        # On CUDA the side thread queues its kernels on a stream of its own: on the shared default
        # stream each thread's wait for its results would also wait for the other's kernels (so
        # their time would land in the other's stage), and the two could never run together.
        self._side_stream = torch.cuda.Stream(self.device) if overlap and self.device.type == "cuda" else None
        self.timer = timer or StageTimer()
        p = self.protocol
        # CLIP loads in a thread, its small image processor first: LPIPS loads meanwhile, then the
        # first batch is decoded, aligned, CLIP-preprocessed and gets its pixel metrics, SSIM and
        # LPIPS while the large model is still loading. A load error is raised by `score` (or
        # `model_ids`).
        self._clip_future: Future | None = None
        self._preprocessor_future: Future | None = None
        if "clip" in self.metrics:
            # torchvision is imported here, before the loader thread: transformers' image utilities import
            # torchvision.transforms on that thread while LPIPS imports torchvision.models on this one, and
            # two threads importing one package at once can see it half initialised (ImportError)
            import torchvision  # noqa: F401

            loader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ciebench-load")
            self._preprocessor_future = loader.submit(self._load_preprocessor)
            self._clip_future = loader.submit(self._load_clip)
            loader.shutdown(wait=False)
        with self.timer.stage("load"):
            self._lpips = (SqueezeLPIPS.pretrained(p.lpips_version, p.lpips_norm_eps).to(self.device)
                           if "lpips" in self.metrics else None)

    def _load_preprocessor(self) -> CLIPPreprocessor:
        with self.timer.stage("load"):
            return CLIPPreprocessor(self.protocol.clip_model, self.protocol.clip_image_backend)

    def _load_clip(self) -> RegionCLIP:
        p = self.protocol
        preprocessor = self._preprocessor_future.result()
        with self.timer.stage("load"):
            return RegionCLIP(p.clip_model, image_backend=p.clip_image_backend, max_tokens=p.clip_max_tokens,
                              device=self.device, preprocessor=preprocessor)

    @property
    def _clip(self) -> RegionCLIP | None:
        """The loaded CLIP (waits for the loader thread; re-raises its error), None when not scored."""
        return None if self._clip_future is None else self._clip_future.result()

    def timing(self) -> dict:
        """Per-stage seconds so far (see `metrics.timing.StageTimer.report`)."""
        return self.timer.report()

    @staticmethod
    def required_assets(protocol: Protocol | str, metrics: Sequence[str] | None = None) -> list:
        """What scoring `metrics` under `protocol` loads: torchvision's SqueezeNet trunk for LPIPS (the
        heads ship with the lpips package) and the protocol's CLIP model (see ciebench.requirements)."""
        from torchvision.models import SqueezeNet1_1_Weights

        from ciebench.requirements import hub_repo, torchvision_weights

        p, wanted = get_protocol(protocol), region_metric_names(metrics)
        out = []
        if "lpips" in wanted:
            out.append(torchvision_weights(SqueezeNet1_1_Weights.IMAGENET1K_V1, used_by=f"protocol {p.name}: LPIPS trunk"))
        if "clip" in wanted:
            out.append(hub_repo(p.clip_model, used_by=f"protocol {p.name}: CLIP"))
        return out

    def model_ids(self) -> dict[str, str]:
        ids: dict[str, str] = {}
        if self._lpips is not None:
            trunk = Path(torch.hub.get_dir()) / "checkpoints" / TRUNK_FILE
            heads = lpips_heads_path(self.protocol.lpips_version, self.protocol.lpips_net)
            ids["lpips"] = f"lpips v{self.protocol.lpips_version} {self.protocol.lpips_net}"
            ids["lpips_trunk"] = f"{self.protocol.lpips_trunk} ({TRUNK_FILE})"
            ids["lpips_trunk_sha256"] = _sha256(trunk) if trunk.exists() else "unknown"
            ids["lpips_heads_sha256"] = _sha256(heads)
        if self._clip_future is not None:
            ids.update(self._clip.model_ids())
        return ids

    # ---- streaming ---------------------------------------------------------------------------
    def score(self, items: Iterable[ScoreItem]) -> Iterator[tuple[str, dict[str, float]]]:
        """Rows in input order. Memory stays flat: at most about two batches are decoded at a time."""
        pool = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="ciebench-align")
        side = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ciebench-metrics") if self.overlap else None
        # Futures of prepared samples, in input order. Look-ahead: the batch being scored plus one
        # batch queued (and the item the feeder holds), so memory stays flat in the number of samples.
        prepared: queue.Queue = queue.Queue(maxsize=self.batch_size)
        stop = threading.Event()

        def put(obj) -> bool:
            while not stop.is_set():
                try:
                    prepared.put(obj, timeout=0.1)
                    return True
                except queue.Full:
                    continue
            return False

        source = iter(items)

        def feed() -> None:
            # The caller's iterator runs here, so its decoding overlaps the models' work.
            try:
                for item in source:
                    if not put(pool.submit(self._prepare, item)):
                        return
                put(_END)
            except BaseException as exc:  # noqa: BLE001 - handed to the consumer, re-raised there
                put(exc)
            finally:
                close = getattr(source, "close", None)
                if close is not None:  # a generator stopped early releases what it holds (threads, files) now
                    close()

        feeder = threading.Thread(target=feed, name="ciebench-feed", daemon=True)
        feeder.start()
        try:
            done = False
            while not done:
                batch: list[_Prepared] = []
                while len(batch) < self.batch_size:
                    got = prepared.get()
                    if got is _END:
                        done = True
                        break
                    if isinstance(got, BaseException):
                        raise got
                    batch.append(got.result())
                if batch:
                    yield from self._score_batch(batch, side)
        finally:
            stop.set()
            while feeder.is_alive():  # unblock a feeder waiting on a full queue, then let it finish
                try:
                    prepared.get(timeout=0.05)
                except queue.Empty:
                    pass
            feeder.join()
            pool.shutdown(wait=True, cancel_futures=True)
            if side is not None:
                side.shutdown(wait=True)

    def score_one(self, item: ScoreItem) -> dict[str, float]:
        return next(self.score([item]))[1]

    # ---- per-sample preparation (worker threads) --------------------------------------------
    def _prepare(self, item: ScoreItem) -> _Prepared:
        prep = _Prepared(sample_id=str(getattr(item, "sample_id", "?")))
        try:
            prep.clip_text = clip_texts(item.clip_text)
            with self.timer.stage("align"):
                aligned = align(item.source, item.prediction, item.mask, self.protocol)
                prep.source, prep.prediction, prep.mask = aligned.tensors()
            if self._preprocessor_future is not None and prep.clip_text:
                preprocess = self._preprocessor_future.result()  # the processor only, not the model
                with self.timer.stage("clip_preprocess"):
                    crop = region_crop(aligned.prediction, aligned.mask, self.protocol.clip_crop == "inclusive")
                    if crop is not None:
                        prep.clip_pixels = preprocess(crop)
        except Exception as exc:  # noqa: BLE001 - one bad sample must not end the run
            prep.error = _describe(exc)
        return prep

    # ---- batched computation (caller's thread) ----------------------------------------------
    def _score_batch(self, batch: list[_Prepared], side: ThreadPoolExecutor | None = None
                     ) -> list[tuple[str, dict[str, float]]]:
        ready = [i for i, p in enumerate(batch) if p.error is None]
        families: list[tuple[str, Callable[[list[_Prepared]], list[dict[str, float]]]]] = []
        if any(m in self.metrics for m in ("psnr", "mse", "ssim", "locality")):
            families.append(("pixel", self._pixel_metrics))
        if self._lpips is not None:
            families.append(("lpips", self._lpips_metric))

        def cpu_side() -> list[tuple[dict[int, dict], dict[int, str]]]:
            with torch.cuda.stream(self._side_stream):  # no-op without a side stream (CPU, or no overlap)
                return [self._run_family(name, fn, batch, ready) for name, fn in families]

        # The pixel metrics, SSIM and LPIPS run beside the CLIP forward; the results are merged in a
        # fixed family order, so rows and error messages do not depend on the threads' timing.
        scores_clip = self._clip_future is not None
        if self._side_stream is not None:  # what this thread queued on the device so far comes first
            self._side_stream.wait_stream(torch.cuda.current_stream(self.device))
        pending: Future | None = side.submit(cpu_side) if side is not None and scores_clip else None
        results = cpu_side() if pending is None else []
        if scores_clip:
            if self._clip_future.exception() is not None:  # (waits for the load) a model that cannot load ends the run
                if pending is not None:
                    pending.result()
                raise self._clip_future.exception()
            clip = self._run_family("clip", self._clip_metric, batch, ready)
            results = (pending.result() if pending is not None else results) + [clip]
        rows: list[dict] = [dict.fromkeys(self.columns, math.nan) for _ in batch]
        errors: list[list[str]] = [[p.error] if p.error else [] for p in batch]
        for values, errs in results:
            for i, v in values.items():
                rows[i].update(v)
            for i, e in errs.items():
                errors[i].append(e)
        out = []
        for p, row, errs in zip(batch, rows, errors):
            if errs:
                row["error"] = "; ".join(errs)
            if self._preservation and p.mask is not None and bool(no_background(p.mask[None])):
                # undefined, also when another metric of the sample failed
                row.update(dict.fromkeys(self._preservation, math.nan), note=NO_BACKGROUND)
            out.append((p.sample_id, row))
        return out

    @staticmethod
    def _run_family(name: str, fn, batch: list[_Prepared], ready: list[int]
                    ) -> tuple[dict[int, dict[str, float]], dict[int, str]]:
        """({index: values}, {index: error}): batched first; if the batch fails, sample by sample, so
        only the culprit gets the error."""
        errors: dict[int, str] = {}
        if not ready:
            return {}, errors

        def failed(i: int, exc: BaseException) -> None:
            errors[i] = f"{name}: {_describe(exc)}"

        outcomes = run_isolated(lambda idx: fn([batch[i] for i in idx]), ready, failed)
        return {i: v for i, v in zip(ready, outcomes) if i not in errors}, errors

    def _chunks(self, preps: list[_Prepared]) -> Iterator[list[int]]:
        """Indices of same-size samples, stacked up to about `_PIXELS_PER_CHUNK_*` pixels."""
        by_size: dict[tuple[int, int], list[int]] = {}
        for i, p in enumerate(preps):
            by_size.setdefault(p.size, []).append(i)
        for (h, w), idx in by_size.items():
            per_chunk = max(1, min(self.batch_size, self._pixels_per_chunk // (h * w)))
            for start in range(0, len(idx), per_chunk):
                yield idx[start:start + per_chunk]

    def _to_device(self, tensors: list[Tensor]) -> Tensor:
        """Stacked on the host and copied to the device: through pinned memory, asynchronously, on CUDA."""
        stacked = torch.stack(tensors)
        if self.device.type == "cuda":
            return stacked.pin_memory().to(self.device, non_blocking=True)
        return stacked.to(self.device)

    def _stack(self, preps: list[_Prepared], idx: list[int]) -> tuple[Tensor, Tensor, Tensor]:
        def stack(attr: str) -> Tensor:
            return self._to_device([getattr(preps[i], attr) for i in idx])

        return stack("prediction"), stack("source"), stack("mask")

    def _pixel_metrics(self, preps: list[_Prepared]) -> list[dict[str, float]]:
        p = self.protocol
        out: list[dict[str, float]] = [{} for _ in preps]
        for idx in self._chunks(preps):
            with self.timer.stage("pixel"):
                pred, src, mask = self._stack(preps, idx)
            # Each column comes to the host (one copy per column, not per sample) inside its stage: on
            # a GPU that copy waits for the kernels, so their time lands in the stage that ran them.
            values: dict[str, list[float]] = {}
            if "psnr" in self.metrics or "mse" in self.metrics:
                with self.timer.stage("pixel"):
                    mse, psnr = background_mse_psnr(pred, src, mask, p.weighting, p.data_range, p.arithmetic)
                    if "mse" in self.metrics:
                        values["mse"] = mse.tolist()
                    if "psnr" in self.metrics:
                        values["psnr"] = psnr.tolist()
            if "ssim" in self.metrics:
                with self.timer.stage("ssim"):
                    values["ssim"] = background_ssim(pred, src, mask, p.weighting, p.ssim_border, p.data_range,
                                                     p.ssim_sigma, p.ssim_kernel_size, p.ssim_k1, p.ssim_k2,
                                                     p.arithmetic).tolist()
            if "locality" in self.metrics:
                with self.timer.stage("locality"):
                    loc = edit_locality(pred, src, mask, p.locality_threshold, p.locality_mask_level)
                    values.update({f"locality_{k}": v.tolist() for k, v in loc.items()})
            for col, v in values.items():
                for j, i in enumerate(idx):
                    out[i][col] = float(v[j])
        return out

    @torch.inference_mode()
    def _lpips_metric(self, preps: list[_Prepared]) -> list[dict[str, float]]:
        out: list[dict[str, float]] = [{} for _ in preps]
        for idx in self._chunks(preps):
            with self.timer.stage("lpips"):
                pred, src, mask = self._stack(preps, idx)
                with forward_precision(self.protocol.model_precision, self.device):  # held while dispatching only
                    values = background_lpips(pred, src, mask, self._lpips, self.protocol.weighting)
                v = values.tolist()
            for j, i in enumerate(idx):
                out[i]["lpips"] = float(v[j])
        return out

    def _clip_metric(self, preps: list[_Prepared]) -> list[dict[str, float]]:
        p = self.protocol
        out: list[dict[str, float]] = [{"clip": math.nan} for _ in preps]
        idx = [i for i, prep in enumerate(preps) if prep.clip_pixels is not None]
        for start in range(0, len(idx), self.batch_size):
            part = idx[start:start + self.batch_size]
            with self.timer.stage("clip_forward"):
                with forward_precision(p.model_precision, self.device):
                    embeds = self._clip.image_embeddings(self._to_device([preps[i].clip_pixels for i in part]))
                # CUDA runs asynchronously: wait for this thread's stream (not the side thread's), so
                # the forward's time lands here
                if embeds.is_cuda:
                    torch.cuda.current_stream(embeds.device).synchronize()
            with self.timer.stage("clip_text"):  # each distinct text is encoded once, in float32
                scores = self._clip.score_embeddings(embeds, [preps[i].clip_text for i in part], p.clip_scale,
                                                     clamp=p.clip_clamp == "zero_after_mean").tolist()
            for j, i in enumerate(part):
                out[i]["clip"] = float(scores[j])
        return out
