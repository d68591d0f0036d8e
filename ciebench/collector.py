"""The garbage collector's schedule in a process the `ciebench` command owns.

CPython's cyclic collector runs a young-generation pass every 700 net allocations of tracked
objects and, now and then, a full pass over every live object. Importing torch, transformers and
datasets creates about half a million long-lived objects, so the full passes during the imports
and the interpreter's last collections at exit walk them again and again, finding almost nothing.
Measured on these 2-core CPUs (Python 3.11): importing torch, transformers, datasets, CLIP's
modules and ciebench's scoring took 3.43 s with the default schedule and 2.50 s with
`collect_less`; the exit of a finished `ciebench score` process took 0.45 s less after
`skip_final_collections`.

Only processes ciebench owns are changed: the command's (its entry point calls both) and Ray
workers' (`collect_less`; Ray ends them); `ciebench.score` and `ciebench.evaluate` called from a
user's program leave that program's collector alone. Values are
unchanged: reference counting still frees every object as before, the collector only looks for
cycles less often (a cycle of garbage waits at most 50,000 allocations longer), and the objects
frozen at exit are the ones the process is about to drop anyway.
"""
from __future__ import annotations

import gc

YOUNG_THRESHOLD = 50_000  # net allocations between young-generation passes (CPython's default: 700)


def collect_less() -> None:
    """Look for garbage cycles less often in this process (see the module's note)."""
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, older, oldest)


def skip_final_collections() -> None:
    """Exclude every object alive now from the collections the interpreter runs at exit. Call only
    when the process's work is done and its files are closed: a cycle alive now is never collected,
    and finalizers that matter at exit must run from atexit (Ray, multiprocessing and temporary
    folders register theirs there)."""
    gc.freeze()
