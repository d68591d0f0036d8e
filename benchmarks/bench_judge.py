"""Judge throughput: N samples through the IDCS judge against a local OpenAI-compatible server that
answers every call after a fixed latency, with `concurrency` requests in flight.

Ideal time = calls x latency / concurrency, with calls = 2 per sample (describe, then score) x passes.
Target (issue #13): within 1.3x of ideal for 1,000 samples, 2 s latency, concurrency 32. The script
prints the measured time, the ideal and their ratio, then reruns to show that a rerun makes zero calls.

    python benchmarks/bench_judge.py                      # 1000 samples, 2 s, 32 (about 2 minutes)
    python benchmarks/bench_judge.py --samples 200 --latency 0.5
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from PIL import Image  # noqa: E402

from ciebench.llm import LLMConfig  # noqa: E402
from ciebench.metrics.idcs import IDCSJudge, JudgeConfig, JudgeItem  # noqa: E402
from tests.support.llm_server import json_reply, reply, serve_llm  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=1000)
    ap.add_argument("--latency", type=float, default=2.0)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--passes", type=int, default=1)
    args = ap.parse_args()

    # distinct images per sample: identical describe calls would be answered by the cache
    items = [JudgeItem(str(i), Image.new("RGB", (32, 32), (i % 256, i // 256, 0)), Image.new("RGB", (32, 32), (0, i % 256, 7)),
                       f"Remove object {i}.") for i in range(args.samples)]
    calls = 2 * args.samples * args.passes
    ideal = calls * args.latency / args.concurrency
    with tempfile.TemporaryDirectory() as cache, \
            serve_llm(latency_s=args.latency, max_requests=calls + 10, lifetime_s=ideal * 3 + 60) as server:
        server.on(has_images=True, then=reply("The object was removed."))
        server.on(then=json_reply({"score": 4}))
        common = dict(base_url=server.base_url, api_key_env=None, timeout_s=args.latency * 5 + 10, max_retries=0)
        cfg = JudgeConfig(name="bench", vlm=LLMConfig(model="v", **common), llm=LLMConfig(model="l", **common))
        judge = IDCSJudge(cfg, cache_dir=cache, concurrency=args.concurrency, passes=args.passes)
        t0 = time.perf_counter()
        verdicts = judge.judge(items)
        elapsed = time.perf_counter() - t0
        ok = sum(v.ok for v in verdicts)
        sent = server.count
        t1 = time.perf_counter()
        IDCSJudge(cfg, cache_dir=cache, concurrency=args.concurrency, passes=args.passes).judge(items)
        rerun = time.perf_counter() - t1
        print(f"samples {args.samples}, passes {args.passes}, calls {calls}, latency {args.latency:g}s, "
              f"concurrency {args.concurrency}, peak in flight {server.max_in_flight}")
        print(f"judged {ok}/{len(verdicts)} in {elapsed:.1f}s; ideal {ideal:.1f}s; ratio {elapsed / ideal:.3f} "
              f"(target <= 1.3)")
        print(f"calls sent {sent}; rerun: {server.count - sent} calls, {rerun:.1f}s")


if __name__ == "__main__":
    main()
