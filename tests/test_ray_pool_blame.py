"""Which task a dead Ray worker's death is charged to (`ciebench.ray_pool.WorkerPool._buried`), with a
stand-in for Ray's few calls, so every case is exact: one task without a result is charged; several
(Ray cannot tell the running one from a finished one whose reply the death cut off) are not, and
every suspect reruns alone, so an innocent sample never uses up its retries."""
from __future__ import annotations

import types
from collections import deque

import pytest

from ciebench import ray_pool
from ciebench.ray_pool import GaveUp, RayOptions, Task, WorkerPool, _Worker


class Died(Exception):
    pass


class StubRay:
    """`ray.wait` / `ray.get` / `ray.kill` over refs that are ("ok", value) or ("died",)."""

    def __init__(self):
        self.exceptions = types.SimpleNamespace(RayActorError=Died, WorkerCrashedError=Died, ObjectLostError=Died,
                                                NodeDiedError=Died, OutOfMemoryError=Died, LocalRayletDiedError=Died,
                                                GetTimeoutError=TimeoutError)

    def wait(self, refs, num_returns=1, timeout=None):
        return list(refs), []

    def get(self, ref, timeout=None):
        if ref[0] == "died":
            raise Died("the actor died")
        return ref[1]

    def kill(self, actor):
        pass


@pytest.fixture
def pool(monkeypatch):
    monkeypatch.setattr(ray_pool, "_ray", StubRay)
    pool = WorkerPool(factory=lambda: None, method="edit", size=2, options=RayOptions(max_retries=1, max_restarts=0))
    pool.workers = {0: _Worker(0, actor=None), 1: _Worker(1, actor=None)}  # 1 survives: no replacement needed
    return pool


def _bury(pool, refs_and_tasks):
    dead = pool.workers[0]
    inflight, retry = {}, deque()
    for ref, task in refs_and_tasks:
        inflight[ref] = (dead, task)
        dead.queue.append(ref)
    yielded = list(pool._buried(dead, inflight, retry, Died("the actor died")))
    return yielded, list(retry)


def test_the_one_task_without_a_result_is_charged_and_reruns_alone(pool):
    done, culprit = Task(["a", "b"], ["a", "b"]), Task(["c", "d"], ["c", "d"])
    yielded, retry = _bury(pool, [(("ok", "result"), done), (("died",), culprit)])
    assert yielded == [(done, "result")]
    assert [(t.keys, t.attempts, t.solo) for t in retry] == [(["c"], 1, True), (["d"], 1, True)]


def test_several_without_a_result_are_not_charged_and_each_reruns_alone(pool):
    # the first had finished (its reply cut off) or was running; the second ran or never started
    first, second = Task(["a", "b"], ["a", "b"]), Task(["c"], ["c"])
    yielded, retry = _bury(pool, [(("died", 1), first), (("died", 2), second)])
    assert yielded == []
    assert [(t.keys, t.attempts, t.solo) for t in retry] == [(["a"], 0, True), (["b"], 0, True), (["c"], 0, True)]


def test_a_task_charged_past_the_limit_gives_up(pool):
    culprit = Task(["c"], ["c"], attempts=1, solo=True)
    yielded, retry = _bury(pool, [(("died",), culprit)])
    assert retry == [] and yielded[0][0] is culprit and isinstance(yielded[0][1], GaveUp)
    assert "died 2 times" in yielded[0][1].error
