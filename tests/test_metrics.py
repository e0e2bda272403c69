"""/metrics adds up: every job counted once, in the long-lived parent, whichever horse ran it;
and the JSON log lines carry their stable fields, never a Redis password."""

from __future__ import annotations

import json
import signal
import uuid

import pytest
from prometheus_client.parser import text_string_to_metric_families
from redis import Redis
from rq import Worker

from tests.conftest import queue, wait_for

TEST_JOBS = "tests.jobs_for_tests.fail,tests.jobs_for_tests.crash,tests.jobs_for_tests.counted"


def families(text: str) -> dict:
    return {f.name: f for f in text_string_to_metric_families(text)}


def samples(fam, name: str | None = None, **labels: str) -> list:
    return [
        s
        for s in fam.samples
        if (name is None or s.name == name) and all(s.labels.get(k) == v for k, v in labels.items())
    ]


def test_counts_after_n_ok_and_m_failed_jobs_through_forked_horses(start_worker, redis_conn):
    n_ok, n_failed, n_counted = 7, 4, 3
    w = start_worker(extra_env={"EXTRA_JOBS": TEST_JOBS})
    q = queue(redis_conn)
    high = queue(redis_conn, "high")
    jobs = [q.enqueue("worker.jobs.ping", f"m{i}") for i in range(n_ok)]
    jobs += [q.enqueue("tests.jobs_for_tests.fail", f"bad {i}") for i in range(n_failed)]
    jobs += [high.enqueue("tests.jobs_for_tests.counted", pages=5, chunks=11) for _ in range(n_counted)]
    crash = q.enqueue("tests.jobs_for_tests.crash", 9)  # the horse dies without a word
    jobs.append(crash)
    wait_for(
        lambda: all(j.get_status(refresh=True) in ("finished", "failed") for j in jobs),
        timeout=60,
        message="all jobs ended",
    )
    # The parent records a job after its horse is reaped and its status read: wait for the last.
    total = len(jobs)
    wait_for(
        lambda: w.get("/healthz")[1]["jobs_done"] + w.get("/healthz")[1]["jobs_failed"] >= total,
        message="the parent to count every job",
    )

    status, text = w.get("/metrics")
    assert status == 200
    fams = families(text)  # Prometheus' own parser: raises on anything malformed
    jobs_fam = fams["worker_jobs"]
    assert jobs_fam.type == "counter"

    def count(**labels: str) -> float:
        return sum(s.value for s in samples(jobs_fam, "worker_jobs_total", **labels))

    assert count(function="worker.jobs.ping", outcome="ok") == n_ok
    assert count(function="tests.jobs_for_tests.fail", outcome="failed") == n_failed
    assert count(function="tests.jobs_for_tests.counted", outcome="ok", queue="high") == n_counted
    # However a horse that crashed is handled (failed, or retried then failed), its final
    # failure is counted once.
    assert crash.get_status(refresh=True) == "failed"
    assert count(function="tests.jobs_for_tests.crash", outcome="failed") == 1
    assert count(outcome="ok") == n_ok + n_counted
    assert count(outcome="failed") == n_failed + 1

    # Counters made inside the horses (job.meta) survive them.
    assert samples(fams["worker_pages"], "worker_pages_total")[0].value == 5 * n_counted
    assert samples(fams["worker_chunks"], "worker_chunks_total")[0].value == 11 * n_counted

    hist = fams["worker_job_duration_seconds"]
    assert hist.type == "histogram"
    for qname in ("default", "high"):
        buckets = samples(hist, "worker_job_duration_seconds_bucket", queue=qname)
        values = [s.value for s in buckets]
        assert values == sorted(values), "buckets are cumulative"
        assert buckets[-1].labels["le"] == "+Inf"
        n = samples(hist, "worker_job_duration_seconds_count", queue=qname)[0].value
        assert values[-1] == n
        assert samples(hist, "worker_job_duration_seconds_sum", queue=qname)[0].value > 0
    assert (
        sum(samples(hist, "worker_job_duration_seconds_count", queue=q)[0].value for q in ("default", "high"))
        == count()
    )

    state = {s.labels["state"]: s.value for s in samples(fams["worker_state"])}
    assert state["idle"] == 1 and sum(state.values()) == 1
    assert samples(fams["worker_redis_up"])[0].value == 1
    depth = {s.labels["queue"]: s.value for s in samples(fams["worker_queue_depth"])}
    assert depth == {"high": 0, "default": 0, "low": 0}
    failed = {s.labels["queue"]: s.value for s in samples(fams["worker_queue_failed"])}
    assert failed["default"] == n_failed + 1

    body = w.get("/healthz")[1]
    assert (body["jobs_done"], body["jobs_failed"]) == (n_ok + n_counted, n_failed + 1)
    # RQ's own per-worker counts in Redis (what `rq info` shows) agree.
    key = Worker.redis_worker_namespace_prefix + body["worker"]
    rq_worker = Worker.find_by_key(key, connection=redis_conn)
    assert (rq_worker.successful_job_count, rq_worker.failed_job_count) == (n_ok + n_counted, n_failed + 1)


@pytest.fixture()
def password_url(redis_url: str):
    """A Redis ACL user with a password, on our own server, so REDIS_URL carries a secret."""
    user, secret = f"tester{uuid.uuid4().hex[:6]}", f"S3cret-{uuid.uuid4().hex}"
    admin = Redis.from_url(redis_url)
    admin.execute_command("ACL", "SETUSER", user, "on", f">{secret}", "~*", "&*", "+@all")
    yield redis_url.replace("redis://", f"redis://{user}:{secret}@"), secret
    admin.execute_command("ACL", "DELUSER", user)
    admin.close()


STABLE_FIELDS = ("time", "level", "worker", "job_id", "function", "queue", "duration", "outcome", "error_type")


def test_json_logs_have_stable_fields_and_no_password(start_worker, redis_conn, password_url, tmp_path):
    url, secret = password_url
    w = start_worker(extra_env={"LOG_FORMAT": "json", "REDIS_URL": url, "WORKER_NAME": "json-worker"})
    q = queue(redis_conn)
    ok = q.enqueue("worker.jobs.ping", "hello")
    bad = q.enqueue("tests.jobs_for_tests.fail", "it broke")
    wait_for(lambda: all(j.get_status(refresh=True) in ("finished", "failed") for j in (ok, bad)), message="jobs ended")
    wait_for(lambda: w.get("/healthz")[1]["jobs_failed"] == 1, message="the parent to count")
    for path in ("/healthz", "/readyz", "/metrics"):
        assert secret not in json.dumps(w.get(path)[1])
    w.signal(signal.SIGTERM)
    assert w.wait(30) == 0

    raw = w.log_path.read_text()
    assert secret not in raw
    lines = [json.loads(line) for line in raw.splitlines() if line.strip()]  # every line is JSON
    assert all(rec["worker"] == "json-worker" for rec in lines)
    ends = {rec["job_id"]: rec for rec in lines if rec.get("outcome") and rec.get("job_id")}
    assert set(ends) == {ok.id, bad.id}
    for rec in ends.values():
        assert set(STABLE_FIELDS) <= set(rec), rec
        assert rec["level"] in ("info", "warning")
        assert rec["time"].endswith("Z")
        assert rec["queue"] == "default"
        assert isinstance(rec["duration"], float) and rec["duration"] > 0
    assert (ends[ok.id]["function"], ends[ok.id]["outcome"], ends[ok.id]["error_type"]) == (
        "worker.jobs.ping",
        "ok",
        None,
    )
    assert (ends[bad.id]["function"], ends[bad.id]["outcome"], ends[bad.id]["error_type"]) == (
        "tests.jobs_for_tests.fail",
        "failed",
        "RuntimeError",
    )
    # The start-up line names the Redis it uses, without the secret.
    assert any("redis://***@127.0.0.1" in rec["message"] for rec in lines)


def test_forbidden_names_cannot_grow_the_metrics(start_worker, redis_conn):
    """Jobs with distinct 100 KB names used to add a label each, for the life of the process
    (300 of them: /metrics from 2 KB to 30 MB)."""
    n = 60
    w = start_worker()
    q = queue(redis_conn)
    jobs = [q.enqueue(f"forbidden.job_{i}_" + "x" * 100_000) for i in range(n)]
    jobs += [q.enqueue("worker.jobs.ping", "registered")]
    wait_for(
        lambda: w.get("/healthz")[1]["jobs_done"] + w.get("/healthz")[1]["jobs_failed"] >= n + 1,
        timeout=120,
        message="the parent to count every job",
    )
    status, text = w.get("/metrics")
    assert status == 200 and len(text) < 20_000
    jobs_fam = families(text)["worker_jobs"]
    functions = {s.labels["function"] for s in jobs_fam.samples}
    assert functions == {"<unregistered>", "worker.jobs.ping"}
    assert samples(jobs_fam, function="<unregistered>", outcome="failed")[0].value == n
    assert all(len(value) <= 200 for s in jobs_fam.samples for value in s.labels.values())
    assert all(j.get_status(refresh=True) in ("finished", "failed") for j in jobs)
    assert w.proc.poll() is None


def test_an_entry_that_is_no_job_is_quarantined_and_counted(start_worker, redis_conn):
    w = start_worker()
    q = queue(redis_conn)
    redis_conn.rpush(q.key, "bad id!")
    after = q.enqueue("worker.jobs.ping", "after")
    wait_for(lambda: after.get_status(refresh=True) == "finished", message="the job after")
    samples = [line for line in w.get("/metrics")[1].splitlines() if line.startswith("worker_quarantined_total")]
    assert samples and samples[0].endswith(" 1"), samples
    assert b"bad id!" in redis_conn.lindex("worker:quarantine", 0)
    assert w.proc.poll() is None
