"""Judging benchmark cases: official prompts + judge-input preparation + reply parsing.

The judge protocol of a benchmark is (prompts, image preparation, parser, aggregation); this module
runs the first three through the shared LLM client (`ciebench.llm`) and returns per-dimension scores
with provenance. Image preparation follows the official scripts: shrink (never enlarge) to fit
768 x 768, RGB, JPEG. The text goes before or after the images as each script sends it, and no
temperature is sent where a script sets none. differs: the shared client sends the decoded JPEG
pixels as PNG (the same pixels the judge would decode); the record says so.
"""
from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from ciebench.llm.client import LLMClient, LLMConfig, make_client
from ciebench.llm.prompts import PromptTemplate

from .base import Benchmark, Case, JudgeCall
from .prompts import PromptSet

JUDGE_IMAGE_SIDE = 768


def prepare_judge_image(path: Path, side: int = JUDGE_IMAGE_SIDE, quality: int | None = None) -> Image.Image:
    """The image as RISEBench's scripts send it: fit within side x side keeping the aspect ratio (PIL
    thumbnail: never enlarged; side 0 keeps the size), RGB, JPEG-encoded (PIL's default quality unless
    `quality`), then decoded."""
    with Image.open(path) as im:
        im = im.convert("RGB")
        if side:
            im.thumbnail((side, side))
        return jpeg_roundtrip(im, quality)


def jpeg_roundtrip(image: Image.Image, quality: int | None = None) -> Image.Image:
    """`image` JPEG-encoded (PIL's default quality unless `quality`) and decoded again: the pixels a
    judge sees when a script sends JPEG."""
    buf = io.BytesIO()
    image.save(buf, format="JPEG", **({"quality": quality} if quality else {}))
    buf.seek(0)
    out = Image.open(buf)
    out.load()
    return out


@dataclass
class CaseJudgement:
    dims: dict[str, float | None]
    replies: dict[str, str | None] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)


class BenchJudge:
    """Judges cases of one benchmark with one client per judge role ("main", "quality")."""

    def __init__(self, benchmark: Benchmark, prompts: PromptSet, configs: dict[str, LLMConfig],
                 cache_dir: str | Path | None = None):
        self.benchmark = benchmark
        self.prompts = prompts
        benchmark.bind_prompts(prompts)
        self.clients: dict[str, LLMClient] = {role: make_client(cfg, cache_dir) for role, cfg in configs.items()}

    def client(self, role: str) -> LLMClient:
        return self.clients.get(role) or self.clients["main"]

    def judge(self, case: Case, output: Path, refresh: bool = False) -> CaseJudgement:
        """The case's scores, one judge call per official question. `refresh`: every call goes to the judge
        even when the LLM cache holds its reply; for a case whose last verdict was a judge error, whose
        cached replies (the cache keeps any reply that decodes, e.g. "I cannot score this") would give the
        same error again. The official scripts make no retry within a call, so none is added here."""
        raw: dict[str, float | None] = {}
        replies: dict[str, str | None] = {}
        errors: dict[str, str] = {}
        for call in self.benchmark.judge_calls(case, output):
            text, error = self._ask(case, call, refresh)
            replies[call.dimension] = text
            where = f"{self.benchmark.name} case {case.id} ({call.dimension})"
            try:
                scores = self.benchmark.parse_reply(call, text) if text is not None else {call.dimension: None}
            except ValueError as exc:  # a parser that can tell what is wrong with the reply
                scores, error = {call.dimension: None}, f"{where}: {exc}"
            if not error and text is not None and any(v is None for v in scores.values()):
                error = f"{where}: no score found in the judge's reply"
            if error:
                errors[call.dimension] = error
            raw.update(scores)
        dims = self.benchmark.map_scores(case, raw)
        for dim, why in self.benchmark.off_scale(dims).items():
            dims[dim] = None
            errors.setdefault(dim, f"case {case.id}: {why}")
        return CaseJudgement(dims=dims, replies=replies, errors=errors)

    def _ask(self, case: Case, call: JudgeCall, refresh: bool = False) -> tuple[str | None, str | None]:
        what = f"{self.benchmark.name} case {case.id} ({call.dimension}, {call.prompt})"
        text = self.benchmark.render_prompt(self.prompts, call, what)
        # The official text goes in as one variable: the shared template engine inserts it verbatim
        # and never scans it, so braces in an official prompt reach the judge unchanged.
        template = PromptTemplate(name=f"{self.benchmark.name}-{call.prompt}".replace("+", "p"), version=1,
                                  text="{{official_prompt}}")
        try:
            images = self.benchmark.judge_images(case, call)
        except OSError as exc:
            return None, f"{what}: cannot read judge image: {exc}"
        reply = self.client(call.role).complete(template, {"official_prompt": text}, images=images,
                                                text_first=call.text_first or self.benchmark.text_first,
                                                refresh=refresh)
        if reply.status != "ok":
            return None, f"{what}: {reply.error}"
        return reply.text, None

    def provenance(self) -> dict[str, Any]:
        return {"prompts": self.prompts.asset.provenance(),
                **({"more_prompts": [a.provenance() for a in self.prompts.more]} if self.prompts.more else {}),
                "published_judges": self.benchmark.judges,  # temperature None: the script sets none
                "judges": {role: {"model": c.config.model, "model_id": c.model_id, "temperature": c.config.temperature,
                                  "served_models": c.served_models, "stats": c.stats}
                           for role, c in self.clients.items()},
                "image_prep": getattr(self.benchmark, "judge_image_prep", "file pixels, RGB"),
                "wire": ("text before the images" if self.benchmark.text_first else "as each judge call says")
                         + ", PNG-encoded pixels (shared client)"}
