"""Per-stage timing of a scoring run (`summary.json` "timing"): the stages account for the wall time,
the stage clock shares overlapping stages correctly, and overlapping the metric families with the
CLIP forward changes no number."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import ciebench
from ciebench.metrics.region import RegionScorer, ScoreItem
from ciebench.metrics.timing import StageTimer, process_started, time_line
from ciebench.scoring import ScoreOptions, find_predictions, score

from tests.support.fixtures_models import CLIP_VIT_L14_336, publish_clip, publish_squeezenet1_1
from tests.support.synthetic_edits import KINDS, synthetic_edit

REPO = Path(__file__).resolve().parents[1]
EXPECTED_STAGES = {"index", "read", "decode", "load", "align", "clip_preprocess", "pixel", "ssim", "locality", "lpips",
                   "clip_text", "clip_forward", "writing", "summary"}


@pytest.fixture(scope="module", autouse=True)
def published_models():
    publish_clip(CLIP_VIT_L14_336)
    publish_squeezenet1_1()


def test_stage_clock_shares_overlapping_stages():
    timer = StageTimer()

    def worker():
        with timer.stage("a"):
            time.sleep(0.4)

    thread = threading.Thread(target=worker)
    thread.start()
    time.sleep(0.1)
    with timer.stage("b"):  # overlaps "a" for 0.2 s
        time.sleep(0.2)
    thread.join()
    time.sleep(0.1)  # nothing running: idle
    r = timer.report()
    a, b = r["stages"]["a"], r["stages"]["b"]
    # a alone 0.1 + shared 0.2 / 2 + alone 0.1 = 0.3; b: 0.2 / 2 = 0.1 (sleep overshoot allowed)
    assert a["wall_s"] == pytest.approx(0.3, abs=0.04) and b["wall_s"] == pytest.approx(0.1, abs=0.03)
    assert a["busy_s"] == pytest.approx(0.4, abs=0.04) and b["busy_s"] == pytest.approx(0.2, abs=0.03)
    assert r["idle_s"] == pytest.approx(0.1, abs=0.04)
    assert a["wall_s"] + b["wall_s"] + r["idle_s"] == pytest.approx(r["wall_s"], abs=0.003)


def test_the_time_line_names_the_largest_stages_with_their_shares():
    report = {"wall_s": 40.0, "idle_s": 0.0, "stages": {
        "startup": {"wall_s": 2.0}, "clip_forward": {"wall_s": 30.0}, "lpips": {"wall_s": 1.0},
        "load": {"wall_s": 6.0}, "ssim": {"wall_s": 1.0}}}
    assert time_line(report, top=3) == "40.0 s: clip_forward 30.0 s (75%), load 6.0 s (15%), startup 2.0 s (5%)"
    assert time_line({"wall_s": 0.0, "idle_s": 0.0, "stages": {}}) == "0.0 s"


def test_a_timer_counting_from_an_earlier_instant_accounts_for_it_as_startup():
    since = time.perf_counter()
    time.sleep(0.2)
    timer = StageTimer(since)
    with timer.stage("a"):
        time.sleep(0.1)
    r = timer.report()
    assert r["stages"]["startup"]["wall_s"] == pytest.approx(0.2, abs=0.03)
    assert list(r["stages"]) == ["startup", "a"]
    assert r["wall_s"] == pytest.approx(0.3, abs=0.04)
    assert sum(s["wall_s"] for s in r["stages"].values()) + r["idle_s"] == pytest.approx(r["wall_s"], abs=0.003)


def test_process_started_is_the_process_start_seen_from_outside():
    """A child that sleeps 0.5 s, then reports how long ago its process started: at least the sleep,
    at most the child's whole life measured by its parent, plus one tick of the OS's start time
    (Linux records it in 10 ms ticks, rounded down)."""
    code = ("import time; time.sleep(0.5); from ciebench.metrics.timing import process_started; "
            "print(time.perf_counter() - process_started())")
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    life = time.perf_counter() - t0
    age = float(out.stdout)
    assert 0.5 <= age <= life + 0.011, (age, life)
    assert process_started() <= time.perf_counter()


@pytest.fixture(scope="module")
def mini_predictions(tmp_path_factory) -> Path:
    pred = tmp_path_factory.mktemp("pred")
    kinds = [k for k in KINDS if k != "identity"]
    for n, row in enumerate(ciebench.load_dataset("mini")):
        image = row["image"].convert("RGB")
        synthetic_edit(image, row["mask"], kinds[n % len(kinds)], seed=n).save(pred / f"{row['id']}.png")
    return pred


def test_summary_timing_accounts_for_the_wall_time(tmp_path: Path, mini_predictions: Path):
    loaded = ciebench.read_dataset("mini")
    ids = loaded.dataset["id"]
    t0 = time.perf_counter()
    result = score(loaded, find_predictions(mini_predictions, ids), tmp_path / "out",
                   ScoreOptions(protocol="cielr", batch_size=4), progress=False)
    wall = time.perf_counter() - t0
    timing = json.loads((tmp_path / "out" / "summary.json").read_text())["timing"]
    assert timing == result.summary["timing"]
    stages = timing["stages"]
    assert set(stages) == EXPECTED_STAGES
    total = sum(s["wall_s"] for s in stages.values())
    # The named stages cover the measured wall time (what is left is loop overhead) ...
    assert abs(total - wall) <= 0.10 * wall, (total, wall, timing)
    # ... and the clock is split, never double counted.
    assert total + timing["idle_s"] == pytest.approx(timing["wall_s"], abs=0.001 * (len(stages) + 2))
    for name, s in stages.items():
        assert s["calls"] > 0 and s["wall_s"] <= s["busy_s"] + 0.001, name
    assert stages["decode"]["calls"] >= 2 * len(ids)  # the prediction and the dataset row, per sample


def test_the_command_accounts_for_its_whole_process(tmp_path: Path, mini_predictions: Path):
    """`ciebench score` counts summary.json's timing from its process's start: a second slept in the
    process before the command runs lands in `startup`, the account covers the process's wall time
    measured from outside within 10%, and the command's own process settings (its garbage-collector
    schedule, ciebench.collector) leave every number as an in-process score computes it."""
    out = tmp_path / "cli"
    argv = ["ciebench", "score", "--dataset", "mini", "--predictions", str(mini_predictions), "--out", str(out),
            "--protocol", "cielr", "--metrics", "psnr,mse,ssim"]
    code = f"import sys, time; time.sleep(1.0); sys.argv = {argv!r}; from ciebench.cli import main; main()"
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
                   stdout=subprocess.DEVNULL, check=True)
    wall = time.perf_counter() - t0
    timing = json.loads((out / "summary.json").read_text())["timing"]
    assert timing["stages"]["startup"]["wall_s"] >= 1.0
    assert 0.9 * wall <= timing["wall_s"] <= wall, (timing["wall_s"], wall)
    total = sum(s["wall_s"] for s in timing["stages"].values()) + timing["idle_s"]
    assert total == pytest.approx(timing["wall_s"], abs=0.001 * (len(timing["stages"]) + 2))

    loaded = ciebench.read_dataset("mini")
    here = score(loaded, find_predictions(mini_predictions, loaded.dataset["id"]), tmp_path / "here",
                 ScoreOptions(protocol="cielr", metrics=("psnr", "mse", "ssim")), progress=False)
    assert "startup" not in here.summary["timing"]["stages"]  # a library call counts from its own start
    assert (out / "samples.csv").read_text() == (tmp_path / "here" / "samples.csv").read_text()


def test_overlapping_the_metric_families_changes_no_number():
    rows = list(ciebench.load_dataset("mini"))
    items = [ScoreItem(r["id"], r["image"].convert("RGB"), r["mask"],
                       synthetic_edit(r["image"].convert("RGB"), r["mask"], KINDS[n % len(KINDS)], seed=n), ["a lamp"])
             for n, r in enumerate(rows[:5])]
    on = dict(RegionScorer("cielr", batch_size=2, overlap=True).score(items))
    off = dict(RegionScorer("cielr", batch_size=2, overlap=False).score(items))
    assert on.keys() == off.keys()
    for sid in on:
        assert on[sid].keys() == off[sid].keys()
        for k, v in on[sid].items():
            assert v == off[sid][k] or (math.isnan(v) and math.isnan(off[sid][k])), (sid, k)


def test_a_clip_model_that_cannot_load_ends_the_run_instead_of_failing_each_sample():
    from ciebench.metrics.protocols import get_protocol

    r = next(iter(ciebench.load_dataset("mini")))
    item = ScoreItem(r["id"], r["image"].convert("RGB"), r["mask"], r["image"].convert("RGB"), ["a lamp"])
    missing = get_protocol("cielr").with_(name="no-clip", clip_model="nobody/no-such-clip")
    scorer = RegionScorer(missing, metrics=["psnr", "clip"], batch_size=2)  # CLIP loads in the background
    with pytest.raises(OSError):
        list(scorer.score([item, item]))
    with pytest.raises(OSError):
        scorer.model_ids()


def test_the_first_batch_is_prepared_and_scored_while_the_clip_model_loads(monkeypatch):
    """Only the small image processor is needed to CLIP-preprocess: the first batch's crops, pixel
    metrics, SSIM and LPIPS must not wait for the CLIP model. The model's load is held until LPIPS
    has scored a batch; a scorer that waited for the model first would never release it."""
    import ciebench.metrics.region as region

    lpips_ran, model_loaded = threading.Event(), threading.Event()
    real_clip, real_lpips = region.RegionCLIP, RegionScorer._lpips_metric

    def slow_clip(*args, **kwargs):
        if not lpips_ran.wait(timeout=60):
            raise TimeoutError("LPIPS never ran while the CLIP model was loading")
        model_loaded.set()
        return real_clip(*args, **kwargs)

    def lpips_metric(self, preps):
        if not model_loaded.is_set():
            assert all(p.clip_pixels is not None for p in preps), "crops were not preprocessed before the model loaded"
            lpips_ran.set()
        return real_lpips(self, preps)

    monkeypatch.setattr(region, "RegionCLIP", slow_clip)
    monkeypatch.setattr(RegionScorer, "_lpips_metric", lpips_metric)
    rows = list(ciebench.load_dataset("mini"))[:3]
    items = [ScoreItem(r["id"], r["image"].convert("RGB"), r["mask"], r["image"].convert("RGB"), ["a lamp"]) for r in rows]
    scores = dict(RegionScorer("cielr", batch_size=2, overlap=False).score(items))
    assert lpips_ran.is_set() and model_loaded.is_set()
    assert all(not math.isnan(v["clip"]) and v["lpips"] == 0 for v in scores.values())


def _entries(n: int, truncated: int | None = None):
    """`score_entries` input for the first `n` mini samples: synthetic edits as PNG bytes, the one at
    index `truncated` cut short (unreadable)."""
    import io

    from ciebench.schema import EditSample

    samples = [EditSample.from_row(r) for r in list(ciebench.load_dataset("mini"))[:n]]
    predictions = [synthetic_edit(s.image, s.mask, KINDS[1 + i % (len(KINDS) - 1)], seed=i) for i, s in enumerate(samples)]
    entries = []
    for i, (s, image) in enumerate(zip(samples, predictions)):
        buffer = io.BytesIO()
        image.save(buffer, "PNG")
        data = buffer.getvalue()[:300] if i == truncated else buffer.getvalue()
        entries.append(((s.id, 0), s, f"pred/{s.id}.png", data))
    return samples, predictions, entries


def test_predictions_decode_in_parallel_and_come_back_in_input_order(monkeypatch):
    """`score_entries` decodes predictions in the scorer's worker threads (on a GPU the host's serial
    part must be small). The first two decodes wait for each other: decoding one at a time would break
    the barrier. Rows keep the input order, and an unreadable prediction keeps its place."""
    import ciebench.scoring as scoring

    real_decode, calls, lock = scoring.decode_image, [], threading.Lock()
    barrier = threading.Barrier(2, timeout=20)

    def decode(*args, **kwargs):
        with lock:
            calls.append(threading.current_thread().name)
            first_two = len(calls) <= 2
        if first_two:
            barrier.wait()  # raises BrokenBarrierError if the other decode never runs meanwhile
        return real_decode(*args, **kwargs)

    monkeypatch.setattr(scoring, "decode_image", decode)
    samples, predictions, entries = _entries(5, truncated=2)

    scorer = RegionScorer("cielr", metrics=["psnr", "mse"], batch_size=2, workers=2)
    got = list(scoring.score_entries(scorer, iter(entries)))

    assert [key for key, _ in got] == [e[0] for e in entries]
    assert len(set(calls[:2])) == 2 and all(name.startswith("ciebench-decode") for name in calls)
    bad = got[2][1]
    assert set(bad) == {scoring.UNREADABLE} and bad[scoring.UNREADABLE].startswith("prediction is unreadable")
    # Independent expectation: the same scorer on the images themselves, decoded here by PIL.
    direct = dict(RegionScorer("cielr", metrics=["psnr", "mse"], batch_size=1, workers=1).score(
        ScoreItem(s.id, s.image, s.mask, image) for n, (s, image) in enumerate(zip(samples, predictions)) if n != 2))
    assert len(direct) == 4
    for key, values in got[:2] + got[3:]:
        assert values == direct[key[0]]


def test_scoring_stopped_early_leaves_no_thread_behind():
    import ciebench.scoring as scoring

    ours = ("ciebench-decode", "ciebench-feed", "ciebench-align")
    assert not [t.name for t in threading.enumerate() if t.name.startswith(ours)]
    rows = scoring.score_entries(RegionScorer("cielr", metrics=["psnr"], batch_size=2, workers=2), iter(_entries(6)[2]))
    next(rows)
    rows.close()  # the consumer stops after the first row: the feeder, the decoders and the workers end
    assert not [t.name for t in threading.enumerate() if t.name.startswith(ours)]

    # The caller's generator is closed too, even while the caller still holds it.
    released = threading.Event()
    samples, predictions, _ = _entries(6)

    def held():
        try:
            yield from (ScoreItem(s.id, s.image, s.mask, image) for s, image in zip(samples, predictions))
        finally:
            released.set()

    source = held()
    rows = RegionScorer("cielr", metrics=["psnr"], batch_size=2, workers=2).score(source)
    next(rows)
    rows.close()
    assert released.is_set()


def test_preparation_threads_scale_with_the_cores_only_off_the_cpu(monkeypatch):
    import os

    import torch

    from ciebench.metrics.region import default_workers

    assert default_workers(torch.device("cpu")) == 2  # a CPU run's cores belong to the models
    for cores, threads, expected in ((2, 2, 2), (6, 6, 3), (16, 16, 8), (64, 64, 8), (16, 4, 2), (4, 16, 2)):
        monkeypatch.setattr(os, "sched_getaffinity", lambda _pid, n=cores: set(range(n)), raising=False)
        monkeypatch.setattr(torch, "get_num_threads", lambda n=threads: n)
        assert default_workers(torch.device("cuda")) == expected, (cores, threads)
