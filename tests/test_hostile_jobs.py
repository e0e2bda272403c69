"""Whoever can write to Redis writes job hashes: what they hold may fail that job, never the worker.

Each test goes through a real worker process and real Redis, with RQ's own client or raw
writes to the job hash, as an attacker or a careless producer would.
"""

from __future__ import annotations

import http.server
import threading

import pytest
from rq import Callback, Queue
from rq.job import Job
from rq.results import Result
from rq.serializers import JSONSerializer
from rq.webhook import Webhook

from tests.conftest import queue, wait_for

DONE = ("finished", "failed", "stopped", "canceled")


def status_of(conn, job_id: str) -> str:
    raw = conn.hget(Job.key_for(job_id), "status")
    return raw.decode() if raw else ""


def exc_string(conn, job_id: str) -> str:
    result = Result.fetch_latest(Job(job_id, connection=conn), serializer=JSONSerializer)
    return result.exc_string if result is not None else ""


def test_whatever_meta_holds_the_worker_goes_on(start_worker, redis_conn):
    """One job's meta used to end the daemon (exit 1) once its horse had finished."""
    w = start_worker()
    q = queue(redis_conn)
    odd = [
        q.enqueue("worker.jobs.ping", "list", meta={"counters": [1, 2]}),
        q.enqueue("worker.jobs.ping", "strings", meta={"counters": {"pages": "lots", "chunks": 1e308 * 10}}),
        q.enqueue("worker.jobs.ping", "fake", meta={"counters": {"pages": 10**6}}),
    ]
    # A producer that forgot the JSON serializer: RQ's default pickle queue, with meta.
    pickled = Queue("default", connection=redis_conn).enqueue("worker.jobs.ping", "pickled", meta={"a": 1})
    good = q.enqueue("worker.jobs.ping", "after")
    wait_for(lambda: good.get_status(refresh=True) == "finished", message="the job after")
    assert [j.get_status(refresh=True) for j in odd] == ["finished"] * 3
    wait_for(lambda: status_of(redis_conn, pickled.id) == "failed", message="pickled job failed")
    assert "Deserializ" in exc_string(redis_conn, pickled.id) or "decode" in exc_string(redis_conn, pickled.id)
    assert w.proc.poll() is None and w.get("/healthz")[0] == 200
    # counters are the horse's own: what a producer wrote in meta is not counted
    assert "worker_pages_total{" in (metrics := w.get("/metrics")[1])
    assert [line for line in metrics.splitlines() if line.startswith("worker_pages_total")][0].endswith(" 0")


UNREADABLE = [
    ("timeout", "soon"),
    ("status", "bogus"),
    ("created_at", "yesterday"),
    ("enqueued_at", "x"),
    ("retries_left", "many"),
    ("result_ttl", "x"),
    ("failure_ttl", "x"),
    ("retry_intervals", "["),
    ("description", b"\xff\xfe"),
    ("group_id", b"\xff"),
]


def test_an_unreadable_job_ends_failed_with_its_reason(start_worker, redis_conn):
    """It used to go to the failed registry with its status left as written: a client polling
    get_status() waited forever."""
    q = queue(redis_conn)
    bad = {}
    for field, value in UNREADABLE:
        bad[field] = q.enqueue("worker.jobs.ping", "garbled")
        redis_conn.hset(bad[field].key, field, value)
    good = q.enqueue("worker.jobs.ping", "after")
    w = start_worker()
    wait_for(lambda: good.get_status(refresh=True) == "finished", message="the job after")
    for field, job in bad.items():
        assert status_of(redis_conn, job.id) == "failed", field
        assert exc_string(redis_conn, job.id).startswith("worker.errors.UnreadableJobError: "), field
        assert job.id in q.failed_job_registry
    assert w.proc.poll() is None


@pytest.mark.parametrize("timeout", [-1, 10**9])
def test_a_client_cannot_switch_the_timeout_off(start_worker, redis_conn, timeout):
    w = start_worker(extra_env={"MAX_JOB_TIMEOUT": "2", "JOB_TIMEOUT": "2"})
    q = queue(redis_conn)
    job = q.enqueue("tests.jobs_for_tests.sleep", 60, job_timeout=timeout)
    wait_for(lambda: job.get_status(refresh=True) == "failed", timeout=30, message="the job timed out")
    assert "JobTimeoutException" in job.latest_result().exc_string
    assert w.proc.poll() is None


def test_callbacks_pass_the_allowlist_and_nothing_else_is_imported(start_worker, redis_conn, tmp_path):
    marker = tmp_path / "imported"
    w = start_worker(extra_env={"IMPORT_MARKER": str(marker)})
    q = queue(redis_conn)
    side_effect = "tests.import_side_effect.callback"  # importing the module writes the marker
    on_success = q.enqueue("worker.jobs.ping", "x", on_success=Callback(side_effect))
    on_failure = q.enqueue("tests.jobs_for_tests.fail", on_failure=Callback(side_effect))
    forbidden = q.enqueue("os.system", "true", on_failure=Callback("builtins.print"))
    allowed = q.enqueue("worker.jobs.ping", "y", on_success=Callback("tests.jobs_for_tests.on_success"))
    for job in (on_success, on_failure, forbidden, allowed):
        wait_for(lambda j=job: j.get_status(refresh=True) in DONE, message=f"job {job.id}")
    assert on_success.get_status() == "failed"
    assert "ForbiddenJobError: callback 'tests.import_side_effect.callback'" in on_success.latest_result().exc_string
    assert on_failure.get_status() == "failed" and forbidden.get_status() == "failed"
    assert "builtins.print" in forbidden.latest_result().exc_string
    assert not marker.exists()
    # a registered callback runs, as RQ runs it
    assert allowed.get_status() == "finished"
    assert [x.decode() for x in redis_conn.lrange("test:callbacks", 0, -1)] == [allowed.id]
    assert w.proc.poll() is None


class Hooks(http.server.BaseHTTPRequestHandler):
    received: list[str] = []
    release = threading.Event()  # a slow endpoint: answers only when the test lets it

    def do_POST(self) -> None:  # noqa: N802
        self.received.append(self.path)
        self.release.wait(60)
        self.send_response(200)
        self.end_headers()

    do_GET = do_POST  # noqa: N815

    def log_message(self, *args) -> None:
        pass


@pytest.fixture()
def hook_server():
    Hooks.received = []
    Hooks.release = threading.Event()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hooks)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    Hooks.release.set()
    server.shutdown()


def test_webhooks_are_off_by_default(start_worker, redis_conn, hook_server):
    port = hook_server.server_address[1]
    Hooks.release.set()
    w = start_worker()
    q = queue(redis_conn)
    hook = Webhook(f"http://127.0.0.1:{port}/off", "finished", method="POST")
    failed_hook = Webhook(f"http://127.0.0.1:{port}/off-failed", "failed", method="POST")
    q.enqueue("worker.jobs.ping", "x", webhooks=[hook])
    q.enqueue("tests.jobs_for_tests.crash", 9, webhooks=[failed_hook])  # failed by the parent itself
    after = q.enqueue("worker.jobs.ping", "after")
    wait_for(lambda: after.get_status(refresh=True) == "finished", message="jobs done")
    assert Hooks.received == []
    assert w.proc.poll() is None


def test_webhooks_go_to_allowed_hosts_only_and_never_hold_up_the_worker(start_worker, redis_conn, hook_server):
    port = hook_server.server_address[1]
    w = start_worker(extra_env={"WEBHOOK_HOSTS": "127.0.0.1", "WEBHOOK_TIMEOUT": "1"})
    q = queue(redis_conn)
    slow = Webhook(f"http://127.0.0.1:{port}/slow", "finished", method="POST", timeout=3600)
    elsewhere = Webhook(f"http://localhost:{port}/elsewhere", "finished", method="POST")
    crashed = Webhook(f"http://127.0.0.1:{port}/crashed", "failed", method="POST", timeout=3600)
    q.enqueue("worker.jobs.ping", "x", webhooks=[slow, elsewhere])
    q.enqueue("tests.jobs_for_tests.crash", 9, webhooks=[crashed])  # its failed webhook is sent by the parent
    after = q.enqueue("worker.jobs.ping", "after")
    wait_for(lambda: after.get_status(refresh=True) == "finished", message="the job after")
    wait_for(lambda: len(Hooks.received) == 2, message="two webhooks")
    # Both endpoints are still holding their requests: neither held the worker up.
    assert not Hooks.release.is_set()
    assert sorted(Hooks.received) == ["/crashed", "/slow"]  # localhost is not in WEBHOOK_HOSTS
    assert w.get("/healthz")[0] == 200


def test_an_unreadable_scheduled_job_fails_alone(start_worker, redis_conn):
    """RQ's scheduler step reads every due job's hash: one it cannot read used to end the worker."""
    from datetime import timedelta

    q = queue(redis_conn)
    bad = q.enqueue_in(timedelta(seconds=0), "worker.jobs.ping", "garbled")
    redis_conn.hset(bad.key, "created_at", "yesterday")
    good = q.enqueue_in(timedelta(seconds=0), "worker.jobs.ping", "due")
    w = start_worker()
    wait_for(lambda: good.get_status(refresh=True) == "finished", message="the good scheduled job")
    wait_for(lambda: status_of(redis_conn, bad.id) == "failed", message="the bad one failed")
    assert exc_string(redis_conn, bad.id).startswith("worker.errors.UnreadableJobError: ")
    assert bad.id not in q.scheduled_job_registry
    assert w.proc.poll() is None and w.get("/healthz")[0] == 200
