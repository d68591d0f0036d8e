"""The one "run the batch; on failure run each item alone" rule (ciebench.isolate)."""
import pytest

from ciebench.isolate import run_isolated


class Model:
    """Fails on any batch that holds a negative number; records every call."""

    def __init__(self, short=False):
        self.calls = []
        self.short = short

    def __call__(self, batch):
        self.calls.append(list(batch))
        if any(x < 0 for x in batch):
            raise ValueError(f"bad {min(batch)}")
        out = [x * 10 for x in batch]
        return out[:-1] if self.short and len(batch) > 1 else out


def test_a_good_batch_is_called_once():
    model = Model()
    assert run_isolated(model, [1, 2, 3], lambda x, e: None) == [10, 20, 30]
    assert model.calls == [[1, 2, 3]]


def test_only_the_culprit_fails_and_the_rest_keep_their_results():
    model, seen = Model(), []
    out = run_isolated(model, [1, -2, 3], lambda x, e: f"error {x}: {e}",
                       on_batch_failure=lambda e, n: seen.append((str(e), n)))
    assert out == [10, "error -2: bad -2", 30]
    assert model.calls == [[1, -2, 3], [1], [-2], [3]]
    assert seen == [("bad -2", 3)]


def test_a_failed_batch_of_one_is_retried_only_when_asked():
    model = Model()
    assert run_isolated(model, [-1], lambda x, e: "failed") == ["failed"]
    assert model.calls == [[-1]]
    model = Model()
    assert run_isolated(model, [-1], lambda x, e: "failed", retry_single=True) == ["failed"]
    assert model.calls == [[-1], [-1]]


def test_a_wrong_number_of_results_is_a_failed_batch():
    model = Model(short=True)
    assert run_isolated(model, [1, 2], lambda x, e: None) == [10, 20]
    assert model.calls == [[1, 2], [1], [2]]


def test_catch_policy_and_interrupts():
    def oom(batch):
        raise MemoryError("out of memory")

    with pytest.raises(MemoryError):  # not an Exception subclass the default policy catches
        run_isolated(oom, [1, 2], lambda x, e: None, catch=ValueError)
    assert run_isolated(oom, [1, 2], lambda x, e: type(e).__name__, catch=BaseException) == ["MemoryError"] * 2

    def interrupted(batch):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):  # always ends the call, whatever the policy
        run_isolated(interrupted, [1, 2], lambda x, e: None, catch=BaseException)
