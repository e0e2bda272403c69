"""Secrets stay secret; inputs from Redis are untrusted."""

from __future__ import annotations

import http.server
import threading

from redis import Redis
from rq.webhook import Webhook

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


def test_redaction_hides_the_whole_password_and_secret_query_values() -> None:
    from worker.logs import redact
    from worker.settings import redact_url

    for url in ("redis://user:p@ss@host:6379/0", "redis://:s3cr/et@host:6379/0", "redis://:pa#ss@host/0"):
        secret = url.split("://", 1)[1].rsplit("@", 1)[0].split(":", 1)[1]
        for text in (redact(f"connect {url} failed"), redact_url(url)):
            assert not any(part in text for part in secret.replace("@", " ").replace("/", " ").split()), text
    assert redact("redis://u:p@ss@host:6379/0 down") == "redis://u:***@host:6379/0 down"
    assert redact_url("redis://u:p@ss@host:6379/0") == "redis://***@host:6379/0"
    for text in (redact("redis://host:6379/0?password=hunter2&db=1"), redact_url("redis://h/0?db=1&Password=hunter2")):
        assert "hunter2" not in text and "db=1" in text, text


def test_unencoded_slash_in_the_password_exits_2_without_the_secret(tmp_path) -> None:
    import os
    import subprocess
    import sys

    from tests.conftest import ROOT

    for url in ("redis://:pa/ss-hunter2@127.0.0.1:1/0", "redis://u:pa#ss-hunter2@127.0.0.1:1/0"):
        env = dict(os.environ, REDIS_URL=url, PYTHONPATH=str(ROOT))
        for command in ("run", "status"):
            out = subprocess.run(
                [sys.executable, "-m", "worker", command],
                env=env,
                capture_output=True,
                text=True,
                timeout=60,
                cwd=tmp_path,
            )
            assert out.returncode == 2, (command, out.stderr)
            assert "REDIS_URL is not a valid URL" in out.stderr and "percent-encode" in out.stderr
            assert "Traceback" not in out.stderr and "hunter2" not in out.stderr + out.stdout
            assert "ss-" not in out.stderr


class Recorder(http.server.BaseHTTPRequestHandler):
    """Records each request (host it was sent to, path, Authorization header); /to/<url>
    redirects to <url>."""

    seen: list[tuple[str, str, str | None]] = []

    def do_POST(self) -> None:  # noqa: N802
        self.seen.append((self.server.server_address[0], self.path, self.headers.get("Authorization")))
        if self.path.startswith("/to/"):
            self.send_response(307)
            self.send_header("Location", self.path[len("/to/") :])
        else:
            self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_GET = do_POST  # noqa: N815

    def log_message(self, *args) -> None:
        pass


def test_webhooks_do_not_follow_redirects_to_hosts_not_allowed(start_worker, redis_conn):
    """urllib, which RQ's webhooks use, follows redirects anywhere and takes the producer's
    headers along: an allowed host could send the job's traceback and credentials elsewhere."""
    servers = []
    for host in ("127.0.0.1", "127.0.0.2"):  # two host names on the loopback
        server = http.server.ThreadingHTTPServer((host, 0), Recorder)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
    Recorder.seen = []
    try:
        allowed, other = (f"http://{s.server_address[0]}:{s.server_address[1]}" for s in servers)
        w = start_worker(extra_env={"WEBHOOK_HOSTS": "127.0.0.1"})
        q = queue(redis_conn)
        secret = {"Authorization": "Bearer " + SECRET}
        hooks = [
            Webhook(f"{allowed}/to/{other}/stolen", "finished", method="POST", headers=secret),
            Webhook(f"{allowed}/to/{allowed}/landed", "finished", headers=secret),
            Webhook(f"{allowed}/to/ftp://127.0.0.1/x", "finished"),
        ]
        q.enqueue("worker.jobs.ping", "x", webhooks=hooks)
        failed = q.enqueue("tests.jobs_for_tests.fail", webhooks=[Webhook(f"{allowed}/to/{other}/trace", "failed")])
        after = q.enqueue("worker.jobs.ping", "after")
        wait_for(lambda: after.get_status(refresh=True) == "finished", message="the job after")
        assert failed.get_status(refresh=True) == "failed"  # its horse waited for its webhook
        wait_for(lambda: ("127.0.0.1", "/landed", "Bearer " + SECRET) in Recorder.seen, message="allowed redirect")
        assert [path for host, path, _ in Recorder.seen if host == "127.0.0.2"] == []
        assert {path for _, path, _ in Recorder.seen} == {
            f"/to/{other}/stolen",
            f"/to/{allowed}/landed",
            "/landed",
            "/to/ftp://127.0.0.1/x",
            f"/to/{other}/trace",
        }
        assert "redirect to '127.0.0.2' not followed" in w.log()
        assert w.proc.poll() is None
    finally:
        for server in servers:
            server.shutdown()


def test_a_typo_in_extra_jobs_shows_at_start():
    from worker import settings as settings_module
    from worker.allowlist import import_registered

    before = settings_module._settings
    try:
        extra = "tests.jobs_for_tests.slep,tests.jobs_for_tests.sleep,tests.no_such_module.f"
        settings_module.set_settings(settings_module.Settings.from_env({"EXTRA_JOBS": extra}))
        problems = import_registered()
    finally:
        settings_module._settings = before
    assert [p.split(":")[0] for p in problems] == ["tests.jobs_for_tests.slep", "tests.no_such_module.f"]
    assert "typo in EXTRA_JOBS" in problems[0]
