"""Drift canaries: the built-in set, calibration, a server that changed its answers, frozen runs."""
from __future__ import annotations

import json

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from ciebench.cli import app
from ciebench.errors import DataError
from ciebench.judge import canaries as C
from ciebench.metrics.idcs import IDCSJudge
from tests.support.fixtures_judge import judge_config
from tests.support.leaderboard_runs import build_run
from tests.support.llm_server import json_reply, reply, serve_llm
from tests.support.predictions import identity_predictions

runner = CliRunner()


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CIEBENCH_CACHE", str(tmp_path / "cache"))


def script(server, unchanged_score=1, changed_score=5, describe_usage=None, score_usage=None):
    def same(r):
        a, b = r.images()
        return np.array_equal(np.asarray(a.convert("RGB")), np.asarray(b.convert("RGB")))

    server.on(has_images=True, where=same, then=reply("Nothing was added, removed or replaced.", usage=describe_usage))
    server.on(has_images=True, then=reply("The object was removed.", usage=describe_usage))
    server.on("Nothing was added", then=json_reply({"score": unchanged_score}, usage=score_usage)
              if isinstance(unchanged_score, int) else unchanged_score)  # or a scripted answer
    server.on(then=json_reply({"score": changed_score}, usage=score_usage))


def test_the_mini_canary_set_is_deterministic():
    a, b = C.mini_canaries(), C.mini_canaries()
    assert a.hash == b.hash and len(a.items) >= 9 and {c.id.split("/")[1] for c in a.items} == {"unchanged", "filled"}
    filled = next(c for c in a.items if c.id.endswith("/filled"))
    diff = np.any(np.asarray(filled.source) != np.asarray(filled.edited), axis=2)
    assert diff.any() and not diff.all()  # painted inside the mask only


def test_calibrate_then_detect_a_server_that_changed_its_answers(tmp_path):
    full = C.mini_canaries()
    canaries = C.CanarySet("mini-part", full.items[:6])  # a smaller set keeps the test fast
    with serve_llm() as server:
        script(server)
        cfg = judge_config(server, timeout_s=20)
        judge = IDCSJudge(cfg, cache_dir=None, concurrency=4)
        key = C.judge_hash_of(cfg, judge.protocol.hash)
        first = C.calibrate(judge, key, canaries)
        assert first["reference_created"] and first["scored"] == len(canaries.items)
        second = C.calibrate(judge, key, canaries)
        assert second["agreement"] == 1.0 and second["warning"] is None
        server.reset(rules=True)
        script(server, unchanged_score=2)  # the provider's model now rates "nothing changed" as 2
        drift = C.calibrate(judge, key, canaries)
        n_unchanged = sum(c.id.endswith("/unchanged") for c in canaries.items)
        assert drift["agreement"] == pytest.approx(1 - n_unchanged / len(canaries.items))
        assert "judge drift" in drift["warning"]
        # scoring runs check with a fresh answer slot per day: a second check that day sends nothing
        factory = lambda slot: IDCSJudge(cfg, cache_dir=slot, concurrency=4)  # noqa: E731
        checked = C.check(factory, key, canaries, mode="day")
        assert checked["agreement"] < 0.9 and checked["warning"]
        n = server.count
        assert C.check(factory, key, canaries, mode="day")["agreement"] == checked["agreement"] and server.count == n
        C.check(factory, key, canaries, mode="run")
        assert server.count > n
        assert C.check(factory, "never-calibrated", canaries) is None


def test_canaries_that_fail_today_count_as_disagreements_and_warn(tmp_path):
    # Before: agreement kept only canaries scored both times, so a judge whose answers no longer parsed
    # for most canaries reported agreement 1.0 over the few left, without a warning.
    canaries = C.CanarySet("mini-part", C.mini_canaries().items[:6])
    n_unchanged = sum(c.id.endswith("/unchanged") for c in canaries.items)
    assert 0 < n_unchanged < len(canaries.items)
    with serve_llm() as server:
        script(server)
        cfg = judge_config(server, timeout_s=20)
        key = C.judge_hash_of(cfg, IDCSJudge(cfg, cache_dir=None).protocol.hash)
        assert C.calibrate(IDCSJudge(cfg, cache_dir=None, concurrency=4), key, canaries)["scored"] == 6
        server.reset(rules=True)  # today the scorer's answers to "nothing changed" no longer parse
        script(server, unchanged_score=reply("I would rate this a one."))
        checked = C.check(lambda slot: IDCSJudge(cfg, cache_dir=slot, concurrency=4), key, canaries, mode="run")
    n_filled = len(canaries.items) - n_unchanged  # the only canaries scored today, each as stored
    assert checked["agreement"] == pytest.approx(n_filled / 6)
    assert "judge drift" in checked["warning"] and f"{n_unchanged} failed to score" in checked["warning"]
    assert checked["n"] == 6 and checked["scored"] == n_filled and checked["reference_scored"] == 6
    assert checked["compared"] == n_filled and checked["failed_today"] == n_unchanged


@pytest.mark.heavy
def test_scoring_reports_canary_drift_in_the_summary(tmp_path):
    pred = tmp_path / "pred"
    identity_predictions(pred, 1)
    with serve_llm() as server:
        script(server)
        cfg = tmp_path / "judge.yaml"
        cfg.write_text(yaml.safe_dump({"name": "t", "vlm": {"model": "v", "base_url": server.base_url, "timeout_s": 30},
                                       "llm": {"model": "l", "base_url": server.base_url}}))
        result = runner.invoke(app, ["judge", "calibrate", "--judge", str(cfg)])
        assert result.exit_code == 0 and "stored the reference" in result.output, result.output
        server.reset(rules=True)
        script(server, unchanged_score=3)
        result = runner.invoke(app, ["score", "--dataset", "mini", "--predictions", str(pred), "--out",
                                     str(tmp_path / "o"), "--limit", "1", "--metrics", "idcs", "--judge", str(cfg)])
        assert result.exit_code == 0, result.output
        summary = json.loads((tmp_path / "o" / "summary.json").read_text())
        assert summary["judge_canaries"]["agreement"] < 0.9 and "judge drift" in summary["judge_canaries"]["warning"]
        result = runner.invoke(app, ["judge", "calibrate", "--judge", str(cfg)])
        assert result.exit_code == 1 and "judge drift" in result.output


def test_canary_calls_are_paid_from_the_max_cost_budget_and_reported(tmp_path):
    # Before: the canary judge had no budget, so `--max-cost 0` still sent the 36 canary calls, and their
    # spend appeared neither in judge_budget nor in the judge stats.
    pred = tmp_path / "pred"
    identity_predictions(pred, 2)
    describe_cost = (1000 + 10) / 1000 * 0.01  # the scripted usage below at $0.01 per 1k tokens in and out
    score_cost = (100 + 5) / 1000 * 0.01
    with serve_llm() as server:
        common = {"base_url": server.base_url, "max_retries": 0, "price_per_1k_input": 0.01,
                  "price_per_1k_output": 0.01}
        cfg = tmp_path / "judge.yaml"
        cfg.write_text(yaml.safe_dump({"name": "t", "vlm": {"model": "v", **common}, "llm": {"model": "l", **common}}))
        # every canary call distinct (an unchanged and a filled canary share their instruction: with one
        # description for both, one score call could be answered by the other's from the check's cache)
        script(server, describe_usage={"prompt_tokens": 1000, "completion_tokens": 10},
               score_usage={"prompt_tokens": 100, "completion_tokens": 5})
        assert runner.invoke(app, ["judge", "calibrate", "--judge", str(cfg)]).exit_code == 0
        n_canaries = len(C.mini_canaries().items)
        assert server.count == 2 * n_canaries

        def score(out: str, max_cost: str, limit: int) -> dict:
            server.reset()
            result = runner.invoke(app, ["score", "--dataset", "mini", "--predictions", str(pred), "--out",
                                         str(tmp_path / out), "--limit", str(limit), "--metrics", "idcs", "--judge", str(cfg),
                                         "--judge-canaries", "run", "--max-cost", max_cost])
            assert result.exit_code == 0, result.output
            return json.loads((tmp_path / out / "summary.json").read_text())

        # a budget for both: the prediction and the check are judged; the check's calls are paid from the
        # budget and reported in its spend and in the judge stats
        full = score("full", "5", limit=1)
        assert full["judge_canaries"]["agreement"] == 1.0 and "skipped" not in full["judge_canaries"]
        # what the server received: the prediction's 2 calls, then the check's (unchanged canaries of one
        # source image are the same describe call, which the check's own cache may answer: 31..36 requests)
        describes, scores = server.count_where(has_images=True), server.count_where(has_images=False)
        assert scores == 1 + n_canaries and 1 + 13 <= describes <= 1 + n_canaries
        canary_cost = (describes - 1) * describe_cost + (scores - 1) * score_cost
        stats = full["judge"]["stats"]
        assert stats["total"]["requests"] == 2 and stats["canaries"]["total"]["requests"] == server.count - 2
        assert stats["canaries"]["total"]["cost"] == pytest.approx(canary_cost)
        assert stats["total_with_canaries"]["requests"] == server.count
        total = describe_cost + score_cost + canary_cost
        assert stats["total_with_canaries"]["cost"] == pytest.approx(total)
        assert full["judge_budget"]["spent_usd"] == pytest.approx(total)
        assert full["judge_budget"]["canary_spent_usd"] == pytest.approx(canary_cost)

        # a budget too small for the canary check (its upper bound is far above $0.1) but enough for the
        # new prediction (the first is cached; the second has the same source image, so its describe call
        # is cached too): both are scored, the check is skipped with a note and sends nothing
        small = score("small", "0.1", limit=2)
        assert server.count_where(has_images=False) == 1 and server.count_where(has_images=True) == 0
        assert small["metrics"]["idcs"]["n"] == 2
        assert small["judge_canaries"]["agreement"] is None and "not checked" in small["judge_canaries"]["skipped"]
        assert small["judge_budget"]["spent_usd"] == pytest.approx(score_cost)
        assert small["judge_budget"]["canary_spent_usd"] == 0
        assert small["judge"]["stats"]["total_with_canaries"]["requests"] == 1
        # a zero budget sends nothing at all (the audit's run sent the 31 canary calls)
        zero = score("zero", "0", limit=2)
        assert server.count == 0 and "not checked" in zero["judge_canaries"]["skipped"]


def test_freeze_a_run_as_a_canary_set(tmp_path):
    run = build_run(tmp_path, "r", "identity", metrics=["psnr"], fail=("1",))
    out = tmp_path / "frozen"
    result = runner.invoke(app, ["judge", "freeze", str(run), "--out", str(out)])
    assert result.exit_code == 0, result.output
    frozen = C.load_canaries(out)
    rows = [json.loads(x) for x in (run / "samples.jsonl").read_text().splitlines()]
    assert len(frozen.items) == sum(r["status"] == "ok" for r in rows)
    assert C.load_canaries(out).hash == frozen.hash
    victim = next((out / "images").glob("*_edited.png"))
    victim.write_bytes(victim.read_bytes()[:-8])
    with pytest.raises(DataError, match="sha256"):
        C.load_canaries(out)


def test_the_dry_run_estimates_the_canary_check_that_max_cost_pays(tmp_path):
    """`score --dry-run` sizes --max-cost; the drift check is paid from that budget, so it is estimated too:
    each canary needs a describe and a score call until today's check has answered it (then they are free),
    and nothing when canaries are off."""
    pred = tmp_path / "pred"
    identity_predictions(pred, 1)
    n = len(C.mini_canaries().items)
    with serve_llm() as server:
        script(server)
        cfg = tmp_path / "judge.yaml"
        cfg.write_text(yaml.safe_dump({"name": "t", "vlm": {"model": "v", "base_url": server.base_url, "timeout_s": 30},
                                       "llm": {"model": "l", "base_url": server.base_url}}))
        assert runner.invoke(app, ["judge", "calibrate", "--judge", str(cfg)]).exit_code == 0
        base = ["score", "--dataset", "mini", "--predictions", str(pred), "--limit", "1", "--metrics", "idcs",
                "--judge", str(cfg)]

        def dry(*extra: str) -> list[str]:
            server.reset()
            result = runner.invoke(app, [*base, "--out", str(tmp_path / "dry"), "--dry-run", *extra])
            assert result.exit_code == 0 and server.count == 0, result.output  # nothing is sent
            lines = result.output.splitlines()
            head = [i for i, line in enumerate(lines) if line.startswith("drift-canary check")]
            return lines[head[0] + 1:] if head else []

        canary = dry()
        assert canary[0].strip().startswith(f"judge calls to send: {2 * n} (describe {n}, score {n})"), canary
        assert canary[0].strip().endswith("answered by the cache: 0")
        assert any(line.startswith("estimated cost with the canary check") for line in canary)
        assert dry("--judge-canaries", "off") == []
        # today's check answers the canaries: a later dry run that day counts them as free
        result = runner.invoke(app, [*base, "--out", str(tmp_path / "real")])
        assert result.exit_code == 0, result.output
        canary = dry()
        assert canary[0].strip().startswith("judge calls to send: 0") and f"answered by the cache: {2 * n}" in canary[0]
