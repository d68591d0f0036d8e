"""Judge calls through an OpenAI-compatible Batch API (``/v1/files``, ``/v1/batches``): cheaper, slower,
and safe across crashes.

A judge with dependent stages (IDCS: describe, then score) runs one batch per stage:

1. every call of the stage that the answer cache does not hold becomes one JSONL line
   (``custom_id`` = the call's cache key, ``body`` = exactly the chat-completions body a live call sends);
2. the file is uploaded, the batch created, and its id written atomically to a state file
   (``judge_batches.json`` in the run folder) *before* waiting, so a crash or kill after submission
   resumes polling the same batch instead of paying again;
3. the batch is polled until it ends; each result line is parsed and validated exactly like a live
   reply and stored in the answer cache under its key.

Then the judge runs as usual and finds every answer in the cache; calls that failed inside the batch
are sent live (and counted as failures if they fail again). The key is sent only to the configured
endpoint, as for live calls; redirects are refused.
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from ciebench.errors import EnvironmentProblem
from ciebench.io import atomic_write_json, stable_hash
from ciebench.llm.transport import HTTPResponse, TransportError, encode_multipart, get, post

from .cost import Budget, estimate_call

log = logging.getLogger(__name__)

STATE_FILE = "judge_batches.json"
DONE = ("completed", "failed", "expired", "cancelled")
MAX_FILE_BYTES = 512 * 1024 * 1024


@dataclass
class BatchCall:
    """One call a stage needs: as `LLMClient.complete` takes it."""

    client: Any
    template: Any
    variables: dict[str, Any]
    images: Sequence[Any] = ()
    schema: dict | None = None
    validate: Callable[[Any], str | None] | None = None
    text_first: bool = False


class BatchAPI:
    """The four endpoints, against the judge config's base URL and key."""

    def __init__(self, client: Any, timeout_s: float = 120.0):
        self.client = client
        self.base = client.config.endpoint.rstrip("/")
        self.timeout_s = timeout_s

    def _headers(self) -> dict[str, str]:
        key = self.client.api_key()
        return {"Authorization": f"Bearer {key}"} if key else {}

    def _send(self, method: str, path: str, body: bytes | None = None, content_type: str | None = None) -> HTTPResponse:
        headers = {**self._headers(), "Accept": "application/json"}
        if content_type:
            headers["Content-Type"] = content_type
        try:
            resp = (post(self.base + path, body or b"", headers, deadline_s=self.timeout_s, max_bytes=MAX_FILE_BYTES)
                    if method == "POST" else
                    get(self.base + path, headers, deadline_s=self.timeout_s, max_bytes=MAX_FILE_BYTES))
        except TransportError as exc:
            raise EnvironmentProblem(self.client.redact(f"batch API: {exc}")) from None
        if resp.status >= 400:
            raise EnvironmentProblem(self.client.redact(f"batch API: HTTP {resp.status} from {self.base + path}: "
                                                        f"{resp.body[:300].decode('utf-8', 'replace')}"))
        return resp

    def _post(self, path: str, body: bytes, content_type: str) -> dict[str, Any]:
        return json.loads(self._send("POST", path, body, content_type).body)

    def _get(self, path: str) -> bytes:
        return self._send("GET", path).body

    def upload(self, jsonl: bytes) -> str:
        body, content_type = encode_multipart({"purpose": "batch"}, {"file": ("judge.jsonl", jsonl, "application/jsonl")})
        return str(self._post("/files", body, content_type)["id"])

    def create(self, file_id: str) -> dict[str, Any]:
        body = json.dumps({"input_file_id": file_id, "endpoint": "/v1/chat/completions",
                           "completion_window": "24h"}).encode()
        return self._post("/batches", body, "application/json")

    def status(self, batch_id: str) -> dict[str, Any]:
        return json.loads(self._get(f"/batches/{batch_id}"))

    def content(self, file_id: str) -> bytes:
        return self._get(f"/files/{file_id}/content")


def _entry(call: BatchCall) -> tuple[str, dict[str, Any], Any]:
    """(cache key, request body, prepared call) exactly as a live call would send it."""
    prepared = call.client.prepare(call.template, call.variables, call.images, call.schema, call.text_first)
    return prepared.key, call.client.request_body(prepared), prepared


def run_stage(name: str, calls: Sequence[BatchCall], state_dir: Path, poll_s: float = 10.0,
              max_wait_s: float = 24 * 3600.0, budget: Budget | None = None) -> dict[str, int]:
    """Submit (or resume) the batch for the uncached `calls` and store its valid answers in the cache.
    Under a `budget`, each line reserves its upper-bound cost before it is submitted, as a live call
    does; lines it refuses stay out of the batch (the live judging after it reports them not judged)."""
    pending: dict[str, tuple[BatchCall, dict[str, Any], Any]] = {}
    reserved = 0.0
    for call in calls:
        if call.client.lookup(call.template, call.variables, call.images, call.schema, call.validate,
                              call.text_first) is not None:
            continue
        key, body, prepared = _entry(call)
        if key in pending:
            continue
        if budget is not None:
            request = prepared.request
            cost_max = estimate_call(call.client.config, name, request.system, request.text,
                                     [im.size for im in request.images if not isinstance(im, str)]).cost_max
            if not budget.reserve(cost_max):
                continue
            reserved += cost_max
        pending[key] = (call, body, prepared)
    if not pending:
        return {"submitted": 0, "stored": 0, "failed": 0}
    spent = reserved  # until the results say what they billed, count the batch as spent in full
    try:
        stored, failed, spent = _submit_and_store(name, pending, state_dir, poll_s, max_wait_s)
    finally:
        if budget is not None:
            budget.settle(reserved, spent)
    return {"submitted": len(pending), "stored": stored, "failed": failed}


def _submit_and_store(name: str, pending: dict[str, tuple[BatchCall, dict[str, Any], Any]], state_dir: Path,
                      poll_s: float, max_wait_s: float) -> tuple[int, int, float]:
    """(answers stored, lines that failed, USD the result lines billed at list price)."""
    keys_hash = stable_hash(sorted(pending))
    state_path = Path(state_dir) / STATE_FILE
    state = json.loads(state_path.read_text(encoding="utf-8")) if state_path.is_file() else {}
    api = BatchAPI(next(iter(pending.values()))[0].client)
    entry = state.get(name)
    if entry and entry.get("keys") == keys_hash and entry.get("status") not in ("failed", "expired", "cancelled"):
        batch_id = entry["batch_id"]
        log.info("batch %s: resuming %s", name, batch_id)
    else:
        lines = [json.dumps({"custom_id": key, "method": "POST", "url": "/v1/chat/completions", "body": body})
                 for key, (_, body, _) in pending.items()]
        file_id = api.upload(("\n".join(lines) + "\n").encode("utf-8"))
        batch = api.create(file_id)
        batch_id = str(batch["id"])
        state[name] = {"batch_id": batch_id, "input_file_id": file_id, "keys": keys_hash, "n": len(lines),
                       "status": batch.get("status")}
        atomic_write_json(state_path, state)  # before waiting: a crash from here on resumes this batch
    started = time.monotonic()
    while True:
        batch = api.status(batch_id)
        if batch.get("status") in DONE:
            break
        if time.monotonic() - started > max_wait_s:
            raise EnvironmentProblem(f"batch {batch_id} ({name}) not finished after {max_wait_s:g}s",
                                     hint="rerun the same command later: the batch is resumed, not resubmitted")
        time.sleep(poll_s)
    state[name] = {**state[name], "status": batch.get("status")}
    atomic_write_json(state_path, state)
    stored = failed = 0
    spent = 0.0
    if batch.get("output_file_id"):
        for line in api.content(str(batch["output_file_id"])).decode("utf-8").splitlines():
            if not line.strip():
                continue
            rec = json.loads(line)
            item = pending.get(rec.get("custom_id"))
            response = rec.get("response") or {}
            if item is None or not isinstance(response.get("body"), dict):
                failed += 1
                continue
            call, _, prepared = item
            accepted, cost = call.client.accept(prepared, int(response.get("status_code") or 200),
                                                json.dumps(response["body"]).encode("utf-8"), call.validate)
            stored += accepted
            failed += not accepted
            spent += cost
    failed += len(pending) - stored - failed
    return stored, failed, spent


def batch_judge(judge: Any, items: Sequence[Any], state_dir: str | Path, poll_s: float = 10.0,
                max_wait_s: float = 24 * 3600.0, **judge_kwargs: Any) -> list[Any]:
    """IDCS through the Batch API: a describe batch, a score batch, then the usual judging from the cache."""
    from ciebench.metrics.idcs import validate_sentence

    from .parsing import embed

    state_dir = Path(state_dir)
    text_first = {"text_first": True} if judge.protocol.protocol.text_first else {}
    describe = [BatchCall(vlm, judge.describe_template, {}, [it.source, it.edited], None, validate_sentence,
                          **text_first) for it in items for vlm, _ in judge.clients]
    run_stage("describe", describe, state_dir, poll_s, max_wait_s, judge.budget)
    embedding = judge.protocol.protocol.embedding
    score = []
    for it in items:
        for vlm, llm in judge.clients:
            hit = vlm.lookup(judge.describe_template, {}, [it.source, it.edited], None, validate_sentence,
                             **text_first)
            if hit is None:
                continue
            variables = {"instruction": embed(it.instruction.strip(), embedding),
                         "description": embed(hit.text.strip(), embedding)}
            score.append(BatchCall(llm, judge.score_template, variables, [], judge.score_schema, judge.validate_score))
    run_stage("score", score, state_dir, poll_s, max_wait_s, judge.budget)
    return judge.judge(items, **judge_kwargs)
