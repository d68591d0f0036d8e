"""Test session setup: an empty, offline model hub and dataset cache in a temporary folder.

The environment is set at import time, before any Hugging Face library reads it."""
from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

import pytest

_ROOT = Path(tempfile.mkdtemp(prefix="ciebench-tests-"))
# The tiny models published here take ~170 MB per session: removed when the session's process ends.
atexit.register(shutil.rmtree, _ROOT, ignore_errors=True)
os.environ["HF_HOME"] = str(_ROOT / "hf")
os.environ["HF_HUB_CACHE"] = str(_ROOT / "hf" / "hub")
os.environ["HF_DATASETS_CACHE"] = str(_ROOT / "hf" / "datasets")
os.environ["TORCH_HOME"] = str(_ROOT / "torch")
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
Path(os.environ["HF_HUB_CACHE"]).mkdir(parents=True, exist_ok=True)

SHARED_CIEBENCH = Path(__file__).resolve().parents[1].parent / "shared" / "ciebench"


@pytest.fixture(scope="session")
def ciebench_root() -> Path:
    """The real CIEBench release beside the checkout (../shared/ciebench); tests skip cleanly without it."""
    if not (SHARED_CIEBENCH / "updated_data.json").exists():
        pytest.skip(f"the real CIEBench release is not at {SHARED_CIEBENCH}")
    return SHARED_CIEBENCH


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models run far faster on one thread, above all when other processes share the CPU.
    Use with `pytestmark = pytest.mark.usefixtures("one_torch_thread")`."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
