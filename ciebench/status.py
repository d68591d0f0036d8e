"""Row statuses: the one vocabulary of what happened to a (sample, seed), shared by the runner, the
scorer, the leaderboard and the gallery.

A `str` enum, so `Status.OK == "ok"` and the values written to samples.csv, samples.jsonl and the run
records stay the plain strings they have always been.
"""
from __future__ import annotations

from enum import Enum


class Status(str, Enum):
    OK = "ok"
    # generation (records/<stem>.json)
    EDIT_ERROR = "edit_error"          # the editor raised or reported a failure
    INVALID = "invalid"                # the editor returned NaN/inf pixels, a wrong size or shape
    OUT_OF_RANGE = "out_of_range"      # float pixels outside [0, 1] or integers outside [0, 255]
    RECORD_ERROR = "record_error"      # the result could not be recorded (e.g. a trace that is not JSON)
    REFUSED = "refused"                # an image API's content filter or a pipeline's safety checker declined the edit
    UNSUPPORTED = "unsupported"        # the editor does not take this case (several images or turns)
    INPUT_ERROR = "input_error"        # a benchmark case's input image cannot be read
    # scoring
    MISSING = "missing"                # no prediction file / not generated
    CORRUPT = "corrupt"                # the prediction file does not decode
    METRIC_ERROR = "metric_error"      # a metric failed on a readable prediction
    UNKNOWN_SAMPLE = "unknown_sample"  # a prediction for an id the dataset does not have
    JUDGE_ERROR = "judge_error"        # a benchmark judge gave no usable verdict (retried on the next run)
    NOT_APPLICABLE = "not_applicable"  # a metric that the case cannot define (no ground truth, another aspect ratio)

    # Written as its value everywhere (CSV, JSON, f-strings), never as "Status.OK".
    __str__ = str.__str__
    __format__ = str.__format__

    @classmethod
    def describe(cls) -> dict[str, str]:
        return {s.value: _MEANING[s] for s in cls}


_MEANING = {
    Status.OK: "scored",
    Status.EDIT_ERROR: "the editor failed on this sample",
    Status.INVALID: "the editor returned an unusable image (NaN/inf, wrong size or shape)",
    Status.OUT_OF_RANGE: "the editor returned pixel values outside the valid range (float outside [0, 1], "
                         "integers outside [0, 255]); nothing is clipped",
    Status.RECORD_ERROR: "the result could not be recorded (its trace is kept as text)",
    Status.REFUSED: "the image API refused the edit or filtered its result (or a diffusers pipeline's safety checker "
                    "flagged it): its own status, never an image",
    Status.UNSUPPORTED: "the editor does not take this case (several input images or turns); never scored as a "
                        "failure of the editor",
    Status.INPUT_ERROR: "an input image of the benchmark case cannot be read",
    Status.MISSING: "no prediction for this sample",
    Status.CORRUPT: "the prediction file cannot be decoded",
    Status.METRIC_ERROR: "a metric failed on this prediction",
    Status.UNKNOWN_SAMPLE: "a prediction for an id that is not in the dataset",
    Status.JUDGE_ERROR: "the benchmark's judge gave no usable verdict (counted, retried on the next run)",
    Status.NOT_APPLICABLE: "the metric is not defined for this case (e.g. region metrics of a benchmark case without "
                           "a ground-truth image, or one whose aspect ratio differs from the source's); never a number",
}

# What an editor reports for its own failure (`EditResult.status`, kept as such in records/<stem>.json);
# its row status is Status.EDIT_ERROR. Besides it an editor reports Status.OK, Status.REFUSED or
# Status.UNSUPPORTED.
EDITOR_FAILURE = "error"


class VerdictStatus(str, Enum):
    """The `<metric>_status` column of a judged metric (`idcs_status`): what became of its verdict."""

    OK = "ok"                  # a score
    ERROR = "error"            # the judge gave no usable verdict (the reason in `idcs_error`, `idcs_failure`)
    NOT_JUDGED = "not_judged"  # never asked: no usable prediction, or stopped at --max-cost (a rerun judges it)

    __str__ = str.__str__
    __format__ = str.__format__


# Generation statuses that are failures of the editor's output (as opposed to a missing file).
GENERATION_FAILURES = frozenset({Status.EDIT_ERROR, Status.INVALID, Status.OUT_OF_RANGE, Status.RECORD_ERROR})
