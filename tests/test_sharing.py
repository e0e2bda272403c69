"""A Redis shared with another program: at start the worker warns when the head of one of its
queues holds jobs it cannot run (another RQ app's pickled job, a function not registered), naming
the queue and the fix; with queues of its own it leaves the other program's jobs alone. Real
Redis, real worker processes, jobs enqueued by RQ's own client."""

from __future__ import annotations

from rq import Queue
from rq.serializers import DefaultSerializer, JSONSerializer

from tests.conftest import queue
from worker.settings import Settings, set_settings
from worker.sharing import PEEK, unrunnable_jobs


def _other_app(conn, name: str = "default", n: int = 1) -> list:
    """Jobs as another RQ app enqueues them: pickled (RQ's default serializer), its own function."""
    q = Queue(name, connection=conn, serializer=DefaultSerializer)
    return [q.enqueue("app.tasks.send_mail", "someone@example.com") for _ in range(n)]


def test_the_peek_counts_what_cannot_run_and_is_bounded(redis_conn) -> None:
    set_settings(Settings.from_env({}))
    _other_app(redis_conn, n=PEEK + 5)
    queue(redis_conn, "high").enqueue("worker.jobs.ping")
    queue(redis_conn, "low").enqueue("os.system", "true")  # JSON, but not a registered job
    found = {u.queue: u for u in unrunnable_jobs(redis_conn, ["high", "default", "low"], JSONSerializer)}
    assert set(found) == {"default", "low"}
    assert (found["default"].count, found["default"].peeked) == (PEEK, PEEK)  # bounded, nothing taken
    assert found["default"].example.startswith("data not JSON")
    assert found["low"].example == "os.system (ForbiddenJobError)"
    assert redis_conn.llen("rq:queue:default") == PEEK + 5


def test_the_worker_warns_at_start_naming_the_queue_and_the_fix(start_worker, redis_conn) -> None:
    (pickled,) = _other_app(redis_conn)
    queue(redis_conn).enqueue("worker.jobs.ping")
    worker = start_worker(args=["--burst"], ready=False)
    assert worker.wait(60) == 0, worker.log()
    log = worker.log()
    (line,) = [line for line in log.splitlines() if "cannot run here" in line]
    assert "WARNING" in line and "queue default: 1 of its first 2 jobs cannot run here" in line, line
    assert "WORKER_QUEUES=" in line, line
    assert "queue high" not in log and "queue low" not in log
    assert redis_conn.zscore("rq:failed:default", pickled.id) is not None  # what the warning said it would do


def test_with_queues_of_its_own_the_other_apps_jobs_stay_where_they_are(start_worker, redis_conn) -> None:
    (pickled,) = _other_app(redis_conn)
    mine = queue(redis_conn, "ingest").enqueue("worker.jobs.ping")
    worker = start_worker({"WORKER_QUEUES": "ingest"}, args=["--burst"], ready=False)
    assert worker.wait(60) == 0, worker.log()
    assert "cannot run here" not in worker.log()
    assert redis_conn.lrange("rq:queue:default", 0, -1) == [pickled.id.encode()]
    mine.refresh()
    assert mine.get_status() == "finished"
