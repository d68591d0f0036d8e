"""`identity`: returns the source unchanged. The preservation upper bound and the reasoning lower
bound that every leaderboard should show. Deterministic by design: the request's seed is ignored,
so every seed of a run gives the source itself."""
from __future__ import annotations

from ciebench.editor import EditRequest, EditResult, Editor


class IdentityEditor(Editor):
    name = "identity"
    version = "1"

    def required_assets(self) -> list:
        return []  # loads nothing

    def edit(self, requests: list[EditRequest]) -> list[EditResult]:
        return [EditResult(image=r.image.copy()) for r in requests]
