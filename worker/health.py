"""The health server: /healthz (/livez), /readyz and /metrics over plain HTTP.

A `ThreadingHTTPServer` in a daemon thread. Liveness answers from the in-memory state
only (no Redis, no disk), so a Redis outage never gets the worker restarted. Readiness
writes to Redis over a connection of its own with a short timeout. The server knows nothing
of the daemon: it reads a `LiveState` and calls the checks it is given.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from redis.exceptions import ResponseError

from worker import __version__
from worker.state import LiveState, State

log = logging.getLogger(__name__)

# A readiness check, e.g. model availability: (ok, reason). /readyz and sd_notify's READY run them.
Check = Callable[[], tuple[bool, str]]


def failing_checks(checks: Mapping[str, Check]) -> list[str]:
    """The "name: reason" of each check that fails; one that raises fails, named by its exception's type."""
    reasons = []
    for name, check in checks.items():
        try:
            ok, why = check()
        except Exception as exc:  # a broken check is a failed check
            ok, why = False, type(exc).__name__
        if not ok:
            reasons.append(f"{name}: {why}")
    return reasons


PROBE_KEY = "worker:readyz"  # the probe's write: one small key, expiring on its own
PROBE_TTL_MS = 10_000


def redis_error(exc: BaseException) -> str:
    """What went wrong, safe for a health body: the exception's type, plus what Redis refused with
    (its error code: NOREPLICAS, OOM, BUSY, MISCONF..., or redis-py's class for it: ReadOnlyError),
    also when redis-py turned the refusal into a ConnectionError (its Sentinel client does with
    READONLY). Never the message itself."""
    for cause in (exc.__cause__, exc.__context__, exc):
        if isinstance(cause, ResponseError):
            code = str(cause).split(" ", 1)[0]
            if not (code.isalpha() and code.isupper() and len(code) <= 20):
                code = type(cause).__name__
            return code if cause is exc and code == type(exc).__name__ else f"{type(exc).__name__}: {code}"
    return type(exc).__name__


class RedisProbe:
    """Whether Redis takes writes: one SET of a small key with a TTL, under a short timeout, the
    answer remembered for `cache_seconds`. A PING is not enough: after a failover the old primary
    answers PING and refuses writes (READONLY), and so do a full Redis (OOM), one busy in a script
    (BUSY) and a primary without its replicas under `min-replicas-to-write` (NOREPLICAS)."""

    def __init__(self, client_factory: Callable[[], object], cache_seconds: float = 1.0) -> None:
        self._factory = client_factory
        self._client: object | None = None
        self._cache_seconds = cache_seconds
        self._lock = threading.Lock()
        self._checked = 0.0
        self._result: dict = {"ok": None, "latency_ms": None, "error": "not checked yet"}  # None: unknown

    def check(self) -> dict:
        with self._lock:
            if time.monotonic() - self._checked < self._cache_seconds:
                return self._result
            start = time.perf_counter()
            try:
                if self._client is None:
                    self._client = self._factory()
                self._client.set(PROBE_KEY, "1", px=PROBE_TTL_MS)  # type: ignore[attr-defined]
                result = {"ok": True, "latency_ms": round((time.perf_counter() - start) * 1000, 3), "error": None}
            except Exception as exc:  # any failure means not ready; say which kind, never the URL
                result = {"ok": False, "latency_ms": None, "error": redis_error(exc)}
            self._result = result
            self._checked = time.monotonic()
            return result

    @property
    def last(self) -> dict:
        return self._result


class _Handler(BaseHTTPRequestHandler):
    server: HealthServer
    protocol_version = "HTTP/1.1"
    timeout = 5  # seconds to send a whole request; slow clients are cut off
    server_version = f"worker/{__version__}"
    sys_version = ""

    def handle_one_request(self) -> None:
        self.server.mark_pending(self.connection)  # waiting for a request: evictable
        super().handle_one_request()

    def parse_request(self) -> bool:
        ok = super().parse_request()  # request line and headers are in
        self.server.clear_pending(self.connection)
        return ok

    def finish(self) -> None:
        self.server.clear_pending(self.connection)
        super().finish()

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        self._dispatch(head=False)

    def do_HEAD(self) -> None:  # noqa: N802
        self._dispatch(head=True)

    def _not_allowed(self) -> None:
        self._send(405, {"error": "method not allowed"}, head=False, extra={"Allow": "GET, HEAD"})

    do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _not_allowed  # noqa: N815

    def _dispatch(self, head: bool) -> None:
        path = self.path.split("?", 1)[0]
        if path in ("/healthz", "/livez"):
            status, body = self.server.liveness()
            self._send(status, body, head)
        elif path == "/readyz":
            status, body = self.server.readiness()
            self._send(status, body, head)
        elif path == "/metrics":
            text = self.server.metrics()
            self._send_raw(200, text.encode(), "text/plain; version=0.0.4; charset=utf-8", head)
        else:
            self._send(404, {"error": "not found", "paths": ["/healthz", "/livez", "/readyz", "/metrics"]}, head)

    def _send(self, status: int, body: dict, head: bool, extra: dict | None = None) -> None:
        self._send_raw(status, json.dumps(body).encode() + b"\n", "application/json", head, extra)

    def setup(self) -> None:
        super().setup()
        with contextlib.suppress(OSError):  # no Nagle wait for a second segment, whatever is sent
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def _send_raw(self, status: int, data: bytes, ctype: str, head: bool, extra: dict | None = None) -> None:
        """Status line, headers and body in ONE write: as two, on a kept-alive connection, Nagle's
        algorithm holds the body until the client's delayed ACK (docs/benchmarks.md, "Worker overhead")."""
        buffer = io.BytesIO()
        wfile, self.wfile = self.wfile, buffer
        try:
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Cache-Control", "no-store")
            for k, v in (extra or {}).items():
                self.send_header(k, v)
            self.end_headers()
            if not head:
                buffer.write(data)
        finally:
            self.wfile = wfile
        self.wfile.write(buffer.getvalue())

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        """No access log: the health thread does no I/O but its socket, so a blocked log
        stream (a full pipe) cannot stall the probes."""


class HealthServer(ThreadingHTTPServer):
    """Serves health endpoints in a daemon thread, with a bound on concurrent connections."""

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 64

    def __init__(
        self,
        host: str,
        port: int,
        state: LiveState,
        redis_probe: RedisProbe,
        checks: dict[str, Check] | None = None,
        metrics: Callable[[], str] | None = None,
        max_connections: int = 64,
    ) -> None:
        self.state = state
        self.redis_probe = redis_probe
        self.checks = checks or {}
        self._metrics = metrics or (lambda: "")
        self._slots = threading.BoundedSemaphore(max_connections)
        self._pending: dict[socket.socket, float] = {}
        self._pending_lock = threading.Lock()
        if ":" in host:
            self.address_family = socket.AF_INET6
        super().__init__((host, port), _Handler)
        self._thread: threading.Thread | None = None
        # A forked work-horse must not keep the listening socket: if the parent dies, the
        # horse would hold the port and the replacement worker could not bind it.
        os.register_at_fork(after_in_child=self._close_in_child)

    def _close_in_child(self) -> None:
        with contextlib.suppress(OSError):
            self.socket.close()

    # Handler threads are bounded. When all are taken, the connection that has waited longest
    # without sending a whole request (a slow or idle client) is cut off to make room, so a
    # flood of slow clients cannot starve a probe that sends its request at once.
    def mark_pending(self, conn: socket.socket) -> None:
        with self._pending_lock:
            self._pending[conn] = time.monotonic()

    def clear_pending(self, conn: socket.socket) -> None:
        with self._pending_lock:
            self._pending.pop(conn, None)

    def _evict_oldest_pending(self) -> None:
        with self._pending_lock:
            if not self._pending:
                return
            oldest = min(self._pending, key=self._pending.__getitem__)
            del self._pending[oldest]
        with contextlib.suppress(OSError):
            oldest.shutdown(socket.SHUT_RDWR)

    def process_request(self, request, client_address) -> None:  # type: ignore[override]
        acquired = self._slots.acquire(blocking=False)
        if not acquired:
            self._evict_oldest_pending()
            acquired = self._slots.acquire(timeout=1.0)
        if not acquired:
            with contextlib.suppress(OSError):
                request.sendall(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request, client_address) -> None:  # type: ignore[override]
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def handle_error(self, request, client_address) -> None:
        """A client that hangs up mid-answer is its own problem; print no traceback (no I/O here)."""

    @property
    def port(self) -> int:
        return self.server_address[1]

    def start(self) -> HealthServer:
        # A short poll: stop() waits for the loop to notice, and a stopping worker should not linger.
        self._thread = threading.Thread(target=self.serve_forever, args=(0.05,), name="health", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self.shutdown()
        self.server_close()

    # -- the answers -----------------------------------------------------------------
    def _common(self) -> dict:
        body = self.state.snapshot()
        body["redis"] = {k: v for k, v in self.redis_probe.last.items() if k != "error"}
        body["version"] = __version__
        return body

    def liveness(self) -> tuple[int, dict]:
        alive, reason = self.state.liveness()
        body = {"status": "ok" if alive else "fail", "reason": reason, **self._common()}
        return (200 if alive else 503), body

    def readiness(self) -> tuple[int, dict]:
        reasons = []
        redis = self.redis_probe.check()
        if not redis["ok"]:
            reasons.append(f"redis unavailable or refusing writes ({redis['error']})")
        reasons += failing_checks(self.checks)
        if self.state.state == State.DRAINING:
            reasons.append("draining: shutdown requested")
        elif self.state.state == State.STARTING:
            reasons.append("starting")
        alive, why = self.state.liveness()
        if not alive:
            reasons.append(why)
        body = {"status": "ok" if not reasons else "fail", "reasons": reasons, **self._common()}
        return (200 if not reasons else 503), body

    def metrics(self) -> str:
        return self._metrics()
