"""Judge protocols: frozen, hashed descriptions of how a judged metric asks and parses, like the region
protocols of `ciebench.metrics.protocols`.

A protocol fixes everything about the *questions* (prompt texts, system prompts, how sample data is
embedded, the order of text and images, how the answer is parsed, the valid range, how answers are
averaged); the judge config fixes who answers (models, endpoints, decoding). Both hashes are recorded
in every summary and leaderboard row.

Two IDCS protocols ship:

- ``idcs-v1``: ciebench's packaged prompts (``ciebench/llm/prompts/idcs_*.txt``), the score answered
  as the JSON object ``{"score": N}`` and validated strictly, instruction and description embedded as
  JSON string literals (a value can never close the markers around it: no raw newline survives JSON
  encoding).
- ``idcs-paper``: the authors' prompts, system prompt, token limits and integer parsing, read at run
  time from their public release at a pinned commit (`PAPER_ASSET`), verified by sha256 and cached;
  ``--judge-prompts DIR`` uses a local copy of the same file instead. Their score reply is parsed as
  Python's ``int(reply)`` parses it. Values are embedded verbatim, as the authors' f-string did:
  parity over hardening (report ``idcs-v1`` beside it).

Other benchmarks register their own protocols in `JUDGE_PROTOCOLS`.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any

from ciebench.assets import PinnedAsset, ResolvedAsset, resolve_asset
from ciebench.errors import lookup
from ciebench.io import stable_hash
from ciebench.llm.prompts import PromptTemplate, get_template

from . import extract

# The authors' IDCS code (CIEBench / imgREDT release, MIT licence). The blob is identical in
# Jia-shao/project1@579e4fa; the pin is the file's bytes as raw.githubusercontent.com serves them.
PAPER_COMMIT = "760de2bc04f4b59de26b84aab0cbf641b3756a26"
PAPER_PATH = "utils_my/metrics_evaluation.py"
PAPER_ASSET = PinnedAsset(
    name="idcs-paper/metrics_evaluation",
    url=f"https://raw.githubusercontent.com/Jia-shao/project/{PAPER_COMMIT}/{PAPER_PATH}",
    sha256="8dc5e72b48fac871fb7e925a442dc7c113bb8b6475455edeee27f275fbe30528",
    source=f"Jia-shao/project@{PAPER_COMMIT}:{PAPER_PATH}",
    licence="MIT",
    filename="metrics_evaluation.py",
)

EMBEDDINGS = ("json", "verbatim")
PARSERS = ("json_score", "python_int")


@dataclass(frozen=True)
class PaperRule:
    """Where in the pinned source each piece lives (see `ciebench.judge.extract`)."""

    describe_function: str = "describe_image_changes"
    score_function: str = "llm_tt"
    score_call_function: str = "call_llm"  # sends the score prompt: its system message and max_tokens
    prompt_variable: str = "prompt"
    aliases: tuple[tuple[str, str], ...] = (("sentence", "description"), ("instruction", "instruction"))


@dataclass(frozen=True)
class JudgeProtocol:
    name: str
    metric: str
    description: str
    embedding: str  # "json": values as JSON string literals | "verbatim": as given
    parser: str  # "json_score": {"score": N} strictly | "python_int": int(reply) as Python parses it
    score_min: int = 1
    score_max: int = 5
    text_first: bool = False  # the user text before the images (the authors' order) instead of after
    aggregate: str = "mean of the valid integer scores; failures counted apart, never scored"
    asset: PinnedAsset | None = None  # prompts from another project; None: packaged templates
    rule: PaperRule | None = None

    def __post_init__(self) -> None:
        if self.embedding not in EMBEDDINGS or self.parser not in PARSERS:
            raise ValueError(f"judge protocol {self.name}: embedding in {EMBEDDINGS}, parser in {PARSERS}")
        if (self.asset is None) != (self.rule is None):
            raise ValueError(f"judge protocol {self.name}: a pinned asset needs an extraction rule")

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        if self.asset is not None:
            out["asset"] = {"source": self.asset.source, "url": self.asset.url, "sha256": self.asset.sha256}
        return out


@dataclass(frozen=True)
class ResolvedJudgeProtocol:
    """A protocol with its prompt templates in hand (fetched and verified where pinned)."""

    protocol: JudgeProtocol
    describe: PromptTemplate
    score: PromptTemplate
    max_tokens: dict[str, int] = field(default_factory=dict)  # per stage, where the protocol fixes it
    facts: dict[str, Any] = field(default_factory=dict)  # e.g. the authors' default model names
    provenance: dict[str, Any] | None = None  # of the pinned asset

    @property
    def name(self) -> str:
        return self.protocol.name

    def to_dict(self) -> dict[str, Any]:
        return {**self.protocol.to_dict(),
                "templates": {"describe": self.describe.to_dict(), "score": self.score.to_dict()},
                "max_tokens": dict(self.max_tokens), "facts": dict(self.facts), "provenance": self.provenance}

    @property
    def hash(self) -> str:
        """Covers the spec and the exact template texts (via their hashes), not where they came from."""
        d = self.to_dict()
        d.pop("provenance")
        return stable_hash(d)


JUDGE_PROTOCOLS: dict[str, JudgeProtocol] = {
    "idcs-v1": JudgeProtocol(
        name="idcs-v1", metric="idcs", embedding="json", parser="json_score",
        description="ciebench's IDCS prompts (packaged), strict JSON score, values embedded as JSON strings"),
    "idcs-paper": JudgeProtocol(
        name="idcs-paper", metric="idcs", embedding="verbatim", parser="python_int", text_first=True,
        description="the authors' IDCS prompts, system prompt, token limits and int() parsing, fetched "
                    "from their release at a pinned commit",
        aggregate="mean of the valid integer scores (the authors averaged the non-zero scores, so failures "
                  "were dropped silently; here they are counted apart and coverage is reported)",
        asset=PAPER_ASSET, rule=PaperRule()),
}
DEFAULT_JUDGE_PROTOCOL = "idcs-v1"


def get_judge_protocol(name: str) -> JudgeProtocol:
    return lookup(JUDGE_PROTOCOLS, name, "judge protocol", ValueError)


def list_judge_protocols() -> list[str]:
    return list(JUDGE_PROTOCOLS)


def resolve_judge_protocol(protocol: JudgeProtocol | str, prompts_dir: str | os.PathLike | None = None,
                           describe_version: int = 1, score_version: int = 1,
                           allow_unverified_local: bool = False,
                           asset: PinnedAsset | None = None) -> ResolvedJudgeProtocol:
    """Templates for `protocol`. Packaged protocols use the given template versions; pinned ones
    resolve their asset (`prompts_dir` first, then the cache, then the URL; a sha256 mismatch is an
    `IntegrityError`) and extract the prompts by the protocol's rule. `asset` replaces the pin (tests)."""
    if isinstance(protocol, str):
        protocol = get_judge_protocol(protocol)
    if protocol.asset is None:
        return ResolvedJudgeProtocol(protocol, get_template("idcs_describe", describe_version),
                                     get_template("idcs_score", score_version))
    pinned = asset or protocol.asset
    if asset is not None:
        protocol = dataclasses.replace(protocol, asset=asset)
    resolved = resolve_asset(pinned, local_dir=prompts_dir, allow_unverified_local=allow_unverified_local)
    return _from_paper_source(protocol, resolved)


def _from_paper_source(protocol: JudgeProtocol, resolved: ResolvedAsset) -> ResolvedJudgeProtocol:
    rule = protocol.rule
    assert rule is not None
    where = resolved.asset.source
    try:
        text = resolved.read_text()
    except UnicodeDecodeError as exc:
        raise extract.ExtractionError(f"{where}: not UTF-8 text ({exc})") from None
    tree = extract.parse_source(text, where)
    aliases = dict(rule.aliases)
    describe = PromptTemplate(
        name=f"{protocol.name.replace('-', '_')}_describe", version=0,
        text=extract.function_prompt(tree, rule.describe_function, rule.prompt_variable, where),
        system=extract.system_prompt(tree, rule.describe_function, where))
    score_text = extract.function_prompt(tree, rule.score_function, rule.prompt_variable, where, aliases)
    score = PromptTemplate(name=f"{protocol.name.replace('-', '_')}_score", version=0, text=score_text,
                           system=extract.system_prompt(tree, rule.score_call_function, where))
    if describe.variables:
        raise extract.ExtractionError(f"{where}: the describe prompt must not have fields, found {sorted(describe.variables)}")
    if score.variables != {"instruction", "description"}:
        raise extract.ExtractionError(f"{where}: the score prompt must have the fields instruction and sentence, "
                                      f"found {sorted(score.variables)}")
    max_tokens = {"describe": int(extract.call_keyword(tree, rule.describe_function, "max_tokens", where)),
                  "score": int(extract.call_keyword(tree, rule.score_call_function, "max_tokens", where))}
    facts = {"describe_model": extract.default_argument(tree, rule.describe_function, "model_name", where),
             "score_model": extract.default_argument(tree, rule.score_call_function, "model_name", where)}
    return ResolvedJudgeProtocol(protocol, describe, score, max_tokens, facts, resolved.provenance())


__all__ = ["JudgeProtocol", "ResolvedJudgeProtocol", "JUDGE_PROTOCOLS", "DEFAULT_JUDGE_PROTOCOL", "PAPER_ASSET",
           "get_judge_protocol", "list_judge_protocols", "resolve_judge_protocol"]
