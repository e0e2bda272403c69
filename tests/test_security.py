"""Secrets stay secret; inputs from Redis are untrusted."""

from __future__ import annotations

from redis import Redis

from tests.conftest import queue, wait_for
from worker.devredis import RedisServer

SECRET = "s3cr3t-hunter2"


def test_redis_password_never_in_logs_or_endpoints(start_worker, tmp_path):
    server = RedisServer(directory=tmp_path / "pw", password=SECRET).start()
    try:
        w = start_worker(extra_env={"REDIS_URL": server.url, "LOG_LEVEL": "DEBUG"})
        conn = Redis.from_url(server.url)
        ok = queue(conn).enqueue("worker.jobs.ping", "x")
        bad = queue(conn).enqueue("tests.jobs_for_tests.fail", "boom")
        wait_for(lambda: ok.get_status(refresh=True) == "finished" and bad.get_status(refresh=True) == "failed")
        server.kill()  # errors while Redis is away must not print the URL either
        wait_for(lambda: w.get("/readyz")[0] == 503, timeout=10)
        wait_for(lambda: "Redis unavailable" in w.log_path.read_text(), timeout=10, message="outage logged")
        bodies = [str(w.get(p)[1]) for p in ("/healthz", "/readyz", "/metrics")]
        w.stop()
        everything = w.log_path.read_text() + "".join(bodies)
        assert "Redis unavailable" in everything  # the outage was logged...
        assert SECRET not in everything  # ...without the password
    finally:
        server.stop()


def test_json_logs_redact_urls(start_worker, tmp_path, redis_url):
    from worker.logs import redact

    assert redact("connect redis://user:pw@host:6379/0 failed") == "connect redis://user:***@host:6379/0 failed"
    assert redact("rediss://:pw@h/1") == "rediss://:***@h/1"
