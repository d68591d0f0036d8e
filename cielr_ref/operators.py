"""A fixed, safe set of geometric operators over SSR regions, for spatial updates.

The released CIELR code asked the LLM to write Python that builds a mask and executed it. Here the LLM
chooses an operator tree, sent as JSON and validated against `OPERATOR_SCHEMA`; `evaluate` interprets
it with numpy over the SSR's masks. Nothing the model writes is executed: an unknown operator, a
missing id or label, or an empty result is a validation error (the client retries the call).

A node is an object with every field present (OpenAI strict structured outputs need that):

    {"op": "leftmost", "label": null, "region_ids": [], "side": null, "n": null, "relation": null,
     "args": [{"op": "select", "label": "cup", "region_ids": [], ...}]}

Values are lists of *parts* (a mask with the SSR instances it came from):

- ``select``: the instances of ``label`` and/or of the regions ``region_ids`` (a region made by an
  earlier operator counts as one part). Parts mostly inside a larger part of the same selection
  (SAM's sub-part masks, e.g. a cup's handle) are folded into it.
- ``leftmost`` / ``rightmost`` / ``topmost`` / ``bottommost`` (by centroid), ``largest`` /
  ``smallest`` (by area), ``nearest`` / ``farthest`` (by median depth): the one extreme part of
  ``args[0]``.
- ``nth``: the ``n``-th part (1-based) of ``args[0]`` counted from ``side`` (left, right, top,
  bottom, near, far).
- ``union``: the parts of all ``args``; ``intersection``: the pixels common to all ``args`` (one part,
  made of no instances unless it is exactly the segments all ``args`` share).
- ``relation``: the parts of ``args[0]`` standing in ``relation`` to the union of ``args[1]``:
  left_of, right_of, above, below (centroids), in_front_of, behind (median depth), inside, contains
  (at least half of the area), overlapping (any shared pixel), nearest_to, farthest_from (the one
  part whose centroid is closest to / farthest from the reference's).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np

from .ssr import SSR, Geometry

SUPERLATIVES = {
    "leftmost": ("cx", min), "rightmost": ("cx", max), "topmost": ("cy", min), "bottommost": ("cy", max),
    "largest": ("area", max), "smallest": ("area", min), "nearest": ("depth", min), "farthest": ("depth", max),
}
SIDES = {"left": ("cx", False), "right": ("cx", True), "top": ("cy", False), "bottom": ("cy", True),
         "near": ("depth", False), "far": ("depth", True)}
RELATIONS = ("left_of", "right_of", "above", "below", "in_front_of", "behind", "inside", "contains",
             "overlapping", "nearest_to", "farthest_from")
OPS = ("select", *SUPERLATIVES, "nth", "union", "intersection", "relation")
MAX_DEPTH = 6
MAX_NODES = 32
NESTED_FRACTION = 0.8  # a part with this share of its area inside a larger selected part is folded into it

NODE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["op", "label", "region_ids", "side", "n", "relation", "args"],
    "properties": {
        "op": {"type": "string", "enum": list(OPS)},
        "label": {"type": ["string", "null"]},
        "region_ids": {"type": "array", "items": {"type": "integer"}},
        "side": {"type": ["string", "null"], "enum": [*SIDES, None]},
        "n": {"type": ["integer", "null"]},
        "relation": {"type": ["string", "null"], "enum": [*RELATIONS, None]},
        "args": {"type": "array", "items": {"$ref": "#/$defs/node"}},
    },
}


class OperatorError(ValueError):
    """The operator tree does not apply to this SSR (the message is shown to the LLM on retry)."""


@dataclass
class Part:
    mask: np.ndarray
    instances: frozenset[int]
    geometry: Geometry

    @property
    def cx(self) -> float:
        return self.geometry.centroid[0]

    @property
    def cy(self) -> float:
        return self.geometry.centroid[1]

    @property
    def area(self) -> float:
        return float(self.geometry.area)

    @property
    def depth(self) -> float:
        d = self.geometry.median_depth
        return float("nan") if d is None else d


@dataclass
class OperatorResult:
    mask: np.ndarray
    instances: list[int]
    description: str


def evaluate(tree: dict[str, Any], ssr: SSR) -> OperatorResult:
    """Interpret an operator tree on `ssr`; raises OperatorError when it does not apply."""
    counter = [0]
    parts = _eval(tree, ssr, 0, counter)
    if not parts:
        raise OperatorError("the operator selected nothing")
    w, h = ssr.size
    mask = np.zeros((h, w), dtype=bool)
    inst: set[int] = set()
    for p in parts:
        mask |= p.mask
        inst |= p.instances
    if not mask.any():
        raise OperatorError("the operator produced an empty region")
    return OperatorResult(mask, sorted(inst), describe(tree))


def check(tree: Any, ssr: SSR) -> str | None:
    """None when `tree` evaluates on `ssr`, else the reason (for the LLM client's `validate`)."""
    try:
        evaluate(tree, ssr)
    except OperatorError as exc:
        return str(exc)
    return None


def describe(node: dict[str, Any]) -> str:
    """A compact, human-readable form of a tree, e.g. leftmost(select(label='cup'))."""
    op = node.get("op")
    bits = []
    if node.get("label") is not None:
        bits.append(f"label={node['label']!r}")
    if node.get("region_ids"):
        bits.append(f"regions={list(node['region_ids'])}")
    for key in ("side", "n", "relation"):
        if node.get(key) is not None:
            bits.append(f"{key}={node[key]!r}" if key != "n" else f"n={node['n']}")
    bits += [describe(a) for a in node.get("args") or []]
    return f"{op}({', '.join(bits)})"


# ------------------------------------------------------------------------------------- internals
def _part(mask: np.ndarray, instances, ssr: SSR) -> Part:
    return Part(mask, frozenset(instances), Geometry.of(mask, ssr.depth))


def _eval(node: Any, ssr: SSR, depth: int, counter: list[int]) -> list[Part]:
    if not isinstance(node, dict):
        raise OperatorError(f"an operator node must be an object, got {json.dumps(node)[:60]}")
    counter[0] += 1
    if depth > MAX_DEPTH or counter[0] > MAX_NODES:
        raise OperatorError(f"operator tree too deep or too large (at most {MAX_DEPTH} levels, {MAX_NODES} nodes)")
    op = node.get("op")
    args = node.get("args") or []
    if op not in OPS:
        raise OperatorError(f"unknown operator {op!r}; allowed: {', '.join(OPS)}")

    if op == "select":
        return _select(node, ssr)

    def operand(i: int) -> list[Part]:
        parts = _eval(args[i], ssr, depth + 1, counter)
        if not parts:
            raise OperatorError(f"{describe(args[i])} selected nothing")
        return parts

    if op in SUPERLATIVES:
        _arity(op, args, 1, 1)
        key, pick = SUPERLATIVES[op]
        parts = operand(0)
        if key == "depth" and any(np.isnan(p.depth) for p in parts):
            raise OperatorError("no depth is available for this image")
        return [pick(parts, key=lambda p: getattr(p, key))]
    if op == "nth":
        _arity(op, args, 1, 1)
        side, n = node.get("side"), node.get("n")
        if side not in SIDES:
            raise OperatorError(f"nth needs side in {list(SIDES)}, got {side!r}")
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise OperatorError(f"nth needs n >= 1, got {n!r}")
        key, reverse = SIDES[side]
        parts = sorted(operand(0), key=lambda p: getattr(p, key), reverse=reverse)
        if n > len(parts):
            raise OperatorError(f"nth: asked for number {n} from the {side}, but only {len(parts)} candidates exist")
        return [parts[n - 1]]
    if op == "union":
        _arity(op, args, 1, None)
        out: list[Part] = []
        seen: set[frozenset[int]] = set()
        for i in range(len(args)):
            for p in operand(i):
                if p.instances and p.instances in seen:
                    continue
                seen.add(p.instances)
                out.append(p)
        return out
    if op == "intersection":
        _arity(op, args, 2, None)
        mask = None
        common: set[int] | None = None
        for i in range(len(args)):
            m = np.zeros_like(ssr.segments[0], dtype=bool)
            inst: set[int] = set()
            for p in operand(i):
                m |= p.mask
                inst |= p.instances
            mask = m if mask is None else (mask & m)
            common = inst if common is None else (common & inst)
        if not mask.any():
            raise OperatorError("the intersection is empty")
        # pixels, not segments: it names instances only when it is exactly the segments all operands share
        common = sorted(common or ())
        return [_part(mask, common if ssr.is_union_of_segments(mask, common) else (), ssr)]
    # relation
    _arity(op, args, 2, 2)
    relation = node.get("relation")
    if relation not in RELATIONS:
        raise OperatorError(f"relation needs relation in {list(RELATIONS)}, got {relation!r}")
    candidates, reference = operand(0), operand(1)
    ref_mask = np.zeros_like(reference[0].mask)
    ref_inst: set[int] = set()
    for p in reference:
        ref_mask |= p.mask
        ref_inst |= p.instances
    ref = _part(ref_mask, ref_inst, ssr)
    candidates = [c for c in candidates if not _same(c, ref)]
    if not candidates:
        raise OperatorError("relation: the only candidates are the reference itself")
    return _relate(relation, candidates, ref)


def _arity(op: str, args: list, lo: int, hi: int | None) -> None:
    if len(args) < lo or (hi is not None and len(args) > hi):
        want = f"exactly {lo}" if lo == hi else f"at least {lo}"
        raise OperatorError(f"{op} takes {want} argument(s) in args, got {len(args)}")


def _select(node: dict[str, Any], ssr: SSR) -> list[Part]:
    label, ids = node.get("label"), node.get("region_ids") or []
    if node.get("args"):
        raise OperatorError("select takes no args")
    if label is None and not ids:
        raise OperatorError("select needs a label or region_ids")
    parts: list[Part] = []
    if label is not None:
        insts = ssr.instances_of(label)
        region_hits = [r for r in ssr.regions if r.label.lower() == label.strip().lower() and not r.instances]
        if not insts and not region_hits:
            raise OperatorError(f"no region is labelled {label!r}; labels: {', '.join(ssr.labels)}")
        parts += [_part(i.mask, [i.index], ssr) for i in insts]
        parts += [_part(r.mask, [], ssr) for r in region_hits]
    for rid in ids:
        if isinstance(rid, bool) or not isinstance(rid, int) or rid not in ssr.region_ids:
            raise OperatorError(f"region id {rid!r} does not exist; ids: {ssr.region_ids}")
        region = ssr.region(rid)
        if region.instances:
            parts += [_part(ssr.segments[k], [k], ssr) for k in region.instances]
        else:
            parts.append(_part(region.mask, [], ssr))
    return _fold_nested(parts, ssr)


def _fold_nested(parts: list[Part], ssr: SSR) -> list[Part]:
    """Drop duplicates and fold parts mostly inside a larger part into it (largest first)."""
    kept: list[Part] = []
    changed: set[int] = set()
    for p in sorted(parts, key=lambda q: -q.area):
        if p.area == 0:
            continue
        host = None
        for k, q in enumerate(kept):
            if (p.mask & q.mask).sum() >= NESTED_FRACTION * p.area:
                host = k
                break
        if host is None:
            kept.append(p)
        else:
            q = kept[host]
            if not (p.mask & ~q.mask).any() and p.instances <= q.instances:
                continue
            kept[host] = Part(q.mask | p.mask, q.instances | p.instances, q.geometry)
            changed.add(host)
    return [_part(q.mask, q.instances, ssr) if k in changed else q for k, q in enumerate(kept)]


def _same(a: Part, b: Part) -> bool:
    if a.instances and a.instances == b.instances:
        return True
    inter = (a.mask & b.mask).sum()
    union = (a.mask | b.mask).sum()
    return union > 0 and inter / union > 0.9


def _relate(relation: str, cands: list[Part], ref: Part) -> list[Part]:
    if relation in ("nearest_to", "farthest_from"):
        dist = [((c.cx - ref.cx) ** 2 + (c.cy - ref.cy) ** 2) ** 0.5 for c in cands]
        k = int(np.argmin(dist) if relation == "nearest_to" else np.argmax(dist))
        return [cands[k]]
    tests = {
        "left_of": lambda c: c.cx < ref.cx,
        "right_of": lambda c: c.cx > ref.cx,
        "above": lambda c: c.cy < ref.cy,
        "below": lambda c: c.cy > ref.cy,
        "in_front_of": lambda c: c.depth < ref.depth,
        "behind": lambda c: c.depth > ref.depth,
        "inside": lambda c: (c.mask & ref.mask).sum() >= 0.5 * c.area,
        "contains": lambda c: (c.mask & ref.mask).sum() >= 0.5 * ref.area,
        "overlapping": lambda c: bool((c.mask & ref.mask).any()),
    }
    if relation in ("in_front_of", "behind") and (np.isnan(ref.depth) or any(np.isnan(c.depth) for c in cands)):
        raise OperatorError("no depth is available for this image")
    out = [c for c in cands if tests[relation](c)]
    if not out:
        raise OperatorError(f"no candidate is {relation.replace('_', ' ')} the reference")
    return out


def spatial_schema() -> dict[str, Any]:
    """The JSON schema of a spatial-update answer: a target name and an operator tree."""
    return {
        "title": "cielr_spatial",
        "type": "object",
        "additionalProperties": False,
        "required": ["target", "operator"],
        "properties": {
            "target": {"type": "string"},
            "operator": {"$ref": "#/$defs/node"},
        },
        "$defs": {"node": NODE_SCHEMA},
    }
