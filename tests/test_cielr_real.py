"""CIELR on real CIEBench samples (../shared/ciebench; skipped without it): tiny models, scripted LLM,
and the runner's writer, so the trace artifacts land as files beside the trace."""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
from PIL import Image

from ciebench.cielr_ref.editor import CIELREditor
from ciebench.cielr_ref.executor import dilate
from ciebench.datasets import iter_samples, load_dataset
from ciebench.editor import EditRequest
from ciebench.results import file_stem
from ciebench.runner import write_result
from tests.support.fixtures_cielr import chain_responder, publish_cielr_models, tiny_editor_options
from tests.support.llm_server import respond, serve_llm


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_real_samples_through_the_runner_writer(ciebench_root, tmp_path):
    publish_cielr_models()
    wanted = {"2", "4", "5"}  # a spatial update (2 mod 4), a plain chain (0 mod 4), a semantic update (1 mod 4)
    samples = [s for s in iter_samples(load_dataset(str(ciebench_root))) if s.id in wanted]
    assert {s.id for s in samples} == wanted
    requests = []
    for s in samples:
        im = s.image.convert("RGB")
        im = im.resize((160, max(1, round(im.height * 160 / im.width))))  # keep CPU time small
        requests.append(EditRequest(s.id, im, f"[#{s.id}#] {s.instruction}", seed=11))
    with serve_llm() as server:
        server.on(then=respond(chain_responder()))
        editor = CIELREditor(**tiny_editor_options(server.base_url, concurrency=3))
        results = editor.edit(requests)
        assert not server.problems
    for sample, req, res in zip(samples, requests, results):
        assert res.status == "ok", res.error
        write_result(tmp_path, dataclasses.replace(sample, image=req.image), 0, res)
        stem = file_stem(sample.id, 0)
        trace = json.loads((tmp_path / "traces" / f"{stem}.json").read_text())
        assert trace["model_calls"]["segmenter"] == 1
        files = trace["artifacts"]
        assert "step1_mask.png" in files and any(k.startswith("ssr_v1_region_") for k in files)
        for name, rel in files.items():
            assert (tmp_path / "traces" / rel).is_file(), name
        mask = np.asarray(Image.open(tmp_path / "traces" / files["step1_mask.png"]).convert("L")) > 0
        diff = (np.asarray(res.image) != np.asarray(req.image)).any(-1)
        assert not (diff & ~dilate(mask, 2)).any()
        kinds = [u["kind"] for u in trace["steps"][0]["updates"]]
        assert kinds == {"2": ["spatial"], "4": [], "5": ["semantic"]}[sample.id]
