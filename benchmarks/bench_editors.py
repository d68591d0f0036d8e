"""Images per second and peak memory of the diffusers editors, with tiny random-weight pipelines.

    python benchmarks/bench_editors.py                 # CPU, 4 images per editor, table settings + steps=2
    python benchmarks/bench_editors.py --n 8 --steps 4 --device cuda

Each editor runs in a fresh child process (so `ru_maxrss`, the peak resident set, is its own; on CUDA
also torch's peak allocated GPU memory) on the first --n images of the `mini` dataset (512x512 and
600x400), after one warm-up image that loads the pipeline. The models are the test suite's tiny
pipelines of the real classes (tests/support/fixtures_diffusers_editors.py) published into a temporary hub
cache; Qwen-Image-Edit and LongCat-Image-Edit run with their internal 1-MP working area shrunk 256x,
as in the tests, and Kontext / Klein with max_area 96x96, so the numbers measure the editors' wiring
(loading, resizing, batching, seeding, pipeline overhead), not the models. The baseline is the tiny
`instructpix2pix` measured in the same run. Not a timed test: numbers depend on the machine.
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from bench_metrics import use_offline_caches  # noqa: E402  (a sibling script)

REPO = Path(__file__).resolve().parents[1]
# name -> (editor, preset, editor args beyond steps, hub id to publish)
EDITORS = {
    "instructpix2pix": ("instructpix2pix", None, ["resolution=64"], "timbrooks/instruct-pix2pix"),
    "qwen-image-edit": ("qwen-image-edit", None, [], "Qwen/Qwen-Image-Edit-2511"),
    "qwen-image-edit:base": ("qwen-image-edit", "base", [], "Qwen/Qwen-Image-Edit"),
    "flux-kontext": ("flux-kontext", None, ["auto_resize=false", f"max_area={96 * 96}"], "black-forest-labs/FLUX.1-Kontext-dev"),
    "flux2-klein": ("flux2-klein", None, [f"max_area={96 * 96}"], "black-forest-labs/FLUX.2-klein-4B"),
    "longcat-image-edit": ("longcat-image-edit", None, [], "meituan-longcat/LongCat-Image-Edit"),
    "diffusers (img2img)": ("diffusers", None, ["pipeline=StableDiffusionImg2ImgPipeline", "strength=0.75",
                                                "model_id=ciebench-tests/tiny-sd-img2img", "resolution_policy=area",
                                                f"max_area={64 * 64}", "multiple_of=64"],
                            "ciebench-tests/tiny-sd-img2img"),
}
BASELINE = "instructpix2pix"


def publish_all(root: Path) -> None:
    use_offline_caches(root)
    from ciebench.tests.support.fixtures_diffusers_editors import BUILDERS
    from ciebench.tests.support.fixtures_editors import publish_tiny_instruct_pix2pix

    publish_tiny_instruct_pix2pix()
    for hub_id in {v[3] for v in EDITORS.values()} - {"timbrooks/instruct-pix2pix"}:
        BUILDERS[hub_id]()


def child(name: str, root: Path, n: int, steps: int, batch: int, device: str) -> dict:
    use_offline_caches(root)
    import pytest
    import torch

    from ciebench.datasets import read_dataset
    from ciebench.editor import EditRequest
    from ciebench.editor_config import build_editor
    from ciebench.schema import EditSample
    from ciebench.tests.support.fixtures_diffusers_editors import shrink_working_area

    shrink_working_area(pytest.MonkeyPatch())
    editor_name, preset, args, _ = EDITORS[name]
    editor = build_editor(editor_name, [f"steps={steps}", *args], preset=preset).to(device)
    data = read_dataset("mini").dataset
    samples = [EditSample.from_row(data[i % len(data)]) for i in range(n + 1)]
    requests = [EditRequest(s.id, s.image.convert("RGB"), s.instruction, seed=i) for i, s in enumerate(samples)]
    editor.edit(requests[:1])  # loads the pipeline
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    for i in range(1, n + 1, batch):
        results = editor.edit(requests[i:i + batch])
        assert all(r.status == "ok" for r in results), [r.error for r in results]
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - started
    return {"editor": name, "images": n, "seconds": elapsed, "images_per_s": n / elapsed,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "peak_gpu_mb": torch.cuda.max_memory_allocated() / 2**20 if device.startswith("cuda") else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=4, help="images per editor (after one warm-up image)")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--batch", type=int, default=2, help="requests per Editor.edit call")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per child")
    parser.add_argument("--editors", default=",".join(EDITORS))
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--root", help=argparse.SUPPRESS)
    a = parser.parse_args()
    if a.child:
        import torch

        torch.set_num_threads(a.threads)
        print(json.dumps(child(a.child, Path(a.root), a.n, a.steps, a.batch, a.device)))
        return
    names = [BASELINE] + [e for e in a.editors.split(",") if e != BASELINE]
    with tempfile.TemporaryDirectory(prefix="bench-editors-") as tmp:
        root = Path(tmp)
        publish_all(root)
        rows = []
        for name in names:
            cmd = [sys.executable, __file__, "--child", name, "--root", str(root), "--n", str(a.n), "--steps",
                   str(a.steps), "--batch", str(a.batch), "--device", a.device, "--threads", str(a.threads)]
            proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
            if proc.returncode != 0:
                print(f"{name}: failed\n{proc.stderr[-2000:]}", file=sys.stderr)
                continue
            rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    base = next((r for r in rows if r["editor"] == BASELINE), None)
    print(f"\n{a.n} images per editor, {a.steps} steps, batch {a.batch}, device {a.device}, {a.threads} torch thread(s); "
          f"ratios against the tiny {BASELINE} of this run")
    print(f"{'editor':<22} {'images/s':>9} {'x base':>7} {'peak RSS MB':>12} {'x base':>7} {'peak GPU MB':>12}")
    for r in rows:
        speed = r["images_per_s"] / base["images_per_s"] if base else float("nan")
        mem = r["peak_rss_mb"] / base["peak_rss_mb"] if base else float("nan")
        gpu = f"{r['peak_gpu_mb']:.0f}" if r["peak_gpu_mb"] is not None else "-"
        print(f"{r['editor']:<22} {r['images_per_s']:>9.2f} {speed:>7.2f} {r['peak_rss_mb']:>12.0f} {mem:>7.2f} {gpu:>12}")


if __name__ == "__main__":
    main()
