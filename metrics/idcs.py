"""IDCS, the Image Difference Check Score (PROTOCOLS.md item 7): a judged, reasoning-aware metric.

Per sample, two model calls through the shared LLM client layer (`ciebench.llm`):

1. a vision-language model sees the source image, then the edited image, identifies the objects in
   the first, compares with the second, and says in one sentence which objects were added, removed
   or replaced (template ``idcs_describe``);
2. a language model rates, on an integer scale 1..5, how consistent the change the instruction asks
   for is with that sentence (template ``idcs_score``), answering the JSON ``{"score": N}``.

The score is parsed strictly: the reply must be a JSON object with exactly one key ``score`` whose
value is a JSON integer 1..5 (not 3.0, "3", true or 6). Anything else is retried, then the sample's
verdict is a failure (status "error", score None, with the reason). The dataset IDCS is the mean of
the valid integers, and coverage (valid / judged) is reported beside it: the authors' averaging
skipped zeros and so silently dropped failures; here they are counted apart.

    judge = IDCSJudge(get_judge_config("openai"), cache_dir="runs/.llm-cache")
    verdicts = judge.judge([JudgeItem("12", source, edited, instruction), ...])
    print(idcs_summary(verdicts))     # mean, ci95, n, n_total, coverage, failures
"""
from __future__ import annotations

import dataclasses
import difflib
import json
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from PIL import Image

from ciebench.io import stable_hash
from ciebench.llm import LLMClient, LLMConfig, get_template, make_client
from ciebench.stats import bootstrap_mean_ci

DESCRIBE_TEMPLATE = "idcs_describe"
SCORE_TEMPLATE = "idcs_score"
SCORE_MIN, SCORE_MAX = 1, 5
SCORE_SCHEMA: dict[str, Any] = {  # strict-mode friendly: every property required, no extras
    "type": "object",
    "properties": {"score": {"type": "integer", "enum": list(range(SCORE_MIN, SCORE_MAX + 1))}},
    "required": ["score"],
    "additionalProperties": False,
}
MAX_SENTENCE_CHARS = 2000

DASHSCOPE_BASE_URL = "https://dashscope.aliyuncs.com/compatible-mode/v1"


def validate_score(parsed: Any) -> str | None:
    """None for a valid ``{"score": N}`` with N a JSON integer in 1..5, else the reason."""
    if not isinstance(parsed, dict) or set(parsed) != {"score"}:
        return 'expected exactly {"score": <integer 1..5>}'
    score = parsed["score"]
    if type(score) is not int:  # rejects 3.0, "3", true
        return f"score must be a JSON integer, got {json.dumps(score)}"
    if not SCORE_MIN <= score <= SCORE_MAX:
        return f"score {score} is outside {SCORE_MIN}..{SCORE_MAX}"
    return None


def validate_sentence(text: Any) -> str | None:
    if not isinstance(text, str) or not text.strip():
        return "empty description"
    if len(text) > MAX_SENTENCE_CHARS:
        return f"description longer than {MAX_SENTENCE_CHARS} characters"
    return None


# ------------------------------------------------------------------------------------------ config
@dataclass(frozen=True)
class JudgeConfig:
    """Which models judge and with which prompt versions. JSON-able; part of the run spec."""

    name: str
    vlm: LLMConfig  # describes the difference between source and edited image
    llm: LLMConfig  # scores the description against the instruction
    describe_prompt_version: int = 1
    score_prompt_version: int = 1

    def __post_init__(self) -> None:
        # Fail at configuration time on unknown prompt versions.
        get_template(DESCRIBE_TEMPLATE, self.describe_prompt_version)
        get_template(SCORE_TEMPLATE, self.score_prompt_version)

    def to_dict(self) -> dict[str, Any]:
        describe = get_template(DESCRIBE_TEMPLATE, self.describe_prompt_version)
        score = get_template(SCORE_TEMPLATE, self.score_prompt_version)
        return {
            "name": self.name,
            "vlm": self.vlm.to_dict(),
            "llm": self.llm.to_dict(),
            "describe_prompt_version": self.describe_prompt_version,
            "score_prompt_version": self.score_prompt_version,
            "prompts": {"describe": describe.to_dict(), "score": score.to_dict()},  # derived, for the record
        }

    @property
    def hash(self) -> str:
        return stable_hash(self.to_dict())

    def required_assets(self) -> list:
        """The describing VLM's and the scoring LLM's files or endpoints (see ciebench.requirements)."""
        return (self.vlm.required_assets(used_by=f"judge {self.name}: vlm")
                + self.llm.required_assets(used_by=f"judge {self.name}: llm"))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "JudgeConfig":
        data = dict(data)
        data.pop("prompts", None)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown judge config fields {unknown}; known: {sorted(known)}")
        for part in ("vlm", "llm"):
            if part not in data:
                raise ValueError(f"judge config needs a {part!r} section")
            if isinstance(data[part], dict):
                data[part] = LLMConfig.from_dict(data[part])
        return cls(**data)


def _http(model: str, **kw: Any) -> LLMConfig:
    return LLMConfig(backend="openai", model=model, **kw)


def _local(model: str, **kw: Any) -> LLMConfig:
    return LLMConfig(backend="transformers", model=model, api_key_env=None, concurrency=1, **kw)


JUDGE_PRESETS: dict[str, JudgeConfig] = {
    # The authors' judge: qwen-vl-max + qwen-max through DashScope's OpenAI-compatible endpoint.
    # DashScope's compatible mode documents JSON mode (json_object); the reply is validated locally.
    "qwen": JudgeConfig(
        name="qwen",
        vlm=_http("qwen-vl-max", base_url=DASHSCOPE_BASE_URL, api_key_env="DASHSCOPE_API_KEY",
                  max_tokens=256, timeout_s=120.0, response_format="json_object"),
        llm=_http("qwen-max", base_url=DASHSCOPE_BASE_URL, api_key_env="DASHSCOPE_API_KEY",
                  max_tokens=64, response_format="json_object"),
    ),
    # OpenAI: gpt-4o sees the images, gpt-4o-mini scores (prices in USD per 1k tokens, list prices
    # at the time of writing; override them in a config file when they change).
    "openai": JudgeConfig(
        name="openai",
        vlm=_http("gpt-4o", api_key_env="OPENAI_API_KEY", max_tokens=256, timeout_s=120.0,
                  price_per_1k_input=0.0025, price_per_1k_output=0.01),
        llm=_http("gpt-4o-mini", api_key_env="OPENAI_API_KEY", max_tokens=64,
                  price_per_1k_input=0.00015, price_per_1k_output=0.0006),
    ),
    # No key, no network: one local Qwen2.5-VL (loaded once, shared by both calls), greedy decoding.
    "local": JudgeConfig(
        name="local",
        vlm=_local("Qwen/Qwen2.5-VL-7B-Instruct", max_tokens=256),
        llm=_local("Qwen/Qwen2.5-VL-7B-Instruct", max_tokens=64),
    ),
    # Quick first run on a modest GPU: the 3B model.
    "lite": JudgeConfig(
        name="lite",
        vlm=_local("Qwen/Qwen2.5-VL-3B-Instruct", max_tokens=256),
        llm=_local("Qwen/Qwen2.5-VL-3B-Instruct", max_tokens=64),
    ),
}


def get_judge_config(name_or_path: str | Path) -> JudgeConfig:
    """A preset by name (see `JUDGE_PRESETS`) or a JSON / YAML file.

    A file holds the fields of `JudgeConfig` (``vlm`` and ``llm`` as `LLMConfig` fields). With
    ``extends: <preset>`` it starts from that preset and overrides only the given fields, e.g. to
    point the openai preset at a local vLLM server::

        {"extends": "openai", "name": "vllm-qwen",
         "vlm": {"model": "Qwen/Qwen2.5-VL-7B-Instruct", "base_url": "http://localhost:8000/v1",
                 "api_key_env": null, "price_per_1k_input": 0, "price_per_1k_output": 0},
         "llm": {"model": "Qwen/Qwen2.5-VL-7B-Instruct", "base_url": "http://localhost:8000/v1",
                 "api_key_env": null, "price_per_1k_input": 0, "price_per_1k_output": 0}}
    """
    key = str(name_or_path)
    if key in JUDGE_PRESETS:
        return JUDGE_PRESETS[key]
    path = Path(key)
    if path.suffix.lower() in (".json", ".yaml", ".yml") or path.exists():
        if not path.is_file():
            raise FileNotFoundError(f"judge config file not found: {path}")
        text = path.read_text(encoding="utf-8")
        if path.suffix.lower() in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError(f"{path}: a judge config is a mapping")
        return _from_file_data(data, default_name=path.stem)
    close = difflib.get_close_matches(key, list(JUDGE_PRESETS), n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise ValueError(f"unknown judge {key!r}: not a preset ({', '.join(JUDGE_PRESETS)}) and not a "
                     f".json/.yaml file.{hint}")


def _from_file_data(data: dict[str, Any], default_name: str) -> JudgeConfig:
    data = dict(data)
    base_name = data.pop("extends", None)
    if base_name is not None:
        if base_name not in JUDGE_PRESETS:
            raise ValueError(f"extends: unknown preset {base_name!r}; presets: {', '.join(JUDGE_PRESETS)}")
        merged = JUDGE_PRESETS[base_name].to_dict()
        merged.pop("prompts", None)
        for part in ("vlm", "llm"):
            merged[part] = {**merged[part], **(data.pop(part, None) or {})}
        merged["name"] = default_name  # a variant is not the preset: named after its file unless given
        merged.update(data)
        data = merged
    data.setdefault("name", default_name)
    return JudgeConfig.from_dict(data)


# ------------------------------------------------------------------------------------------- judge
@dataclass
class JudgeItem:
    sample_id: str
    source: Image.Image
    edited: Image.Image
    instruction: str


@dataclass
class Verdict:
    sample_id: str
    score: int | None
    status: str  # "ok" | "error"
    error: str | None = None
    sentence: str | None = None  # the VLM's difference description
    cached: bool = False  # both calls answered from the cache
    calls: int = 0  # model requests sent for this item (0 when fully cached)
    usage: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.status == "ok" and self.score is not None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class IDCSJudge:
    def __init__(self, config: JudgeConfig, cache_dir: str | Path | None, concurrency: int | None = None):
        self.config = config
        vlm_cfg, llm_cfg = config.vlm, config.llm
        if concurrency is not None:
            if concurrency < 1:
                raise ValueError("concurrency must be >= 1")
            vlm_cfg = dataclasses.replace(vlm_cfg, concurrency=concurrency)
            llm_cfg = dataclasses.replace(llm_cfg, concurrency=concurrency)
        self.vlm: LLMClient = make_client(vlm_cfg, cache_dir=cache_dir)
        self.llm: LLMClient = make_client(llm_cfg, cache_dir=cache_dir)
        self.describe_template = get_template(DESCRIBE_TEMPLATE, config.describe_prompt_version)
        self.score_template = get_template(SCORE_TEMPLATE, config.score_prompt_version)
        self.concurrency = concurrency or max(vlm_cfg.concurrency, llm_cfg.concurrency)
        self._lock = threading.Lock()
        self._counts = {"items": 0, "ok": 0, "errors": 0, "fully_cached": 0}

    def judge_one(self, item: JudgeItem) -> Verdict:
        """Both calls for one item; never raises for model failures."""
        verdict = self._judge_one(item)
        with self._lock:
            self._counts["items"] += 1
            self._counts["ok" if verdict.ok else "errors"] += 1
            self._counts["fully_cached"] += int(verdict.cached)
        return verdict

    def _judge_one(self, item: JudgeItem) -> Verdict:
        sid = str(item.sample_id)
        if not isinstance(item.source, Image.Image) or not isinstance(item.edited, Image.Image):
            return Verdict(sid, None, "error", "source and edited images are required")
        if not isinstance(item.instruction, str) or not item.instruction.strip():
            return Verdict(sid, None, "error", "empty instruction")
        described = self.vlm.complete(self.describe_template, {}, images=[item.source, item.edited],
                                      validate=validate_sentence)
        if not described.ok:
            return Verdict(sid, None, "error", f"describe: {described.error}", None, described.cached,
                           described.attempts, _usage(described))
        sentence = described.text.strip()
        scored = self.llm.complete(self.score_template, {"instruction": item.instruction.strip(),
                                                         "description": sentence},
                                   schema=SCORE_SCHEMA, validate=validate_score)
        calls = described.attempts + scored.attempts
        usage = _usage(described, scored)
        cached = described.cached and scored.cached
        if not scored.ok:
            return Verdict(sid, None, "error", f"score: {scored.error}", sentence, cached, calls, usage)
        return Verdict(sid, int(scored.parsed["score"]), "ok", None, sentence, cached, calls, usage)

    def judge(self, items: Sequence[JudgeItem],
              on_result: Callable[[Verdict], None] | None = None) -> list[Verdict]:
        """Judge `items` with up to `concurrency` items in flight; verdicts in the items' order.
        `on_result(verdict)` is called as each finishes (e.g. to advance a progress bar)."""
        items = list(items)
        if not items:
            return []

        def run(item: JudgeItem) -> Verdict:
            v = self.judge_one(item)
            if on_result is not None:
                on_result(v)
            return v

        workers = min(len(items), self.concurrency)
        if workers == 1:
            return [run(it) for it in items]
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="ciebench-idcs") as pool:
            return list(pool.map(run, items))

    def model_ids(self) -> dict[str, str]:
        ids = {"vlm": self.vlm.model_id, "llm": self.llm.model_id}
        for part, client in (("vlm", self.vlm), ("llm", self.llm)):
            served = client.served_models
            if served:
                ids[f"{part}_served"] = ",".join(served)
        return ids

    @property
    def stats(self) -> dict[str, Any]:
        with self._lock:
            counts = dict(self._counts)
        vlm, llm = self.vlm.stats, self.llm.stats
        total = {k: vlm[k] + llm[k] for k in ("requests", "cache_hits", "retries", "failures",
                                              "prompt_tokens", "completion_tokens")}
        total["cost"] = round(vlm["cost"] + llm["cost"], 8)
        return {**counts, "vlm": vlm, "llm": llm, "total": total}


def _usage(*replies: Any) -> dict[str, Any]:
    out = {"prompt_tokens": 0, "completion_tokens": 0, "cost": 0.0}
    for r in replies:
        if r.cached:
            continue  # spend of this run only
        for k in out:
            out[k] += r.usage.get(k, 0) or 0
    out["cost"] = round(out["cost"], 8)
    return out


def idcs_summary(verdicts: Sequence[Verdict]) -> dict[str, Any]:
    """Dataset IDCS: mean and bootstrap 95% CI over the valid integer scores, with coverage
    (valid / judged) and the failures counted apart by reason."""
    verdicts = list(verdicts)
    scores = [v.score for v in verdicts if v.ok]
    ci = bootstrap_mean_ci(scores)
    out = ci.to_dict()
    out["n_total"] = len(verdicts)
    out["coverage"] = (len(scores) / len(verdicts)) if verdicts else 0.0
    out["failures"] = len(verdicts) - len(scores)
    reasons: dict[str, int] = {}
    for v in verdicts:
        if not v.ok:
            reason = (v.error or "unknown").split(":", 1)[0]
            reasons[reason] = reasons.get(reason, 0) + 1
    out["failures_by_stage"] = reasons
    out["histogram"] = {str(s): scores.count(s) for s in range(SCORE_MIN, SCORE_MAX + 1)}
    out["higher_is_better"] = True
    return out


__all__ = ["JudgeConfig", "JUDGE_PRESETS", "get_judge_config", "JudgeItem", "Verdict", "IDCSJudge",
           "idcs_summary", "validate_score", "validate_sentence", "SCORE_SCHEMA", "DASHSCOPE_BASE_URL"]
