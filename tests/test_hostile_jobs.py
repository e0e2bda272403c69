"""Whoever can write to Redis writes job hashes: what they hold may fail that job, never the worker.

Each test goes through a real worker process and real Redis, with RQ's own client or raw
writes to the job hash, as an attacker or a careless producer would.
"""

from __future__ import annotations

import http.server
import threading
import zlib
from pathlib import Path

import pytest
from rq import Callback, Queue, Repeat, Retry
from rq.job import Job, JobStatus
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
    ("retry_intervals", "[NaN]"),
    ("retry_intervals", '"soon"'),
    ("repeat_intervals", '[1, {"a": 1}]'),
    ("repeat_intervals", "[true]"),
    ("description", b"\xff\xfe"),
    ("group_id", b"\xff"),
]


def test_an_unreadable_job_ends_failed_with_its_reason(start_worker, redis_conn):
    """It used to go to the failed registry with its status left as written: a client polling
    get_status() waited forever."""
    q = queue(redis_conn)
    bad = {}
    for field, value in UNREADABLE:
        job = bad[f"{field}={value!r}"] = q.enqueue("worker.jobs.ping", "garbled")
        redis_conn.hset(job.key, field, value)
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


# -- retry and repeat intervals -------------------------------------------------------------------

DAY = 86400


def scheduled_in(conn, queue_name: str, job_id: str) -> float | None:
    """Seconds from now until the job is due in its queue's scheduled registry (None: not there)."""
    import time

    score = conn.zscore(f"rq:scheduled:{queue_name}", job_id)
    return None if score is None else score - time.time()


def test_a_huge_retry_or_repeat_interval_is_clamped_and_the_worker_goes_on(start_worker, redis_conn):
    """`Retry(interval=10**12)` used to raise OverflowError in the horse (a failing job) and in
    the daemon's dead-horse path (a crashing one: three worker deaths, then WorkerDiedError);
    `Repeat(interval=10**12)` recorded a job that succeeded as failed."""
    w = start_worker()
    q = queue(redis_conn)
    failing = q.enqueue("tests.jobs_for_tests.fail", "x", retry=Retry(max=3, interval=10**12))
    infinite = q.enqueue("tests.jobs_for_tests.fail", "x", retry=Retry(max=3))
    redis_conn.hset(infinite.key, "retry_intervals", "[Infinity]")  # a raw write: RQ's json reads it
    crashing = q.enqueue("tests.jobs_for_tests.crash", 9, retry=Retry(max=3, interval=10**12))
    repeated = q.enqueue("worker.jobs.ping", "again", repeat=Repeat(times=2, interval=10**12))
    after = q.enqueue("worker.jobs.ping", "after")
    wait_for(lambda: after.get_status(refresh=True) == "finished", message="the job after")
    for job in (failing, infinite, crashing, repeated):
        assert job.get_status(refresh=True) == "scheduled", job.func_name
        assert 0 < scheduled_in(redis_conn, "default", job.id) <= DAY  # not in 31,700 years
        job.refresh()
    assert failing.retries_left == infinite.retries_left == crashing.retries_left == 2
    assert repeated.repeats_left == 1
    assert repeated.latest_result().type.name == "SUCCESSFUL"
    assert w.proc.poll() is None and w.get("/healthz")[0] == 200


def test_intervals_are_clamped_when_a_job_is_read(redis_conn):
    from worker.allowlist import MAX_SCHEDULE_INTERVAL, GuardedJob, clamp_intervals

    assert clamp_intervals([-5, 0, 2.5, 10**12, float("inf")], "r") == [0, 0, 2.5, DAY, DAY]
    assert clamp_intervals(7, "r") == [7] and clamp_intervals([], "r") is None and MAX_SCHEDULE_INTERVAL == DAY
    job = queue(redis_conn).enqueue("worker.jobs.ping", "x", retry=Retry(max=2, interval=[10**12, 3]))
    redis_conn.hset(job.key, "repeat_intervals", "[-Infinity, 1e300]")
    read = GuardedJob.fetch(job.id, connection=redis_conn, serializer=JSONSerializer)
    assert read.retry_intervals == [DAY, 3] and read.repeat_intervals == [0, DAY]


# -- the size of a job hash ---------------------------------------------------------------------


def zlib_bomb(head: bytes, filler: bytes, count: int, tail: bytes) -> bytes:
    """zlib data for `head + filler * count + tail`, made in a fraction of a second: the filler's
    block (its compressor state flushed) is repeated, and the checksum computed over the whole."""
    packer = zlib.compressobj(9)
    start = packer.compress(head) + packer.flush(zlib.Z_FULL_FLUSH)
    block = packer.compress(filler) + packer.flush(zlib.Z_FULL_FLUSH)
    end = packer.compress(tail) + packer.flush()
    adler = zlib.adler32(head)
    for _ in range(count):
        adler = zlib.adler32(filler, adler)
    return start + block * count + end[:-4] + zlib.adler32(tail, adler).to_bytes(4, "big")


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


def test_a_zlib_bomb_in_data_is_not_unpacked_in_the_daemon(start_worker, redis_conn):
    """1 MB in Redis, 1 GiB of JSON unpacked: RQ unpacked it in the daemon with no bound (peak
    RSS 3.1 GB, 2.1 GB held after). Now it is unpacked at most to MAX_JOB_DATA_BYTES (64 MiB)."""
    w = start_worker()
    q = queue(redis_conn)
    bomb = q.create_job("worker.jobs.ping", args=("to be replaced",), status=JobStatus.QUEUED)
    bomb.save()
    payload = zlib_bomb(b'["worker.jobs.ping", null, ["', b"A" * (1 << 20), 1024, b'"], {}]')
    assert len(payload) < 1100 * 1024
    redis_conn.hset(bomb.key, "data", payload)
    before = peak_rss_mib(w.proc.pid)
    redis_conn.rpush(q.key, bomb.id)  # queued as RQ queues it, with the bomb already in place
    after = q.enqueue("worker.jobs.ping", "after")
    wait_for(lambda: after.get_status(refresh=True) == "finished", timeout=60, message="the job after")
    assert status_of(redis_conn, bomb.id) == "failed"
    why = exc_string(redis_conn, bomb.id)
    assert why.startswith("worker.errors.UnreadableJobError: ") and "InputTooLargeError" in why
    assert "MAX_JOB_DATA_BYTES" in why
    assert peak_rss_mib(w.proc.pid) - before < 256  # 64 MiB unpacked at most; unbounded: over 1,000
    assert w.proc.poll() is None and w.get("/healthz")[0] == 200


def test_a_job_hash_over_the_limit_is_not_read(start_worker, redis_conn):
    limit = 100_000
    q = queue(redis_conn)
    big_meta = q.enqueue("worker.jobs.ping", "x")
    redis_conn.hset(big_meta.key, "meta", '{"pad": "' + "x" * limit + '"}')
    big_data = q.enqueue("worker.jobs.ping", "y" * (limit + 1))  # RQ packs it to a few hundred bytes
    exc_bomb = q.enqueue("worker.jobs.ping", "z")
    redis_conn.hset(exc_bomb.key, "exc_info", zlib.compress(b"x" * (10 * limit)))
    many_fields = q.enqueue("worker.jobs.ping", "w")
    redis_conn.hset(many_fields.key, mapping={f"f{i}": "1" for i in range(300)})
    fits = q.enqueue("tests.jobs_for_tests.record", "v" * (limit // 2))
    w = start_worker(extra_env={"MAX_JOB_DATA_BYTES": str(limit), "MAX_INLINE_BYTES": "1000"})
    wait_for(lambda: fits.get_status(refresh=True) == "finished", message="the job that fits")
    for job in (big_meta, big_data, exc_bomb, many_fields):
        assert status_of(redis_conn, job.id) == "failed", job.id
        why = exc_string(redis_conn, job.id)
        assert why.startswith("worker.errors.UnreadableJobError: ") and "InputTooLargeError" in why, why
    assert w.proc.poll() is None and w.get("/healthz")[0] == 200


def test_a_zlib_bomb_in_a_scheduled_job_is_not_unpacked_in_the_daemon(start_worker, redis_conn):
    from datetime import timedelta

    w = start_worker()
    q = queue(redis_conn)
    bomb = q.enqueue_in(timedelta(hours=1), "worker.jobs.ping", "to be replaced")
    redis_conn.hset(bomb.key, "data", zlib_bomb(b'["worker.jobs.ping", null, ["', b"A" * (1 << 20), 512, b'"], {}]'))
    before = peak_rss_mib(w.proc.pid)
    redis_conn.zadd(q.scheduled_job_registry.key, {bomb.id: 0})  # due now
    wait_for(lambda: status_of(redis_conn, bomb.id) == "failed", timeout=60, message="the bomb failed")
    assert "MAX_JOB_DATA_BYTES" in exc_string(redis_conn, bomb.id)
    assert peak_rss_mib(w.proc.pid) - before < 256  # unbounded: the 512 MiB unpacked, and packed again
    assert w.proc.poll() is None
