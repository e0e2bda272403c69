"""Taking a job off the queues without a moment where it is nowhere.

RQ pops a job id (BLPOP) and only two round trips later records it in the started registry;
a worker killed, or a Redis that dies, in between loses the job. Here one Lua script moves the
id, in strict queue priority order, from its queue into this worker's in-flight list, atomically
(`LMOVE`); `prepare_execution` then takes it out of that list in the same transaction that
registers it as started. An id is always in a queue, an in-flight list or the started registry,
and `recovery` puts back what a dead worker left in its in-flight list.

A Lua script cannot block, so an idle worker waits with one thread per queue doing
`BLMOVE q q LEFT LEFT`: a rotation of the list onto itself that blocks until the queue has an
entry and leaves it exactly as it was. The first that sees work wakes the main loop, which then
runs the script. Needs Redis 6.2 or newer.

`Dequeuer` puts these together and hands the daemon its next job. The move itself and the
failing of an unreadable job are transitions of `worker.lifecycle`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import threading
import time

from redis import Redis
from redis.exceptions import RedisError
from rq.job import Job
from rq.queue import Queue

from worker.errors import redis_unusable
from worker.lifecycle import Mover, fail_unreadable, inflight_key

__all__ = ["Dequeuer", "Mover", "QueueWaiter", "inflight_key"]

log = logging.getLogger(__name__)


class QueueWaiter:
    """Wakes the main loop when any queue may have work, without taking anything from it.

    The main loop waits in `select` on a pipe the watcher threads write to, beside any file
    descriptors it passes (the signal wake-up pipe), so a signal ends the wait at once.
    """

    def __init__(self, conn: Redis, queue_keys: list[str], block_seconds: int = 1) -> None:
        self.conn = conn
        self.queue_keys = queue_keys
        self.block_seconds = block_seconds
        self.wanted = threading.Event()  # set by the main loop while it waits
        self._work_r, self._work_w = os.pipe()  # written by a watcher that saw an entry
        os.set_blocking(self._work_r, False)
        os.set_blocking(self._work_w, False)
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self) -> QueueWaiter:
        for key in self.queue_keys:
            t = threading.Thread(target=self._watch, args=(key,), name=f"wait:{key}", daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def stop(self) -> None:
        self._stopping.set()
        self.wanted.set()
        for fd in (self._work_r, self._work_w):
            with contextlib.suppress(OSError):
                os.close(fd)

    def wait(self, timeout: float, also: tuple[int, ...] = ()) -> bool:
        """Block until a queue may have work (True), one of `also` is readable or `timeout`
        passes (False)."""
        self._drain()
        self.wanted.set()
        try:
            readable, _, _ = select.select([self._work_r, *also], [], [], timeout)
        finally:
            self.wanted.clear()
        return self._work_r in readable

    def _drain(self) -> None:
        with contextlib.suppress(BlockingIOError):
            while os.read(self._work_r, 512):
                pass

    def _watch(self, key: str) -> None:
        while not self._stopping.is_set():
            if not self.wanted.wait(1.0):
                continue
            try:
                seen = self.conn.blmove(key, key, self.block_seconds, "LEFT", "LEFT")
            except RedisError:
                time.sleep(0.5)  # the main loop reports and backs off; just don't spin
                continue
            if seen is not None:
                with contextlib.suppress(OSError):  # full (a wake-up is pending anyway), or closed
                    os.write(self._work_w, b"!")
                while self.wanted.is_set() and not self._stopping.is_set():
                    time.sleep(0.001)  # the main loop is waking up; don't hammer a non-empty queue


class Dequeuer:
    """Hands the daemon the next job, in queue priority order, through its in-flight list.

    `next()` never blocks longer than `poll_interval`, so the daemon's loop keeps beating.
    A job whose hash cannot be read (bad payload or fields) goes to its queue's failed
    registry; one whose hash is gone is dropped. Redis errors propagate: an id moved but not
    fetched stays in the in-flight list, where recovery finds it.
    """

    def __init__(
        self,
        conn: Redis,
        inflight: str,
        poll_interval: float,
        job_class: type[Job],
        serializer,
        wake_fd: int | None = None,
    ) -> None:
        """`wake_fd`: a file descriptor that ends an idle wait when readable (the daemon's
        signal wake-up pipe); the caller drains it."""
        self.conn = conn
        self.wake_fds = (wake_fd,) if wake_fd is not None else ()
        self.inflight = inflight
        self.poll_interval = poll_interval
        self.job_class = job_class
        self.serializer = serializer
        self._move = Mover(conn)
        self._waiter: QueueWaiter | None = None

    def next(self, queues: list[Queue], burst: bool = False) -> tuple[Job, Queue] | None:
        """The next job and its queue, taken from `queues` in order; None when they are empty
        (after waiting up to `poll_interval` for work, unless `burst`)."""
        by_key = {q.key: q for q in queues}
        keys = list(by_key)
        while True:
            moved = self._move(keys, self.inflight)
            if moved is None:
                if not burst:
                    self._wait(keys)
                return None
            queue_key, job_id = moved
            queue = by_key[queue_key]
            try:
                job = self.job_class.fetch(job_id, connection=self.conn, serializer=self.serializer)
            except Exception as exc:  # deleted while queued (dropped), or a hash RQ cannot read (failed)
                if redis_unusable(exc):
                    raise
                fail_unreadable(self.conn, queue, job_id, exc, self.serializer, inflight=self.inflight)
                continue
            return job, queue

    def _wait(self, keys: list[str]) -> None:
        if self._waiter is None or set(self._waiter.queue_keys) != set(keys):
            if self._waiter is not None:
                self._waiter.stop()
            self._waiter = QueueWaiter(self.conn, keys, max(1, int(self.poll_interval))).start()
        self._waiter.wait(self.poll_interval, self.wake_fds)

    def stop(self) -> None:
        if self._waiter is not None:
            self._waiter.stop()
