"""The health server on its own: real sockets, slow and garbage clients, bounded threads."""

from __future__ import annotations

import socket
import time

import pytest

from tests.conftest import http_get
from worker.health import HealthServer, RedisProbe
from worker.safe import safe_text
from worker.state import CurrentJob, LiveState


class DeadRedis:
    def ping(self):
        raise ConnectionError("down")


@pytest.fixture()
def server():
    state = LiveState("unit", liveness_timeout=1.0, job_grace=0.5)
    state.set_state("idle")
    srv = HealthServer("127.0.0.1", 0, state, RedisProbe(DeadRedis), max_connections=8).start()
    yield srv
    srv.stop()


def url(srv: HealthServer, path: str) -> str:
    return f"http://127.0.0.1:{srv.port}{path}"


def test_liveness_follows_the_heartbeat_not_redis(server):
    status, body = http_get(url(server, "/healthz"))
    assert status == 200 and body["status"] == "ok"
    status, body = http_get(url(server, "/readyz"))
    assert status == 503 and any("redis" in r for r in body["reasons"])
    time.sleep(1.3)  # nobody beats: the main loop is stuck
    status, body = http_get(url(server, "/healthz"))
    assert status == 503 and "main loop stalled" in body["reason"]
    server.state.beat()
    assert http_get(url(server, "/healthz"))[0] == 200


def test_job_past_timeout_plus_grace_fails_liveness(server):
    server.state.job_started(CurrentJob("j1", "worker.jobs.ping", "default", time.monotonic() - 5, timeout=1))
    server.state.beat()
    status, body = http_get(url(server, "/livez"))
    assert status == 503 and "past its timeout" in body["reason"]
    assert body["current_job"]["id"] == "j1"


def test_slow_clients_cannot_stall_probes(server):
    """Far more half-open requests than handler threads: a probe still gets its answer."""
    slow = []
    try:
        for _ in range(100):
            s = socket.create_connection(("127.0.0.1", server.port))
            s.sendall(b"GET /heal")  # never finishes its request line
            slow.append(s)
        for _ in range(5):
            server.state.beat()
            status, body = http_get(url(server, "/healthz"), timeout=5)
            assert status == 200, body
    finally:
        for s in slow:
            s.close()


def test_huge_header_is_refused_and_server_goes_on(server):
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as s:
        s.sendall(b"GET /healthz HTTP/1.1\r\nX-Big: " + b"a" * 70000 + b"\r\n\r\n")
        reply = s.recv(200)
    assert reply.startswith(b"HTTP/1.1 431") or reply.startswith(b"HTTP/1.0 431")
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as s:
        s.sendall(b"\x00\xff garbage\r\n\r\n")
        assert b"400" in s.recv(1000)
    assert http_get(url(server, "/healthz"))[0] == 200


def test_body_never_shows_secrets():
    state = LiveState("unit")
    state.set_state("idle")

    class Failing:
        def ping(self):
            raise ConnectionError("redis://:hunter2@10.0.0.1:6379 refused")

    srv = HealthServer("127.0.0.1", 0, state, RedisProbe(Failing)).start()
    try:
        for path in ("/healthz", "/readyz", "/metrics"):
            status, body = http_get(url(srv, path))
            assert "hunter2" not in str(body)
    finally:
        srv.stop()


def test_keep_alive_connection_answers_every_request_whole(server):
    """Prometheus keeps its connection open: 20 requests on one connection, each answered in full,
    status line, headers and body arriving together (one write; they used to be two, and the body
    waited for the client's delayed ACK)."""
    import http.client
    import json

    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
    started = time.perf_counter()
    for i in range(20):
        path = ("/healthz", "/readyz", "/metrics", "/nope")[i % 4]
        conn.request("GET", path)
        resp = conn.getresponse()
        body = resp.read()
        assert resp.status == {"/healthz": 200, "/readyz": 503, "/metrics": 200, "/nope": 404}[path]
        assert int(resp.getheader("Content-Length")) == len(body)
        if path != "/metrics":
            assert json.loads(body)
        sock = conn.sock
        assert sock is not None  # the same connection, kept alive
    elapsed = time.perf_counter() - started
    conn.close()
    print(f"keep-alive: {elapsed / 20 * 1000:.2f} ms a request")
    # One recv after the request gets the whole answer: nothing held back in a second segment.
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as s:
        for _ in range(5):
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            data = s.recv(65536)
            head, _, body = data.partition(b"\r\n\r\n")
            length = int(next(h for h in head.split(b"\r\n") if h.lower().startswith(b"content-length")).split(b":")[1])
            assert len(body) == length, data


HOSTILE_JOBS = [
    CurrentJob("j1", ["worker.jobs.ping"], "default", time.monotonic(), 10),  # a JSON list as function name
    CurrentJob("j2", {"name": "x"}, {"q": 1}, time.monotonic(), 10),  # an object, and an odd queue
    CurrentJob(["id"], None, None, time.monotonic(), 10),
    CurrentJob("j4\x1b[2J\n", "f\n" * 100_000, "q" * 100_000, time.monotonic() - 5, timeout=1),
]


def test_a_job_ends_recorded_whatever_its_function_and_queue_hold(server):
    """A JSON list or object as a function name used to be a dict key: TypeError, daemon exit."""
    state = server.state
    for job in HOSTILE_JOBS:
        state.job_started(job)
        state.beat()
        status, body = http_get(url(server, "/healthz"))
        shown = body["current_job"]
        assert all(
            isinstance(shown[k], str) and len(shown[k]) <= 200 and shown[k].isprintable()
            for k in shown
            if k != "elapsed_seconds"
        )
        assert len(body.get("reason", "")) < 400 and body.get("reason", "").isprintable()
        state.job_ended("failed", 0.5, counters={"pages": 2, "chunks": float("nan"), "made_up": 5, ("t",): 1})
    state.job_ended("ok", 0.1, counters=[1, 2])  # no current job, and counters that are not a dict
    metrics = state.metrics_snapshot()
    unregistered = "<unregistered>"
    assert metrics["outcomes"] == {
        ("default", unregistered, "failed"): 1,
        ("{'q': 1}", unregistered, "failed"): 1,
        ("None", unregistered, "failed"): 1,
        (safe_text("q" * 100_000), unregistered, "failed"): 1,
    }
    assert len(safe_text("q" * 100_000)) == 200
    assert metrics["counters"] == {"pages": 8}
    assert state.jobs_failed == 4
