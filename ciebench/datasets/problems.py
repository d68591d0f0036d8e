"""Problems found while reading a dataset: one line each, naming the sample and the file."""
from __future__ import annotations

from dataclasses import dataclass

from ciebench.errors import DataError


class DatasetError(DataError):
    """A dataset cannot be used as asked (unknown spec, unreadable annotation file, strict load)."""


@dataclass(frozen=True)
class Problem:
    severity: str  # "error": the sample is unusable and skipped; "warning": usable, but look
    sample_id: str | None
    file: str | None
    message: str

    def __str__(self) -> str:
        where = []
        if self.sample_id is not None:
            where.append(f"sample {self.sample_id}")
        if self.file:
            where.append(self.file)
        prefix = f"{self.severity.upper()}: " + (": ".join(where) + ": " if where else "")
        return prefix + self.message


# What scoring does with a sample that has no mask (`ciebench.metrics.align`: no region is excluded,
# no CLIP box exists; `ciebench.metrics.locality`: the edit region is empty). Said wherever a loader
# accepts a sample without one, so a forgotten mask never passes as a whole-image score unseen.
NO_MASK = ("sample has no mask: PSNR, SSIM, LPIPS and MSE then cover the whole image (not only the unchanged "
           "region), CLIP and locality recall are NaN, and every changed pixel counts against locality precision")


def errors(problems: list[Problem]) -> list[Problem]:
    return [p for p in problems if p.severity == "error"]
