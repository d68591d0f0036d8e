"""The structured semantic representation (SSR) of one image: labelled regions with geometry and depth.

An SSR is built from three model outputs that the editor computes separately, so that each can be
reused: the segmenter's automatic masks (`segments`, computed once per sample), the depth map (once
per sample) and the labeller's detections (re-run on a semantic update). Building is pure numpy:

    ssr = build_ssr(segments, detections, depth, version=1, queried_labels=["cup", "table"])

Every segment takes the label of the detection box it overlaps best, where the overlap of a mask M
and a box B is |M in B| / (|B| + |M| - |M in B|) (the released CIELR rule), or "Unknown" when no box
overlaps it. Segments with the same label merge into one region; with `merge_unknown` (the default,
as released) that includes "Unknown": all unlabelled segments form one "Unknown" region, and with
`merge_unknown=False` each unlabelled segment stays a region of its own. Besides what the released code kept (id, label, mask, depth at the centroid), each
region carries its bounding box, area fraction, centroid and median depth, and its instances (the
segments it merged), so spatial questions are answered by operators over these numbers, never by code.

Depth convention: `depth` is normalised per image to [0, 1] with 0 = nearest and 1 = farthest
(Depth Anything predicts relative inverse depth; `depth.py` converts it).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
from PIL import Image

UNKNOWN = "Unknown"


@dataclass(frozen=True)
class Detection:
    """One open-vocabulary detection: a label, a box (x0, y0, x1, y1) in pixels (x1, y1 exclusive)
    and a score."""

    label: str
    box: tuple[float, float, float, float]
    score: float


@dataclass
class Geometry:
    """Derived numbers of a boolean mask, in pixels and as fractions of the image."""

    bbox: tuple[int, int, int, int]  # x0, y0, x1, y1 (x1, y1 exclusive)
    area: int
    area_fraction: float
    centroid: tuple[float, float]  # x, y in pixels
    median_depth: float | None
    centroid_depth: float | None

    @classmethod
    def of(cls, mask: np.ndarray, depth: np.ndarray | None) -> "Geometry":
        h, w = mask.shape
        ys, xs = np.nonzero(mask)
        area = int(xs.size)
        if area == 0:
            return cls((0, 0, 0, 0), 0, 0.0, (float("nan"), float("nan")), None, None)
        bbox = (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)
        cx, cy = float(xs.mean()), float(ys.mean())
        med = cen = None
        if depth is not None:
            med = float(np.median(depth[ys, xs]))
            cen = float(depth[min(h - 1, int(round(cy))), min(w - 1, int(round(cx)))])
        return cls(bbox, area, area / float(h * w), (cx, cy), med, cen)


@dataclass
class Instance:
    """One segment with its label: the unit spatial operators work on."""

    index: int  # index into SSR.segments
    label: str
    score: float  # overlap with the best box (0 for Unknown)
    mask: np.ndarray
    geometry: Geometry


@dataclass
class Region:
    """What the reasoning chain refers to by id: all segments of one label, merged."""

    id: int
    label: str
    mask: np.ndarray  # bool, image size
    geometry: Geometry
    instances: list[int]  # indices into SSR.segments
    source: str = "labeller"  # "labeller" | "operator" (added by a spatial update) | "edited"
    note: str = ""  # e.g. the operator that produced it

    def summary(self, size: tuple[int, int]) -> dict[str, Any]:
        """The region as the LLM sees it: coordinates as fractions of the image (3 decimals)."""
        w, h = size
        g = self.geometry
        x0, y0, x1, y1 = g.bbox
        out = {
            "id": self.id,
            "label": self.label,
            "bbox": [round(x0 / w, 3), round(y0 / h, 3), round(x1 / w, 3), round(y1 / h, 3)],
            "area": round(g.area_fraction, 4),
            "centroid": [round(g.centroid[0] / w, 3), round(g.centroid[1] / h, 3)],
            "depth": None if g.median_depth is None else round(g.median_depth, 3),
            "instances": len(self.instances),
        }
        if self.source != "labeller":
            out["source"] = self.source
        return out


@dataclass
class SSR:
    version: int
    size: tuple[int, int]  # (width, height)
    segments: list[np.ndarray]  # the segmenter's masks, shared between versions
    depth: np.ndarray | None  # normalised depth map (0 near, 1 far), shared between versions
    queried_labels: list[str]
    detections: list[Detection]
    instances: list[Instance]
    regions: list[Region]
    update: str | None = None  # None for version 1; "semantic" | "spatial" | "edit"
    history: list[str] = field(default_factory=list)

    # ------------------------------------------------------------------ lookups
    def region(self, region_id: int) -> Region:
        for r in self.regions:
            if r.id == region_id:
                return r
        raise KeyError(region_id)

    @property
    def region_ids(self) -> list[int]:
        return [r.id for r in self.regions]

    @property
    def labels(self) -> list[str]:
        return sorted({r.label for r in self.regions})

    def instances_of(self, label: str) -> list[Instance]:
        key = label.strip().lower()
        return [i for i in self.instances if i.label.lower() == key]

    def is_union_of_segments(self, mask: np.ndarray, indices: Sequence[int]) -> bool:
        """Whether `mask` is exactly the union of these segments: only then may a region or operator
        part stand for its instances (be split into them, or rebuilt from those left after an edit)."""
        if not len(indices):
            return False
        union = np.zeros_like(mask, dtype=bool)
        for k in indices:
            union |= self.segments[k]
        return bool(np.array_equal(union, mask))

    def union_mask(self, region_ids: Sequence[int]) -> np.ndarray:
        w, h = self.size
        mask = np.zeros((h, w), dtype=bool)
        for rid in region_ids:
            mask |= self.region(rid).mask
        return mask

    # ------------------------------------------------------------------ views
    def summary(self) -> list[dict[str, Any]]:
        return [r.summary(self.size) for r in self.regions]

    def to_trace(self, artifact_prefix: str | None = None,
                 known: dict[str, str] | None = None) -> tuple[dict[str, Any], dict[str, Image.Image]]:
        """(JSON-able description, {file name: mask PNG}) for the trace; masks are named
        `<prefix>_region_<id>.png` (prefix defaults to `ssr_v<version>`). With `known` (mask digest ->
        file name, updated here), a mask already written for an earlier version is referred to by its
        earlier name instead of being written again."""
        prefix = artifact_prefix or f"ssr_v{self.version}"
        artifacts: dict[str, Image.Image] = {}
        known = {} if known is None else known
        regions = []
        for r in self.regions:
            digest = mask_digest(r.mask)
            name = known.get(digest)
            if name is None:
                name = known[digest] = f"{prefix}_region_{r.id}.png"
                artifacts[name] = mask_to_image(r.mask)
            d = r.summary(self.size)
            g = r.geometry
            d.update(bbox_px=list(g.bbox), area_px=g.area, centroid_px=[round(c, 2) for c in g.centroid],
                     median_depth=g.median_depth, centroid_depth=g.centroid_depth, instance_indices=r.instances,
                     source=r.source, note=r.note, mask=name)
            regions.append(d)
        desc = {
            "version": self.version,
            "update": self.update,
            "size": list(self.size),
            "n_segments": len(self.segments),
            "queried_labels": list(self.queried_labels),
            "detections": [{"label": d.label, "box": [round(float(v), 1) for v in d.box],
                            "score": round(float(d.score), 4)} for d in self.detections],
            "instances": [{"index": i.index, "label": i.label, "overlap": round(i.score, 4),
                           "bbox_px": list(i.geometry.bbox), "area": round(i.geometry.area_fraction, 4)}
                          for i in self.instances],
            "regions": regions,
            "history": list(self.history),
        }
        return desc, artifacts

    # ------------------------------------------------------------------ new versions
    def with_region(self, mask: np.ndarray, label: str, note: str, instances: Sequence[int] = ()) -> tuple["SSR", int]:
        """A new version with one more region (a spatial update); returns (ssr, new region id). The region
        keeps `instances` only when its mask is exactly their union; a region of pixels (an intersection,
        or one mixed with whole segments) keeps none, so a later step never widens it to whole segments
        and an edit drops it by its own pixels, as an edited region."""
        new_id = max(self.region_ids, default=0) + 1
        kept = list(instances) if self.is_union_of_segments(mask, instances) else []
        region = Region(new_id, label, mask.copy(), Geometry.of(mask, self.depth), kept,
                        source="operator", note=note)
        return dataclasses.replace(self, version=self.version + 1, regions=[*self.regions, region],
                                   update="spatial", history=[*self.history, f"v{self.version + 1}: {note}"]), new_id

    def after_edit(self, mask: np.ndarray, action: str, new_label: str | None, note: str = "") -> "SSR":
        """The SSR as it will be after an edit of `mask` (for the next step of a multi-step
        instruction; no model re-runs, the version number stays). Segments at least half inside the
        mask leave their regions (regions left empty disappear); for replace / add / recolor the mask
        becomes a new region labelled with the new object (source "edited"). Other regions keep their
        ids, as their pixels stay the same. A removal leaves a region too, labelled "where the X was"
        (source "edited"), so a later step can still address the place ("put a vase where the cup was")."""
        inside = {i.index for i in self.instances
                  if i.geometry.area and int((i.mask & mask).sum()) * 2 >= i.geometry.area}
        regions: list[Region] = []
        for r in self.regions:
            if r.instances:
                keep = [k for k in r.instances if k not in inside]
                if not keep:
                    continue
                if len(keep) == len(r.instances):
                    regions.append(r)
                    continue
                m = np.zeros_like(r.mask)
                for k in keep:
                    m |= self.segments[k]
                regions.append(dataclasses.replace(r, mask=m, geometry=Geometry.of(m, self.depth), instances=keep))
            elif int((r.mask & mask).sum()) * 2 < max(1, r.geometry.area):
                regions.append(r)
        if mask.any():
            if action == "remove":
                label = f"where the {new_label} was" if new_label else "where the removed object was"
            else:
                label = new_label or "edited region"
            new_id = max(self.region_ids, default=0) + 1
            regions.append(Region(new_id, label, mask.copy(), Geometry.of(mask, self.depth), [],
                                  source="edited", note=note or f"{action} in an earlier step"))
        return dataclasses.replace(self, regions=regions, instances=[i for i in self.instances if i.index not in inside],
                                   history=[*self.history, f"after step: {action} ({note or new_label or ''})"])


# ---------------------------------------------------------------------------------- building
def box_mask_overlap(mask: np.ndarray, box: Sequence[float], mask_area: int | None = None) -> float:
    """|M in B| / (|B| + |M| - |M in B|) with the box clipped to the image (released CIELR rule)."""
    h, w = mask.shape
    x0, y0, x1, y1 = (int(round(v)) for v in box)
    x0, x1 = max(0, min(w, x0)), max(0, min(w, x1))
    y0, y1 = max(0, min(h, y0)), max(0, min(h, y1))
    box_area = max(0, x1 - x0) * max(0, y1 - y0)
    if box_area == 0:
        return 0.0
    inside = int(mask[y0:y1, x0:x1].sum())
    area = int(mask.sum()) if mask_area is None else mask_area
    denom = box_area + area - inside
    return inside / denom if denom > 0 else 0.0


def overlap_matrix(segments: Sequence[np.ndarray], boxes: np.ndarray) -> np.ndarray:
    """`box_mask_overlap` for every (segment, box) pair, via one summed-area table per segment."""
    if not len(segments) or not len(boxes):
        return np.zeros((len(segments), len(boxes)))
    h, w = segments[0].shape
    b = np.rint(np.asarray(boxes, dtype=np.float64)).astype(np.int64)
    x0, x1 = np.clip(b[:, 0], 0, w), np.clip(b[:, 2], 0, w)
    y0, y1 = np.clip(b[:, 1], 0, h), np.clip(b[:, 3], 0, h)
    x1, y1 = np.maximum(x0, x1), np.maximum(y0, y1)
    box_area = (x1 - x0) * (y1 - y0)
    out = np.zeros((len(segments), len(boxes)))
    for k, mask in enumerate(segments):
        sat = np.zeros((h + 1, w + 1), dtype=np.int64)
        sat[1:, 1:] = mask.astype(np.int64).cumsum(0).cumsum(1)
        inside = sat[y1, x1] - sat[y0, x1] - sat[y1, x0] + sat[y0, x0]
        denom = box_area + int(sat[h, w]) - inside
        out[k] = np.where((box_area > 0) & (denom > 0), inside / np.maximum(denom, 1), 0.0)
    return out


def assign_labels(segments: Sequence[np.ndarray], detections: Sequence[Detection],
                  min_overlap: float = 0.0) -> list[tuple[str, float]]:
    """For each segment: (label of the best-overlapping box, overlap), or ("Unknown", 0.0) when no box
    overlaps it by more than `min_overlap`. Ties go to the higher detection score."""
    if not detections:
        return [(UNKNOWN, 0.0) for _ in segments]
    ov = overlap_matrix(segments, np.array([d.box for d in detections], dtype=np.float64))
    scores = np.array([d.score for d in detections])
    out = []
    for row in ov:
        best = np.lexsort((-scores, -row))[0]  # highest overlap, then highest score
        out.append((detections[best].label, float(row[best])) if row[best] > min_overlap else (UNKNOWN, 0.0))
    return out


def build_ssr(segments: Sequence[np.ndarray], detections: Sequence[Detection], depth: np.ndarray | None,
              *, version: int = 1, queried_labels: Sequence[str] = (), min_overlap: float = 0.0,
              merge_unknown: bool = True, update: str | None = None,
              history: Sequence[str] = ()) -> SSR:
    """Label the segments and merge same-label segments into regions (ids from 1: labelled regions
    largest first, then "Unknown"). With `merge_unknown` False, unlabelled segments stay separate."""
    if not segments:
        raise ValueError("the segmenter found no regions in this image")
    h, w = segments[0].shape
    labels = assign_labels(segments, detections, min_overlap)
    instances = [Instance(i, lab, score, m, Geometry.of(m, depth)) for i, (m, (lab, score)) in
                 enumerate(zip(segments, labels))]
    groups: dict[str, list[Instance]] = {}
    order: list[str] = []
    for inst in instances:
        key = inst.label.lower() if (merge_unknown or inst.label != UNKNOWN) else f"\x00{inst.index}"
        if key not in groups:
            groups[key] = []
            order.append(key)
        groups[key].append(inst)
    merged = []
    for key in order:
        members = groups[key]
        if len(members) == 1:
            mask = members[0].mask  # shared with the segment, never modified in place
        else:
            mask = np.zeros((h, w), dtype=bool)
            for inst in members:
                mask |= inst.mask
        merged.append((members[0].label, mask, [i.index for i in members]))
    # Known labels first, then Unknown; larger regions first within each: stable, readable ids.
    merged.sort(key=lambda t: (t[0] == UNKNOWN, -int(t[1].sum())))
    regions = [Region(k + 1, label, mask, Geometry.of(mask, depth), idx) for k, (label, mask, idx) in enumerate(merged)]
    return SSR(version=version, size=(w, h), segments=list(segments), depth=depth,
               queried_labels=list(queried_labels), detections=list(detections), instances=instances,
               regions=regions, update=update, history=list(history))


def relabel(ssr: SSR, detections: Sequence[Detection], queried_labels: Sequence[str], note: str,
            min_overlap: float = 0.0, merge_unknown: bool = True) -> SSR:
    """A semantic update: the same segments and depth with new detections, as the next version."""
    return build_ssr(ssr.segments, detections, ssr.depth, version=ssr.version + 1, queried_labels=queried_labels,
                     min_overlap=min_overlap, merge_unknown=merge_unknown, update="semantic",
                     history=[*ssr.history, f"v{ssr.version + 1}: {note}"])


def mask_digest(mask: np.ndarray) -> str:
    import hashlib

    return hashlib.sha1(repr(mask.shape).encode() + np.packbits(mask).tobytes()).hexdigest()


def mask_to_image(mask: np.ndarray) -> Image.Image:
    """A 1-bit PIL image (mode "1": 1 bit per pixel in memory, a 1-bit PNG on disk; white = region)."""
    return Image.fromarray(np.ascontiguousarray(mask, dtype=bool))
