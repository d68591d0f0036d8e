"""Versions of everything that can change a number, recorded with every result."""
from __future__ import annotations

import platform
from importlib import metadata

PACKAGES = ("ciebench", "torch", "torchvision", "torchmetrics", "lpips", "open_clip_torch", "transformers",
            "diffusers", "datasets", "numpy", "pillow", "scikit-image", "pandas")


def package_versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "not installed"
    return found
