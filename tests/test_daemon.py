"""The daemon as a user meets it: a real worker process, real Redis, real signals, real HTTP."""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import subprocess
import sys
import time

import pytest
from redis import Redis
from rq import Queue
from rq.job import Job

from tests.conftest import ROOT, queue, wait_for, worker_env
from worker.devredis import RedisServer, free_port


def failed_error(job: Job) -> str:
    job.refresh()
    result = job.latest_result()
    return result.exc_string if result is not None else ""


def test_ping_job_runs_and_is_counted(start_worker, redis_conn):
    w = start_worker()
    job = queue(redis_conn).enqueue("worker.jobs.ping", "hello")
    wait_for(lambda: job.get_status(refresh=True) == "finished", message="ping finished")
    assert job.return_value()["message"] == "hello"
    assert job.return_value()["pid"] != w.proc.pid  # ran in a forked work-horse
    # the parent counts the job when the horse has exited, a moment after the horse wrote its result
    wait_for(lambda: w.get("/healthz")[1]["jobs_done"] == 1, timeout=5, message="job counted")
    status, body = w.get("/healthz")
    assert status == 200 and body["status"] == "ok"


def test_forbidden_function_runs_nothing(start_worker, redis_conn, tmp_path):
    w = start_worker()
    marker = tmp_path / "pwned"
    q = queue(redis_conn)
    bad = q.enqueue("os.system", f"touch {marker}")
    wrong_args = q.enqueue("worker.jobs.ping", "a", "b", "c", unknown=1)
    good = q.enqueue("worker.jobs.ping", "after")
    wait_for(lambda: good.get_status(refresh=True) == "finished", message="good job after bad ones")
    assert bad.get_status(refresh=True) == "failed"
    assert "ForbiddenJobError" in failed_error(bad) and "'os.system' is not a registered job" in failed_error(bad)
    assert not marker.exists()
    assert wrong_args.get_status(refresh=True) == "failed"
    assert "InvalidArgumentsError" in failed_error(wrong_args)
    wait_for(lambda: w.get("/healthz")[1]["jobs_failed"] == 2, timeout=5, message="failures counted")


def test_pickle_payload_refused_by_json_worker(start_worker, redis_conn, tmp_path):
    """A pickle payload is code execution; the JSON worker must not unpickle it."""
    start_worker()
    marker = tmp_path / "unpickled"
    pickle_q = Queue("default", connection=redis_conn)  # RQ's default serializer: pickle
    pickle_q.enqueue("os.system", f"touch {marker}")
    good = queue(redis_conn).enqueue("worker.jobs.ping", "after")
    wait_for(lambda: good.get_status(refresh=True) == "finished", message="good job after pickle")
    wait_for(lambda: redis_conn.zcard("rq:failed:default") == 1, message="pickle job failed")
    assert not marker.exists()


def test_strict_priority(start_worker, redis_conn):
    low, default, high = (queue(redis_conn, n) for n in ("low", "default", "high"))
    for i in range(3):
        low.enqueue("tests.jobs_for_tests.record", f"low{i}")
        default.enqueue("tests.jobs_for_tests.record", f"default{i}")
        high.enqueue("tests.jobs_for_tests.record", f"high{i}")
    start_worker(args=["--burst"], ready=False).wait(30)
    order = [x.decode() for x in redis_conn.lrange("test:order", 0, -1)]
    assert order == [f"{q}{i}" for q in ("high", "default", "low") for i in range(3)]


def test_run_is_the_default_command_flags_included(redis_conn, redis_url, tmp_path):
    job = queue(redis_conn).enqueue("worker.jobs.ping", "burst")
    env = worker_env(redis_url, tmp_path, free_port(), "")
    out = subprocess.run(
        [sys.executable, "-m", "worker", "--burst"], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert job.get_status(refresh=True) == "finished"


def test_health_endpoints_answer_404_405_and_head(start_worker):
    w = start_worker()
    assert w.get("/nope")[0] == 404
    assert w.get("/healthz", method="POST")[0] == 405
    assert w.get("/metrics", method="DELETE")[0] == 405
    assert w.get("/livez", method="HEAD")[0] == 200
    status, body = w.get("/livez")
    assert status == 200
    for key in (
        "status",
        "worker",
        "state",
        "current_job",
        "jobs_done",
        "jobs_failed",
        "redis",
        "uptime_seconds",
        "version",
    ):
        assert key in body
    metrics = w.get("/metrics")[1]
    assert "worker_redis_up" in metrics and 'worker_queue_depth{queue="default"} 0' in metrics


def test_sigterm_mid_job_finishes_it_and_exits_0(start_worker, redis_conn):
    w = start_worker(extra_env={"SHUTDOWN_TIMEOUT": "20"})
    job = queue(redis_conn).enqueue("tests.jobs_for_tests.sleep", 2, marker="warm")
    wait_for(lambda: redis_conn.llen("test:started:warm") == 1, message="job started")
    w.signal(signal.SIGTERM)
    # draining: not ready any more, still alive
    wait_for(
        lambda: w.get("/readyz")[0] == 503 and "draining" in str(w.get("/readyz")[1]["reasons"]),
        timeout=5,
        message="readyz 503 draining",
    )
    assert w.wait(30) == 0
    assert job.get_status(refresh=True) == "finished"
    assert redis_conn.llen("test:done:warm") == 1


def test_sigterm_past_shutdown_timeout_requeues_the_job_once(start_worker, redis_conn):
    w = start_worker(extra_env={"SHUTDOWN_TIMEOUT": "1"})
    q = queue(redis_conn)
    job = q.enqueue("tests.jobs_for_tests.sleep", 2.5, marker="slow")
    other = q.enqueue("worker.jobs.ping", "queued behind")
    wait_for(lambda: redis_conn.llen("test:started:slow") == 1, message="job started")
    w.signal(signal.SIGTERM)
    assert w.wait(15) == 0
    assert job.get_status(refresh=True) == "queued"
    assert q.job_ids[0] == job.id  # put back at the front, ahead of the job that was waiting
    assert redis_conn.llen("test:done:slow") == 0
    assert q.started_job_registry.count == 0
    # a new worker runs it to the end, once
    start_worker(args=["--burst"], ready=False).wait(30)
    assert job.get_status(refresh=True) == "finished"
    assert other.get_status(refresh=True) == "finished"
    assert redis_conn.llen("test:started:slow") == 2 and redis_conn.llen("test:done:slow") == 1


def test_second_sigterm_is_cold_shutdown_and_requeues(start_worker, redis_conn):
    w = start_worker(extra_env={"SHUTDOWN_TIMEOUT": "60"})
    q = queue(redis_conn)
    job = q.enqueue("tests.jobs_for_tests.sleep", 30, marker="cold")
    wait_for(lambda: redis_conn.llen("test:started:cold") == 1, message="job started")
    w.signal(signal.SIGTERM)
    time.sleep(0.5)
    w.signal(signal.SIGTERM)
    assert w.wait(10) == 0
    assert job.get_status(refresh=True) == "queued" and q.job_ids == [job.id]
    pids = [int(p) for p in redis_conn.lrange("test:started:cold", 0, -1)]
    with pytest.raises(ProcessLookupError):  # the horse went with the worker
        os.kill(pids[0], 0)


def test_redis_outage_keeps_liveness_and_turns_readiness(start_worker, tmp_path):
    port = free_port()
    server = RedisServer(port=port, directory=tmp_path / "r").start()
    try:
        w = start_worker(extra_env={"REDIS_URL": server.url})
        server.kill()
        wait_for(lambda: w.get("/readyz")[0] == 503, timeout=10, message="readyz 503 without Redis")
        reasons = w.get("/readyz")[1]["reasons"]
        assert any("redis" in r for r in reasons)
        # the worker keeps failing to reach Redis for a while, backing off
        wait_for(lambda: w.log().count("Redis unavailable") >= 3, timeout=20, message="three failed attempts")
        assert w.get("/healthz")[0] == 200
        assert w.proc.poll() is None
        server = RedisServer(port=port, directory=tmp_path / "r").start()
        job = queue(Redis.from_url(server.url)).enqueue("worker.jobs.ping", "back")
        wait_for(lambda: job.get_status(refresh=True) == "finished", timeout=40, message="job after Redis is back")
        assert w.get("/healthz")[0] == 200
        assert "redis" not in " ".join(w.get("/readyz")[1]["reasons"])
    finally:
        server.stop()


def test_hung_main_loop_fails_liveness(start_worker, redis_conn):
    """A main loop blocked writing to a full log pipe stops its heartbeat: /healthz turns 503."""
    read_end, write_end = os.pipe()
    fcntl.fcntl(write_end, fcntl.F_SETPIPE_SZ, 4096)
    os.set_blocking(write_end, False)
    with contextlib.suppress(BlockingIOError):  # full before the worker starts: its first log line blocks
        while True:
            os.write(write_end, b"x" * 512)
    os.set_blocking(write_end, True)
    try:
        w = start_worker(extra_env={"LIVENESS_TIMEOUT": "2"}, stderr=write_end, ready=False)
        os.close(write_end)
        write_end = -1

        def stalled() -> bool:
            try:
                return w.get("/healthz")[0] == 503
            except OSError:  # not listening yet
                return False

        wait_for(stalled, timeout=30, message="liveness 503 while the loop is stuck")
        assert "main loop stalled" in w.get("/healthz")[1]["reason"]
        os.set_blocking(read_end, False)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and w.get("/healthz")[0] != 200:  # unblock it: liveness recovers
            try:
                os.read(read_end, 65536)
            except BlockingIOError:
                time.sleep(0.05)
        assert w.get("/healthz")[0] == 200
    finally:
        os.close(read_end)
        if write_end >= 0:
            os.close(write_end)


def test_bad_settings_exit_2(redis_url, tmp_path):
    env = dict(os.environ, REDIS_URL=redis_url, HEALTH_PORT="notaport", PYTHONPATH=str(ROOT))
    out = subprocess.run([sys.executable, "-m", "worker", "run"], env=env, capture_output=True, text=True, timeout=30)
    assert out.returncode == 2
    assert "HEALTH_PORT must be an integer" in out.stderr


def test_transient_errors_are_retried_bad_input_is_not(start_worker, redis_conn):
    from rq import Retry

    start_worker(extra_env={"RETRY_INTERVALS": "0,1"})
    q = queue(redis_conn)
    flaky = q.enqueue("tests.jobs_for_tests.flaky", "a", 2)
    bad = q.enqueue("tests.jobs_for_tests.bad_input", retry=Retry(max=3))  # the client asks for retries
    wait_for(lambda: flaky.get_status(refresh=True) == "finished", timeout=20, message="flaky job finished")
    assert flaky.return_value() == 3
    wait_for(lambda: bad.get_status(refresh=True) == "failed", message="bad input failed")
    # FAILED is final: RQ leaves a job it retries QUEUED or SCHEDULED
    assert int(redis_conn.get("test:bad_input")) == 1  # run once, never retried
    assert not queue(redis_conn).scheduled_job_registry.get_job_ids()
    assert "NotAPdfError: this is not a PDF" in failed_error(bad)


def test_redis_timeouts_do_not_end_the_worker(start_worker, tmp_path):
    """A Redis that stops answering (SIGSTOP: connections stay open, replies never come) makes every
    call time out; plain RQ quits on that TimeoutError (rq issue 1968). Ours waits it out."""
    server = RedisServer(directory=tmp_path / "frozen").start()
    try:
        w = start_worker(extra_env={"REDIS_URL": server.url})
        os.kill(server.process.pid, signal.SIGSTOP)
        # a call times out (the worker's socket timeout is a few seconds), and the worker goes on
        wait_for(lambda: "Redis unavailable (TimeoutError)" in w.log_path.read_text(), timeout=30, message="a timeout")
        assert w.proc.poll() is None
        assert w.get("/healthz")[0] == 200
        assert w.get("/readyz")[0] == 503
        os.kill(server.process.pid, signal.SIGCONT)
        job = queue(Redis.from_url(server.url)).enqueue("worker.jobs.ping", "thawed")
        wait_for(lambda: job.get_status(refresh=True) == "finished", timeout=40, message="job after the freeze")
    finally:
        os.kill(server.process.pid, signal.SIGCONT)
        server.stop()


def test_scheduler_locks_are_kept_through_a_long_job(start_worker, redis_conn):
    """RQ's scheduler locks live 61 s; a job longer than that used to let them expire."""
    from rq.scheduler import RQScheduler

    start_worker(extra_env={"DEAD_WORKER_AFTER": "2"})  # heartbeats every 0.5 s
    key = RQScheduler.get_locking_key("default")
    wait_for(lambda: redis_conn.pttl(key) > 0, message="scheduler lock taken")
    job = queue(redis_conn).enqueue("tests.jobs_for_tests.sleep", 5, marker="long")
    wait_for(lambda: redis_conn.llen("test:started:long") == 1, message="job started")
    samples = []
    while job.get_status(refresh=True) != "finished":
        samples.append(redis_conn.pttl(key))
        time.sleep(0.2)
    # refreshed while the job ran: without it the TTL falls by 5 s over the job
    assert len(samples) > 10 and min(samples) > 58_500, samples


def test_the_daemon_stops_warm_and_exits_4_past_its_memory_ceiling(start_worker, redis_conn):
    """DAEMON_MEMORY_MB bounds the long-lived parent: with the model loaded it holds far more than
    10 MiB, so it stops at its first check, after finishing the job in hand."""
    q = queue(redis_conn)
    job = q.enqueue("tests.jobs_for_tests.sleep", 1)
    w = start_worker(extra_env={"DAEMON_MEMORY_MB": "10"}, ready=False)
    assert w.wait(timeout=60) == 4
    assert "over DAEMON_MEMORY_MB=10" in w.log()
    assert job.get_status(refresh=True) in ("finished", "queued")  # finished, or never taken: not lost


def test_a_job_logs_one_line_at_start_and_one_at_its_end_and_bad_input_no_traceback(start_worker, redis_conn):
    """Bad input is an expected end: it used to log an ERROR with a 16-line traceback; every
    finished job logged four near-duplicate lines and none at its start."""
    w = start_worker()
    q = queue(redis_conn)
    ok = q.enqueue("worker.jobs.ping", "x")
    bad = q.enqueue("worker.jobs.extract_text", {"data_b64": "bm90IGEgcGRm", "filename": "x.pdf"})
    wait_for(lambda: bad.get_status(refresh=True) == "failed" and ok.get_status(refresh=True) == "finished")
    wait_for(lambda: f"job {bad.id} failed" in w.log(), message="the end logged")
    log = w.log()
    assert [line for line in log.splitlines() if ok.id in line and "Job OK" in line] == []
    assert len([line for line in log.splitlines() if f"job {ok.id} started" in line]) == 1
    assert f"job {bad.id}: bad input, not retried: NotAPdfError" in log
    assert "Traceback" not in log


def test_a_typo_in_extra_jobs_is_exit_2_naming_it(redis_url, tmp_path):
    env = dict(os.environ, REDIS_URL=redis_url, PYTHONPATH=str(ROOT), EXTRA_JOBS="tests.jobs_for_tests.slep")
    out = subprocess.run([sys.executable, "-m", "worker", "run"], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert "registered job cannot be imported: tests.jobs_for_tests.slep" in out.stderr
