"""Benchmark: the CIELR reasoning chain's wall time over all CIEBench instructions, sequential versus
concurrent LLM calls, against a scripted OpenAI-compatible HTTP server with a fixed latency per call.

    python benchmarks/bench_cielr.py [--dataset ../shared/ciebench] [--latency 0.2] [--concurrency N]

What runs: the real editor (`CIELREditor.edit` on all samples as one batch) with tiny random-weight
SAM 2.1 / OWLv2 / Depth Anything V2 / SD-inpainting models from a temporary offline hub cache (they
stand in for the real ones: this measures the orchestration, not the models), and the LLM / VLM served
by tests/support/llm_server.py with `--latency` seconds before every answer. The scripted answers follow the
paper's chain for every sample (object list, plan, sufficiency check, region selection, action); one
sample in four takes a semantic update (labeller re-run) and one in four a spatial update (operator
call), so the call counts are those of a mixed run. Images are downscaled to `--max-side` and torch
runs on `--torch-threads` threads so that the tiny models' CPU time does not hide the LLM latency the
benchmark is about.

Reported per mode: the reasoning wall time (scheduler start to the last chain's end), the whole
`edit` wall time, LLM requests and the server's peak of concurrent requests; then model calls per
sample. Asserted: segmentation ran exactly once per sample in each mode, every sample succeeded, and
(unless --no-assert) the concurrent mode's reasoning wall time is at least `--target` times smaller.

Then LLM requests per sample when the model errs (concurrent mode, `--err-limit` samples): the
scripted model first gives, at every stage of every sample, an answer that passes the JSON schema but
not the chain's check (an empty object list, an empty plan, an inconsistent sufficiency answer, a
region id that does not exist, the wrong action), and is measured with the chain's feedback retries
(`feedback_retries=2`: the re-ask carries the reason and the valid values) and without them
(`feedback_retries=0`: the client resamples the same prompt). Two models: one that errs once per
stage and then answers right whatever it is asked, and one that answers right only when the prompt
says why its last answer was rejected.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _offline_hub() -> Path:
    """A temporary, offline hub cache (set before any Hugging Face library is imported)."""
    root = Path(tempfile.mkdtemp(prefix="ciebench-bench-cielr-"))
    for key, sub in (("HF_HOME", "hf"), ("HF_HUB_CACHE", "hf/hub"), ("HF_DATASETS_CACHE", "hf/datasets"),
                     ("TORCH_HOME", "torch")):
        os.environ[key] = str(root / sub)
    for key in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE", "HF_HUB_DISABLE_TELEMETRY"):
        os.environ[key] = "1"
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    Path(os.environ["HF_HUB_CACHE"]).mkdir(parents=True, exist_ok=True)
    return root


REJECTED = "YOUR PREVIOUS ANSWER WAS REJECTED"


def erring_responder(needs_reason: bool):
    """chain_responder behind a model that first answers every stage of every sample wrongly (valid
    JSON, rejected by the chain). `needs_reason`: it stays wrong until the prompt says why."""
    import hashlib
    import re
    import threading

    from tests.support.fixtures_cielr import chain_responder, stage_of

    right = chain_responder()
    seen: set = set()
    lock = threading.Lock()
    marker = re.compile(r"\[#(.+?)#\]")
    other = {"remove": "add", "replace": "remove", "add": "remove", "recolor": "remove"}

    def wrong(stage: str, text: str):
        if stage == "objects":
            return {"objects": []}
        if stage == "plan":
            return {"steps": []}
        if stage == "sufficiency":
            return {"sufficient": True, "missing": "spatial", "new_labels": [], "reason": ""}
        if stage == "select":
            return {"region_ids": [99999], "reason": "a guess"}
        if stage == "action":
            kind = text.split("Edit type: ", 1)[1].split("\n", 1)[0].strip()
            return {"action": other[kind], "target": "x", "new_object": "y", "color": "z", "explicit": "x"}
        return None  # spatial: always right (its fallback is tested elsewhere)

    def answer(req):
        stage = stage_of(req.text)
        m = marker.search(req.text)
        who = m.group(1) if m else hashlib.sha1("".join(req.image_urls).encode()).hexdigest()
        if needs_reason:
            err = REJECTED not in req.text
        else:
            with lock:
                err = (who, stage) not in seen
                seen.add((who, stage))
        bad = wrong(stage, req.text) if err else None
        return bad if bad is not None else right(req)

    return answer


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dataset", default=str(ROOT.parent / "shared" / "ciebench"))
    ap.add_argument("--latency", type=float, default=0.2, help="seconds the server waits before each answer")
    ap.add_argument("--concurrency", type=int, default=None, help="default: LLMConfig's default")
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--max-side", type=int, default=160)
    ap.add_argument("--target", type=float, default=5.0)
    ap.add_argument("--torch-threads", type=int, default=1,
                    help="CPU threads for the tiny models (1 avoids thread contention on a shared machine)")
    ap.add_argument("--no-assert", action="store_true")
    ap.add_argument("--err-limit", type=int, default=40, help="samples for the erring-model measurement")
    args = ap.parse_args(argv)

    tmp = _offline_hub()
    sys.path.insert(0, str(ROOT))
    import logging

    import warnings

    warnings.filterwarnings("ignore")
    logging.getLogger("ciebench.llm").setLevel(logging.ERROR)
    import diffusers
    import huggingface_hub
    import torch
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    diffusers.logging.set_verbosity_error()
    diffusers.logging.disable_progress_bar()
    huggingface_hub.utils.logging.set_verbosity_error()

    torch.set_num_threads(max(1, args.torch_threads))
    from ciebench.cielr_ref.editor import CIELREditor
    from ciebench.datasets import iter_samples, load_dataset
    from ciebench.editor import EditRequest
    from ciebench.llm import LLMConfig
    from tests.support.fixtures_cielr import chain_responder, publish_cielr_models, tiny_editor_options
    from tests.support.llm_server import LLMServer, respond

    t0 = time.perf_counter()
    publish_cielr_models()
    samples = list(iter_samples(load_dataset(args.dataset), limit=args.limit))
    requests = []
    for s in samples:
        im = s.image.convert("RGB")
        scale = args.max_side / max(im.size)
        if scale < 1:
            im = im.resize((max(1, round(im.width * scale)), max(1, round(im.height * scale))))
        requests.append(EditRequest(s.id, im, f"[#{s.id}#] {s.instruction}", seed=0))
    print(f"{len(requests)} samples from {args.dataset}; tiny models published in {time.perf_counter() - t0:.1f}s; "
          f"LLM latency {args.latency * 1000:.0f} ms per call")

    default_conc = args.concurrency or LLMConfig().concurrency
    results = {}
    server = LLMServer(latency_s=args.latency, lifetime_s=3600).start()
    try:
        server.on(then=respond(chain_responder()))
        for label, conc in (("sequential", 1), (f"concurrent ({default_conc})", default_conc)):
            server.reset()
            editor = CIELREditor(**tiny_editor_options(server.base_url, concurrency=conc))
            t = time.perf_counter()
            out = editor.edit(requests)
            wall = time.perf_counter() - t
            traces = [r.trace for r in out]
            reasoning = traces[0]["timings"]["batch_reasoning_wall"]
            failed = [(r.trace["sample_id"], r.error) for r in out if r.status != "ok"]
            segs = [t["model_calls"]["segmenter"] for t in traces]
            results[label] = dict(reasoning=reasoning, wall=wall, requests=server.count, peak=server.max_in_flight,
                                  failed=failed, segs=segs, seg_images=editor.segmenter.stats.images,
                                  calls=[t["model_calls"] for t in traces])
            editor.close()
    finally:
        server.stop()

    print(f"\n{'mode':<18}{'reasoning wall':>16}{'edit() wall':>13}{'LLM requests':>14}{'peak in flight*':>17}{'failed':>8}")
    for label, r in results.items():
        print(f"{label:<18}{r['reasoning']:>15.2f}s{r['wall']:>12.2f}s{r['requests']:>14}{r['peak']:>17}{len(r['failed']):>8}")
    print("* seen by the server, which counts a request until its reply is written: one more than the client's "
          "bound when a new request arrives in that instant")
    seq, con = list(results.values())
    speedup = seq["reasoning"] / con["reasoning"]
    print(f"\nreasoning-chain speed-up: {speedup:.1f}x (target >= {args.target:g}x)")

    calls = con["calls"]
    print("\nmodel calls per sample (concurrent run): mean [min, max]")
    for key in ("vlm_calls", "llm_calls", "llm_requests", "segmenter", "depth", "labeller", "inpaint"):
        vals = [c[key] for c in calls]
        print(f"  {key:<13}{statistics.mean(vals):6.2f}  [{min(vals)}, {max(vals)}]")
    per_kind = {}
    for c in calls:
        per_kind.setdefault((c["vlm_calls"] + c["llm_calls"], c["labeller"]), 0)
        per_kind[(c["vlm_calls"] + c["llm_calls"], c["labeller"])] += 1
    print("  samples by (LLM+VLM calls, labeller runs): "
          + ", ".join(f"{k}: {v}" for k, v in sorted(per_kind.items())))

    err_requests = requests[:args.err_limit]
    print(f"\nLLM requests per sample with a model that errs (concurrent, {len(err_requests)} samples, "
          f"no latency): mean [min, max], samples ok")
    server = LLMServer(latency_s=0.0, lifetime_s=3600).start()
    try:
        rows = [("error-free model", chain_responder(), 2)]
        for model, needs_reason in (("errs once per stage", False), ("errs until told why", True)):
            for retries in (2, 0):
                rows.append((f"{model}, feedback_retries={retries}", erring_responder(needs_reason), retries))
        for label, responder, retries in rows:
            server.reset(rules=True)
            server.on(then=respond(responder))
            editor = CIELREditor(**{**tiny_editor_options(server.base_url, concurrency=default_conc),
                                    "feedback_retries": retries})
            out = editor.edit(err_requests)
            editor.close()
            reqs = [r.trace["model_calls"]["llm_requests"] for r in out]
            ok = sum(r.status == "ok" for r in out)
            print(f"  {label:<44}{statistics.mean(reqs):6.2f}  [{min(reqs)}, {max(reqs)}]  ok {ok}/{len(out)}"
                  f"  (server saw {server.count / len(out):.2f} per sample)")
    finally:
        server.stop()

    for label, r in results.items():
        assert all(n == 1 for n in r["segs"]) and r["seg_images"] == len(requests), \
            f"{label}: segmentation did not run exactly once per sample"
        assert not r["failed"], f"{label}: failed samples {r['failed'][:3]}"
    print("segmentation ran exactly once per sample in both modes; every sample succeeded")
    if not args.no_assert:
        assert speedup >= args.target, f"speed-up {speedup:.1f}x below the target {args.target:g}x"
    import shutil

    shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
