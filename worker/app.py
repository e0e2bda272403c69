"""Putting the daemon together: settings, logging, Redis, health server, RQ worker.

Each part stays ignorant of the others; only this module knows all of them.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket

from redis import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.sentinel import Sentinel, SentinelConnectionPool, SentinelManagedConnection, SentinelManagedSSLConnection
from rq.serializers import DefaultSerializer, JSONSerializer

from worker import __version__, hugepages, lifecycle, rqcompat
from worker.allowlist import import_registered
from worker.daemon import DaemonWorker, housekeeping
from worker.exitcodes import EXIT_MEMORY, EXIT_OK, EXIT_UNAVAILABLE, EXIT_USAGE
from worker.health import HealthServer, RedisProbe
from worker.logs import setup_logging
from worker.metrics import queue_figures, render
from worker.sdnotify import from_environment
from worker.settings import Settings
from worker.sharing import warn_unrunnable
from worker.state import LiveState

log = logging.getLogger("worker")


def serializer_for(settings: Settings):
    return JSONSerializer if settings.serializer == "json" else DefaultSerializer


class PrimaryConnection(SentinelManagedConnection):
    """redis-py's Sentinel-managed connection, which already turns READONLY from a demoted
    primary into a ConnectionError, plus the same for NOREPLICAS: a primary configured with
    `min-replicas-to-write` whose replica was just promoted refuses writes until Sentinel demotes
    it, and the next connection must ask the sentinels again."""

    def read_response(self, *args, **kwargs):
        try:
            return super().read_response(*args, **kwargs)
        except ResponseError as exc:
            if not str(exc).startswith("NOREPLICAS"):
                raise
            self.disconnect()
            raise RedisConnectionError("the primary has no replica to write to (NOREPLICAS)") from exc


class PrimarySSLConnection(PrimaryConnection, SentinelManagedSSLConnection):
    pass


def redis_client(settings: Settings, timeout: float | None = None) -> Redis:
    """A client that fails fast instead of hanging: a bounded socket timeout (above the idle
    dequeue's short block) and no silent retries inside redis-py, so a frozen Redis costs the
    main loop at most one timeout per call and our own backoff loop decides what happens next.

    With REDIS_SENTINELS, the client asks the sentinels for the primary's address on every new
    connection; a connection whose server was demoted or cut off from its replicas fails with a
    ConnectionError (see `PrimaryConnection`), so the caller backs off and the next attempt
    reaches the new primary."""
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    if timeout is None:
        timeout = settings.poll_interval + 4.0
    bounds = {
        "socket_timeout": timeout,
        "socket_connect_timeout": min(timeout, 5.0),
        "health_check_interval": 30,
        "retry": Retry(NoBackoff(), 0),
    }
    if not settings.redis_sentinels:
        return Redis.from_url(settings.redis_url, **bounds)
    from redis.connection import SSLConnection, parse_url

    options = parse_url(settings.redis_url)  # database, user, password, TLS; host and port unused
    options.pop("host", None)
    options.pop("port", None)
    tls = options.pop("connection_class", None) is SSLConnection
    tls_options = {k: v for k, v in options.items() if k.startswith("ssl")}
    sentinel = Sentinel(
        list(settings.redis_sentinels),
        # the sentinels: same bounds and TLS as the data nodes, not their password or database
        sentinel_kwargs={**bounds, **tls_options, **({"ssl": True} if tls else {})},
        **bounds,
    )
    return sentinel.master_for(
        settings.redis_sentinel_master,
        connection_pool_class=SentinelConnectionPool,
        connection_class=PrimarySSLConnection if tls else PrimaryConnection,
        **options,
    )


def model_check(settings: Settings):
    from worker.embedding import model_available

    def check() -> tuple[bool, str]:
        return model_available(settings)

    return check


def store_check(settings: Settings):
    """Readiness of the store: a SQLite file must be a SQLite database, or not exist yet (its first
    16 bytes are read: no lock, nothing created); PostgreSQL must answer a query within 2 s. The
    PostgreSQL answer is kept for a few seconds so probes do not open a connection each; the reason
    names the error, never the URL or its password."""
    if settings.store_kind != "postgresql":
        from worker.store import sqlite_problem

        def check_file() -> tuple[bool, str]:
            problem = sqlite_problem(settings.store_path)
            return (False, problem) if problem else (True, "ok")

        return check_file
    import threading
    import time

    lock = threading.Lock()
    cached: dict = {"at": float("-inf"), "result": (False, "not checked yet")}

    def check() -> tuple[bool, str]:
        from worker.store.pg import check_reachable

        with lock:
            if time.monotonic() - cached["at"] >= 3.0:
                cached["result"] = check_reachable(settings.store_url, timeout=2.0)
                cached["at"] = time.monotonic()
            return cached["result"]

    return check


def readiness_checks(settings: Settings) -> dict:
    """What /readyz (and systemd's READY=1) wait for besides Redis: the model and the store."""
    return {"model": model_check(settings), "store": store_check(settings)}


def _prepare_store(settings: Settings) -> None:
    """Create or migrate the store's schema before the first job (the advisory lock makes this
    safe with many workers starting at once); a failure is logged and left to /readyz and jobs."""
    from worker.errors import WorkerError
    from worker.store import open_store

    if settings.store_kind != "postgresql":
        return  # the SQLite file is created by the first job, as before
    try:
        from worker.embedding import get_embedder

        dim = get_embedder(settings).dim  # loaded already by _preload_model
    except Exception:  # no model: the schema gets the default dimension (384)
        dim = None
    try:
        with open_store(settings.store_url, settings.store_busy_timeout, dim=dim):
            pass
    except WorkerError as exc:
        log.warning("store %s not ready: %s: %s", settings.safe_store_url, type(exc).__name__, exc)


def embedding_info(settings: Settings) -> dict[str, str]:
    """The embedding precision this worker runs, what was asked for (EMBED_PRECISION) and why."""
    from worker.embedding import precision_choice

    precision, reason = precision_choice(settings.embed_precision, settings.embed_model_dir)
    return {"precision": precision, "asked": settings.embed_precision, "reason": reason}


def _preload_model(settings: Settings) -> None:
    """Load the embedding model before forking horses, so small embed jobs pay no load."""
    from worker.embedding import preload
    from worker.errors import ModelUnavailableError

    try:
        preload(settings)
    except ModelUnavailableError as exc:  # /readyz reports it; jobs that embed fail with it
        log.warning("%s", exc)


def default_worker_name() -> str:
    """host.pid plus a random tag. In a container the pid is always 1 and the hostname stays the
    same across restarts: without the tag, a worker restarted after a crash (OOM, SIGKILL) would
    find its dead predecessor's name still registered in Redis and RQ would refuse to start."""
    return f"{socket.gethostname()}.{os.getpid()}.{secrets.token_hex(3)}"


def run_daemon(settings: Settings, burst: bool = False, max_jobs: int | None = None) -> int:
    name = settings.worker_name or default_worker_name()
    setup_logging(settings.log_level, settings.log_format, name)
    state = LiveState(name, settings.liveness_timeout, settings.job_grace)
    state.embedding = embedding_info(settings)
    if problems := import_registered():  # a typo in EXTRA_JOBS: say which name, before anything starts
        for problem in problems:
            log.error("registered job cannot be imported: %s", problem)
        return EXIT_USAGE
    if problem := store_error(settings):
        log.error("configuration error: %s", problem)
        return EXIT_USAGE
    # READY=1 waits for the same model check as /readyz.
    systemd = from_environment(readiness_checks(settings), tick=settings.poll_interval)
    if systemd.enabled:
        state.listener = systemd
    try:
        health = _health_server(settings, state)
    except OSError as exc:
        log.error(
            "cannot serve health on %s:%s: %s: is another worker using it? set HEALTH_PORT (0: any free port)",
            settings.health_host,
            settings.health_port,
            exc,
        )
        return EXIT_UNAVAILABLE

    _preload_model(settings)
    _prepare_store(settings)
    hugepages.collapse()  # the model is in memory: every fork from here on copies less
    _log_start(settings, name, health.port, state.embedding)
    warn_unrunnable(redis_client(settings, timeout=3), list(settings.queues), serializer_for(settings))
    worker = _daemon_worker(settings, name, state)
    done = 0
    try:
        done = worker.run(burst=burst, max_jobs=max_jobs)
    finally:
        health.stop()
        systemd.stopped(done)
    log.info("worker %s stopped after %d jobs", name, done)
    return EXIT_MEMORY if worker.over_memory else EXIT_OK


def _health_server(settings: Settings, state: LiveState) -> HealthServer:
    """/healthz, /readyz and /metrics, started; OSError when the port cannot be bound."""
    probe_client = redis_client(settings, timeout=0.5)  # the health thread's own connection
    probe = RedisProbe(lambda: probe_client)

    def metrics_text() -> str:
        up = probe.check()["ok"]
        queues = None
        if up:
            try:
                queues = queue_figures(probe_client, settings.queues)
            except Exception:  # Redis went away between the two calls
                up = False
        return render(state, up, queues, (lifecycle.quarantined, dict(housekeeping.errors)))

    return HealthServer(
        settings.health_host, settings.health_port, state, probe, readiness_checks(settings), metrics_text
    ).start()


def setup_problems(settings: Settings) -> list[str]:
    """What looks like a mistake in the settings, said at start: an input root that is no directory."""
    return [
        f"INPUT_ROOTS: {root} is not a directory: no path input can be read from it"
        for root in settings.input_roots
        if not root.is_dir()
    ]


def store_error(settings: Settings) -> str | None:
    """A STORE_URL set to a SQLite file whose folder does not exist: a typo, most likely, that
    would otherwise quietly start a new, empty store (folders included). The default's folder
    (var/ under the working directory) is created as needed."""
    if settings.store_kind != "sqlite" or settings.store_url == Settings.store_url:
        return None
    path = settings.store_path.absolute()
    if path.exists() or path.parent.is_dir():
        return None
    return (
        f"STORE_URL names {path}, whose folder {path.parent} does not exist: fix STORE_URL,"
        f" or create the folder (mkdir -p {path.parent})"
    )


def store_note(settings: Settings) -> str | None:
    """A SQLite store that does not exist yet: where the first job creates it."""
    if settings.store_kind != "sqlite" or settings.store_path.exists():
        return None
    return (
        f"store {settings.store_path.absolute()} does not exist yet: the first job creates it"
        " (if you meant an existing store, check STORE_URL)"
    )


def _log_start(settings: Settings, name: str, port: int, embedding: dict[str, str]) -> None:
    """What the worker relies on and cannot find, then the start line."""
    for missing in rqcompat.missing():
        log.error("this RQ lacks %s, which this worker relies on: install the pinned RQ (setup.cfg)", missing)
    for problem in setup_problems(settings):
        log.warning("%s", problem)
    if note := store_note(settings):
        log.info("%s", note)
    log.info(
        "worker %s %s starting: queues %s, redis %s, store %s, health on http://%s:%d, embeddings %s (%s)",
        name,
        __version__,
        ",".join(settings.queues),
        settings.safe_redis_url,
        settings.safe_store_url,
        settings.health_host,
        port,
        embedding["precision"],
        embedding["reason"],
    )


def _daemon_worker(settings: Settings, name: str, state: LiveState) -> DaemonWorker:
    worker = DaemonWorker(
        list(settings.queues),
        name=name,
        connection=redis_client(settings),
        serializer=serializer_for(settings),
        settings=settings,
        live=state,
        default_result_ttl=86400,
        job_monitoring_interval=max(1, int(settings.heartbeat_interval)),
        prepare_for_work=False,
    )
    worker.hostname = socket.gethostname()
    worker.pid = os.getpid()
    return worker
