"""Open-vocabulary detection with OWLv2: one text query per label, boxes above a score threshold.

    lab = Owlv2Labeller("google/owlv2-large-patch14-ensemble", threshold=0.1, device="cuda")
    detections = lab.detect([image], [["cup", "table"]])[0]   # list[ssr.Detection]

Images of a batch may have different label lists: queries are padded per batch, and the padding is
cut off the logits before scoring (transformers' own post-processing would let a padding query win
the arg-max of a box). Each box keeps its best label; boxes are in the image's pixels, clipped to it.

A query longer than the text encoder takes (OWLv2: 16 tokens, start and end tokens included) is cut
to fit with the tokenizer (`query_for`); the detection keeps the full label.
"""
from __future__ import annotations

from typing import Any, Sequence

from PIL import Image

from .common import CallStats, chunks, torch_dtype
from .ssr import Detection


class Owlv2Labeller:
    backend = "owlv2-transformers"

    def __init__(self, model_id: str = "google/owlv2-large-patch14-ensemble", threshold: float = 0.1,
                 query_template: str = "{label}", device: str = "cpu", dtype: str = "float32",
                 revision: str | None = None, batch_size: int = 4):
        import transformers

        if "{label}" not in query_template:
            raise ValueError("labeller_query_template must contain {label}")
        self.model_id, self.threshold, self.query_template = model_id, threshold, query_template
        self.device, self.dtype = device, torch_dtype(dtype, device)
        self.batch_size = max(1, batch_size)
        self.processor = transformers.AutoProcessor.from_pretrained(model_id, revision=revision)
        self.model = transformers.Owlv2ForObjectDetection.from_pretrained(
            model_id, revision=revision, dtype=self.dtype, trust_remote_code=False)
        self.model.to(device).eval()
        tok = self.processor.tokenizer
        limits = [int(getattr(tok, "model_max_length", 0) or 0),
                  int(getattr(self.model.config.text_config, "max_position_embeddings", 0) or 0)]
        self.max_query_tokens = min(x for x in limits if 0 < x < 100_000) if any(0 < x < 100_000 for x in limits) else 16
        self._queries: dict[str, str] = {}
        self.stats = CallStats()

    def query_for(self, label: str) -> str:
        """The text sent for `label`: the query template filled in, cut to `max_query_tokens` tokens."""
        query = self._queries.get(label)
        if query is None:
            tok = self.processor.tokenizer
            query = self.query_template.format(label=label)
            limit = self.max_query_tokens

            def fits(q: str) -> bool:  # counted as the model sees it, start and end tokens included
                return len(tok(q)["input_ids"]) <= limit

            if not fits(query):
                special = set(tok.all_special_ids)
                ids = [i for i in tok(query, add_special_tokens=False)["input_ids"] if i not in special]
                keep = min(len(ids), limit)
                query = ""
                while keep > 0:  # decoding can re-tokenise differently: shrink until it fits
                    cand = tok.decode(ids[:keep], skip_special_tokens=True).strip()
                    if fits(cand):
                        query = cand
                        break
                    keep -= 1
            self._queries[label] = query
        return query

    def truncated(self, labels: Sequence[str]) -> dict[str, str]:
        """{label: query sent} for the labels whose query had to be cut."""
        return {l: q for l in labels if (q := self.query_for(l)) != self.query_template.format(label=l)}

    def describe(self) -> dict[str, Any]:
        return {"backend": self.backend, "model": self.model_id, "threshold": self.threshold,
                "query_template": self.query_template, "max_query_tokens": self.max_query_tokens, "dtype": str(self.dtype).replace("torch.", "")}

    def detect(self, images: Sequence[Image.Image], labels: Sequence[Sequence[str]],
               keys: Sequence[Any] = ()) -> list[list[Detection]]:
        import torch

        keys = list(keys) or list(range(len(images)))
        out: list[list[Detection]] = [[] for _ in images]
        todo = [i for i in range(len(images)) if labels[i]]
        for batch in chunks(todo, self.batch_size):
            queries = [[self.query_for(l) for l in labels[i]] for i in batch]
            inputs = self.processor(text=queries, images=[images[i].convert("RGB") for i in batch],
                                    return_tensors="pt")
            inputs = {k: (v.to(self.device, self.dtype) if v.is_floating_point() else v.to(self.device))
                      for k, v in inputs.items()}
            with self.stats.track([keys[i] for i in batch]), torch.inference_mode():
                outputs = self.model(**inputs)
            logits = outputs.logits.float().cpu()  # (B, boxes, max queries)
            boxes = outputs.pred_boxes.float().cpu()  # (B, boxes, 4) cx, cy, w, h relative to the padded square
            for j, i in enumerate(batch):
                n = len(labels[i])
                scores, best = torch.sigmoid(logits[j, :, :n]).max(dim=-1)
                keep = (scores > self.threshold).nonzero().flatten().tolist()
                w, h = images[i].size
                side = float(max(w, h))  # OWLv2 pads to a square at the bottom / right
                for k in keep:
                    cx, cy, bw, bh = (boxes[j, k] * side).tolist()
                    x0, y0 = max(0.0, cx - bw / 2), max(0.0, cy - bh / 2)
                    x1, y1 = min(float(w), cx + bw / 2), min(float(h), cy + bh / 2)
                    if x1 > x0 and y1 > y0:
                        out[i].append(Detection(labels[i][int(best[k])], (x0, y0, x1, y1), float(scores[k])))
                out[i].sort(key=lambda d: -d.score)
        return out


MAX_LABEL_CHARS = 200  # a label is kept whole up to here; the detector query is cut by tokens instead


def normalise_labels(labels: Sequence[str], limit: int = 64) -> list[str]:
    """Strip, drop empties and case-insensitive duplicates, keep order; at most `limit` labels."""
    seen, out = set(), []
    for label in labels:
        text = " ".join(str(label).split())[:MAX_LABEL_CHARS]
        if text and text.lower() not in seen and text.lower() != "unknown":
            seen.add(text.lower())
            out.append(text)
    return out[:limit]


__all__ = ["Owlv2Labeller", "normalise_labels", "Detection", "MAX_LABEL_CHARS"]
