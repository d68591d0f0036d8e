"""The editor API extension: several images, several turns, a language, without breaking old editors."""
from __future__ import annotations

import dataclasses

import numpy as np
from PIL import Image

from ciebench import EditRequest, EditResult, Editor
from ciebench.baselines.identity import IdentityEditor
from ciebench.status import Status
from ciebench.turns import drive_turns, unsupported_reason


def _img(v: int) -> Image.Image:
    return Image.new("RGB", (4, 4), (v, v, v))


def test_edit_request_defaults_keep_old_callers_working():
    a = _img(1)
    r = EditRequest(sample_id="s", image=a, instruction="x")
    assert r.images == [a] and r.turns == [] and r.language == "en"
    b = _img(2)
    r2 = EditRequest(sample_id="s", image=None, images=[a, b], instruction="x")
    assert r2.image is a
    r3 = dataclasses.replace(r2, image=b)  # code written before `images`: the new image is the first
    assert r3.images == [b, b] and r3.image is b
    # an editor written before the extension declares nothing, takes one image, and its description
    # (part of run spec hashes) is unchanged
    assert IdentityEditor.supports == frozenset() and "supports" not in IdentityEditor().describe()
    assert unsupported_reason(IdentityEditor(), 1, 1) is None
    assert "multi_image" in unsupported_reason(IdentityEditor(), 2, 1)
    assert "multi_turn" in unsupported_reason(IdentityEditor(), 1, 3)


class Brighten(Editor):
    """Adds 10 per turn; fails on the turn whose text is "fail"."""

    supports = frozenset({"multi_turn"})

    def edit(self, requests):
        out = []
        for r in requests:
            if r.instruction == "fail":
                out.append(EditResult.failure("cannot"))
            else:
                v = r.image.getpixel((0, 0))[0]
                out.append(EditResult(image=_img(v + 10), timings={"edit_seconds": 1.0}))
        return out


class WholeCase(Brighten):
    handles_turns = True

    def edit(self, requests):
        return [EditResult(image=_img(len(r.turns))) for r in requests]


def test_runner_driven_turns_feed_each_output_to_the_next():
    ed = Brighten()
    outcome = drive_turns(ed, EditRequest(sample_id="c", image=_img(0), instruction="a"), ["a", "b", "c"], ed.edit)
    assert [t.image.getpixel((0, 0))[0] for t in outcome.turns] == [10, 20, 30]
    assert outcome.final.image.getpixel((0, 0))[0] == 30 and outcome.final.timings["edit_seconds"] == 3.0


def test_failed_turn_fails_the_case_and_keeps_done_turns():
    ed = Brighten()
    outcome = drive_turns(ed, EditRequest(sample_id="c", image=_img(0), instruction="a"), ["a", "fail", "c"], ed.edit)
    assert outcome.final.status == "error" and outcome.final.error.startswith("turn 2/3")
    assert len(outcome.turns) == 2 and outcome.turns[0].status == "ok"


def test_editor_that_handles_turns_gets_them_at_once():
    ed = WholeCase()
    seen = []

    def edit(reqs):
        seen.extend(reqs)
        return ed.edit(reqs)

    outcome = drive_turns(ed, EditRequest(sample_id="c", image=_img(0), instruction="a"), ["a", "b"], edit)
    assert len(seen) == 1 and seen[0].turns == ["a", "b"] and outcome.turns == []
    assert outcome.final.image.getpixel((0, 0))[0] == 2


class FloatScale(Brighten):
    """Returns its image as floats: in [0, 1] (valid), or on the 0..255 scale on the turn "bad"."""

    def edit(self, requests):
        out = []
        for r in requests:
            a = np.asarray(r.image, dtype=np.float32)
            out.append(EditResult(image=a if r.instruction == "bad" else a / 255.0))
        return out


def test_a_turn_outside_the_valid_range_ends_the_case_unclipped():
    ed = FloatScale()
    seen = []

    def edit(reqs):
        seen.extend(r.instruction for r in reqs)
        return ed.edit(reqs)

    outcome = drive_turns(ed, EditRequest(sample_id="c", image=_img(7), instruction="a"), ["a", "bad", "c"], edit)
    assert seen == ["a", "bad"]  # never fed (clipped) to turn 3
    assert outcome.final.status == Status.OUT_OF_RANGE and outcome.final.image is None
    assert outcome.final.error.startswith("turn 2/3") and "nothing was clipped" in outcome.final.error
    assert [t.status for t in outcome.turns] == [Status.OK, Status.OUT_OF_RANGE] and outcome.turns[1].image is None
    # the valid turn: floats in [0, 1] as 8-bit RGB, round(255 x)
    assert outcome.turns[0].image.mode == "RGB" and outcome.turns[0].image.getpixel((0, 0)) == (7, 7, 7)
