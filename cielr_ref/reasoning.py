"""The CIELR reasoning chain for one sample, written as a generator that asks for what it needs.

    chain = ReasoningChain(instruction, image, segments, depth, settings)
    gen = chain.run()
    request = next(gen)            # an `Ask` (one LLM / VLM call) or a `Detect` (a labeller run)
    request = gen.send(answer)     # ... until StopIteration carries the `ChainResult`

The editor's scheduler drives the chains of many samples at once: it sends the `Ask`s of all samples
to the LLM client concurrently and batches the `Detect`s through the labeller, while each chain reads
top to bottom like the paper's pipeline:

1. object list (VLM, sees the image) -> labels for the detector -> SSR version 1;
2. plan: the instruction split into ordered steps, each with its edit type (remove / replace / add /
   recolor);
3. per step, while the step may still build SSR versions (`max_ssr_versions`, default 2):
   sufficiency check -> enough: go on; "semantic": the new labels are added to the detector's queries
   and only the labeller re-runs (segments and depth are reused) -> next version; "spatial": the LLM
   chooses an operator tree (operators.py), evaluated on the SSR -> next version with the new region;
   "other": recorded (the released code asked a question it never used);
4. region selection (ids must exist), then the rewrite into an explicit action (schema fields only).

Every answer is JSON checked against a schema by the client and validated here against the SSR (a
rejected answer is retried by the client; a call that still fails ends the chain with a
`ChainFailure` naming its stage). Steps after the first work on the SSR carried over from the
previous step (the edited regions relabelled or dropped); the executor applies each step to the
previous step's output image.
"""
from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Generator, Sequence

import numpy as np
from PIL import Image

from ciebench.llm import LLMReply, PromptTemplate, get_template

from . import operators
from .labeller import normalise_labels
from .ssr import SSR, Detection, build_ssr, relabel

EDIT_TYPES = ("remove", "replace", "add", "recolor")
MISSING = ("none", "semantic", "spatial", "other")
MAX_TEXT = 200  # characters kept of any free-text field the model returns


# ----------------------------------------------------------------------------------- schemas
def _obj(title: str, props: dict[str, Any]) -> dict[str, Any]:
    return {"title": title, "type": "object", "additionalProperties": False, "required": list(props),
            "properties": props}


OBJECTS_SCHEMA = _obj("cielr_objects", {"objects": {"type": "array", "items": {"type": "string"}}})
PLAN_SCHEMA = _obj("cielr_plan", {"steps": {"type": "array", "items": _obj("step", {
    "instruction": {"type": "string"}, "edit_type": {"type": "string", "enum": list(EDIT_TYPES)}})}})
SUFFICIENCY_SCHEMA = _obj("cielr_sufficiency", {
    "sufficient": {"type": "boolean"}, "missing": {"type": "string", "enum": list(MISSING)},
    "new_labels": {"type": "array", "items": {"type": "string"}}, "reason": {"type": "string"}})
SELECT_SCHEMA = _obj("cielr_select", {"region_ids": {"type": "array", "items": {"type": "integer"}},
                                      "reason": {"type": "string"}})
ACTION_SCHEMA = _obj("cielr_action", {
    "action": {"type": "string", "enum": list(EDIT_TYPES)}, "target": {"type": "string"},
    "new_object": {"type": ["string", "null"]}, "color": {"type": ["string", "null"]},
    "explicit": {"type": "string"}})
SPATIAL_SCHEMA = operators.spatial_schema()

TEMPLATES = {stage: f"cielr_{stage}" for stage in ("objects", "plan", "sufficiency", "spatial", "select", "action")}


def clean_text(value: Any, limit: int = MAX_TEXT) -> str:
    """A model-written string as plain text: control characters removed, whitespace collapsed, cut."""
    text = re.sub(r"[\x00-\x1f\x7f]", " ", str(value or ""))
    return " ".join(text.split())[:limit]


# ----------------------------------------------------------------------------------- requests
@dataclass
class Ask:
    """One LLM (`client="llm"`) or VLM (`client="vlm"`) call; the answer sent back is an `LLMReply`."""

    stage: str
    client: str
    template: PromptTemplate
    variables: dict[str, Any]
    schema: dict[str, Any]
    validate: Callable[[Any], str | None] | None = None
    images: tuple[Image.Image, ...] = ()


@dataclass
class Detect:
    """A labeller run on this sample's image; the answer sent back is a list of `Detection`s."""

    labels: list[str]


class ChainFailure(Exception):
    def __init__(self, stage: str, message: str):
        super().__init__(f"{stage}: {message}")
        self.stage, self.message = stage, message


@dataclass
class Settings:
    max_objects: int = 30
    max_steps: int = 3
    max_ssr_versions: int = 2
    max_labels: int = 64
    min_overlap: float = 0.0
    merge_unknown: bool = True
    remove_prompt: str = "background"
    remove_negative_prompt: str = "object, person, animal, text, watermark"
    negative_prompt: str = ""


@dataclass
class StepResult:
    instruction: str
    edit_type: str
    region_ids: list[int]
    action: dict[str, Any]
    prompt: str
    negative_prompt: str
    mask: np.ndarray
    ssr_version: int
    updates: list[dict[str, Any]] = field(default_factory=list)
    checks: list[dict[str, Any]] = field(default_factory=list)

    def to_trace(self) -> dict[str, Any]:
        return {"instruction": self.instruction, "edit_type": self.edit_type, "region_ids": self.region_ids,
                "action": self.action, "prompt": self.prompt, "negative_prompt": self.negative_prompt,
                "ssr_version": self.ssr_version, "updates": self.updates, "sufficiency": self.checks,
                "mask_px": int(self.mask.sum())}


@dataclass
class ChainResult:
    objects: list[str]
    plan: list[dict[str, str]]
    steps: list[StepResult]
    ssrs: list[SSR]  # every version built, in order


# ----------------------------------------------------------------------------------- the chain
class ReasoningChain:
    def __init__(self, instruction: str, image: Image.Image, segments: Sequence[np.ndarray],
                 depth: np.ndarray | None, settings: Settings = Settings()):
        self.instruction = instruction
        self.image = image
        self.segments = list(segments)
        self.depth = depth
        self.s = settings
        self.exchanges: list[dict[str, Any]] = []
        self.ssrs: list[SSR] = []
        self.objects: list[str] = []
        self.edits: list[tuple[np.ndarray, str, str | None, str]] = []  # earlier steps: (mask, action, label, note)
        self.stage = "start"

    # The generator the scheduler drives.
    def run(self) -> Generator[Ask | Detect, Any, ChainResult]:
        s = self.s
        self.stage = "objects"
        parsed = yield from self._ask("objects", "vlm", {"max_objects": s.max_objects}, OBJECTS_SCHEMA,
                                      _check_objects, images=(self.image,))
        self.objects = normalise_labels(parsed["objects"], limit=min(s.max_objects, s.max_labels))
        # The segments and depth may be filled in by the scheduler while the first call is in flight.
        if not self.segments:
            raise ChainFailure("segmentation", "the segmenter found no regions in this image")

        self.stage = "ssr"
        detections = yield Detect(list(self.objects))
        ssr = self._add(build_ssr(self.segments, detections, self.depth, version=1, queried_labels=self.objects,
                                  min_overlap=s.min_overlap, merge_unknown=s.merge_unknown,
                                  history=["v1: labels from the object list"]))

        self.stage = "plan"
        parsed = yield from self._ask("plan", "llm", {"objects": _json(self.objects), "instruction": self.instruction,
                                                      "max_steps": s.max_steps}, PLAN_SCHEMA,
                                      lambda p: _check_plan(p, s.max_steps))
        plan = [{"instruction": clean_text(st["instruction"], 400), "edit_type": st["edit_type"]}
                for st in parsed["steps"]]

        steps: list[StepResult] = []
        for k, step in enumerate(plan):
            self.stage = f"step {k + 1}"
            result, ssr = yield from self._step(k, step["instruction"], step["edit_type"], ssr)
            steps.append(result)
            if k + 1 < len(plan):
                edit = (result.mask, result.edit_type, result.action.get("new_object") or result.action.get("target"),
                        f"step {k + 1}: {result.action['explicit']}")
                self.edits.append(edit)
                ssr = ssr.after_edit(*edit)
        return ChainResult(self.objects, plan, steps, self.ssrs)

    # ------------------------------------------------------------------------------- one step
    def _step(self, k: int, text: str, edit_type: str, ssr: SSR):
        s = self.s
        updates: list[dict[str, Any]] = []
        checks: list[dict[str, Any]] = []
        builds = 1  # the SSR this step starts from counts as its first version
        while builds < s.max_ssr_versions:
            check = yield from self._ask(
                "sufficiency", "llm",
                {"regions": _regions(ssr), "objects": _json(self.objects), "labels": _json(ssr.queried_labels),
                 "step": text, "edit_type": edit_type},
                SUFFICIENCY_SCHEMA, lambda p, ssr=ssr: _check_sufficiency(p, ssr))
            checks.append({"ssr_version": ssr.version, "sufficient": check["sufficient"],
                           "missing": check["missing"], "new_labels": [clean_text(x, 80) for x in check["new_labels"]],
                           "reason": clean_text(check["reason"], 400)})
            missing = check["missing"]
            if check["sufficient"] or missing == "none":
                break
            if missing == "other":
                updates.append({"kind": "other", "question": clean_text(check["reason"], 400), "applied": False})
                break
            if missing == "semantic":
                labels = normalise_labels([*ssr.queried_labels, *check["new_labels"]], limit=s.max_labels)
                added = [l for l in labels if l.lower() not in {q.lower() for q in ssr.queried_labels}]
                detections = yield Detect(labels)
                ssr = relabel(ssr, detections, labels, f"semantic update, new labels {added}",
                              min_overlap=s.min_overlap, merge_unknown=s.merge_unknown)
                for edit in self.edits:  # earlier steps' edits still hold on the relabelled SSR
                    ssr = ssr.after_edit(*edit)
                ssr = self._add(ssr)
                updates.append({"kind": "semantic", "new_labels": added, "ssr_version": ssr.version})
            else:  # spatial
                ans = yield from self._ask("spatial", "llm", {"regions": _regions(ssr), "step": text},
                                           SPATIAL_SCHEMA, lambda p, ssr=ssr: operators.check(p["operator"], ssr))
                res = operators.evaluate(ans["operator"], ssr)
                target = clean_text(ans["target"], 80) or "selected region"
                ssr, new_id = ssr.with_region(res.mask, target, res.description, res.instances)
                ssr = self._add(ssr)
                updates.append({"kind": "spatial", "target": target, "operator": ans["operator"],
                                "description": res.description, "region_id": new_id, "ssr_version": ssr.version})
            builds += 1

        sel = yield from self._ask("select", "llm",
                                   {"regions": _regions(ssr), "objects": _json(self.objects), "step": text,
                                    "edit_type": edit_type},
                                   SELECT_SCHEMA, lambda p, ssr=ssr: _check_select(p, ssr))
        ids = list(dict.fromkeys(sel["region_ids"]))
        chosen = [{"id": r, "label": ssr.region(r).label} for r in ids]
        act = yield from self._ask("action", "llm",
                                   {"step": text, "edit_type": edit_type, "selected": _json(chosen),
                                    "objects": _json(self.objects)},
                                   ACTION_SCHEMA, lambda p: _check_action(p, edit_type))
        action = {"action": act["action"], "target": clean_text(act["target"], 80),
                  "new_object": clean_text(act["new_object"], 120) if act["new_object"] is not None else None,
                  "color": clean_text(act["color"], 40) if act["color"] is not None else None,
                  "explicit": clean_text(act["explicit"], MAX_TEXT)}
        prompt, negative = self._prompt(action)
        mask = ssr.union_mask(ids)
        return StepResult(text, edit_type, ids, action, prompt, negative, mask, ssr.version, updates, checks), ssr

    def _prompt(self, action: dict[str, Any]) -> tuple[str, str]:
        s = self.s
        kind = action["action"]
        if kind == "remove":
            return s.remove_prompt, s.remove_negative_prompt
        if kind == "recolor":
            return clean_text(f"{action['color']} {action['target']}"), s.negative_prompt
        return action["new_object"] or action["target"], s.negative_prompt

    # ------------------------------------------------------------------------------- helpers
    def _add(self, ssr: SSR) -> SSR:
        self.ssrs.append(ssr)
        return ssr

    def _ask(self, stage: str, client: str, variables: dict[str, Any], schema: dict[str, Any],
             validate: Callable[[Any], str | None] | None, images: tuple[Image.Image, ...] = ()):
        template = get_template(TEMPLATES[stage])
        t0 = time.perf_counter()
        reply: LLMReply = yield Ask(stage, client, template, variables, schema, validate, images)
        self.exchanges.append({
            "stage": stage, "step": self.stage, "client": client, "template": template.id,
            "template_hash": template.hash, "system": template.render_system(**variables),
            "prompt": template.render(**variables), "images": len(images),
            "status": reply.status, "error": reply.error, "reply": reply.text, "parsed": reply.parsed,
            "attempts": reply.attempts, "cached": reply.cached, "usage": reply.usage,
            "latency_s": round(reply.latency_s, 4), "wall_s": round(time.perf_counter() - t0, 4),
            "model": reply.model})
        if reply.status != "ok":
            raise ChainFailure(stage, reply.error or "the model call failed")
        return reply.parsed


# ----------------------------------------------------------------------------------- validation
def _check_objects(p: Any) -> str | None:
    if not normalise_labels(p.get("objects") or []):
        return "the object list is empty"
    return None


def _check_plan(p: Any, max_steps: int) -> str | None:
    steps = p.get("steps") or []
    if not steps:
        return "the plan has no steps"
    if len(steps) > max_steps:
        return f"at most {max_steps} steps are allowed, got {len(steps)}"
    if any(not clean_text(st.get("instruction")) for st in steps):
        return "a step has an empty instruction"
    return None


def _check_sufficiency(p: Any, ssr: SSR) -> str | None:
    if p["sufficient"] != (p["missing"] == "none"):
        return '"sufficient" must be true exactly when "missing" is "none"'
    if p["missing"] == "semantic":
        new = normalise_labels(p["new_labels"])
        if not new:
            return 'a semantic update needs at least one label in "new_labels"'
        known = {q.lower() for q in ssr.queried_labels}
        if all(l.lower() in known for l in new):
            return f"every label in new_labels was already searched for: {ssr.queried_labels}"
    return None


def _check_select(p: Any, ssr: SSR) -> str | None:
    ids = p["region_ids"]
    if not ids:
        return "select at least one region id"
    bad = [i for i in ids if i not in ssr.region_ids]
    if bad:
        return f"region ids {bad} do not exist; valid ids: {ssr.region_ids}"
    if not ssr.union_mask(ids).any():
        return "the selected regions are empty"
    return None


def _check_action(p: Any, edit_type: str) -> str | None:
    if p["action"] != edit_type:
        return f'"action" must be "{edit_type}" (the step\'s edit type), got "{p["action"]}"'
    if not clean_text(p["target"]):
        return '"target" is empty'
    if edit_type in ("replace", "add") and not clean_text(p["new_object"]):
        return f'"{edit_type}" needs "new_object"'
    if edit_type == "recolor" and not clean_text(p["color"]):
        return '"recolor" needs "color"'
    return None


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


def _regions(ssr: SSR) -> str:
    return "\n".join(json.dumps(r, ensure_ascii=False) for r in ssr.summary())


__all__ = ["ReasoningChain", "Settings", "Ask", "Detect", "ChainFailure", "ChainResult", "StepResult",
           "EDIT_TYPES", "OBJECTS_SCHEMA", "PLAN_SCHEMA", "SUFFICIENCY_SCHEMA", "SELECT_SCHEMA", "ACTION_SCHEMA",
           "SPATIAL_SCHEMA", "clean_text", "Detection"]
