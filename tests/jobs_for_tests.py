"""Jobs used by the tests, registered through EXTRA_JOBS (as a user registers their own)."""

from __future__ import annotations

import os
import time

from redis import Redis
from rq.job import Job


def sleep(seconds: float, marker: str | None = None) -> dict:
    """Sleep, then append `marker` to a Redis list so tests can count runs."""
    if marker:
        Redis.from_url(os.environ["REDIS_URL"]).rpush(f"test:started:{marker}", os.getpid())
    time.sleep(seconds)
    if marker:
        Redis.from_url(os.environ["REDIS_URL"]).rpush(f"test:done:{marker}", os.getpid())
    return {"slept": seconds}


def record(label: str) -> str:
    """Append `label` to a Redis list: the order of runs is the order in the list."""
    Redis.from_url(os.environ["REDIS_URL"]).rpush("test:order", label)
    return label


def fail(message: str = "boom") -> None:
    raise RuntimeError(message)


def crash(code: int = 9) -> None:
    os._exit(code)


def spin(seconds: float) -> int:
    """Burn CPU for `seconds`."""
    end = time.perf_counter() + seconds
    n = 0
    while time.perf_counter() < end:
        n += 1
    return n


def paced(source: object, pages: int = 24, seconds_per_page: float = 0.25) -> dict:
    """Report reading `pages` pages at a steady pace, as ingest_pdf's extract stage does: a job
    whose progress does not depend on the machine's speed (for `enqueue --wait`'s time left)."""
    from worker.progress import report

    for done in range(pages + 1):
        report("extract", done=done, total=pages)
        time.sleep(seconds_per_page)
    return {"pages": pages, "chunks": 0}


def counted(pages: int = 0, chunks: int = 0) -> dict:
    """Report ingestion counters from inside the horse, as ingest_pdf does."""
    from worker.progress import count

    count(pages=pages, chunks=chunks)
    return {"pages": pages, "chunks": chunks}


def getenv(name: str) -> str | None:
    """The horse's view of an environment variable."""
    return os.environ.get(name)


def kill_worker() -> None:
    """A poison job: kills the worker that runs it (its parent), then itself."""
    import signal

    Redis.from_url(os.environ["REDIS_URL"]).rpush("test:poison", os.getpid())
    os.kill(os.getppid(), signal.SIGKILL)
    os._exit(1)


def flaky(key: str, failures: int) -> int:
    """Fail with a transient error the first `failures` times, then succeed."""
    from worker.errors import StoreBusyError

    n = Redis.from_url(os.environ["REDIS_URL"]).incr(f"test:flaky:{key}")
    if n <= failures:
        raise StoreBusyError(f"attempt {n}: store locked")
    return n


def bad_input() -> None:
    from worker.errors import NotAPdfError

    Redis.from_url(os.environ["REDIS_URL"]).incr("test:bad_input")
    raise NotAPdfError("this is not a PDF")


def hog(megabytes: int) -> int:
    """Allocate and touch `megabytes` of memory (a runaway job)."""
    block = bytearray(megabytes * 1024 * 1024)
    block[::4096] = b"x" * len(block[::4096])
    return len(block)


def address_space_limit() -> int:
    """The work-horse's RLIMIT_AS soft limit in bytes (-1: none)."""
    import resource

    return resource.getrlimit(resource.RLIMIT_AS)[0]


def on_success(job, connection, result) -> None:
    """A success callback, registered through EXTRA_JOBS: appends the job id to a list."""
    connection.rpush("test:callbacks", job.id)


def on_stopped(job, connection) -> None:
    """A stopped callback, registered through EXTRA_JOBS."""
    connection.rpush("test:stopped", job.id)


class Maths:
    @staticmethod
    def double(x: int) -> int:
        """A static method job, enqueued as tests.jobs_for_tests.Maths.double."""
        return 2 * x


def count_then_die_once(pages: int) -> int:
    """Count `pages`, then on the first run kill the worker and itself (as an OOM kill would);
    on the next run count them again and finish."""
    import signal

    from worker import progress

    progress.count(pages=pages)
    if Redis.from_url(os.environ["REDIS_URL"]).incr("test:count_then_die") == 1:
        os.kill(os.getppid(), signal.SIGKILL)
        os._exit(1)
    return pages


class PlainJob(Job):
    """A job class without the allowlist, which DaemonWorker must refuse."""


def hold(marker: str, seconds: float = 60.0) -> str:
    """Run until the test releases it (LPUSH test:release:<marker>), or `seconds` pass: a job
    whose end the test decides, with no timing. Records its runs as `sleep` does."""
    conn = Redis.from_url(os.environ["REDIS_URL"])
    conn.rpush(f"test:started:{marker}", os.getpid())
    if conn.blpop([f"test:release:{marker}"], timeout=seconds) is None:
        raise TimeoutError(f"hold({marker!r}): not released within {seconds}s")
    conn.rpush(f"test:done:{marker}", os.getpid())
    return marker
