"""Process memory for the benchmarks (Linux): anonymous resident memory, the part that grows with
what a process holds (RssAnon; page cache and memory-mapped files are not in it)."""
from __future__ import annotations


def rss_anon(pid: int | str = "self") -> int:
    """RssAnon of process `pid` in bytes; 0 where /proc is unavailable or the process is gone."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("RssAnon:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0
