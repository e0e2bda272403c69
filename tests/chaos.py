"""Fault injection: real workers, real Redis, real signals, a real store; count what was lost.

`run_chaos` starts a persistent Redis (append-only file, fsync always) and several real worker
processes, enqueues ingestion, embedding, slow and bad-input jobs, and while they run sends
random SIGTERM and SIGKILL to workers and horses, restarts Redis and feeds more bad inputs.
Then it waits for the queues to settle and checks every job and the store.

`run_rq_alone` puts plain `rq worker`s through the same kind of fault (SIGKILL of worker and
horse mid-job) and reports what RQ does with those jobs in the same observation window.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import sqlite3
import statistics
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC
from pathlib import Path

from redis import Redis
from redis.exceptions import RedisError
from rq import Queue, Retry
from rq.job import Job
from rq.serializers import JSONSerializer

from tests.conftest import MODEL_DIR, ROOT
from tests.pdfs import make_pdf
from worker.devredis import RedisServer, SentinelGroup, free_port
from worker.errors import error_type

# What anyone who can write to Redis may put in a queued job's hash (field, value). The job may
# end finished or failed, with a reason; it must not be lost, and no worker may exit over it.
HOSTILE_FIELDS = [
    ("meta", b"\x80\x04not json"),
    ("meta", '{"counters": [1, 2], "requeued": "x", "abandoned": null}'),
    ("timeout", "-1"),
    ("timeout", "1000000000"),
    ("timeout", "soon"),
    ("status", "bogus"),
    ("created_at", "yesterday"),
    ("enqueued_at", "\x00"),
    ("retries_left", "many"),
    ("retry_intervals", "[1, "),
    ("result_ttl", "x"),
    ("failure_ttl", "-5"),
    ("success_callback_name", "os.getcwd"),
    ("failure_callback_name", "this.x"),
    ("stopped_callback_name", "builtins.print"),
    ("webhooks", '[{"url": "http://127.0.0.1:9/x", "job_status": "finished", "timeout": 100000}]'),
    ("webhooks", "not json"),
    ("data", b"\xff\xfe"),
    ("description", b"\xff"),
    ("dependency_ids", "nonsense"),
    ("group_id", b"\xff"),
]
BAD_INPUT_TYPES = {"NotAPdfError", "PathNotAllowedError", "InputNotFoundError", "EmptyInputError"}
WORDS = [
    "river",
    "mountain",
    "ledger",
    "invoice",
    "turbine",
    "harvest",
    "lantern",
    "quartz",
    "signal",
    "meadow",
    "copper",
    "violin",
    "glacier",
    "archive",
    "beacon",
    "orchard",
    "compass",
    "saddle",
    "tundra",
    "prism",
]


def children(pid: int) -> list[int]:
    """Direct children of a process (the work-horse of a worker), from /proc."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            if int(fields[1]) == pid:
                out.append(int(entry))
        except (OSError, IndexError, ValueError):
            continue
    return out


@dataclass
class Report:
    jobs: Counter = field(default_factory=Counter)  # by kind
    outcomes: Counter = field(default_factory=Counter)  # finished / failed-bad-input / failed-other / lost
    faults: Counter = field(default_factory=Counter)
    interrupted: int = 0  # jobs running when their worker was killed
    recovered: int = 0  # of those, finished later
    recover_seconds: list[float] = field(default_factory=list)
    duplicates: int = 0
    missing_documents: int = 0
    chunk_mismatches: int = 0
    wrongly_failed: list[str] = field(default_factory=list)
    lost: list[str] = field(default_factory=list)
    worker_exits: list[str] = field(default_factory=list)  # workers that ended without being told to
    elapsed: float = 0.0

    def table(self) -> str:
        med = statistics.median(self.recover_seconds) if self.recover_seconds else float("nan")
        mx = max(self.recover_seconds) if self.recover_seconds else float("nan")
        rows = [
            (
                "jobs",
                ", ".join(f"{k} {v}" for k, v in sorted(self.jobs.items())) + f" (total {sum(self.jobs.values())})",
            ),
            ("faults injected", ", ".join(f"{k} {v}" for k, v in sorted(self.faults.items()))),
            ("outcomes", ", ".join(f"{k} {v}" for k, v in sorted(self.outcomes.items()))),
            ("jobs interrupted by a killed worker", str(self.interrupted)),
            ("of those recovered and ended as they should", str(self.recovered)),
            ("time to recover (kill -> job finished)", f"median {med:.1f} s, max {mx:.1f} s"),
            ("duplicate documents in the store", str(self.duplicates)),
            ("documents missing from the store", str(self.missing_documents)),
            ("documents with wrong chunk rows", str(self.chunk_mismatches)),
            ("good jobs failed", str(len(self.wrongly_failed))),
            ("lost", str(len(self.lost))),
            ("workers that exited on their own", str(len(self.worker_exits))),
            ("wall time", f"{self.elapsed:.0f} s"),
        ]
        width = max(len(r[0]) for r in rows)
        return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


class Cluster:
    """A persistent Redis and N worker processes that can be killed and restarted."""

    def __init__(self, tmp: Path, workers: int, env: dict[str, str]) -> None:
        self.tmp = tmp
        self.redis_port = free_port()
        self.redis = self._start_redis()
        self.env = env
        self.procs: dict[int, tuple[subprocess.Popen, str]] = {}
        self.generation = 0
        self.logs = tmp / "logs"
        self.logs.mkdir(exist_ok=True)
        for slot in range(workers):
            self.start_worker(slot)

    def _start_redis(self) -> RedisServer:
        return RedisServer(port=self.redis_port, directory=self.tmp / "redis", persist=True).start()

    @property
    def url(self) -> str:
        return self.redis.url

    def start_worker(self, slot: int) -> None:
        self.generation += 1
        name = f"chaos-{slot}-{self.generation}"
        env = dict(os.environ)
        env.update(self.env, REDIS_URL=self.url, WORKER_NAME=name, HEALTH_PORT=str(free_port()), PYTHONPATH=str(ROOT))
        log = open(self.logs / f"{name}.log", "wb")  # noqa: SIM115 (owned by the process)
        proc = subprocess.Popen(
            [sys.executable, "-m", "worker", "run"], env=env, cwd=self.tmp, stdout=log, stderr=subprocess.STDOUT
        )
        log.close()
        self.procs[slot] = (proc, name)

    def restart_redis(self) -> None:
        self.redis.kill()
        time.sleep(random.uniform(0.5, 2.0))
        self.redis = self._start_redis()

    def stop(self) -> None:
        for proc, _ in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
        for proc, _ in self.procs.values():
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
        self.redis.stop()


def _retrying(fn, attempts: int = 100):
    for _ in range(attempts):
        try:
            return fn()
        except RedisError:
            time.sleep(0.2)
    raise RuntimeError("Redis did not come back")


def _current_job(conn: Redis, worker_name: str) -> str | None:
    from rq import Worker

    try:
        w = Worker.find_by_key(f"rq:worker:{worker_name}", connection=conn, serializer=JSONSerializer)
        return w.get_current_job_id() if w else None
    except RedisError:
        return None


def make_documents(directory: Path, count: int, rng: random.Random) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        pages = []
        for p in range(rng.randint(2, 5)):
            sentences = [
                f"Document {i} page {p + 1} sentence {s}: " + " ".join(rng.choice(WORDS) for _ in range(12)) + "."
                for s in range(rng.randint(8, 20))
            ]
            pages.append("\n".join(sentences))
        path = directory / f"doc-{i:03d}.pdf"
        path.write_bytes(make_pdf(pages, title=f"Chaos document {i}"))
        paths.append(path)
    return paths


def run_chaos(
    tmp: Path,
    *,
    documents: int,
    embed_jobs: int,
    slow_jobs: int,
    bad_jobs: int,
    faults: int,
    workers: int = 3,
    seed: int = 7,
    settle_timeout: float = 240.0,
) -> Report:
    rng = random.Random(seed)
    report = Report()
    docs = make_documents(tmp / "docs", documents, rng)
    outside = tmp.parent / f"{tmp.name}-outside.pdf"
    outside.write_bytes(make_pdf(["outside the roots"]))
    (tmp / "docs" / "notes.pdf").write_text("this is a text file wearing a .pdf name\n")
    env = {
        "STORE_URL": f"sqlite:///{tmp}/store.db",
        "INPUT_ROOTS": str(tmp / "docs"),
        "EMBED_MODEL_DIR": str(MODEL_DIR),
        "WORKERS_PER_HOST": str(workers),
        "DEAD_WORKER_AFTER": "4",
        "SHUTDOWN_TIMEOUT": "2",
        "MAX_ATTEMPTS": "6",
        "RETRY_INTERVALS": "1,2,4",
        "LOG_LEVEL": "INFO",
        "EXTRA_JOBS": "tests.jobs_for_tests.sleep",
    }
    started = time.monotonic()
    cluster = Cluster(tmp, workers, env)
    expected_docs = {p.name for p in docs}
    jobs: dict[str, str] = {}  # job id -> kind
    try:
        conn = Redis.from_url(cluster.url)
        queues = {n: Queue(n, connection=conn, serializer=JSONSerializer) for n in ("high", "default", "low")}

        def enqueue(kind: str, func: str, *args) -> None:
            q = queues[rng.choice(["high", "default", "default", "low"])]
            retry = None if kind == "bad" else Retry(max=3, interval=1)
            job = _retrying(lambda: q.enqueue(func, *args, retry=retry, job_timeout=120, result_ttl=3600))
            jobs[job.id] = kind
            report.jobs[kind] += 1

        work = [("ingest", "worker.jobs.ingest_pdf", str(p)) for p in docs]
        work += [("ingest", "worker.jobs.ingest_pdf", str(p)) for p in rng.sample(docs, max(1, documents // 4))]
        work += [
            ("embed", "worker.jobs.embed_texts", [f"text {i} " + " ".join(rng.sample(WORDS, 6)) for _ in range(8)])
            for i in range(embed_jobs)
        ]
        work += [("slow", "tests.jobs_for_tests.sleep", rng.uniform(1.0, 3.0)) for _ in range(slow_jobs)]
        bad = [
            ("bad", "worker.jobs.ingest_pdf", str(outside)),
            ("bad", "worker.jobs.ingest_pdf", str(tmp / "docs" / "notes.pdf")),
            ("bad", "worker.jobs.ingest_pdf", str(tmp / "docs" / "nope.pdf")),
        ]
        work += [bad[i % len(bad)] for i in range(bad_jobs // 2)]
        rng.shuffle(work)
        for kind, func, arg in work:
            enqueue(kind, func, arg)

        hostile: set[str] = set()

        def enqueue_hostile() -> None:
            field_name, value = HOSTILE_FIELDS[rng.randrange(len(HOSTILE_FIELDS))]
            q = queues["default"]
            job = _retrying(lambda: q.enqueue("worker.jobs.ping", "hostile", result_ttl=3600))
            _retrying(lambda: conn.hset(job.key, field_name, value))
            hostile.add(job.id)
            report.jobs["hostile"] += 1

        kinds = ["sigkill_worker", "sigterm_worker", "sigkill_horse", "restart_redis", "bad_input", "hostile_hash"]
        weights = [3, 3, 2, 1, 1, 2]
        interrupted: list[tuple[str, float]] = []
        for _ in range(faults):
            time.sleep(rng.uniform(1.0, 2.5))
            kind = rng.choices(kinds, weights)[0]
            slot = rng.randrange(workers)
            proc, name = cluster.procs[slot]
            report.faults[kind] += 1
            for i, (other, other_name) in list(cluster.procs.items()):
                if other.poll() is not None:  # nobody told it to stop
                    report.worker_exits.append(f"{other_name}: exit {other.returncode}")
                    cluster.start_worker(i)
            if kind == "sigkill_worker":
                job_id = _current_job(conn, name)
                horses = children(proc.pid)
                proc.kill()
                for h in horses:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(h, signal.SIGKILL)
                proc.wait()
                if job_id:
                    interrupted.append((job_id, time.time()))
                cluster.start_worker(slot)
            elif kind == "sigterm_worker":
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    report.faults["sigterm_worker_hung"] += 1
                    proc.kill()
                    proc.wait()
                cluster.start_worker(slot)
            elif kind == "sigkill_horse":
                for h in children(proc.pid):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(h, signal.SIGKILL)
            elif kind == "restart_redis":
                cluster.restart_redis()
            elif kind == "bad_input":
                b = bad[rng.randrange(len(bad))]
                enqueue("bad", b[1], b[2])
            elif kind == "hostile_hash":
                for _ in range(3):
                    enqueue_hostile()

        # settle: every job ends finished or failed (a hostile hash is read raw: RQ may not parse it)
        deadline = time.monotonic() + settle_timeout

        def raw_status(job_id: str) -> str:
            raw = _retrying(lambda: conn.hget(Job.key_for(job_id), "status"))
            return raw.decode(errors="replace") if raw else "gone"

        pending_hostile = set(hostile)
        while pending_hostile and time.monotonic() < deadline:
            pending_hostile = {j for j in pending_hostile if raw_status(j) not in ("finished", "failed")}
            time.sleep(0.5)
        for job_id in hostile:
            status = raw_status(job_id)
            report.outcomes[f"hostile {status}"] += 1
            if status not in ("finished", "failed"):
                report.lost.append(f"hostile {job_id}: {status}")
        pending = set(jobs)
        while pending and time.monotonic() < deadline:
            time.sleep(0.5)
            try:
                fetched = Job.fetch_many(list(pending), connection=conn, serializer=JSONSerializer)
            except RedisError:
                continue
            for job_id, job in zip(list(pending), fetched, strict=True):
                if job is not None and job.get_status(refresh=False) in ("finished", "failed"):
                    pending.discard(job_id)

        fetched = _retrying(lambda: Job.fetch_many(list(jobs), connection=conn, serializer=JSONSerializer))
        for job_id, job in zip(list(jobs), fetched, strict=True):
            kind = jobs[job_id]
            status = job.get_status(refresh=False) if job is not None else None
            if status == "finished":
                report.outcomes["finished"] += 1
            elif status == "failed":
                exc = (job.latest_result().exc_string or "") if job.latest_result() else ""
                etype = error_type(exc) or "?"
                if kind == "bad" and etype in BAD_INPUT_TYPES:
                    report.outcomes[f"failed {etype}"] += 1
                else:
                    report.outcomes["failed (not bad input)"] += 1
                    report.wrongly_failed.append(f"{kind} {job_id}: {exc.strip().splitlines()[-1] if exc else '?'}")
            else:
                report.outcomes["lost"] += 1
                report.lost.append(f"{kind} {job_id}: {status}")
        for job_id, killed_at in interrupted:
            report.interrupted += 1
            job = _retrying(lambda j=job_id: Job.fetch(j, connection=conn, serializer=JSONSerializer))
            done = "failed" if jobs.get(job_id) == "bad" else "finished"  # a bad input ends failed, as it should
            if job.get_status() == done and job.ended_at:
                report.recovered += 1
                ended = job.ended_at.replace(tzinfo=UTC).timestamp()
                report.recover_seconds.append(max(0.0, ended - killed_at))
        for other, other_name in cluster.procs.values():
            if other.poll() is not None:
                report.worker_exits.append(f"{other_name}: exit {other.returncode}")
    finally:
        cluster.stop()
        report.elapsed = time.monotonic() - started

    db = sqlite3.connect(tmp / "store.db")
    names = [r[0] for r in db.execute("SELECT name FROM documents")]
    report.duplicates = len(names) - len(set(names))
    report.missing_documents = len(expected_docs - set(names))
    for doc_id, n in db.execute("SELECT id, chunks FROM documents"):
        seqs = [r[0] for r in db.execute("SELECT seq FROM chunks WHERE document = ? ORDER BY seq", (doc_id,))]
        if seqs != list(range(n)):
            report.chunk_mismatches += 1
    db.close()
    return report


def run_sentinel_failover(
    tmp: Path, *, documents: int, slow_jobs: int, failovers: int, workers: int = 2, seed: int = 7
) -> Report:
    """Workers on a Sentinel-managed Redis (a primary, a replica, a sentinel) ingesting PDFs and
    running slow jobs, while `SENTINEL FAILOVER` moves the primary back and forth `failovers`
    times. Lost: a job not finished at the end; duplicated: a job ended twice (two results) or a
    document stored twice; worker exits: a worker that ended without being told to."""
    rng = random.Random(seed)
    report = Report()
    docs = make_documents(tmp / "docs", documents, rng)
    group = SentinelGroup(tmp / "redis").start()
    env = dict(os.environ)
    env.update(
        REDIS_URL=f"redis://127.0.0.1:{free_port()}/0",  # its host is not used: the sentinels name the primary
        REDIS_SENTINELS=group.sentinel.address,
        REDIS_SENTINEL_MASTER=group.master_name,
        STORE_URL=f"sqlite:///{tmp}/store.db",
        INPUT_ROOTS=str(tmp / "docs"),
        EMBED_MODEL_DIR=str(MODEL_DIR),
        WORKERS_PER_HOST=str(workers),
        DEAD_WORKER_AFTER="4",
        RETRY_INTERVALS="1,2,4",
        EXTRA_JOBS="tests.jobs_for_tests.sleep",
        PYTHONPATH=str(ROOT),
    )
    procs: list[tuple[subprocess.Popen, str]] = []
    started = time.monotonic()
    try:
        (tmp / "logs").mkdir(exist_ok=True)
        for slot in range(workers):
            name = f"failover-{slot}"
            with open(tmp / "logs" / f"{name}.log", "wb") as log:
                proc = subprocess.Popen(
                    [sys.executable, "-m", "worker", "run"],
                    env={**env, "WORKER_NAME": name, "HEALTH_PORT": str(free_port())},
                    cwd=tmp,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            procs.append((proc, name))
        conn = group.client(decode_responses=False)
        q = Queue("default", connection=conn, serializer=JSONSerializer)
        work = [("ingest", "worker.jobs.ingest_pdf", str(p)) for p in docs]
        work += [("slow", "tests.jobs_for_tests.sleep", rng.uniform(0.3, 1.5)) for _ in range(slow_jobs)]
        rng.shuffle(work)
        jobs: dict[str, str] = {}
        for kind, func, arg in work:
            job = _retrying(lambda f=func, a=arg: q.enqueue(f, a, retry=Retry(max=3), job_timeout=120, result_ttl=3600))
            jobs[job.id] = kind
            report.jobs[kind] += 1
        for _ in range(failovers):
            time.sleep(rng.uniform(1.0, 3.0))
            group.failover()
            report.faults["sentinel failover"] += 1
        deadline = time.monotonic() + 240
        statuses: dict[str, str] = {}
        while time.monotonic() < deadline:
            statuses = {
                i: _retrying(lambda i=i: Job.fetch(i, connection=conn, serializer=JSONSerializer).get_status(True))
                for i in jobs
            }
            if all(s in ("finished", "failed") for s in statuses.values()):
                break
            time.sleep(1)
        for job_id, kind in jobs.items():
            status = statuses.get(job_id)
            report.outcomes[str(getattr(status, "value", status))] += 1
            if status != "finished":
                (report.lost if status != "failed" else report.wrongly_failed).append(f"{kind} {job_id}: {status}")
            elif len(Job.fetch(job_id, connection=conn, serializer=JSONSerializer).results()) != 1:
                report.duplicates += 1  # ended twice
        for proc, name in procs:
            if proc.poll() is not None:
                report.worker_exits.append(f"{name}: exit {proc.returncode}")
    finally:
        for proc, _ in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
        for proc, _ in procs:
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
        group.stop()
        report.elapsed = time.monotonic() - started
    db = sqlite3.connect(tmp / "store.db")
    names = [r[0] for r in db.execute("SELECT name FROM documents")]
    db.close()
    report.duplicates += len(names) - len(set(names))
    report.missing_documents = len({p.name for p in docs} - set(names))
    return report


def run_rq_alone(tmp: Path, jobs: int = 4, observe: float = 60.0) -> dict:
    """Plain `rq worker`s, SIGKILLed (worker and horse) mid-job: where are their jobs after `observe` s?"""
    server = RedisServer(directory=tmp / "rq-redis", persist=True).start()
    rq = str(Path(sys.executable).parent / "rq")
    env = dict(os.environ, PYTHONPATH=str(ROOT), REDIS_URL=server.url)
    try:
        conn = Redis.from_url(server.url)
        q = Queue("default", connection=conn, serializer=JSONSerializer)
        ids = [q.enqueue("tests.jobs_for_tests.sleep", 5, marker=f"rq{i}").id for i in range(jobs)]
        cmd = [rq, "worker", "-q", "--url", server.url, "--serializer", "rq.serializers.JSONSerializer", "default"]
        procs = [subprocess.Popen(cmd, env=env, cwd=tmp) for _ in range(jobs)]
        deadline = time.monotonic() + 30
        while sum(conn.llen(f"test:started:rq{i}") for i in range(jobs)) < jobs and time.monotonic() < deadline:
            time.sleep(0.1)
        for p in procs:
            for h in children(p.pid):
                os.kill(h, signal.SIGKILL)
            p.kill()
            p.wait()
        killed_at = time.monotonic()
        # fresh plain workers take over, as a supervisor would restart them
        procs = [subprocess.Popen(cmd, env=env, cwd=tmp) for _ in range(2)]
        while time.monotonic() - killed_at < observe:
            time.sleep(1)
        statuses = Counter(
            str(getattr(j.get_status(), "value", j.get_status()))
            for j in Job.fetch_many(ids, connection=conn, serializer=JSONSerializer)
        )
        for p in procs:
            p.send_signal(signal.SIGINT)
            p.wait(20)
        return {
            "jobs": jobs,
            "observed_seconds": observe,
            "statuses": dict(statuses),
            "finished": statuses.get("finished", 0),
        }
    finally:
        server.stop()


if __name__ == "__main__":  # used by `make chaos` to print the tables
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        rep = run_chaos(Path(d), documents=60, embed_jobs=60, slow_jobs=60, bad_jobs=40, faults=60)
        print(rep.table())
        print(json.dumps({"lost": rep.lost, "wrongly_failed": rep.wrongly_failed}, indent=1))
    with tempfile.TemporaryDirectory() as d:
        print("RQ alone:", json.dumps(run_rq_alone(Path(d))))
