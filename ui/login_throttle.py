"""Slowing down password guessing on the teacher page: a growing wait after repeated failures, per session and per client.

Process-wide (one store for every browser session of this Streamlit server) and thread-safe: Streamlit runs each
session's script in its own thread.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Callable, Iterable

FREE_TRIES = 3  # wrong passwords allowed before any wait: typos happen
MAX_WAIT_S = 300.0
FORGET_AFTER_S = 3600.0  # failures older than this no longer count


def wait_after(failures: int) -> float:
    """Seconds to wait after `failures` wrong passwords in a row: none for the first few, then 2^n up to the cap."""
    return 0.0 if failures < FREE_TRIES else min(2.0 ** failures, MAX_WAIT_S)


@dataclass
class _Record:
    failures: int = 0
    last_failure: float = 0.0
    locked_until: float = 0.0


class LoginThrottle:
    """Counts wrong passwords per key (a session id, a client address) and says how long each key must wait."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._records: dict[str, _Record] = {}

    def wait_s(self, keys: Iterable[str]) -> float:
        """Seconds before any of these keys may try again (0 when they may now)."""
        now = self._clock()
        with self._lock:
            return max([0.0, *(r.locked_until - now for k in keys if (r := self._records.get(k)))])

    def failed(self, keys: Iterable[str]) -> float:
        """Count a wrong password for every key; returns the wait that now applies."""
        now = self._clock()
        with self._lock:
            self._forget_old(now)
            wait = 0.0
            for key in keys:
                record = self._records.setdefault(key, _Record())
                record.failures += 1
                record.last_failure = now
                record.locked_until = now + wait_after(record.failures)
                wait = max(wait, record.locked_until - now)
            return wait

    def succeeded(self, keys: Iterable[str]) -> None:
        with self._lock:
            for key in keys:
                self._records.pop(key, None)

    def _forget_old(self, now: float) -> None:
        """Keep the store small: drop keys whose last failure is long past and that are not waiting."""
        stale = [k for k, r in self._records.items() if now - r.last_failure > FORGET_AFTER_S and r.locked_until <= now]
        for key in stale:
            del self._records[key]
