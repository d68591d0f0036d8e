"""`rewrite:EDITOR`: a fixed reference rewriter turns an implicit instruction into an explicit one, then
EDITOR runs on the rewritten instruction (the "rewrite" track).

    ciebench evaluate --editor rewrite:qwen-image-edit --editor-arg rewriter_model=gpt-4o-mini ...

The rewriter is a versioned, hashed prompt template (`ciebench/llm/prompts/rewrite_instruction.v<N>.txt`)
and an LLM configuration (the judge layer's `LLMConfig`: any OpenAI-compatible server or a local
transformers model), given the source image and the instruction; it answers JSON `{"instruction": ...}`.
The wrapped editor's options are accepted as they are; the rewriter's are the `rewriter_*` options. The
template's hash is part of the editor version, and the options are part of the config, so both decide
the config hash; so does the inner editor's resolved config (`describe()["inner"]`, see
`ciebench.spec.editor_config`), which the wrapper's own config holds only as given. Replies are cached under `cache_root()/llm` (a rerun asks nothing). The trace holds the
original and the rewritten instruction, the rewriter's identity and the inner editor's trace.

The wrapper takes the cases the wrapped editor takes: its `supports` and `handles_turns` are the inner
editor's (an editor such as `qwen-image-edit` decides them per instance, from its pipeline). A
multi-image request reaches the inner editor with all its images; the rewriter sees the source image.
A request holding every turn (`handles_turns`) has each turn rewritten, since the inner editor reads
`turns`, not only `instruction`.
"""
from __future__ import annotations

import dataclasses
import threading
from typing import Any, ClassVar

from .cache import cache_root
from .editor import Editor, EditorConfig, EditRequest, EditResult

PREFIX = "rewrite:"
TEMPLATE = "rewrite_instruction"
TEMPLATE_VERSION = 1
SCHEMA = {"title": "rewritten_instruction", "type": "object", "additionalProperties": False,
          "required": ["instruction"], "properties": {"instruction": {"type": "string", "minLength": 1}}}

# The rewriter's options, added to the wrapped editor's: (name, type, default).
REWRITER_FIELDS = (
    ("rewriter_backend", str, "openai"),
    ("rewriter_model", "str | None", None),  # None: the LLMConfig default of the back end
    ("rewriter_base_url", "str | None", None),
    ("rewriter_api_key_env", "str | None", "OPENAI_API_KEY"),
    ("rewriter_temperature", float, 0.0),
    ("rewriter_max_tokens", int, 256),
    ("rewriter_with_image", bool, True),
    ("rewriter_template_version", int, TEMPLATE_VERSION),
)
_CLASSES: dict[type, type] = {}
_LOCK = threading.Lock()


def rewrite_editor_class(inner: type[Editor]) -> type[Editor]:
    """The `rewrite:` wrapper class over `inner` (one per inner class)."""
    with _LOCK:
        if inner not in _CLASSES:
            _CLASSES[inner] = _make(inner)
        return _CLASSES[inner]


def _make(inner: type[Editor]) -> type[Editor]:
    from ciebench.llm import get_template

    inner_config = inner.Config if dataclasses.is_dataclass(inner.Config) else EditorConfig
    # A subclass of the inner config, so option types resolve in the inner editor's own module.
    config = dataclasses.make_dataclass(
        f"Rewrite{inner_config.__name__}",
        [(name, typ, dataclasses.field(default=default)) for name, typ, default in REWRITER_FIELDS],
        bases=(inner_config,), frozen=True, namespace={"__module__": __name__})
    template = get_template(TEMPLATE, TEMPLATE_VERSION)
    return type(f"Rewrite{inner.__name__}", (RewriteEditor,), {
        "__module__": __name__, "inner_cls": inner, "Config": config,
        "name": f"{PREFIX}{inner.display_name()}", "presets": dict(inner.presets),
        # the class-level declaration; `__init__` takes the inner instance's, which may differ per preset
        "supports": inner.supports, "handles_turns": inner.handles_turns, "requires": (
            *inner.requires, "llm: an API key or a local model (the rewriter)"),
        "version": f"{inner.version}+rewrite{TEMPLATE_VERSION}.{template.hash[:8]}"})


class RewriteEditor(Editor):
    track = "rewrite"
    inner_cls: ClassVar[type[Editor]]

    def __init__(self, config=None, **options: Any):
        from ciebench.llm import LLMConfig, get_template

        super().__init__(config, **options)
        cfg = self.config
        inner_fields = [f.name for f in dataclasses.fields(self.inner_cls.Config)] \
            if dataclasses.is_dataclass(self.inner_cls.Config) else []
        inner_options = {name: getattr(cfg, name) for name in inner_fields}
        self.inner = self.inner_cls(**inner_options) if inner_options else self.inner_cls()
        self.oracle_mask = self.inner.oracle_mask
        # the runner asks the wrapper which cases it takes: answer for the editor that does the editing
        self.supports = self.inner.supports
        self.handles_turns = self.inner.handles_turns
        self.llm_config = LLMConfig(backend=cfg.rewriter_backend, model=cfg.rewriter_model,
                                    base_url=cfg.rewriter_base_url, api_key_env=cfg.rewriter_api_key_env,
                                    temperature=cfg.rewriter_temperature, max_tokens=cfg.rewriter_max_tokens)
        self.template = get_template(TEMPLATE, cfg.rewriter_template_version)
        self._client = None

    def to(self, device: str) -> "RewriteEditor":
        super().to(device)
        self.inner.to(device)
        return self

    def required_assets(self) -> list:
        """The wrapped editor's files and the rewriter LLM's model or endpoint."""
        return self.inner.required_assets() + self.llm_config.required_assets(used_by=f"editor {self.name}: rewriter")

    def rewriter(self) -> dict[str, Any]:
        return {"template": self.template.id, "template_hash": self.template.hash, "llm": self.llm_config.model_id,
                "llm_config_hash": self.llm_config.hash, "with_image": self.config.rewriter_with_image}

    def edit(self, requests: list[EditRequest]) -> list[EditResult]:
        from ciebench.llm import LLMCall, make_client

        if self._client is None:
            self._client = make_client(self.llm_config, cache_dir=cache_root() / "llm")
        # one rewrite per instruction: each turn of a whole-case request, else the request's instruction
        texts = [list(r.turns) or [r.instruction] for r in requests]
        calls = [LLMCall(self.template, {"instruction": text},
                         images=[r.image] if self.config.rewriter_with_image else (), schema=SCHEMA)
                 for r, request_texts in zip(requests, texts) for text in request_texts]
        flat = iter(self._client.complete_many(calls))
        results: list[EditResult | None] = [None] * len(requests)
        todo: list[tuple[int, EditRequest, list[Any]]] = []
        for i, (r, request_texts) in enumerate(zip(requests, texts)):
            replies = [next(flat) for _ in request_texts]
            trace = {"instruction": r.instruction, "rewriter": self.rewriter()}
            failed = next((reply for reply in replies if not reply.ok), None)
            if failed is not None:
                results[i] = EditResult.failure(f"sample {r.sample_id}: the rewriter failed: {failed.error}", trace=trace)
                continue
            rewritten = [reply.parsed["instruction"].strip() for reply in replies]
            # `replace` keeps `images`: a multi-image case reaches the inner editor whole
            todo.append((i, dataclasses.replace(r, instruction=rewritten[0], turns=rewritten if r.turns else []), replies))
        inner_results = self.inner.edit([r for _, r, _ in todo]) if todo else []
        for (i, rewritten, replies), result in zip(todo, inner_results):
            inner_trace = result.trace or {}
            reply_info = [{"cached": reply.cached, "attempts": reply.attempts, "usage": reply.usage} for reply in replies]
            result.trace = {"instruction": requests[i].instruction, "rewritten_instruction": rewritten.instruction,
                            "rewriter": self.rewriter(), "rewriter_reply": reply_info[0],
                            "inner": {k: v for k, v in inner_trace.items() if k != "artifacts"}}
            if rewritten.turns:
                result.trace["turns"] = [{"instruction": text, "rewritten_instruction": new, "rewriter_reply": info}
                                         for text, new, info in zip(requests[i].turns, rewritten.turns, reply_info)]
            if "artifacts" in inner_trace:
                result.trace["artifacts"] = inner_trace["artifacts"]
            results[i] = result
        return results  # type: ignore[return-value]

    def close(self) -> None:
        self.inner.close()

    def describe(self) -> dict[str, Any]:
        out = super().describe()
        out["rewriter"] = self.rewriter()
        out["inner"] = self.inner.describe()
        return out
