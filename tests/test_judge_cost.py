"""Cost control: image-token rules, the dry-run estimate (cached calls are free) and --max-cost
stopping in time with a resumable run."""
from __future__ import annotations

import math

import pytest
import yaml
from typer.testing import CliRunner

from ciebench.cli import app
from ciebench.judge import Budget, image_tokens
from ciebench.metrics.idcs import IDCSJudge
from tests.support.fixtures_judge import SENTENCE, items, judge_config
from tests.support.llm_server import json_reply, reply, serve_llm
from tests.support.predictions import identity_predictions

runner = CliRunner()


def test_image_token_rules_match_the_providers_published_examples():
    # OpenAI's documented examples for high detail: 1024x1024 -> 765 tokens, 2048x4096 -> 1105
    assert image_tokens("gpt-4o", 1024, 1024) == (765, "openai 512px tiles")
    assert image_tokens("gpt-4o-2024-08-06", 2048, 4096)[0] == 1105
    assert image_tokens("gpt-4o-mini", 1024, 1024)[0] == 2833 + 5667 * 4
    # Qwen-VL: one token per 28x28 patch (+2), at least 4 and at most 1280 patches
    assert image_tokens("qwen-vl-max", 280, 280) == (102, "qwen-vl 28px patches")
    assert image_tokens("qwen-vl-max", 28, 28)[0] == 4 + 2 and image_tokens("qwen-vl-max", 4000, 4000)[0] == 1282
    assert image_tokens("some-model", 100, 100)[1] == "assumed"


def test_dry_run_counts_tokens_by_the_rule_and_cached_calls_cost_nothing(tmp_path):
    with serve_llm() as server:
        server.on(has_images=True, then=reply(SENTENCE))
        server.on(then=json_reply({"score": 4}))
        cfg = judge_config(server, price_per_1k_input=2.0, price_per_1k_output=10.0)
        judge = IDCSJudge(cfg, cache_dir=tmp_path)
        its = items(3, size=(600, 300))
        report = judge.estimate(its).to_dict()
        assert server.count == 0 and report["calls"] == 6 and report["cached_calls"] == 0
        t = judge.describe_template
        per_image, _ = image_tokens("vlm-test", 600, 300)
        describe_in = math.ceil(len(t.system) / 4) + math.ceil(len(t.text) / 4) + 2 * per_image
        assert report["calls_by_stage"] == {"describe": 3, "score": 3}
        assert report["input_tokens"] > 3 * describe_in  # plus the score calls' text
        score_in = (report["input_tokens"] - 3 * describe_in) / 3
        assert 100 < score_in < 1000
        assert report["output_tokens_max"] == 3 * (cfg.vlm.max_tokens + cfg.llm.max_tokens)
        assert report["cost_usd_max"] == pytest.approx(report["input_tokens"] / 1000 * 2.0
                                                       + report["output_tokens_max"] / 1000 * 10.0)
        judge.judge(its[:2])
        after = judge.estimate(its).to_dict()
        assert after["calls"] == 2 and after["cached_calls"] == 4 and server.count == 4


def test_max_cost_stops_before_the_budget_and_the_run_resumes(tmp_path):
    usage = {"prompt_tokens": 700, "completion_tokens": 0, "total_tokens": 700}
    with serve_llm() as server:
        server.on(has_images=True, then=reply(SENTENCE, usage=usage))
        server.on(then=json_reply({"score": 3}, usage=usage))
        # describe calls cost $0.70 each (700 tokens at $1/1k), score calls nothing
        cfg = judge_config(server, price_per_1k_input=0.0, concurrency=1)
        cfg = type(cfg)(name=cfg.name, vlm=type(cfg.vlm)(**{**cfg.vlm.to_dict(), "price_per_1k_input": 1.0,
                                                             "price_per_1k_output": 0.0}), llm=cfg.llm)
        budget = Budget(2.0)
        judge = IDCSJudge(cfg, cache_dir=tmp_path, concurrency=1, budget=budget)
        reserve = judge.estimate(items(1)).to_dict()["cost_usd_max"]
        assert 0.3 < reserve < 1.3  # the describe call's upper bound
        verdicts = judge.judge(items(5))
        judged = [v for v in verdicts if v.ok]
        skipped = [v for v in verdicts if v.status == "not_judged"]
        # the budget never lets spent + committed pass $2: as many $0.70 calls as fit with their reserve
        fit = 0
        spent = 0.0
        while spent + reserve <= 2.0 and fit < 5:
            spent += 0.7
            fit += 1
        assert len(judged) == fit and len(skipped) == 5 - fit and fit >= 1
        assert budget.spent == pytest.approx(0.7 * fit) and budget.spent <= 2.0
        assert all(v.failure == "not_judged" and "max-cost" in v.error for v in skipped)
        assert judge.stats["budget"]["refused_calls"] >= 1 and server.count_where(has_images=True) == fit
        sent = server.count
        rerun = IDCSJudge(cfg, cache_dir=tmp_path, concurrency=1, budget=Budget(100.0))
        again = rerun.judge(items(5))
        assert all(v.ok for v in again) and server.count == sent + 2 * (5 - fit)  # judged ones were cached


def test_retries_are_paid_so_each_reserves_its_cost_before_it_is_sent(tmp_path):
    from ciebench.judge.cost import estimate_call
    from ciebench.judge.parsing import embed
    from ciebench.llm import LLMConfig
    from ciebench.metrics.idcs import JudgeConfig

    with serve_llm() as server:
        common = dict(base_url=server.base_url, api_key_env=None, max_tokens=64, backoff_base_s=0.01,
                      backoff_max_s=0.02, price_per_1k_input=0.001, price_per_1k_output=0.002, max_retries=4)
        cfg = JudgeConfig(name="t", vlm=LLMConfig(model="m", **common), llm=LLMConfig(model="m", **common))
        (item,) = items(1)
        probe = IDCSJudge(cfg, cache_dir=None)
        d, t = probe.describe_template, probe.score_template
        describe = estimate_call(cfg.vlm, "describe", d.render_system(), d.render(), [item.source.size] * 2)
        variables = {"instruction": embed(item.instruction, "json"), "description": embed(SENTENCE, "json")}
        score = estimate_call(cfg.llm, "score", t.render_system(**variables), t.render(**variables))
        # every answer bills its call's upper bound; the score answers are invalid, so they are retried
        server.on(has_images=True, then=reply(SENTENCE, usage={"prompt_tokens": describe.input_tokens,
                                                               "completion_tokens": 64}))
        server.on(then=reply("Score: 4", usage={"prompt_tokens": score.input_tokens, "completion_tokens": 64}))
        budget = Budget(describe.cost_max + 2 * score.cost_max)  # room for one retry, not for four
        (verdict,) = IDCSJudge(cfg, cache_dir=tmp_path, budget=budget).judge([item])
    assert server.count == 3  # describe, score, one retry: the second retry did not fit
    assert budget.spent == pytest.approx(budget.max_usd) and budget.spent <= budget.max_usd + 1e-12
    assert verdict.status == "not_judged" and "max-cost" in verdict.error  # a rerun under a higher cap judges it
    assert verdict.passes[0].calls == 3 and verdict.passes[0].usage["cost"] == pytest.approx(budget.spent)


def test_score_dry_run_prints_the_estimate_and_sends_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("CIEBENCH_CACHE", str(tmp_path / "cache"))
    pred = tmp_path / "pred"
    identity_predictions(pred, 2)
    with serve_llm() as server:
        cfg = tmp_path / "judge.yaml"
        cfg.write_text(yaml.safe_dump({"extends": "openai", "vlm": {"base_url": server.base_url},
                                       "llm": {"base_url": server.base_url}}))
        result = runner.invoke(app, ["score", "--dataset", "mini", "--predictions", str(pred), "--out", str(tmp_path / "o"),
                                     "--limit", "2", "--metrics", "idcs", "--judge", str(cfg), "--dry-run"])
        assert result.exit_code == 0, result.output
        assert server.count == 0 and not (tmp_path / "o").exists()
        assert "judge calls to send: 4 (describe 2, score 2)" in result.output
        assert "estimated cost: $" in result.output and "openai 512px tiles" in result.output
