"""The one reading of a `--device` value: checked before any model loads, so a machine without the
asked-for accelerator fails in one line instead of deep inside a model's `.to()`."""
from __future__ import annotations

import re

from .errors import EnvironmentProblem, UsageError

_SPEC = re.compile(r"^(cpu|cuda|mps)(?::(\d+))?$")


def resolve_device(spec: str):
    """`cpu`, `cuda`, `cuda:N` or `mps` as a `torch.device` that this machine has."""
    import torch

    match = _SPEC.match(str(spec).strip())
    if match is None or (match.group(1) != "cuda" and match.group(2) is not None):
        raise UsageError(f"--device {spec!r} is not a device", hint="use cpu, cuda, cuda:N or mps")
    kind, index = match.group(1), match.group(2)
    if kind == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise EnvironmentProblem(f"--device {spec}: this machine has no CUDA device (torch {torch.__version__})",
                                     hint="use --device cpu, or run on a machine with an NVIDIA GPU")
        if index is not None and int(index) >= count:
            raise EnvironmentProblem(f"--device {spec}: this machine has {count} CUDA device(s), numbered from 0")
    if kind == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise EnvironmentProblem(f"--device {spec}: MPS is not available on this machine")
    return torch.device(str(spec).strip())
