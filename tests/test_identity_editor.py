"""The `identity` editor: deterministic by design, so the seed is ignored (both directions of the seed
contract collapse to "always the source")."""
from __future__ import annotations

import numpy as np
from PIL import Image

from ciebench.editor import EditRequest
from ciebench.editor_config import build_editor


def test_identity_returns_the_source_for_every_seed():
    source = Image.fromarray(np.random.default_rng(0).integers(0, 255, (30, 40, 3), dtype=np.uint8))
    editor = build_editor("identity")
    results = editor.edit([EditRequest(str(seed), source, "make it red", seed=seed) for seed in (1, 1, 2, 99)])
    expected = np.asarray(source)
    for result in results:
        assert result.status == "ok" and result.image is not source  # a copy: the caller's image stays theirs
        assert np.array_equal(np.asarray(result.image), expected)
