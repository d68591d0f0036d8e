"""Several judge passes: distinct seeds, the median, the judge-noise interval, and the judge inside
`ciebench score` (fail fast, streamed verdicts, summary columns, a free rerun)."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from ciebench.cli import app
from ciebench.judge import judge_noise_interval, majority, median_score, within_noise
from ciebench.metrics.idcs import IDCSJudge, idcs_summary
from tests.support.fixtures_judge import SENTENCE, STANDIN_SOURCE, items, judge_config
from tests.support.llm_server import json_reply, reply, respond, serve_llm
from tests.support.predictions import identity_predictions

runner = CliRunner()


def test_median_majority_and_a_closed_form_noise_interval():
    assert median_score([1, 5, 4]) == 4 and median_score([2, 5]) == 3.5 and median_score([None, 3]) == 3
    assert median_score([]) is None and majority(["a", "b", "b"]) == "b" and majority(["b", "a"]) == "a"
    # sample 1 passes {1, 5}: a 2-draw bootstrap median is 1 (p 1/4), 5 (1/4) or 3 (1/2); sample 2 is
    # always 3, so the mean is 2, 4 or 3 with those probabilities: the 95% interval is [2, 4].
    noise = judge_noise_interval([[1, 5], [3, 3]], replicates=4000)
    assert (noise.low, noise.high) == (2.0, 4.0)
    agree = judge_noise_interval([[4, 4, 4], [2, 2, None]])
    assert (agree.low, agree.high) == (3.0, 3.0)  # a judge that never changes its mind has no noise
    assert judge_noise_interval([[None], []]) is None
    assert within_noise({"low": 2, "high": 4}, {"low": 3.9, "high": 5}) and not within_noise({"low": 2, "high": 3},
                                                                                               {"low": 3.1, "high": 4})


def test_failed_passes_are_counted_and_withhold_the_noise_interval():
    # Scored from the passes left, a sample redraws fewer (one: none at all), so the interval would be too
    # narrow; it is withheld, and the lost passes are counted by class.
    from ciebench.metrics.idcs import PassVerdict, Verdict

    def verdict(sid, scores, failure="rate_limit"):
        passes = [PassVerdict(k, k, s, None if s is not None else failure) for k, s in enumerate(scores)]
        valid = [s for s in scores if s is not None]
        return Verdict(sid, median_score(valid), "ok", passes=passes)

    whole = [verdict(str(i), [2 + i % 3, 3, 4 - i % 2]) for i in range(6)]
    summary = idcs_summary(whole)
    assert summary["failed_passes"] == {} and summary["judge_noise"]["low"] < summary["judge_noise"]["high"]
    short = whole[:5] + [verdict("5", [3, None, None]), verdict("6", [4, 3, None], failure="unparsable")]
    summary = idcs_summary(short)
    assert summary["judge_noise"] is None and summary["failed_passes"] == {"rate_limit": 2, "unparsable": 1}
    assert summary["judge_noise_withheld"].startswith("2 of 7 scored predictions rest on fewer than 3 passes")
    # a median between two scores has its own histogram key, so the counts add up to n
    halves = idcs_summary([verdict("a", [3, 4]), verdict("b", [4, 4])])
    assert halves["histogram"]["3.5"] == 1 and halves["histogram"]["4"] == 1 and sum(halves["histogram"].values()) == 2


def test_with_several_seeds_the_noise_interval_is_of_the_reported_mean():
    # The reported IDCS averages each sample over its seeds, then the samples: sample A has one valid
    # seed scoring 5, sample B three seeds scoring 1, so the mean is (5 + 1) / 2 = 3, not (5+1+1+1)/4.
    passes, samples = [[5, 5], [1, 1], [1, 1], [1, 1]], ["A", "B", "B", "B"]
    noise = judge_noise_interval(passes, samples)
    assert (noise.low, noise.high) == (3.0, 3.0)
    assert (judge_noise_interval(passes).low, judge_noise_interval(passes).high) == (2.0, 2.0)  # per prediction
    # closed form with noise: A's passes {1, 5} (median 1, 3 or 5 with p 1/4, 1/2, 1/4), B's two seeds
    # always 3: the mean over samples is 2, 3 or 4, so the 95% interval is [2, 4]
    noisy = judge_noise_interval([[1, 5], [3, 3], [3, 3]], ["A", "B", "B"], replicates=4000)
    assert (noisy.low, noisy.high) == (2.0, 4.0)


def test_passes_ask_with_distinct_seeds_and_the_sample_score_is_their_median(tmp_path):
    table = {0: [5, 1, 4], 1: [2, 2, 3], 2: [1, 1, 1]}  # item -> score per seed
    with serve_llm() as server:
        server.on(has_images=True, then=reply(SENTENCE))
        server.on(then=respond(lambda r: json_reply({"score": table[int(r.text.split("item-")[1][0])][r.body["seed"]]})))
        judge = IDCSJudge(judge_config(server), cache_dir=tmp_path, passes=3)
        verdicts = judge.judge(items(3))
        assert sorted(r.body["seed"] for r in server.requests if r.has_images) == [0, 0, 0, 1, 1, 1, 2, 2, 2]
        assert [v.score for v in verdicts] == [4.0, 2.0, 1.0]
        assert [v.pass_scores for v in verdicts] == [table[i] for i in range(3)]
        s = idcs_summary(verdicts)
        assert s["mean"] == pytest.approx(7 / 3) and s["passes"] == 3
        noise = s["judge_noise"]
        assert noise["low"] <= 7 / 3 <= noise["high"] and noise["low"] < noise["high"]
        n = server.count
        again = IDCSJudge(judge_config(server), cache_dir=tmp_path, passes=3).judge(items(3))
        assert server.count == n and [v.score for v in again] == [4.0, 2.0, 1.0]  # every pass cached


def test_retries_never_resend_another_passs_seed(tmp_path):
    # Before: pass k's retry after an invalid reply sent seed base + k + 1, pass k+1's own request (at
    # temperature >= retry_temperature the very same draw), so two passes could be one verdict: seeds
    # sent were [0, 1, 1, 2] for three passes with one retry.
    passes, attempts = 4, 3  # max_retries 2: every score call is tried three times, all invalid
    with serve_llm() as server:
        server.on(has_images=True, then=reply(SENTENCE))
        server.on(then=reply("four"))
        cfg = judge_config(server, temperature=0.7, max_retries=attempts - 1)
        verdict = IDCSJudge(cfg, cache_dir=tmp_path, passes=passes, concurrency=1).judge(items(1))[0]
        seeds = [r.body["seed"] for r in server.requests if not r.has_images]
    assert verdict.pass_scores == [None] * passes
    assert len(seeds) == passes * attempts and len(set(seeds)) == len(seeds)  # no two requests share a seed
    firsts = seeds[::attempts]  # concurrency 1: each pass's attempts in a row
    assert firsts == [0, 1, 2, 3]  # first attempts keep the pass seeds, so cached first answers stay valid


def _predictions(tmp_path: Path, n: int) -> tuple[Path, list[dict]]:
    pred = tmp_path / "pred"
    rows = identity_predictions(pred, n)
    return pred, rows


def test_score_streams_verdicts_and_reports_protocol_failures_and_noise(tmp_path, monkeypatch):
    monkeypatch.setenv("CIEBENCH_CACHE", str(tmp_path / "cache"))
    pred, rows = _predictions(tmp_path, 3)
    (pred / f"{rows[2]['id']}.png").unlink()  # one missing prediction
    with serve_llm() as server:
        server.on(has_images=True, then=reply(SENTENCE))
        server.on(rows[0]["instruction"][:30], then=respond(lambda r: json_reply({"score": [5, 3, 4][r.body["seed"]]})))
        server.on(then=json_reply({"score": 9}))
        cfg = tmp_path / "judge.yaml"
        cfg.write_text(yaml.safe_dump({"name": "t", "vlm": {"model": "v", "base_url": server.base_url, "max_retries": 0},
                                       "llm": {"model": "l", "base_url": server.base_url, "max_retries": 0}}))
        args = ["score", "--dataset", "mini", "--predictions", str(pred), "--out", str(tmp_path / "o"), "--limit", "3",
                "--metrics", "idcs", "--judge", str(cfg), "--judge-passes", "3", "--allow-missing"]
        result = runner.invoke(app, args)
        assert result.exit_code == 0, result.output
        calls = server.count
        summary = json.loads((tmp_path / "o" / "summary.json").read_text())
        idcs = summary["metrics"]["idcs"]
        assert idcs["mean"] == 4.0 and idcs["passes"] == 3 and idcs["protocol"] == "idcs-v1"
        assert idcs["failures_by_class"]["out_of_range"] == 1 and idcs["failures_by_class"]["missing_prediction"] == 1
        assert idcs["judge_noise"]["low"] <= 4.0 <= idcs["judge_noise"]["high"]
        assert idcs["possible_refusals"] == []  # every description is a description
        assert summary["judge_protocol"]["name"] == "idcs-v1" and summary["judge"]["passes"] == 3
        frame = pd.read_csv(tmp_path / "o" / "samples.csv", dtype={"sample_id": str}).set_index("sample_id")
        assert frame.loc[rows[0]["id"], "idcs_passes"] == "[5, 3, 4]"
        assert frame.loc[rows[1]["id"], "idcs_failure"] == "out_of_range"
        assert frame.loc[rows[2]["id"], "idcs_failure"] == "missing_prediction"
        lines = [json.loads(x) for x in (tmp_path / "o" / "judge_verdicts.jsonl").read_text().splitlines()]
        assert sorted(x["sample_id"] for x in lines) == sorted(r["id"] for r in rows[:2])
        assert all(len(x["passes"]) == 3 and x["passes"][0]["provenance"]["describe"]["served_model"] for x in lines)
        result = runner.invoke(app, args)
        # rerun: only the failed calls are asked again (failures are never cached), 3 passes x 1 sample
        assert result.exit_code == 0 and server.count == calls + 3

    # `verify` re-aggregates the judged run: it failed every IDCS run, on the judge's own annotations
    from ciebench.verify import verify_run

    out = tmp_path / "o"
    checks = {c.name: c for c in verify_run(out, rescore=False).checks}
    assert checks["summary"].verdict == "pass", checks["summary"]
    summary = json.loads((out / "summary.json").read_text())
    summary["metrics"]["idcs"]["failures_by_class"]["out_of_range"] = 0  # one failure class hidden
    (out / "summary.json").write_text(json.dumps(summary))
    checks = {c.name: c for c in verify_run(out, rescore=False).checks}
    assert checks["summary"].verdict == "fail"
    assert checks["summary"].problems == ("summary.json metrics.idcs.failures_by_class.out_of_range: recorded 0, "
                                          "re-aggregated 1",)


def test_a_bad_judge_fails_before_any_region_scoring(tmp_path, monkeypatch):
    monkeypatch.setenv("CIEBENCH_CACHE", str(tmp_path / "cache"))
    pred, _ = _predictions(tmp_path, 1)

    def no_region(*a, **k):
        raise AssertionError("region scoring started before the judge was checked")

    monkeypatch.setattr("ciebench.scoring.LocalRegionScoring.score", no_region)
    prompts = tmp_path / "prompts"
    prompts.mkdir()
    (prompts / "metrics_evaluation.py").write_text(STANDIN_SOURCE)  # not the pinned file
    base = ["score", "--dataset", "mini", "--predictions", str(pred), "--out", str(tmp_path / "o"), "--limit", "1",
            "--metrics", "psnr,idcs", "--judge", "qwen"]
    result = runner.invoke(app, base + ["--judge-protocol", "idcs-paper", "--judge-prompts", str(prompts)])
    assert result.exit_code == 6 and "sha256" in result.output, result.output
    result = runner.invoke(app, base + ["--judge-protocol", "idcs-v2"])
    assert result.exit_code == 2 and "unknown judge protocol" in result.output
    result = runner.invoke(app, base + ["--judge-passes", "0"])
    assert result.exit_code == 2 and "--judge-passes" in result.output


def test_evaluate_checks_the_judge_prompts_before_editing(tmp_path, monkeypatch):
    monkeypatch.setenv("CIEBENCH_CACHE", str(tmp_path / "cache"))
    prompts = tmp_path / "prompts"
    prompts.mkdir()
    (prompts / "metrics_evaluation.py").write_text(STANDIN_SOURCE)  # not the pinned file
    out = tmp_path / "run"
    result = runner.invoke(app, ["evaluate", "--editor", "identity", "--dataset", "mini", "--out", str(out),
                                 "--limit", "1", "--metrics", "idcs", "--judge", "qwen", "--judge-protocol", "idcs-paper",
                                 "--judge-prompts", str(prompts)])
    assert result.exit_code == 6 and "sha256" in result.output, result.output
    assert not list(out.rglob("*.png"))  # nothing was edited
