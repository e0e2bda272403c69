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
"""

from __future__ import annotations

import logging
import threading
import time

from redis import Redis
from redis.exceptions import RedisError

log = logging.getLogger(__name__)

INFLIGHT_PREFIX = "worker:inflight:"

_MOVE = """
local inflight = KEYS[#KEYS]
for i = 1, #KEYS - 1 do
  local id = redis.call('LMOVE', KEYS[i], inflight, 'LEFT', 'RIGHT')
  if id then return {KEYS[i], id} end
end
return false
"""


def inflight_key(worker_name: str) -> str:
    return INFLIGHT_PREFIX + worker_name


class Mover:
    """The atomic priority move, as a registered script (EVALSHA after the first call)."""

    def __init__(self, conn: Redis) -> None:
        self._script = conn.register_script(_MOVE)

    def __call__(self, queue_keys: list[str], inflight: str) -> tuple[str, str] | None:
        result = self._script(keys=[*queue_keys, inflight])
        if not result:
            return None
        queue_key, job_id = (v.decode() if isinstance(v, bytes) else v for v in result)
        return queue_key, job_id


class QueueWaiter:
    """Wakes the main loop when any queue may have work, without taking anything from it."""

    def __init__(self, conn: Redis, queue_keys: list[str], block_seconds: int = 1) -> None:
        self.conn = conn
        self.queue_keys = queue_keys
        self.block_seconds = block_seconds
        self.wanted = threading.Event()  # set by the main loop while it waits
        self.work = threading.Event()  # set by a waiter that saw an entry
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

    def wait(self, timeout: float) -> bool:
        """Block until a queue may have work (True) or `timeout` passes (False)."""
        self.work.clear()
        self.wanted.set()
        try:
            return self.work.wait(timeout)
        finally:
            self.wanted.clear()

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
                self.work.set()
                while self.wanted.is_set() and not self._stopping.is_set():
                    time.sleep(0.001)  # the main loop is waking up; don't hammer a non-empty queue
