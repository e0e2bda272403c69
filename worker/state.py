"""What the daemon knows about itself, in memory, shared with the health server.

The main loop writes (heartbeat, state, current job, outcomes); the health thread reads a
snapshot. Liveness is decided from this alone, with no I/O. Counts are made here, in the
long-lived parent, when a work-horse ends, so nothing counted is lost with the horse.
"""

from __future__ import annotations

import math
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum

from worker.errors import Outcome
from worker.progress import COUNTERS
from worker.safe import function_label, safe_text

# Job duration histogram buckets, in seconds.
DURATION_BUCKETS: tuple[float, ...] = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)

# Longest job id, function or queue name shown in /healthz, STATUS= or a metric label.
TEXT_LIMIT = 200


# Fields a worker adds to its RQ worker hash: the embedding precision that runs, and why (`status`).
PRECISION_FIELD = "embed_precision"
PRECISION_REASON_FIELD = "embed_precision_reason"


def embedding_fields(embedding: dict[str, str]) -> dict[str, str]:
    """The worker hash's fields for `LiveState.embedding` (none when it is not known)."""
    if not embedding:
        return {}
    return {PRECISION_FIELD: embedding["precision"], PRECISION_REASON_FIELD: embedding["reason"]}


class State(StrEnum):
    """The daemon's state, as /healthz, /metrics and systemd's STATUS show it."""

    STARTING = "starting"  # not yet registered with Redis
    IDLE = "idle"
    BUSY = "busy"  # a horse is running a job
    DRAINING = "draining"  # shutdown requested: no new job is taken


@dataclass(frozen=True)
class CurrentJob:
    """The job a horse runs. `id`, `function` and `queue` are what the job hash said: any value
    (a list, 100 KB, a newline); whatever shows them makes them safe first (worker.safe)."""

    id: str
    function: str
    queue: str
    started: float  # time.monotonic()
    timeout: float | None


@dataclass
class Histogram:
    buckets: list[int] = field(default_factory=lambda: [0] * len(DURATION_BUCKETS))
    count: int = 0
    total: float = 0.0

    def observe(self, value: float) -> None:
        self.count += 1
        self.total += value
        for i, bound in enumerate(DURATION_BUCKETS):
            if value <= bound:
                self.buckets[i] += 1


def _is_count(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) and value >= 0


class LiveState:
    def __init__(self, name: str = "", liveness_timeout: float = 30.0, job_grace: float = 60.0) -> None:
        self._lock = threading.Lock()
        self.name = name
        self.liveness_timeout = liveness_timeout
        self.job_grace = job_grace
        self.born = time.monotonic()
        self.last_beat = self.born
        self.state = State.STARTING
        self.current: CurrentJob | None = None
        self.jobs_done = 0
        self.jobs_failed = 0
        self.outcomes: dict[tuple[str, str, str], int] = defaultdict(int)  # (queue, function, outcome)
        self.durations: dict[str, Histogram] = defaultdict(Histogram)  # by queue
        self.counters: dict[str, float] = defaultdict(float)  # pages, chunks, tokens...
        self.redis_ok: bool | None = None
        # The embedding precision that runs, what was asked for and why: set once at start.
        self.embedding: dict[str, str] = {}
        # Called as listener(self, event) after each change, in the main loop's thread (event:
        # "beat", "state", "job_started", "job_ended"); e.g. systemd notification.
        self.listener: Callable[[LiveState, str], None] | None = None

    def _notify(self, event: str) -> None:
        if self.listener is not None:
            self.listener(self, event)

    # -- written by the main loop ------------------------------------------------------
    def beat(self) -> None:
        self.last_beat = time.monotonic()  # a float store is atomic; no lock needed
        self._notify("beat")

    def set_state(self, state: State) -> None:
        with self._lock:
            changed = self.state != state
            self.state = state
        if changed:
            self._notify("state")

    def job_started(self, job: CurrentJob) -> None:
        with self._lock:
            self.current = job
            if self.state != State.DRAINING:
                self.state = State.BUSY
        self._notify("job_started")

    def job_ended(self, outcome: Outcome, duration: float, counters: dict[str, float] | None = None) -> None:
        """Record how the current job ended."""
        with self._lock:
            job = self.current
            self.current = None
            if self.state == State.BUSY:
                self.state = State.IDLE
            if job is not None:
                # Metric labels from a bounded set: a registered function's name as it is, any
                # other one label; so a producer's names cannot grow /metrics (nor this dict).
                queue = safe_text(job.queue, TEXT_LIMIT)
                self.outcomes[(queue, function_label(job.function), safe_text(outcome, TEXT_LIMIT))] += 1
                self.durations[queue].observe(duration)
                if outcome == Outcome.OK:
                    self.jobs_done += 1
                elif outcome == Outcome.FAILED:
                    self.jobs_failed += 1
                for name, value in counters.items() if isinstance(counters, dict) else ():
                    if name in COUNTERS and _is_count(value):
                        self.counters[name] += value
        self._notify("job_ended")

    # -- read by the health server ---------------------------------------------------
    def liveness(self, now: float | None = None) -> tuple[bool, str]:
        now = time.monotonic() if now is None else now
        age = now - self.last_beat
        if age > self.liveness_timeout:
            return False, f"main loop stalled: no heartbeat for {age:.1f}s"
        job = self.current
        if job is not None and job.timeout and job.timeout > 0:
            elapsed = now - job.started
            if elapsed > job.timeout + self.job_grace:
                return False, (
                    f"job {safe_text(job.id, TEXT_LIMIT)} running {elapsed:.0f}s, past its timeout {job.timeout:.0f}s"
                    " + grace"
                )
        return True, "ok"

    def snapshot(self) -> dict:
        now = time.monotonic()
        with self._lock:
            job = self.current
            return {
                "worker": self.name,
                "state": self.state,
                "current_job": (
                    {
                        "id": safe_text(job.id, TEXT_LIMIT),
                        "function": safe_text(job.function, TEXT_LIMIT),
                        "queue": safe_text(job.queue, TEXT_LIMIT),
                        "elapsed_seconds": round(now - job.started, 3),
                    }
                    if job
                    else None
                ),
                "jobs_done": self.jobs_done,
                "jobs_failed": self.jobs_failed,
                "heartbeat_age_seconds": round(now - self.last_beat, 3),
                "uptime_seconds": round(now - self.born, 3),
                **({"embedding": dict(self.embedding)} if self.embedding else {}),
            }

    def metrics_snapshot(self) -> dict:
        with self._lock:
            return {
                "state": self.state,
                "outcomes": dict(self.outcomes),
                "durations": {q: Histogram(list(h.buckets), h.count, h.total) for q, h in self.durations.items()},
                "counters": dict(self.counters),
                "embedding": dict(self.embedding),
            }
