"""What judging will cost before it is paid, and a hard stop at a budget (``--dry-run``, ``--max-cost``).

Token estimates:

- text: ``ceil(characters / 4)`` (OpenAI's published rule of thumb for English) for the rendered
  system and user text, plus the reply: ``max_tokens`` as the upper bound and `TYPICAL_OUTPUT` as the
  expected figure;
- images, by the provider's published rule where known (`image_tokens`): OpenAI GPT-4o class "high"
  detail (fit in 2048x2048, shortest side at most 768, 170 tokens per 512-px tile + 85; GPT-4o-mini
  bills 5667 per tile + 2833), Qwen-VL (one token per 28x28 patch, 4..1280 per image, + 2). Other
  models use the GPT-4o rule and say so (``rule: "assumed"``).

Cost = tokens x the config's ``price_per_1k_input`` / ``price_per_1k_output`` (overridable in a
judge config file). A call already in the cache costs nothing and is not counted.

`Budget` enforces ``--max-cost``: before a call that is not cached, its upper-bound cost is reserved;
when the spent plus reserved cost would exceed the budget the call is not made and the sample is
reported as ``not_judged``. After the call the reservation is replaced by the reply's actual cost.
Everything already judged stays cached, so rerunning (with a larger budget) continues where it stopped.
"""
from __future__ import annotations

import math
import threading
import urllib.parse
from dataclasses import dataclass, field
from typing import Any, Sequence

TYPICAL_OUTPUT = {"describe": 60, "score": 8}  # tokens: one sentence; a short JSON / integer answer
CHARS_PER_TOKEN = 4


def text_tokens(text: str | None) -> int:
    return math.ceil(len(text) / CHARS_PER_TOKEN) if text else 0


def image_tokens(model: str, width: int, height: int) -> tuple[int, str]:
    """(tokens, rule) for one image as sent at `width` x `height`."""
    name = (model or "").lower()
    if "qwen" in name:
        patches = math.ceil(width / 28) * math.ceil(height / 28)
        return min(max(patches, 4), 1280) + 2, "qwen-vl 28px patches"
    w, h = float(width), float(height)
    if max(w, h) > 2048:
        s = 2048 / max(w, h)
        w, h = w * s, h * s
    if min(w, h) > 768:
        s = 768 / min(w, h)
        w, h = w * s, h * s
    tiles = math.ceil(w / 512) * math.ceil(h / 512)
    if "gpt-4o-mini" in name:
        return 2833 + 5667 * tiles, "openai gpt-4o-mini tiles"
    rule = "openai 512px tiles" if name.startswith(("gpt-4o", "gpt-4.1", "gpt-5", "o1", "o3", "o4")) else "assumed"
    return 85 + 170 * tiles, rule


def provider_host(config: Any) -> str | None:
    endpoint = getattr(config, "endpoint", None)
    return urllib.parse.urlparse(endpoint).hostname if endpoint else None


# ------------------------------------------------------------------------------------- the cache
def prepared_images(client: Any, images: Sequence[Any]) -> list[Any]:
    """The images exactly as the client sends them (mode and downscaling), for sizes and token counts."""
    return [client.prepare_image(im) for im in images]


def cached_reply(client: Any, template: Any, variables: dict[str, Any], images: Sequence[Any],
                 schema: dict | None, validate: Any, text_first: bool = False) -> str | None:
    """The cached reply text for this exact call, or None when it would be sent (and paid)."""
    reply = client.lookup(template, variables, images, schema, validate, text_first)
    return reply.text if reply is not None else None


# -------------------------------------------------------------------------------------- estimates
@dataclass
class CallEstimate:
    input_tokens: int
    output_tokens: int  # expected
    output_tokens_max: int
    price_in: float
    price_out: float
    image_rules: tuple[str, ...] = ()

    @property
    def cost(self) -> float:
        return self.input_tokens / 1000 * self.price_in + self.output_tokens / 1000 * self.price_out

    @property
    def cost_max(self) -> float:
        return self.input_tokens / 1000 * self.price_in + self.output_tokens_max / 1000 * self.price_out


def estimate_call(config: Any, stage: str, system: str | None, text: str,
                  image_sizes: Sequence[tuple[int, int]] = ()) -> CallEstimate:
    tokens = text_tokens(system) + text_tokens(text)
    rules = []
    for w, h in image_sizes:
        n, rule = image_tokens(config.model, w, h)
        tokens += n
        rules.append(rule)
    max_out = int(config.max_tokens)  # sent as max_tokens or max_completion_tokens: the same limit
    return CallEstimate(tokens, min(TYPICAL_OUTPUT.get(stage, max_out), max_out), max_out,
                        float(config.price_per_1k_input), float(config.price_per_1k_output), tuple(rules))


@dataclass
class CostReport:
    """The dry-run answer: calls to send, calls answered by the cache, tokens and USD."""

    calls: int = 0
    cached_calls: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    output_tokens_max: int = 0
    cost: float = 0.0
    cost_max: float = 0.0
    image_rules: set[str] = field(default_factory=set)
    by_stage: dict[str, int] = field(default_factory=dict)

    def add(self, stage: str, est: CallEstimate | None) -> None:
        if est is None:
            self.cached_calls += 1
            return
        self.calls += 1
        self.by_stage[stage] = self.by_stage.get(stage, 0) + 1
        self.input_tokens += est.input_tokens
        self.output_tokens += est.output_tokens
        self.output_tokens_max += est.output_tokens_max
        self.cost += est.cost
        self.cost_max += est.cost_max
        self.image_rules.update(est.image_rules)

    def to_dict(self) -> dict[str, Any]:
        return {"calls": self.calls, "cached_calls": self.cached_calls, "calls_by_stage": dict(self.by_stage),
                "input_tokens": self.input_tokens, "output_tokens": self.output_tokens,
                "output_tokens_max": self.output_tokens_max, "cost_usd": round(self.cost, 6),
                "cost_usd_max": round(self.cost_max, 6), "image_token_rules": sorted(self.image_rules)}

    def lines(self) -> list[str]:
        d = self.to_dict()
        return [f"judge calls to send: {d['calls']} ({', '.join(f'{k} {v}' for k, v in d['calls_by_stage'].items()) or '-'}); "
                f"answered by the cache: {d['cached_calls']}",
                f"tokens: ~{d['input_tokens']} in, ~{d['output_tokens']} out (at most {d['output_tokens_max']})",
                f"estimated cost: ${d['cost_usd']:.4f} (at most ${d['cost_usd_max']:.4f}); image tokens by: "
                f"{', '.join(d['image_token_rules']) or '-'}"]


class Budget:
    """Spent plus reserved cost never exceeds `max_usd` (thread-safe)."""

    def __init__(self, max_usd: float):
        if not max_usd >= 0:
            raise ValueError("--max-cost must be a non-negative number of USD")
        self.max_usd = float(max_usd)
        self.spent = 0.0
        self.reserved = 0.0
        self.refused = 0
        self._lock = threading.Lock()

    def reserve(self, amount: float) -> bool:
        with self._lock:
            if not self._fits(amount):
                self.refused += 1
                return False
            self.reserved += amount
            return True

    def affords(self, amount: float) -> bool:
        """Whether `amount` could be reserved now; reserves and counts nothing (to decide whether a
        whole group of calls, e.g. the canary check, can be paid before sending any of them)."""
        with self._lock:
            return self._fits(amount)

    @property
    def left(self) -> float:
        with self._lock:
            return max(0.0, self.max_usd - self.spent - self.reserved)

    def _fits(self, amount: float) -> bool:
        return self.spent + self.reserved + amount <= self.max_usd + 1e-12

    def settle(self, reserved: float, actual: float) -> None:
        with self._lock:
            self.reserved = max(0.0, self.reserved - reserved)
            self.spent += float(actual or 0.0)

    @property
    def exhausted(self) -> bool:
        with self._lock:
            return self.refused > 0

    def to_dict(self) -> dict[str, Any]:
        with self._lock:
            return {"max_usd": self.max_usd, "spent_usd": round(self.spent, 8), "refused_calls": self.refused}
