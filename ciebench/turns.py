"""Cases beyond one image and one instruction: which an editor can take, and driving multi-turn cases.

A multi-turn case (RISEBench++ hybrid cases, 3 to 5 edits in sequence) runs as one request per turn,
each fed the previous turn's output, unless the editor sets `handles_turns` and gets every turn at
once. Every intermediate image is returned so the run can record it. Each turn's output passes the
runs' one output check (`ciebench.images.check_image`): an out-of-range or unusable turn ends the case
with that status, never clipped into the next turn's input.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Callable

from .editor import EditRequest, EditResult, Editor
from .images import check_image
from .status import Status

MULTI_IMAGE = "multi_image"
MULTI_TURN = "multi_turn"


def unsupported_reason(editor: Editor, n_images: int, n_turns: int) -> str | None:
    """Why `editor` cannot take a case with `n_images` inputs and `n_turns` turns (None: it can)."""
    supports = getattr(editor, "supports", frozenset())
    if n_images > 1 and MULTI_IMAGE not in supports:
        return f"case has {n_images} input images; editor {editor.display_name()} does not declare multi_image"
    if n_turns > 1 and MULTI_TURN not in supports:
        return f"case has {n_turns} turns; editor {editor.display_name()} does not declare multi_turn"
    return None


@dataclass
class TurnOutcome:
    final: EditResult
    # one per turn driven (empty when the editor handled them); an `ok` turn's image is the checked RGB
    # PIL image, a turn whose output failed the check carries its status (out_of_range, invalid) instead
    turns: list[EditResult] = field(default_factory=list)


def drive_turns(editor: Editor, request: EditRequest, turns: list[str],
                edit: Callable[[list[EditRequest]], list[EditResult]]) -> TurnOutcome:
    """Run a case of several turns. `edit` calls the editor on a batch (the runner's isolated call).

    Turn 1 gets the case's images; each later turn gets the previous output as its only image. A failed
    turn, or one whose output fails `check_image`, ends the case as failed with that turn's status,
    naming the turn; the turns already done are kept in the outcome."""
    if getattr(editor, "handles_turns", False):
        whole = dataclasses.replace(request, instruction=turns[0], turns=list(turns))
        return TurnOutcome(final=edit([whole])[0])
    done: list[EditResult] = []
    current = request
    for k, text in enumerate(turns):
        meta = {**request.meta, "turn": k, "n_turns": len(turns)}
        current = dataclasses.replace(current, instruction=text, meta=meta)
        result = edit([current])[0]
        if result.status != Status.OK or result.image is None:
            done.append(result)
            error = result.error or "editor returned no image"
            return TurnOutcome(final=EditResult.failure(f"turn {k + 1}/{len(turns)}: {error}"), turns=done)
        image, status, problem = check_image(result.image)
        if problem:
            done.append(dataclasses.replace(result, image=None, status=status, error=problem))
            return TurnOutcome(final=EditResult(image=None, status=status, error=f"turn {k + 1}/{len(turns)}: {problem}"),
                               turns=done)
        done.append(dataclasses.replace(result, image=image))
        current = dataclasses.replace(current, image=image, images=[image])
    last = done[-1]
    return TurnOutcome(final=EditResult(image=last.image, trace=last.trace,
                                        timings={"edit_seconds": sum(r.timings.get("edit_seconds", 0.0) for r in done)}),
                       turns=done)

