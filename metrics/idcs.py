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
import json
import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from PIL import Image

from ciebench.errors import did_you_mean
from ciebench.io import stable_hash
from ciebench.judge.cost import (Budget, CostReport, cached_reply, estimate_call, prepared_images,
                                 provider_host)
from ciebench.judge.failures import classify, failure_counts, reads_as_refusal
from ciebench.judge.parsing import embed, json_score_validator, python_int, python_int_validator
from ciebench.judge.passes import judge_noise_interval, median_score, pass_seed
from ciebench.judge.protocols import (DEFAULT_JUDGE_PROTOCOL, ResolvedJudgeProtocol, get_judge_protocol,
                                      resolve_judge_protocol)
from ciebench.llm import LLMClient, LLMConfig, get_template, make_client
from ciebench.stats import bootstrap_mean_ci
from ciebench.status import VerdictStatus

from .catalogue import CATALOGUE

DESCRIBE_TEMPLATE = "idcs_describe"
SCORE_TEMPLATE = "idcs_score"
SCORE_MIN, SCORE_MAX = 1, 5


def score_schema(lo: int, hi: int) -> dict[str, Any]:
    """Strict-mode friendly: every property required, no extras. The range lo..hi is stated in the
    prompt and checked by the validator, not the schema, so an integer outside it is counted as
    ``out_of_range`` rather than as an unparsable answer."""
    return {"type": "object", "properties": {"score": {"type": "integer"}},
            "required": ["score"], "additionalProperties": False}


SCORE_SCHEMA: dict[str, Any] = score_schema(SCORE_MIN, SCORE_MAX)
MAX_SENTENCE_CHARS = 2000

DASHSCOPE_BASE_URL = "https://dashscope.aliyuncs.com/compatible-mode/v1"


validate_score = json_score_validator(SCORE_MIN, SCORE_MAX)
validate_score.__doc__ = """None for a valid ``{"score": N}`` with N a JSON integer in 1..5, else the reason."""


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
    describe_prompt_version: int = 1  # packaged templates (protocol idcs-v1)
    score_prompt_version: int = 1
    protocol: str = DEFAULT_JUDGE_PROTOCOL  # a judge protocol (`ciebench.judge.JUDGE_PROTOCOLS`)

    def __post_init__(self) -> None:
        # Fail at configuration time on unknown prompt versions, protocols and section types.
        for part in ("vlm", "llm"):
            if not isinstance(getattr(self, part), LLMConfig):
                raise ValueError(f"judge config {self.name!r}: {part!r} must be a mapping of LLMConfig fields")
        get_template(DESCRIBE_TEMPLATE, self.describe_prompt_version)
        get_template(SCORE_TEMPLATE, self.score_prompt_version)
        get_judge_protocol(self.protocol)

    def to_dict(self) -> dict[str, Any]:
        out = {
            "name": self.name,
            "vlm": self.vlm.to_dict(),
            "llm": self.llm.to_dict(),
            "describe_prompt_version": self.describe_prompt_version,
            "score_prompt_version": self.score_prompt_version,
            "protocol": self.protocol,
        }
        if get_judge_protocol(self.protocol).asset is None:  # packaged templates: derived, for the record
            describe = get_template(DESCRIBE_TEMPLATE, self.describe_prompt_version)
            score = get_template(SCORE_TEMPLATE, self.score_prompt_version)
            out["prompts"] = {"describe": describe.to_dict(), "score": score.to_dict()}
        return out

    @property
    def hash(self) -> str:
        return stable_hash(self.to_dict())

    def required_assets(self, prompts_dir: str | None = None) -> list:
        """The describing VLM's and the scoring LLM's files or endpoints, and a pinned protocol's prompt
        file: the pin, or its local copy in `prompts_dir` (--judge-prompts), which is not bundled
        (see ciebench.requirements)."""
        from ciebench.requirements import local_path, pinned_asset

        out = (self.vlm.required_assets(used_by=f"judge {self.name}: vlm")
               + self.llm.required_assets(used_by=f"judge {self.name}: llm"))
        asset = get_judge_protocol(self.protocol).asset
        if asset is not None:
            who = f"judge {self.name}: protocol {self.protocol}"
            out.append(pinned_asset(asset, used_by=who) if prompts_dir is None else
                       local_path(str(Path(prompts_dir) / asset.filename), used_by=who,
                                  detail=f"{asset.filename}: {asset.source}"))
        return out

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
    hint = did_you_mean(key, JUDGE_PRESETS)
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
class PassVerdict:
    """One independent verdict (one pass) with its provenance: what was asked, of whom, and the answer."""

    pass_index: int
    seed: int | None
    score: int | None
    failure: str | None  # a `ciebench.judge.FAILURE_CLASSES` entry, None when scored
    error: str | None = None
    sentence: str | None = None
    cached: bool = False
    calls: int = 0
    usage: dict[str, Any] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)  # per stage: model, host, hashes, raw reply, ...


@dataclass
class Verdict:
    sample_id: str
    score: float | int | None  # one pass: the integer; several: the median of the valid passes
    status: str  # a VerdictStatus
    error: str | None = None
    sentence: str | None = None  # the VLM's difference description (of the first valid pass)
    cached: bool = False  # every call answered from the cache
    calls: int = 0  # model requests sent for this item (0 when fully cached)
    usage: dict[str, Any] = field(default_factory=dict)
    failure: str | None = None  # failure class when there is no score
    protocol: str | None = None
    protocol_hash: str | None = None
    passes: list[PassVerdict] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.status == VerdictStatus.OK and self.score is not None

    @property
    def pass_scores(self) -> list[int | None]:
        return [p.score for p in self.passes]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class IDCSJudge:
    """Judges items under a judge protocol, `passes` times each, with up to `concurrency` requests in
    flight in all. `prompts_dir` holds local copies of a pinned protocol's files; `budget` stops new
    calls at a cost limit (`ciebench.judge.Budget`); `protocol_asset` replaces the pin (tests)."""

    def __init__(self, config: JudgeConfig, cache_dir: str | Path | None, concurrency: int | None = None,
                 passes: int = 1, prompts_dir: str | Path | None = None, budget: Budget | None = None,
                 protocol_asset: Any = None, allow_unverified_prompts: bool = False):
        self.config = config
        if concurrency is not None and concurrency < 1:
            raise ValueError("concurrency must be >= 1")
        if not isinstance(passes, int) or passes < 1:
            raise ValueError("--judge-passes must be an integer >= 1")
        self.protocol: ResolvedJudgeProtocol = resolve_judge_protocol(
            config.protocol, prompts_dir, config.describe_prompt_version, config.score_prompt_version,
            allow_unverified_local=allow_unverified_prompts, asset=protocol_asset)
        spec = self.protocol.protocol
        self.passes = passes
        self.budget = budget
        self.describe_template = self.protocol.describe
        self.score_template = self.protocol.score
        if spec.parser == "json_score":
            self.score_schema: dict | None = score_schema(spec.score_min, spec.score_max)
            self.validate_score = json_score_validator(spec.score_min, spec.score_max)
        else:  # the authors' plain-integer answer: no response_format, int() parsing
            self.score_schema = None
            self.validate_score = python_int_validator(spec.score_min, spec.score_max)
        vlm_cfg, llm_cfg = config.vlm, config.llm
        if "describe" in self.protocol.max_tokens:
            vlm_cfg = dataclasses.replace(vlm_cfg, max_tokens=self.protocol.max_tokens["describe"])
        if "score" in self.protocol.max_tokens:
            llm_cfg = dataclasses.replace(llm_cfg, max_tokens=self.protocol.max_tokens["score"])
        if concurrency is not None:
            vlm_cfg = dataclasses.replace(vlm_cfg, concurrency=concurrency)
            llm_cfg = dataclasses.replace(llm_cfg, concurrency=concurrency)
        self.concurrency = concurrency or max(vlm_cfg.concurrency, llm_cfg.concurrency)
        # One client pair per pass: pass k asks with seed + k and keeps its own cache slot, so passes
        # are independent verdicts and pass 0 shares the cache of a one-pass run.
        self.clients: list[tuple[LLMClient, LLMClient]] = []
        for k in range(passes):
            cache_k = None if cache_dir is None else (Path(cache_dir) if k == 0 else Path(cache_dir) / f"pass-{k}")
            self.clients.append((
                make_client(dataclasses.replace(vlm_cfg, seed=pass_seed(vlm_cfg.seed, k)), cache_dir=cache_k),
                make_client(dataclasses.replace(llm_cfg, seed=pass_seed(llm_cfg.seed, k)), cache_dir=cache_k)))
        self.vlm, self.llm = self.clients[0]
        self._text_first = spec.text_first
        self._lock = threading.Lock()
        self._counts = {"items": 0, "ok": 0, "errors": 0, "not_judged": 0, "fully_cached": 0}

    # ------------------------------------------------------------------------------------ one item
    def judge_one(self, item: JudgeItem) -> Verdict:
        """Every pass for one item; never raises for model failures."""
        return self._finish(item, [self._judge_pass(item, k) for k in range(self.passes)])

    def _finish(self, item: JudgeItem, passes: list[PassVerdict]) -> Verdict:
        verdict = self._combine(str(item.sample_id), passes)
        with self._lock:
            self._counts["items"] += 1
            key = "ok" if verdict.ok else ("not_judged" if verdict.status == VerdictStatus.NOT_JUDGED else "errors")
            self._counts[key] += 1
            self._counts["fully_cached"] += int(verdict.cached)
        return verdict

    def _combine(self, sid: str, passes: list[PassVerdict]) -> Verdict:
        valid = [p for p in passes if p.score is not None]
        usage = _sum_usage(p.usage for p in passes)
        calls = sum(p.calls for p in passes)
        cached = all(p.cached for p in passes)
        common = dict(protocol=self.protocol.name, protocol_hash=self.protocol.hash, passes=passes)
        if valid:
            score: float | int | None = valid[0].score if self.passes == 1 else median_score([p.score for p in valid])
            return Verdict(sid, score, VerdictStatus.OK, None, valid[0].sentence, cached, calls, usage, None, **common)
        first = passes[0]
        status = VerdictStatus.NOT_JUDGED if all(p.failure == "not_judged" for p in passes) else VerdictStatus.ERROR
        failure = Counter(p.failure for p in passes if p.failure).most_common(1)[0][0]
        sentence = next((p.sentence for p in passes if p.sentence), None)
        return Verdict(sid, None, status, first.error, sentence, cached, calls, usage, failure, **common)

    def _judge_pass(self, item: JudgeItem, k: int) -> PassVerdict:
        vlm, llm = self.clients[k]
        seed = vlm.config.seed
        if not isinstance(item.source, Image.Image) or not isinstance(item.edited, Image.Image):
            return PassVerdict(k, seed, None, "missing_prediction", "source and edited images are required")
        if not isinstance(item.instruction, str) or not item.instruction.strip():
            return PassVerdict(k, seed, None, "unparsable", "empty instruction")
        images = [item.source, item.edited]
        kwargs = {"text_first": True} if self._text_first else {}
        described, prov_d = self._call(vlm, "describe", self.describe_template, {}, images, None,
                                       validate_sentence, kwargs)
        prov = {"describe": prov_d}
        if described is None or prov_d.get("not_judged"):
            spent = [] if described is None else [described]
            return PassVerdict(k, seed, None, "not_judged", f"describe: {NOT_JUDGED}", calls=_attempts(*spent),
                               usage=_usage(*spent), provenance=prov)
        if not described.ok:
            return PassVerdict(k, seed, None, classify(described), f"describe: {described.error}", None,
                               described.cached, described.attempts, _usage(described), prov)
        sentence = described.text.strip()
        if getattr(described, "finish_reason", None) == "length":  # a half sentence would be scored as a whole
            return PassVerdict(k, seed, None, "unparsable", "describe: the description was cut off at max_tokens "
                               "(finish_reason 'length'); raise the describing model's max_tokens", sentence,
                               described.cached, described.attempts, _usage(described), prov)
        embedding = self.protocol.protocol.embedding
        variables = {"instruction": embed(item.instruction.strip(), embedding),
                     "description": embed(sentence, embedding)}
        scored, prov_s = self._call(llm, "score", self.score_template, variables, [], self.score_schema,
                                    self.validate_score, {})
        prov["score"] = prov_s
        replies = [described, *([scored] if scored is not None else [])]
        calls, usage = _attempts(*replies), _usage(*replies)
        if scored is None or prov_s.get("not_judged"):
            return PassVerdict(k, seed, None, "not_judged", f"score: {NOT_JUDGED}", sentence, False, calls,
                               usage, prov)
        cached = described.cached and scored.cached
        if not scored.ok:
            return PassVerdict(k, seed, None, classify(scored), f"score: {scored.error}", sentence, cached, calls,
                               usage, prov)
        value = int(scored.parsed["score"]) if self.score_schema is not None else python_int(scored.text)
        return PassVerdict(k, seed, value, None, None, sentence, cached, calls, usage, prov)

    def _call(self, client: LLMClient, stage: str, template: Any, variables: dict[str, Any], images: list,
              schema: dict | None, validate: Any, kwargs: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
        """One model call under the budget: (None, provenance) when the budget refuses it, (the failed
        reply, provenance with `not_judged`) when it refuses a retry."""
        prepared = prepared_images(client, images)
        cfg = client.config
        prov: dict[str, Any] = {"template": template.id, "template_hash": template.hash, "model": cfg.model,
                                "provider_host": provider_host(cfg), "temperature": cfg.temperature,
                                "seed": cfg.seed, "image_sizes": [list(im.size) for im in prepared]}
        if kwargs.get("text_first"):
            prov["text_first"] = True
        reserved = 0.0
        retry_refused = False
        may_retry = None
        budget = self.budget
        if budget is not None and cached_reply(client, template, variables, images, schema, validate,
                                               **kwargs) is None:
            cost_max = estimate_call(cfg, stage, template.render_system(**variables), template.render(**variables),
                                     [im.size for im in prepared]).cost_max
            if not budget.reserve(cost_max):
                prov["not_judged"] = "budget"
                return None, prov
            reserved = cost_max

            def may_retry() -> bool:  # every attempt is paid: each retry reserves its own upper bound first
                nonlocal reserved, retry_refused
                if budget.reserve(cost_max):
                    reserved += cost_max
                    return True
                retry_refused = True
                return False

        reply = client.complete(template, variables, images=images, schema=schema, validate=validate,
                                may_retry=may_retry, **kwargs)
        if budget is not None:
            budget.settle(reserved, 0.0 if reply.cached else (reply.usage or {}).get("cost", 0.0))
        prov.update({
            "served_model": getattr(reply, "served_model", None) or reply.model,
            "provider_host": getattr(reply, "provider_host", None) or prov["provider_host"],
            "http_status": getattr(reply, "http_status", None),
            "finish_reason": getattr(reply, "finish_reason", None),
            "refusal": getattr(reply, "refusal", None),
            "raw_reply": reply.text,
            "temperature": getattr(reply, "temperature", None) if getattr(reply, "temperature", None) is not None
            else prov["temperature"],
            "seed": getattr(reply, "seed", prov["seed"]),
            "response_format": getattr(reply, "response_format", None),
            "cached": reply.cached,
            "attempts": reply.attempts,
        })
        if retry_refused:  # stopped by the cap, not by the judge: a rerun under a higher cap judges it
            prov["not_judged"] = "budget"
        return reply, prov

    # --------------------------------------------------------------------------------- many items
    def judge(self, items: Sequence[JudgeItem], on_result: Callable[[Verdict], None] | None = None,
              on_indexed: Callable[[int, Verdict], None] | None = None) -> list[Verdict]:
        """Judge `items` (every pass) with up to `concurrency` (item, pass) units in flight; verdicts in
        the items' order. `on_result(verdict)` / `on_indexed(item index, verdict)` are called as each
        item completes (e.g. to advance a bar, to write the verdict)."""
        items = list(items)
        if not items:
            return []
        done: list[list[PassVerdict | None]] = [[None] * self.passes for _ in items]
        left = [self.passes] * len(items)
        out: list[Verdict | None] = [None] * len(items)

        def run(unit: tuple[int, int]) -> None:
            i, k = unit
            pv = self._judge_pass(items[i], k)
            with self._lock:
                done[i][k] = pv
                left[i] -= 1
                complete = left[i] == 0
            if complete:
                v = self._finish(items[i], [p for p in done[i] if p is not None])
                out[i] = v
                if on_result is not None:
                    on_result(v)
                if on_indexed is not None:
                    on_indexed(i, v)

        units = [(i, k) for i in range(len(items)) for k in range(self.passes)]
        workers = min(len(units), self.concurrency)
        if workers == 1:
            for u in units:
                run(u)
        else:
            with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="ciebench-idcs") as pool:
                for f in [pool.submit(run, u) for u in units]:
                    f.result()
        return [v for v in out if v is not None]

    def estimate(self, items: Sequence[JudgeItem]) -> CostReport:
        """The dry run: calls this judging would send (cached ones cost nothing), tokens and cost.
        A score call whose description is not cached yet is estimated with a typical sentence."""
        report = CostReport()
        embedding = self.protocol.protocol.embedding
        for item in items:
            for k in range(self.passes):
                vlm, llm = self.clients[k]
                images = [item.source, item.edited]
                prepared = prepared_images(vlm, images)
                sentence = cached_reply(vlm, self.describe_template, {}, images, None, validate_sentence,
                                        self._text_first)
                if sentence is None:
                    report.add("describe", estimate_call(vlm.config, "describe", self.describe_template.render_system(),
                                                         self.describe_template.render(), [im.size for im in prepared]))
                else:
                    report.add("describe", None)
                variables = {"instruction": embed(item.instruction.strip(), embedding),
                             "description": embed((sentence or TYPICAL_SENTENCE).strip(), embedding)}
                hit = sentence is not None and cached_reply(llm, self.score_template, variables, [],
                                                            self.score_schema, self.validate_score) is not None
                report.add("score", None if hit else estimate_call(
                    llm.config, "score", self.score_template.render_system(**variables),
                    self.score_template.render(**variables)))
        return report

    def model_ids(self) -> dict[str, Any]:
        """The configured models and, per stage, the models the provider says answered this judging:
        `<stage>_served` names them (comma-separated), `<stage>_served_counts` counts the calls each
        answered over every pass, cache hits included (by the model recorded with the cached answer)."""
        ids: dict[str, Any] = {"vlm": self.vlm.model_id, "llm": self.llm.model_id}
        for part, idx in (("vlm", 0), ("llm", 1)):
            counts: Counter[str] = Counter()
            for pair in self.clients:
                counts.update(pair[idx].served_counts)
            if counts:
                ids[f"{part}_served"] = ",".join(sorted(counts))
                ids[f"{part}_served_counts"] = dict(sorted(counts.items()))
        return ids

    @property
    def stats(self) -> dict[str, Any]:
        with self._lock:
            counts = dict(self._counts)
        vlm = _sum_stats(pair[0].stats for pair in self.clients)
        llm = _sum_stats(pair[1].stats for pair in self.clients)
        total = {k: vlm[k] + llm[k] for k in ("requests", "cache_hits", "retries", "failures",
                                              "prompt_tokens", "completion_tokens")}
        total["cost"] = round(vlm["cost"] + llm["cost"], 8)
        out = {**counts, "vlm": vlm, "llm": llm, "total": total}
        if self.budget is not None:
            out["budget"] = self.budget.to_dict()
        return out


NOT_JUDGED = "not judged: the --max-cost budget was reached before this call (rerun to continue)"
TYPICAL_SENTENCE = "The red apple on the wooden table was replaced by a green pear, and nothing else changed."


def _sum_stats(many: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for s in many:
        for k, v in s.items():
            out[k] = out.get(k, 0) + v
    out["cost"] = round(out.get("cost", 0.0), 8)
    return out


def _sum_usage(many: Any) -> dict[str, Any]:
    out = {"prompt_tokens": 0, "completion_tokens": 0, "cost": 0.0}
    for u in many:
        for k in out:
            out[k] += (u or {}).get(k, 0) or 0
    out["cost"] = round(out["cost"], 8)
    return out


def _attempts(*replies: Any) -> int:
    return sum(r.attempts for r in replies)


def _usage(*replies: Any) -> dict[str, Any]:
    return _sum_usage(r.usage for r in replies if not r.cached)  # spend of this run only


def idcs_summary(verdicts: Sequence[Verdict], missing: int = 0) -> dict[str, Any]:
    """Dataset IDCS: mean and bootstrap 95% CI over the valid sample scores, coverage (valid / judged,
    `missing` predictions counted as judged-and-failed), failures counted apart by stage and by class
    (`failures_by_class`, every class present), with several passes the judge-noise interval, and the
    samples whose scored description reads as a refusal (`possible_refusals`)."""
    verdicts = list(verdicts)
    scores = [v.score for v in verdicts if v.ok]
    ci = bootstrap_mean_ci(scores)
    out = ci.to_dict()
    out["n_total"] = len(verdicts) + missing
    out["coverage"] = (len(scores) / out["n_total"]) if out["n_total"] else 0.0
    out["failures"] = out["n_total"] - len(scores)
    reasons: dict[str, int] = {}
    for v in verdicts:
        if not v.ok:
            reason = (v.error or "unknown").split(":", 1)[0]
            reasons[reason] = reasons.get(reason, 0) + 1
    out["failures_by_stage"] = reasons
    classes = failure_counts(v.failure or ("unparsable" if not v.ok else None) for v in verdicts)
    classes["missing_prediction"] += missing
    out["failures_by_class"] = classes
    # every score on the scale, and any half-point one (with an even number of passes a median can fall
    # between two: 3.5), so the counts add up to n
    histogram = dict.fromkeys(map(float, range(SCORE_MIN, SCORE_MAX + 1)), 0)
    for x in scores:
        histogram[float(x)] = histogram.get(float(x), 0) + 1
    out["histogram"] = {f"{x:g}": n for x, n in sorted(histogram.items())}
    protocols = sorted({(v.protocol, v.protocol_hash) for v in verdicts if v.protocol})
    if protocols:
        out["protocol"], out["protocol_hash"] = protocols[0] if len(protocols) == 1 else (
            ",".join(p for p, _ in protocols), ",".join(h for _, h in protocols))
    n_passes = max((len(v.passes) for v in verdicts), default=1)
    out["passes"] = n_passes
    if n_passes > 1:
        # A scored sample whose other passes failed rests on fewer draws: its score is the median of those
        # it has, and the noise interval, redrawing only them, would come out too narrow (zero-width with
        # one pass left), read as a judge that never changes its mind. Counted, and the interval withheld.
        lost = [p.failure or "unparsable" for v in verdicts if v.ok for p in v.passes if p.score is None]
        short = sum(1 for v in verdicts if v.ok and sum(p.score is not None for p in v.passes) < n_passes)
        out["failed_passes"] = {c: n for c, n in failure_counts(lost).items() if n}
        if short:
            out["judge_noise"] = None
            out["judge_noise_withheld"] = (
                f"{short} of {len(scores)} scored predictions rest on fewer than {n_passes} passes (failed passes: "
                + ", ".join(f"{c} {n}" for c, n in out["failed_passes"].items())
                + "); an interval over fewer draws would understate the judge's noise")
        else:
            noise = judge_noise_interval([v.pass_scores for v in verdicts], [v.sample_id for v in verdicts])
            out["judge_noise"] = noise.to_dict() if noise is not None else None
    # scored descriptions that read as the describing model declining: named, never dropped
    out["possible_refusals"] = [v.sample_id for v in verdicts if v.ok and any(
        p.score is not None and reads_as_refusal(p.sentence) for p in (v.passes or [v]))]
    out["higher_is_better"] = CATALOGUE["idcs"].higher_is_better
    return out


__all__ = ["JudgeConfig", "JUDGE_PRESETS", "get_judge_config", "JudgeItem", "Verdict", "PassVerdict", "IDCSJudge",
           "idcs_summary", "validate_score", "validate_sentence", "SCORE_SCHEMA", "DASHSCOPE_BASE_URL"]
