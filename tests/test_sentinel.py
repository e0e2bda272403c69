"""Redis Sentinel: the primary comes from the sentinels, a failover mid-run loses no job and ends
no worker, and readiness notices a primary that stopped taking writes (docs/behaviour.md, "Redis failover").

Real servers throughout: a primary, a replica and a sentinel (`worker.devredis.SentinelGroup`),
and a real worker process.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis import Redis
from rq.job import Job, JobStatus
from rq.serializers import JSONSerializer

from tests.conftest import TEST_JOBS, WorkerProcess, queue, wait_for
from worker.app import redis_client
from worker.devredis import RedisServer, SentinelGroup, free_port
from worker.health import RedisProbe
from worker.settings import Settings, SettingsError, parse_sentinels

PASSWORD = "s3cret-pw"
JOB = "tests.test_sentinel.logged_sleep"


def logged_sleep(seconds: float, log_path: str, label: str) -> str:
    """A job that notes each run in a file (not in Redis: a write there may be what fails)."""
    with open(log_path, "a") as f:
        f.write(f"{label} {os.getpid()}\n")
    time.sleep(seconds)
    return label


@pytest.fixture()
def group(tmp_path: Path) -> Iterator[SentinelGroup]:
    with SentinelGroup(tmp_path / "redis", password=PASSWORD) as g:
        yield g


def sentinel_settings(group: SentinelGroup, db: int = 0) -> Settings:
    """REDIS_URL's host and port lead nowhere: only the sentinels can give the primary."""
    return Settings.from_env(
        {
            "REDIS_URL": f"redis://:{PASSWORD}@127.0.0.1:{free_port()}/{db}",
            "REDIS_SENTINELS": f"127.0.0.1:{free_port()},{group.sentinel.address}",  # the first is down
            "REDIS_SENTINEL_MASTER": group.master_name,
        }
    )


# -- settings ------------------------------------------------------------------------------


def test_sentinels_are_parsed_and_both_settings_go_together() -> None:
    assert parse_sentinels(" a:1, [::1]:26380 ,b") == (("a", 1), ("::1", 26380), ("b", 26379))
    for bad in ("a:b", "a:1:2", ":1", "a:0", "a:70000", "[::1"):
        with pytest.raises(SettingsError, match="REDIS_SENTINELS"):
            parse_sentinels(bad)
    with pytest.raises(SettingsError, match="set both or neither"):
        Settings.from_env({"REDIS_SENTINELS": "a:1"})
    with pytest.raises(SettingsError, match="set both or neither"):
        Settings.from_env({"REDIS_SENTINEL_MASTER": "mymaster"})
    with pytest.raises(SettingsError, match="unix://"):
        Settings.from_env(
            {"REDIS_URL": "unix:///tmp/r.sock", "REDIS_SENTINELS": "a:1", "REDIS_SENTINEL_MASTER": "mymaster"}
        )
    s = Settings.from_env(
        {"REDIS_URL": "redis://:pw@x/2", "REDIS_SENTINELS": "a:1,b:2", "REDIS_SENTINEL_MASTER": "main"}
    )
    assert "pw" not in s.safe_redis_url and "'main'" in s.safe_redis_url and "a:1,b:2" in s.safe_redis_url


# -- the client ----------------------------------------------------------------------------


def test_client_reaches_the_primary_through_the_sentinels_with_the_urls_database_and_password(group) -> None:
    client = redis_client(sentinel_settings(group, db=3), timeout=2)
    client.set("k", "v")
    with Redis(port=group.primary.port, password=PASSWORD, db=0) as db0:
        assert db0.get("k") is None  # not database 0
    with Redis(port=group.primary.port, password=PASSWORD, db=3, decode_responses=True) as db3:
        assert db3.get("k") == "v"
    pool = client.connection_pool
    assert pool.connection_kwargs["retry"].get_retries() == 0 and pool.connection_kwargs["socket_timeout"] == 2


# -- readiness -----------------------------------------------------------------------------


def test_readiness_probe_fails_on_a_primary_that_became_a_replica(tmp_path) -> None:
    """The old primary after a failover answers PING but refuses writes (READONLY): a probe that
    only pings said ready; this one writes."""
    with (
        RedisServer(directory=tmp_path / "p") as primary,
        RedisServer(directory=tmp_path / "r", replica_of=primary.port) as replica,
    ):
        ok = RedisProbe(lambda: redis_client(Settings(redis_url=primary.url), timeout=0.5)).check()
        assert ok["ok"] is True and ok["error"] is None
        result = RedisProbe(lambda: redis_client(Settings(redis_url=replica.url), timeout=0.5)).check()
        assert result["ok"] is False and result["error"] == "ReadOnlyError"


def test_readiness_probe_fails_on_a_primary_cut_off_from_its_replicas(group) -> None:
    """min-replicas-to-write and no replica: the primary refuses writes (NOREPLICAS), and with
    Sentinel that counts as "this is not the primary to use"."""
    group.replica.stop()
    probe = RedisProbe(lambda: redis_client(sentinel_settings(group), timeout=0.5), cache_seconds=0)
    result = wait_for(lambda: next((r for r in [probe.check()] if r["ok"] is False), None), message="NOREPLICAS")
    assert result["error"] == "ConnectionError: NOREPLICAS"


# -- a failover while jobs run -------------------------------------------------------------


def _run_through_failover(group: SentinelGroup, tmp_path: Path, jobs: int, seconds: float) -> None:
    runs = tmp_path / "runs.log"
    settings = sentinel_settings(group)
    env = {
        "REDIS_SENTINELS": ",".join(f"{h}:{p}" for h, p in settings.redis_sentinels),
        "REDIS_SENTINEL_MASTER": group.master_name,
        "EXTRA_JOBS": f"{TEST_JOBS},{JOB}",
        "DEAD_WORKER_AFTER": "4",
    }
    worker = WorkerProcess(settings.redis_url, tmp_path, env)
    try:
        worker.wait_ready()
        client = group.client(decode_responses=False)
        q = queue(client)
        ids = [q.enqueue(JOB, seconds, str(runs), f"job-{i}").id for i in range(jobs)]
        wait_for(lambda: runs.is_file() and len(runs.read_text().splitlines()) >= 2, message="jobs running")
        old = group.primary_port
        assert group.failover() != old

        def statuses() -> Counter:
            with group.client(decode_responses=False) as c:
                return Counter(
                    Job.fetch(i, connection=c, serializer=JSONSerializer).get_status(refresh=True) for i in ids
                )

        done = wait_for(
            lambda: next((s for s in [statuses()] if s[JobStatus.FINISHED] == jobs), None),
            timeout=90,
            message=f"every job finished ({statuses()}); worker log: {worker.log()}",
        )
        assert done == Counter({JobStatus.FINISHED: jobs})
        with group.client(decode_responses=False) as c:
            results = {i: len(Job.fetch(i, connection=c, serializer=JSONSerializer).results()) for i in ids}
        assert set(results.values()) == {1}, results  # each job ended once, with one result
        # Each ran once, except a job whose horse finished its work while the old primary refused
        # writes: its end could not be written, so the worker put it back and it ran again
        # (at least once, behaviour.md "A worker cut off from Redis"). Never more.
        runs_of = Counter(line.split()[0] for line in runs.read_text().splitlines())
        assert set(runs_of) == {f"job-{i}" for i in range(jobs)} and max(runs_of.values()) <= 2, runs_of
        rerun = {ids[int(label.split("-")[1])] for label, n in runs_of.items() if n == 2}
        log = worker.log_path.read_text(errors="replace")
        put_back = ("abandoned by dead worker", "could not write its end while Redis was unusable")
        assert all(any(f"job {i} {why}" in log for why in put_back) for i in rerun), (rerun, worker.log())
        assert worker.proc.poll() is None, worker.log()

        def ready() -> dict | None:
            status, body = worker.get("/readyz")
            return body if status == 200 else None

        body = wait_for(ready, timeout=30, message="/readyz 200 on the new primary")
        assert body["redis"]["ok"] is True
    finally:
        worker.stop()


def test_failover_mid_run_loses_no_job_ends_none_twice_and_ends_no_worker(group, tmp_path) -> None:
    _run_through_failover(group, tmp_path, jobs=6, seconds=0.5)


@pytest.mark.slow
def test_failover_mid_run_many_jobs(group, tmp_path) -> None:
    _run_through_failover(group, tmp_path, jobs=30, seconds=0.3)
