"""Batch API judging against a local fake server: submit, poll, map back, and survive a kill between
submission and completion (the batch is resumed, not paid twice)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ciebench.judge.batch import STATE_FILE, batch_judge
from ciebench.llm import LLMConfig
from ciebench.metrics.idcs import IDCSJudge, JudgeConfig
from tests.support.batch_server import serve_batches
from tests.support.fixtures_judge import SENTENCE, items
from tests.support.predictions import identity_predictions

ROOT = Path(__file__).resolve().parents[1]


def answer(body: dict) -> str:
    content = body["messages"][-1]["content"]
    if isinstance(content, list):  # the describe call carries the images
        return SENTENCE
    return json.dumps({"score": 4 if "item-1" in content else 2})


def config(base_url: str) -> JudgeConfig:
    common = dict(base_url=base_url, api_key_env="CIEBENCH_BATCH_KEY", timeout_s=5.0, max_retries=0)
    return JudgeConfig(name="batch", vlm=LLMConfig(model="vlm-test", **common), llm=LLMConfig(model="llm-test", **common))


CHILD = """
import sys
sys.path.insert(0, {root!r})
from tests.test_judge_batch import config
from tests.support.fixtures_judge import items
from ciebench.metrics.idcs import IDCSJudge
from ciebench.judge.batch import batch_judge
judge = IDCSJudge(config({url!r}), cache_dir={cache!r})
batch_judge(judge, items(3), {state!r}, poll_s=0.05)
"""


def test_a_batch_survives_a_kill_between_submit_and_completion(tmp_path, monkeypatch):
    monkeypatch.setenv("CIEBENCH_BATCH_KEY", "sk-batch-test")
    cache, state = str(tmp_path / "cache"), str(tmp_path / "run")
    with serve_batches(answer, hold=True) as (server, url):
        env = {**os.environ, "CIEBENCH_BATCH_KEY": "sk-batch-test"}
        child = subprocess.Popen([sys.executable, "-c", CHILD.format(root=str(ROOT), url=url, cache=cache, state=state)],
                                 env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        state_file = Path(state) / STATE_FILE
        deadline = time.monotonic() + 120
        while not state_file.is_file() and time.monotonic() < deadline and child.poll() is None:
            time.sleep(0.05)
        assert state_file.is_file(), child.stdout.read().decode() if child.poll() is not None else "no state file"
        time.sleep(0.3)  # it is polling now
        child.send_signal(signal.SIGKILL)
        child.wait()
        submitted = json.loads(state_file.read_text())["describe"]
        assert server.created == 1 and submitted["n"] == 3

        server.release()
        judge = IDCSJudge(config(url), cache_dir=cache)
        verdicts = batch_judge(judge, items(3), state, poll_s=0.01)
        assert [v.score for v in verdicts] == [2, 4, 2] and all(v.ok and v.cached for v in verdicts)
        assert server.created == 2  # the describe batch was resumed; only the score batch is new
        assert server.chat_calls == 0  # nothing went live
        assert set(server.auth) == {"Bearer sk-batch-test"}
        assert verdicts[0].passes[0].provenance["describe"]["served_model"] == "vlm-test-snap"
        # a rerun needs no batch at all
        again = batch_judge(IDCSJudge(config(url), cache_dir=cache), items(3), state, poll_s=0.01)
        assert [v.score for v in again] == [2, 4, 2] and server.created == 2


def test_a_batch_is_charged_to_the_cost_cap_and_never_passes_it(tmp_path, monkeypatch):
    from ciebench.judge import Budget

    monkeypatch.setenv("CIEBENCH_BATCH_KEY", "sk-batch-test")
    priced = lambda url: JudgeConfig(  # noqa: E731 - $1 per 1k tokens in and out: a result line (12 tokens) is $0.012
        name="batch", **{role: LLMConfig(model=f"{role}-test", base_url=url, api_key_env="CIEBENCH_BATCH_KEY",
                                         timeout_s=5.0, max_retries=0, price_per_1k_input=1.0,
                                         price_per_1k_output=1.0) for role in ("vlm", "llm")})
    with serve_batches(answer) as (server, url):
        nothing = Budget(0.0)
        verdicts = batch_judge(IDCSJudge(priced(url), cache_dir=tmp_path / "a", budget=nothing), items(3),
                               tmp_path / "run-a", poll_s=0.01)
        assert server.created == 0 and server.chat_calls == 0  # no line fits a $0 cap: nothing is sent
        assert all(v.status == "not_judged" for v in verdicts) and nothing.spent == 0.0

        enough = Budget(100.0)
        verdicts = batch_judge(IDCSJudge(priced(url), cache_dir=tmp_path / "b", budget=enough), items(3),
                               tmp_path / "run-b", poll_s=0.01)
        assert [v.score for v in verdicts] == [2, 4, 2] and server.created == 2 and server.chat_calls == 0
        assert enough.spent == pytest.approx(6 * 0.012)  # what the 6 result lines billed


def test_score_with_judge_batch(tmp_path, monkeypatch):
    import yaml
    from typer.testing import CliRunner

    from ciebench.cli import app

    monkeypatch.setenv("CIEBENCH_CACHE", str(tmp_path / "cache"))
    pred = tmp_path / "pred"
    identity_predictions(pred, 2)
    with serve_batches(lambda body: SENTENCE if isinstance(body["messages"][-1]["content"], list)
                       else json.dumps({"score": 3})) as (server, url):
        cfg = tmp_path / "judge.yaml"
        cfg.write_text(yaml.safe_dump({"name": "b", "vlm": {"model": "v", "base_url": url},
                                       "llm": {"model": "l", "base_url": url}}))
        result = CliRunner().invoke(app, ["score", "--dataset", "mini", "--predictions", str(pred), "--out",
                                          str(tmp_path / "o"), "--limit", "2", "--metrics", "idcs", "--judge", str(cfg),
                                          "--judge-batch"])
        assert result.exit_code == 0, result.output
        summary = json.loads((tmp_path / "o" / "summary.json").read_text())
        assert summary["metrics"]["idcs"]["mean"] == 3.0 and summary["metrics"]["idcs"]["coverage"] == 1.0
        assert server.created == 2 and server.chat_calls == 0
        assert set(json.loads((tmp_path / "o" / STATE_FILE).read_text())) == {"describe", "score"}
