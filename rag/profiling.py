"""Where a cold start spends its time: named stages timed when profiling is on (`python -m rag search --profile`).

Off by default: `stage()` is then a bare context manager, so the library can mark its stages at no cost.
"""
from __future__ import annotations

import resource
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TextIO

from rag import STARTED

_stages: list[tuple[str, float]] | None = None


def enable() -> None:
    global _stages
    _stages = []


@contextmanager
def stage(name: str) -> Iterator[None]:
    """Time the block under `name` when profiling is on (nested stages are counted in their parent too)."""
    if _stages is None:
        yield
        return
    began = time.perf_counter()
    try:
        yield
    finally:
        _stages.append((name, time.perf_counter() - began))


def record(name: str, seconds: float) -> None:
    if _stages is not None:
        _stages.append((name, seconds))


def report(out: TextIO | None = None) -> None:
    """Time per stage (summed over its occurrences, in first-seen order), the total and the peak resident memory."""
    if _stages is None:
        return
    out = out or sys.stderr  # looked up now, not at import: tests and callers may have replaced it
    total = time.perf_counter() - STARTED
    sums: dict[str, float] = {}
    for name, seconds in _stages:
        sums[name] = sums.get(name, 0.0) + seconds
    for name, seconds in sums.items():
        print(f"profile: {name:14} {seconds:7.3f} s", file=out)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    print(f"profile: {'total':14} {total:7.3f} s (since the rag package was imported), peak RSS {peak_mb:.0f} MB", file=out)
