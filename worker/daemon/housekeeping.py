"""Periodic work of the main loop, each task behind one error guard.

`guarded` is the boundary every step of the daemon's own work sits in: a Redis error that
means Redis is unusable propagates (the loop backs off, /readyz says 503); anything else is
tied to one job or one entry, so it is logged (once a minute per place at most, with its
traceback the first time) and the daemon goes on.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from worker.errors import redis_unusable
from worker.safe import safe_text

log = logging.getLogger("worker.daemon")

LOG_EVERY = 60.0  # seconds between two log lines of the same guarded place
_last_logged: dict[str, float] = {}
errors: dict[str, int] = {}  # guarded failures by place, for /metrics


def guarded(where: str, step: Callable[[], object]) -> object:
    """Run `step`; Redis-unusable errors propagate, any other Exception is logged and counted."""
    try:
        return step()
    except Exception as exc:
        if redis_unusable(exc):
            raise
        report(where, exc)
        return None


def report(where: str, exc: BaseException) -> None:
    errors[where] = errors.get(where, 0) + 1
    now = time.monotonic()
    first = where not in _last_logged
    if first or now - _last_logged[where] >= LOG_EVERY:
        _last_logged[where] = now
        log.error(
            "%s failed (%d so far), the worker goes on: %s",
            where,
            errors[where],
            safe_text(f"{type(exc).__name__}: {exc}", 500),
            exc_info=exc if first else None,
        )


@dataclass
class Task:
    name: str
    interval: float  # seconds
    run: Callable[[], object]
    due: Callable[[], bool] | None = None  # instead of the interval, when given
    last: float = float("-inf")


class Housekeeping:
    def __init__(self, tasks: list[Task]) -> None:
        self.tasks = tasks

    def run_due(self, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        for task in self.tasks:
            is_due = task.due() if task.due is not None else now - task.last >= task.interval
            if is_due:
                task.last = now
                guarded(task.name, task.run)
