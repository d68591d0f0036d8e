"""IDCS judge against a real HTTP server on 127.0.0.1 (tests/support/llm_server.py)."""
from __future__ import annotations

import json
import re
import time

import pytest
from PIL import Image

from ciebench.llm import LLMConfig
from ciebench.metrics.idcs import (DASHSCOPE_BASE_URL, JUDGE_PRESETS, IDCSJudge, JudgeConfig, JudgeItem,
                                   get_judge_config, idcs_summary, validate_score)
from tests.support.llm_server import error, hang, json_reply, raw, reply, respond, serve_llm

SENTENCE = "The red apple on the table was replaced by a green pear."


@pytest.fixture
def server():
    with serve_llm() as s:
        yield s


def judge_config(server, **kw) -> JudgeConfig:
    common = dict(base_url=server.base_url, api_key_env=None, timeout_s=0.4, max_retries=2,
                  backoff_base_s=0.01, backoff_max_s=0.2)
    common.update(kw)
    return JudgeConfig(name="test", vlm=LLMConfig(model="vlm-test", **common),
                       llm=LLMConfig(model="llm-test", **common))


def items(n: int) -> list[JudgeItem]:
    return [JudgeItem(str(i), Image.new("RGB", (20, 20), (10 * i, 0, 0)), Image.new("RGB", (20, 20), (0, 10 * i, 0)),
                      f"Replace the fruit of item-{i}.") for i in range(n)]


def item_index(req) -> int:
    return int(re.search(r"item-(\d+)", req.text).group(1))


def script_scores(server, scores: dict[int, object]) -> None:
    """VLM: the same sentence for every pair; LLM: the scripted answer for item i."""
    server.on(has_images=True, then=reply(SENTENCE))

    def score(req):
        answer = scores[item_index(req)]
        return answer if not isinstance(answer, int) else json_reply({"score": answer})

    server.on(has_images=False, then=respond(score))


def test_scripted_verdicts_give_the_expected_mean_and_a_second_run_is_free(server, tmp_path):
    scores = {0: 5, 1: 4, 2: 1, 3: 3, 4: 5, 5: 2}
    script_scores(server, scores)
    cfg = judge_config(server)
    judge = IDCSJudge(cfg, cache_dir=tmp_path)
    verdicts = judge.judge(items(6))
    assert [v.sample_id for v in verdicts] == [str(i) for i in range(6)]
    assert [v.score for v in verdicts] == [scores[i] for i in range(6)]
    assert all(v.status == "ok" and v.sentence == SENTENCE and v.calls == 2 and not v.cached for v in verdicts)
    summary = idcs_summary(verdicts)
    assert summary["mean"] == pytest.approx(sum(scores.values()) / 6)
    assert summary["n"] == 6 and summary["coverage"] == 1.0 and summary["failures"] == 0
    assert server.count == 12 and server.problems == []

    # the VLM saw source then edited image; the LLM saw the instruction and the sentence, and a schema
    vlm_req = next(r for r in server.requests if r.has_images and "item-" not in r.text)
    src, edited = vlm_req.images()
    assert src.convert("RGB").getpixel((0, 0))[1] == 0 and edited.convert("RGB").getpixel((0, 0))[0] == 0
    llm_req = next(r for r in server.requests if "item-3" in r.text)
    assert SENTENCE in llm_req.text and llm_req.model == "llm-test"
    assert llm_req.response_format["type"] == "json_schema"
    assert judge.model_ids() == {"vlm": f"openai:vlm-test@{server.base_url}", "llm": f"openai:llm-test@{server.base_url}",
                                 "vlm_served": "vlm-test", "llm_served": "llm-test",
                                 "vlm_served_counts": {"vlm-test": 6}, "llm_served_counts": {"llm-test": 6}}
    assert judge.stats["total"]["requests"] == 12 and judge.stats["ok"] == 6

    rerun = IDCSJudge(cfg, cache_dir=tmp_path)  # re-scoring: same verdicts, zero requests
    again = rerun.judge(items(6))
    assert server.count == 12 and rerun.stats["total"]["requests"] == 0
    assert [(v.score, v.sentence, v.cached, v.calls) for v in again] == [(scores[i], SENTENCE, True, 0) for i in range(6)]


def test_a_description_cut_off_at_max_tokens_is_a_failure_not_a_score(server, tmp_path):
    # Before: "The red apple on the table was replaced by" was scored (1) like a whole sentence.
    server.on(has_images=True, where=lambda r: r.images()[0].getpixel((0, 0))[0] == 0,
              then=reply("The red apple on the table was replaced by", finish_reason="length"))
    server.on(has_images=True, then=reply(SENTENCE))
    server.on(has_images=False, then=json_reply({"score": 4}))
    cut, whole = IDCSJudge(judge_config(server), cache_dir=tmp_path).judge(items(2))
    assert cut.score is None and cut.failure == "unparsable" and "cut off at max_tokens" in cut.error
    assert whole.score == 4
    assert server.count_where(has_images=False) == 1  # the half sentence never reached the scorer


REFUSALS = ["I\u2019m sorry, but I can\u2019t help with identifying people in images.",
            "I cannot assist with that request.", "As an AI, I am not able to compare these images."]
DESCRIPTIONS = ["I can't see any difference between the two images.", "Sorrel leaves were added to the plate."]


def test_a_description_that_reads_as_a_refusal_is_named_and_still_scored(server, tmp_path, caplog):
    # A provider that marks no refusal: the text is scored (as a failed edit); the summary names it.
    texts = REFUSALS + DESCRIPTIONS
    for i, text in enumerate(texts):
        server.on(has_images=True, where=lambda r, i=i: r.images()[0].getpixel((0, 0))[0] == 10 * i, then=reply(text))
    server.on(has_images=False, then=json_reply({"score": 1}))
    verdicts = IDCSJudge(judge_config(server), cache_dir=tmp_path).judge(items(len(texts)))
    assert [v.score for v in verdicts] == [1] * len(texts)  # the numbers are as the judge gave them
    summary = idcs_summary(verdicts)
    assert summary["possible_refusals"] == [str(i) for i in range(len(REFUSALS))]
    assert summary["mean"] == 1 and summary["n"] == len(texts)


def test_429s_timeouts_and_malformed_replies_are_retried_then_failures(server, tmp_path):
    # item 0, 1: fine. item 2: 429 forever. item 3: recovers after a 429, a 503 and a malformed body.
    # item 4: malformed score forever. item 5: the VLM call times out every time.
    # item 6: fine after one invalid answer.
    server.on(has_images=True, where=lambda r: r.images()[0].convert("RGB").getpixel((0, 0)) == (50, 0, 0),
              then=hang(5))
    server.on(has_images=True, then=reply(SENTENCE))
    server.on("item-2", then=error(429, retry_after=0.02))
    server.on("item-3", then=[error(429, retry_after=0.02), error(503), raw("<html>oops"), json_reply({"score": 4})])
    server.on("item-4", then=json_reply({"score": "4"}))
    server.on("item-6", then=[reply("I think 4."), json_reply({"score": 2})])
    server.on(then=json_reply({"score": 5}))
    judge = IDCSJudge(judge_config(server, max_retries=3), cache_dir=tmp_path, concurrency=4)
    t0 = time.monotonic()
    verdicts = judge.judge(items(7))
    assert time.monotonic() - t0 < 5
    by_id = {v.sample_id: v for v in verdicts}
    assert [by_id[i].status for i in "0123456"] == ["ok", "ok", "error", "ok", "error", "error", "ok"]
    assert by_id["2"].score is None and "HTTP 429" in by_id["2"].error and by_id["2"].calls == 1 + 4
    assert by_id["3"].score == 4 and by_id["3"].calls == 1 + 4
    assert "at /score: '4' is not of type 'integer'" in by_id["4"].error and by_id["4"].calls == 1 + 4
    assert by_id["5"].error.startswith("describe:") and "timed out" in by_id["5"].error and by_id["5"].sentence is None
    assert by_id["6"].score == 2
    summary = idcs_summary(verdicts)
    assert summary["coverage"] == pytest.approx(4 / 7) and summary["failures"] == 3
    assert summary["mean"] == pytest.approx((5 + 5 + 4 + 2) / 4) and summary["n"] == 4
    assert summary["failures_by_stage"] == {"score": 2, "describe": 1}
    s = judge.stats
    assert s["errors"] == 3 and s["llm"]["http_errors"] >= 3 and s["vlm"]["timeouts"] == 4


@pytest.mark.parametrize("answer", [
    json_reply({"score": 3.0}), json_reply({"score": "3"}), json_reply({"score": 6}), json_reply({"score": 0}),
    json_reply({"score": True}), json_reply({"score": 3, "why": "because"}), reply("3"), reply("[3]"),
    reply("Score: 3"), reply(""), reply(None), raw("not json at all"),
])
def test_score_is_parsed_strictly(server, tmp_path, answer):
    script_scores(server, {0: answer})
    judge = IDCSJudge(judge_config(server, max_retries=1), cache_dir=tmp_path)
    (v,) = judge.judge(items(1))
    assert v.status == "error" and v.score is None and v.error.startswith("score:") and v.sentence == SENTENCE
    assert v.calls == 1 + 2 and len(list(tmp_path.rglob("*.json"))) == 1  # only the description is cached


def test_fenced_json_is_accepted_and_validate_score():
    assert validate_score({"score": 5}) is None
    for bad in ({"score": 5.0}, {"score": "5"}, {"score": 7}, {"score": False}, {"s": 1}, [5], 5):
        assert validate_score(bad)


def test_fenced_score_and_many_items_run_concurrently(tmp_path):
    with serve_llm(latency_s=0.1) as server:
        server.on(has_images=True, then=reply(SENTENCE))
        server.on(then=reply('```json\n{"score": 4}\n```'))
        judge = IDCSJudge(judge_config(server, timeout_s=2.0), cache_dir=None, concurrency=8)
        t0 = time.monotonic()
        verdicts = judge.judge(items(16))
        elapsed = time.monotonic() - t0
    assert all(v.score == 4 for v in verdicts)
    assert elapsed < 0.5 * 16 * 2 * 0.1, elapsed  # sequential: 3.2 s; 2 waves x 2 calls: ~0.4 s
    assert server.max_in_flight >= 4


def test_bad_items_are_verdicts_not_exceptions(server, tmp_path):
    judge = IDCSJudge(judge_config(server), cache_dir=tmp_path)
    good = items(1)[0]
    v1, v2 = judge.judge([JudgeItem("a", good.source, None, "x"), JudgeItem("b", good.source, good.edited, "  ")])
    assert (v1.status, v2.status) == ("error", "error") and server.count == 0


# ----------------------------------------------------------------------------------------- configs
def test_presets():
    assert {"qwen", "openai", "local", "lite"} <= set(JUDGE_PRESETS)
    q = get_judge_config("qwen")
    assert (q.vlm.model, q.llm.model) == ("qwen-vl-max", "qwen-max")
    assert q.vlm.base_url == DASHSCOPE_BASE_URL and q.vlm.api_key_env == q.llm.api_key_env == "DASHSCOPE_API_KEY"
    o = get_judge_config("openai")
    assert o.vlm.model == "gpt-4o" and o.llm.api_key_env == "OPENAI_API_KEY" and o.vlm.base_url is None
    loc = get_judge_config("local")
    assert loc.vlm.backend == loc.llm.backend == "transformers" and loc.vlm.api_key_env is None
    assert loc.vlm.model == "Qwen/Qwen2.5-VL-7B-Instruct" and loc.vlm.temperature == 0.0
    for cfg in JUDGE_PRESETS.values():
        d = cfg.to_dict()
        assert JudgeConfig.from_dict(json.loads(json.dumps(d))) == cfg
        assert d["prompts"]["score"]["name"] == "idcs_score"
    assert len({c.hash for c in JUDGE_PRESETS.values()}) == len(JUDGE_PRESETS)
    with pytest.raises(ValueError, match="Did you mean 'qwen'"):
        get_judge_config("qwn")


def test_config_files_json_and_yaml_with_extends(tmp_path):
    f = tmp_path / "vllm.json"
    f.write_text(json.dumps({"extends": "openai",
                             "vlm": {"model": "Qwen/Qwen2.5-VL-7B-Instruct", "base_url": "http://localhost:8000/v1",
                                     "api_key_env": None},
                             "llm": {"base_url": "http://localhost:8000/v1", "api_key_env": None}}))
    c = get_judge_config(str(f))
    assert c.name == "vllm" and c.vlm.model == "Qwen/Qwen2.5-VL-7B-Instruct" and c.llm.model == "gpt-4o-mini"
    assert c.vlm.api_key_env is None and c.vlm.max_tokens == JUDGE_PRESETS["openai"].vlm.max_tokens
    y = tmp_path / "ollama.yaml"
    y.write_text("name: ollama\nvlm: {model: 'qwen2.5vl:7b', base_url: 'http://localhost:11434/v1', api_key_env: null}\n"
                 "llm: {model: 'qwen2.5:7b', base_url: 'http://localhost:11434/v1', api_key_env: null}\n")
    c = get_judge_config(y)
    assert c.name == "ollama" and c.vlm.model == "qwen2.5vl:7b" and c.llm.temperature == 0.0
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"vlm": {"model": "m"}, "llm": {"model": "m", "api_key": "sk-x"}}))
    with pytest.raises(ValueError, match="unknown LLMConfig fields"):
        get_judge_config(bad)
    with pytest.raises(FileNotFoundError):
        get_judge_config(tmp_path / "missing.yaml")


def test_summary_names_every_served_snapshot_with_counts_cache_hits_included(tmp_path, monkeypatch):
    # Before: only live requests were counted, so a run answered mostly from a cache recorded under
    # snapshot A named only B (the one live call), and a fully cached re-score named none at all.
    import yaml
    from typer.testing import CliRunner

    from ciebench.cli import app
    from ciebench.export import _judge_provenance
    from tests.support.predictions import identity_predictions

    monkeypatch.setenv("CIEBENCH_CACHE", str(tmp_path / "cache"))
    pred = tmp_path / "pred"
    identity_predictions(pred, 4)
    runner = CliRunner()
    with serve_llm() as server:
        cfg = tmp_path / "judge.yaml"
        cfg.write_text(yaml.safe_dump({"name": "t", "vlm": {"model": "gpt-4o", "base_url": server.base_url},
                                       "llm": {"model": "gpt-4o-mini", "base_url": server.base_url}}))

        def models(out: str, limit: int) -> dict:
            result = runner.invoke(app, ["score", "--dataset", "mini", "--predictions", str(pred), "--out",
                                         str(tmp_path / out), "--limit", str(limit), "--metrics", "idcs", "--judge",
                                         str(cfg), "--judge-canaries", "off"])
            assert result.exit_code == 0, result.output
            return json.loads((tmp_path / out / "summary.json").read_text())["models"]

        server.on(has_images=True, then=reply("The cup was removed.", model="gpt-4o-2024-08-06"))
        server.on(then=json_reply({"score": 4}, model="gpt-4o-mini-2024-07-18"))
        first = models("o1", 3)  # day 1: the aliases are served by snapshots A
        assert first["vlm_served"] == "gpt-4o-2024-08-06"
        assert first["vlm_served_counts"] == {"gpt-4o-2024-08-06": 3}
        assert first["llm_served_counts"] == {"gpt-4o-mini-2024-07-18": 3}

        server.reset(rules=True)  # day 2: the aliases now point at snapshots B; 3 of 4 answers are cached
        server.on(has_images=True, then=reply("The cup was removed.", model="gpt-4o-2024-11-20"))
        server.on(then=json_reply({"score": 2}, model="gpt-4o-mini-2025-01-01"))
        second = models("o2", 4)
        assert server.count == 2  # one describe and one score call were live
        assert second["vlm_served"] == "gpt-4o-2024-08-06,gpt-4o-2024-11-20"
        assert second["vlm_served_counts"] == {"gpt-4o-2024-08-06": 3, "gpt-4o-2024-11-20": 1}
        assert second["llm_served_counts"] == {"gpt-4o-mini-2024-07-18": 3, "gpt-4o-mini-2025-01-01": 1}

        server.reset()
        third = models("o3", 4)  # a re-score entirely from the cache still names who answered
        assert server.count == 0
        assert {k: third[k] for k in ("vlm_served", "vlm_served_counts", "llm_served", "llm_served_counts")} == \
            {k: second[k] for k in ("vlm_served", "vlm_served_counts", "llm_served", "llm_served_counts")}
    # an exported card carries the counts too
    card = _judge_provenance({"judge": {"name": "t"}, "models": third})["served_models"]
    assert card["vlm_served_counts"] == {"gpt-4o-2024-08-06": 3, "gpt-4o-2024-11-20": 1}
