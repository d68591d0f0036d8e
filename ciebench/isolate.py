"""Run a batch; if it fails, run each item alone: the one rule that keeps one bad sample from failing
the samples batched with it (editors, metric families, CIELR's models).

`run_isolated(call, items, on_error)` returns one entry per item, in order: `call`'s result for it, or
`on_error(item, exc)` for an item that failed alone. A batch of one that fails is not called again.
What genuinely differs between callers is explicit:

- `catch`: what counts as a failure of the batch (default `Exception`; the runner also catches
  `BaseException`s such as a CUDA OOM surfacing as one). `KeyboardInterrupt` always ends the call;
- `retry_single`: call a failed batch of one item once more before giving up (for models whose batched
  path differs from their single-item path);
- `on_batch_failure(exc, n)`: runs once before the items are retried alone (logging, freeing memory).

A `call` that returns a different number of results than it was given items has failed.
"""
from __future__ import annotations

from typing import Callable, Sequence, TypeVar

T = TypeVar("T")
R = TypeVar("R")


def run_isolated(call: Callable[[list[T]], Sequence[R]], items: Sequence[T],
                 on_error: Callable[[T, BaseException], R], *,
                 catch: type[BaseException] | tuple[type[BaseException], ...] = Exception,
                 retry_single: bool = False,
                 on_batch_failure: Callable[[BaseException, int], None] | None = None) -> list[R]:
    items = list(items)
    try:
        return _checked(call, items)
    except KeyboardInterrupt:
        raise
    except catch as exc:
        if len(items) == 1 and not retry_single:
            return [on_error(items[0], exc)]
        if on_batch_failure is not None:
            on_batch_failure(exc, len(items))
    out: list[R] = []
    for item in items:
        try:
            out.append(_checked(call, [item])[0])
        except KeyboardInterrupt:
            raise
        except catch as exc:
            out.append(on_error(item, exc))
    return out


def _checked(call: Callable[[list[T]], Sequence[R]], items: list[T]) -> list[R]:
    results = list(call(items))
    if len(results) != len(items):
        raise RuntimeError(f"returned {len(results)} results for {len(items)} inputs")
    return results


__all__ = ["run_isolated"]
