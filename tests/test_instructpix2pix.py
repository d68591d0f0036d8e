"""InstructPix2Pix and MagicBrush through the real `from_pretrained(hub id)` path, offline."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from typer.testing import CliRunner

from ciebench.cli import app
from ciebench.editor import EditRequest

from tests.support.fixtures_editors import publish_tiny_instruct_pix2pix
from tests.support.fixtures_models import CLIP_VIT_L14_336, publish_clip, publish_squeezenet1_1

runner = CliRunner()
SMALL = ["--editor-arg", "steps=2", "--editor-arg", "resolution=64"]


def test_instructpix2pix_runs_end_to_end_through_evaluate(tmp_path: Path):
    publish_tiny_instruct_pix2pix()
    publish_clip(CLIP_VIT_L14_336)
    publish_squeezenet1_1()
    run = tmp_path / "ip2p"
    result = runner.invoke(app, ["evaluate", "--editor", "instructpix2pix", "--dataset", "mini", "--out", str(run),
                                 "--limit", "3", "--batch-size", "2", *SMALL])
    assert result.exit_code == 0, result.output + repr(result.exception)
    frame = pd.read_csv(run / "samples.csv")
    assert len(frame) == 3 and (frame["status"] == "ok").all()
    for column in ("psnr", "ssim", "lpips", "clip", "locality_recall"):
        assert frame[column].notna().all(), column
    assert np.isfinite(frame["psnr"]).all()  # a random diffusion model does change the picture
    spec = json.loads((run / "spec.json").read_text())
    config = spec["editor"]["config"]
    assert config["model_id"] == "timbrooks/instruct-pix2pix" and config["steps"] == 2
    assert config["resolution_policy"] == "long-side-512-multiple-64"
    trace = json.loads(next((run / "traces").glob("*.json")).read_text())
    assert trace["working_size"][0] % 64 == 0 and trace["working_size"][1] % 64 == 0


def _editor(cls_name: str = "InstructPix2PixEditor", **options):
    from ciebench.baselines import instructpix2pix

    return getattr(instructpix2pix, cls_name)(steps=2, resolution=64, **options)


def test_seeded_outputs_are_identical_and_batch_independent():
    publish_tiny_instruct_pix2pix()
    source = Image.fromarray(np.random.default_rng(0).integers(0, 255, (48, 70, 3), dtype=np.uint8))
    requests = [EditRequest("a", source, "make it red", seed=11), EditRequest("b", source, "make it blue", seed=12)]
    editor = _editor()
    batched = editor.edit(requests)
    single = [editor.edit([r])[0] for r in requests]
    again = _editor().edit(requests)
    for x, y, z in zip(batched, single, again):
        assert x.image.size == source.size
        assert np.array_equal(np.asarray(x.image), np.asarray(z.image))
        assert np.abs(np.asarray(x.image, dtype=int) - np.asarray(y.image, dtype=int)).max() <= 1
    assert not np.array_equal(np.asarray(batched[0].image), np.asarray(batched[1].image))
    # the seed alone changes the image: same source and instruction, another seed
    reseeded = editor.edit([EditRequest("a", source, "make it red", seed=13)])[0]
    assert not np.array_equal(np.asarray(reseeded.image), np.asarray(single[0].image))


def test_magicbrush_loads_its_own_checkpoint_id():
    publish_tiny_instruct_pix2pix("vinesmsuic/magicbrush-jul7", seed=1)
    editor = _editor("MagicBrushEditor")
    assert editor.config.model_id == "vinesmsuic/magicbrush-jul7"
    out = editor.edit([EditRequest("a", Image.new("RGB", (40, 30), (200, 10, 10)), "remove the red", seed=3)])[0]
    assert out.status == "ok" and out.image.size == (40, 30)


def test_resolution_policy_long_side_512_each_side_nearest_multiple_of_64():
    """Our documented rule, not edit_cli.py's (which rounds the short side up, floors both sides and
    centre-crops): by hand, 796x597 -> scale 512/796 -> 512 x 384.0; 1259x547 -> 512 x 222.4 -> 192;
    826x550 -> 512 x 340.9 -> 320 (edit_cli: ceil(340.9 / 64) * 64 = 384 short side, 576 x 384)."""
    from ciebench.baselines.instructpix2pix import InstructPix2PixEditor

    paper = InstructPix2PixEditor()
    assert paper.working_size((796, 597)) == (512, 384)
    assert paper.working_size((1259, 547)) == (512, 192)
    assert paper.working_size((826, 550)) == (512, 320)
