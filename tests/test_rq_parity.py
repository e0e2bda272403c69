"""Our worker as an RQ user meets it: RQ's commands, states, strategies and worker class API,
beside plain RQ workers on the same queues. Real processes, real Redis."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path

from rq import Callback, Worker
from rq.command import send_shutdown_command, send_stop_job_command
from rq.serializers import JSONSerializer
from rq.suspension import resume, suspend

from tests.conftest import ROOT, TEST_JOBS, queue, wait_for, worker_env
from worker.daemon import DaemonWorker
from worker.devredis import free_port

RQ = str(Path(sys.executable).parent / "rq")


def plain_rq_worker(redis_url: str, tmp_path: Path, *args: str) -> subprocess.Popen:
    env = worker_env(redis_url, tmp_path, free_port(), TEST_JOBS)
    cmd = [RQ, "worker", "--url", redis_url, "--serializer", "rq.serializers.JSONSerializer", *args]
    return subprocess.Popen(cmd, env=env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def test_a_plain_rq_workers_long_job_is_never_taken_from_it(start_worker, redis_conn, redis_url, tmp_path):
    """Mixed fleet: a plain `rq worker` is silent for 30 s at a time while a job runs. Our
    worker, quick to judge its own kind dead, must not take that job and run it twice."""
    plain = plain_rq_worker(redis_url, tmp_path, "default")
    try:
        job = queue(redis_conn).enqueue("tests.jobs_for_tests.sleep", 8, marker="long")
        wait_for(lambda: redis_conn.llen("test:started:long") == 1, message="plain worker started it")
        start_worker(extra_env={"DEAD_WORKER_AFTER": "2"})  # judges its own kind after 2 s
        wait_for(lambda: job.get_status(refresh=True) == "finished", timeout=30, message="job finished")
        assert redis_conn.llen("test:started:long") == 1 and redis_conn.llen("test:done:long") == 1
    finally:
        plain.send_signal(signal.SIGINT)
        plain.wait(20)


def test_stop_job_command_stops_it_as_rq_does(start_worker, redis_conn):
    start_worker()
    job = queue(redis_conn).enqueue(
        "tests.jobs_for_tests.sleep", 30, marker="stop", on_stopped=Callback("tests.jobs_for_tests.on_stopped")
    )
    wait_for(lambda: redis_conn.llen("test:started:stop") == 1, message="job started")
    send_stop_job_command(redis_conn, job.id, serializer=JSONSerializer)
    wait_for(lambda: job.get_status(refresh=True) == "stopped", message="job stopped")
    assert "stopped by user" in job.latest_result().exc_string
    wait_for(lambda: redis_conn.llen("test:stopped") == 1, message="the stopped callback")
    assert redis_conn.lrange("test:stopped", 0, -1) == [job.id.encode()]


def test_shutdown_command_is_a_warm_stop_as_in_rq(start_worker, redis_conn):
    w = start_worker(extra_env={"WORKER_NAME": "commanded"})
    job = queue(redis_conn).enqueue("tests.jobs_for_tests.sleep", 2, marker="warm")
    wait_for(lambda: redis_conn.llen("test:started:warm") == 1, message="job started")
    send_shutdown_command(redis_conn, "commanded")
    assert w.wait(30) == 0
    assert job.get_status(refresh=True) == "finished"
    assert redis_conn.llen("test:started:warm") == 1  # finished, not killed and run again


def test_the_class_is_built_and_found_as_rq_builds_workers(start_worker, redis_conn, redis_url, tmp_path):
    start_worker(extra_env={"WORKER_NAME": "findable"})
    found = {w.name: w for w in DaemonWorker.all(connection=redis_conn)}
    assert isinstance(found["findable"], DaemonWorker)
    again = DaemonWorker.find_by_key(Worker.redis_worker_namespace_prefix + "findable", connection=redis_conn)
    assert again is not None and again.get_state() == "idle"  # RQ shows a waiting worker as idle
    # `rq worker -w worker.daemon.DaemonWorker`, as an RQ user would start it
    job = queue(redis_conn).enqueue("worker.jobs.ping", "through rq's cli")
    env = worker_env(redis_url, tmp_path, free_port(), TEST_JOBS)
    cmd = [RQ, "worker", "-w", "worker.daemon.DaemonWorker", "--url", redis_url, "--burst",
           "--serializer", "rq.serializers.JSONSerializer", "default"]  # fmt: skip
    out = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr[-2000:]
    assert job.get_status(refresh=True) == "finished"


def test_suspended_and_resumed_states_show_as_in_rq(start_worker, redis_conn):
    start_worker(extra_env={"WORKER_NAME": "suspendable"})
    key = Worker.redis_worker_namespace_prefix + "suspendable"

    def state() -> str:
        return redis_conn.hget(key, "state").decode()

    wait_for(lambda: state() == "idle", message="idle")
    suspend(redis_conn)
    wait_for(lambda: state() == "suspended", message="suspended")
    job = queue(redis_conn).enqueue("worker.jobs.ping", "held")
    wait_for(lambda: redis_conn.hget(key, "last_heartbeat"), message="a heartbeat")  # the loop went round
    assert job.get_status(refresh=True) == "queued"  # suspended: nothing taken
    resume(redis_conn)
    wait_for(lambda: job.get_status(refresh=True) == "finished", message="job after resume")
    wait_for(lambda: state() == "idle", message="idle again")


def test_static_methods_run_by_dotted_name_and_instance_methods_are_refused(start_worker, redis_conn):
    start_worker()
    q = queue(redis_conn)
    job = q.enqueue("tests.jobs_for_tests.Maths.double", 21)
    unregistered = q.enqueue("tests.jobs_for_tests.Maths.triple", 1)
    wait_for(lambda: unregistered.get_status(refresh=True) == "failed", message="unregistered refused")
    assert job.get_status(refresh=True) == "finished" and job.return_value() == 42
    assert "ForbiddenJobError" in unregistered.latest_result().exc_string


def test_round_robin_dequeue_strategy(start_worker, redis_conn):
    queues = {n: queue(redis_conn, n) for n in ("high", "default", "low")}
    for i in range(2):
        for name, q in queues.items():
            q.enqueue("tests.jobs_for_tests.record", f"{name}{i}")
    start_worker(args=["--burst"], extra_env={"DEQUEUE_STRATEGY": "round_robin"}, ready=False).wait(30)
    order = [x.decode() for x in redis_conn.lrange("test:order", 0, -1)]
    assert order == ["high0", "default0", "low0", "high1", "default1", "low1"]


def test_rq_info_shows_our_worker_idle(start_worker, redis_url):
    w = start_worker(extra_env={"WORKER_NAME": "info-visible"})
    assert w.get("/healthz")[1]["worker"] == "info-visible"
    out = subprocess.run(
        [RQ, "info", "--url", redis_url, "--serializer", "rq.serializers.JSONSerializer"],
        capture_output=True, text=True, timeout=30, env=dict(os.environ, PYTHONPATH=str(ROOT)),
    )  # fmt: skip
    line = next(line for line in out.stdout.splitlines() if "info-visible" in line)
    assert "idle" in line, out.stdout


def test_rq_clis_defaults_keep_the_allowlist_and_json(redis_conn, redis_url, tmp_path):
    """`rq worker -w worker.daemon.DaemonWorker` with no other option: RQ's CLI passes its
    default job class (rq.job.Job) and serializer (pickle) explicitly. Neither may switch off
    the allowlist or JSON (found by make rq-suite: the allowlist was off under `rq worker -w`)."""
    q = queue(redis_conn)  # JSON
    ok = q.enqueue("worker.jobs.ping", "through rq's cli, defaults")
    forbidden = q.enqueue("os.getpid")
    env = worker_env(redis_url, tmp_path, free_port(), TEST_JOBS)
    cmd = [RQ, "worker", "-w", "worker.daemon.DaemonWorker", "--url", redis_url, "--burst", "default"]
    out = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr[-2000:]
    assert ok.get_status(refresh=True) == "finished"
    assert forbidden.get_status(refresh=True) == "failed"
    assert "ForbiddenJobError" in forbidden.latest_result().exc_string


def test_job_class_and_serializer_as_rq_passes_them(redis_conn):
    from rq.job import Job
    from rq.serializers import DefaultSerializer

    from worker.allowlist import GuardedJob

    def build(**kwargs) -> DaemonWorker:
        return DaemonWorker(["default"], connection=redis_conn, prepare_for_work=False, **kwargs)

    for job_class in (Job, "rq.job.Job", None):
        assert build(job_class=job_class).job_class is GuardedJob
    assert build(serializer=None).serializer is JSONSerializer
    assert build(serializer="rq.serializers.DefaultSerializer").serializer is JSONSerializer
    assert build(serializer="pickle").serializer is DefaultSerializer  # an explicit choice stays

    class Sub(GuardedJob):
        pass

    assert build(job_class=Sub).job_class is Sub
    try:
        build(job_class="tests.jobs_for_tests.PlainJob")
    except ValueError as exc:
        assert "GuardedJob" in str(exc)
    else:
        raise AssertionError("a job class without the allowlist was accepted")


def test_work_in_process_again_and_again_leaves_no_pipes_or_handlers(redis_conn):
    """A program that calls work() repeatedly (RQ's test suite does, hundreds of times) must not
    leak the signal wake-up pipe nor keep our signal handlers after work() returns."""
    import signal

    def pipes() -> int:
        count = 0
        for fd in os.listdir("/proc/self/fd"):
            with contextlib.suppress(FileNotFoundError):  # the fd that listed the directory
                count += os.readlink(f"/proc/self/fd/{fd}").startswith("pipe:")
        return count

    handlers = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    before = pipes()
    q = queue(redis_conn)
    for i in range(3):
        job = q.enqueue("worker.jobs.ping", str(i))
        assert DaemonWorker([q], connection=redis_conn).work(burst=True)
        assert job.get_status(refresh=True) == "finished"
    assert pipes() == before
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == handlers


def test_a_registered_builtin_runs_although_it_has_no_signature(start_worker, redis_conn):
    """`EXTRA_JOBS=time.sleep`: inspect cannot read a builtin's signature, which failed every
    such job with a bare ValueError. It runs unchecked, as RQ runs it; a bad call fails the job."""
    start_worker(extra_env={"EXTRA_JOBS": f"{TEST_JOBS},time.sleep"})
    q = queue(redis_conn)
    ok = q.enqueue("time.sleep", 0)
    bad = q.enqueue("time.sleep", "not a number")
    wait_for(lambda: bad.get_status(refresh=True) == "failed", message="bad call failed")
    assert ok.get_status(refresh=True) == "finished"
    assert "TypeError" in bad.latest_result().exc_string
