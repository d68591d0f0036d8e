"""The judge layer shared by every judged metric: protocols (frozen, hashed prompts, pinned where they
are another project's), failure taxonomy, several passes with a judge-noise interval, cost estimates
and budgets. `ciebench.metrics.idcs` is its first user."""
from .cost import Budget, CostReport, estimate_call, image_tokens
from .failures import FAILURE_CLASSES, classify
from .passes import judge_noise_interval, majority, median_score, within_noise
from .protocols import (DEFAULT_JUDGE_PROTOCOL, JUDGE_PROTOCOLS, PAPER_ASSET, JudgeProtocol, ResolvedJudgeProtocol,
                        get_judge_protocol, list_judge_protocols, resolve_judge_protocol)

__all__ = ["Budget", "CostReport", "estimate_call", "image_tokens", "FAILURE_CLASSES", "classify",
           "judge_noise_interval", "majority", "median_score", "within_noise", "DEFAULT_JUDGE_PROTOCOL",
           "JUDGE_PROTOCOLS", "PAPER_ASSET", "JudgeProtocol", "ResolvedJudgeProtocol", "get_judge_protocol",
           "list_judge_protocols", "resolve_judge_protocol"]
