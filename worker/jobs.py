"""The registered jobs: plain functions that RQ, a test or a Python shell can call.

They know nothing of the daemon. Enqueue them by dotted name, e.g.
`Queue("default").enqueue("worker.jobs.ping")`.
"""

from __future__ import annotations

import os
import socket
import time


def ping(message: str = "pong") -> dict:
    """A trivial job for smoke checks: echoes `message` with the host and process."""
    if not isinstance(message, str) or len(message) > 1000:
        from worker.errors import InvalidArgumentsError

        raise InvalidArgumentsError("ping: message must be a string of at most 1000 characters")
    return {"message": message, "host": socket.gethostname(), "pid": os.getpid(), "at": time.time()}
