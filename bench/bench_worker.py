"""No-op job throughput of our worker against RQ's own `rq worker`, and /healthz latency under load.

Run: .venv/bin/python bench/bench_worker.py [--jobs 300] [--rounds 5]

Both workers drain the same number of `worker.jobs.ping` jobs from the same throwaway Redis in
burst mode, alternating, several rounds. Throughput counts from the first job's start to the last
job's end (RQ's own timestamps), so process start-up is left out. Medians are quoted.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from redis import Redis
from rq import Queue
from rq.job import Job
from rq.serializers import JSONSerializer

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from worker.devredis import RedisServer, free_port  # noqa: E402


def drain(kind: str, redis_url: str, n: int, workdir: Path) -> float:
    conn = Redis.from_url(redis_url)
    conn.flushall()
    q = Queue("default", connection=conn, serializer=JSONSerializer)
    jobs = [q.enqueue("worker.jobs.ping", f"job {i}", result_ttl=600) for i in range(n)]
    env = dict(os.environ, REDIS_URL=redis_url, PYTHONPATH=str(ROOT), HEALTH_PORT=str(free_port()), LOG_LEVEL="WARNING")
    if kind == "ours":
        cmd = [sys.executable, "-m", "worker", "run", "--burst"]
    else:
        rq = str(Path(sys.executable).parent / "rq")
        cmd = [
            rq,
            "worker",
            "--burst",
            "-q",
            "--url",
            redis_url,
            "--serializer",
            "rq.serializers.JSONSerializer",
            "high",
            "default",
            "low",
        ]
    subprocess.run(cmd, env=env, cwd=workdir, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    fetched = Job.fetch_many([j.id for j in jobs], connection=conn, serializer=JSONSerializer)
    assert all(j is not None and j.get_status() == "finished" for j in fetched), f"{kind}: not all jobs finished"
    start = min(j.started_at for j in fetched)
    end = max(j.ended_at for j in fetched)
    return n / (end - start).total_seconds()


def healthz_latency(redis_url: str, workdir: Path, requests: int = 300) -> tuple[float, float, float]:
    """Median /healthz latency (ms) idle, median and p99 while a CPU-bound job runs."""
    port = free_port()
    env = dict(
        os.environ,
        REDIS_URL=redis_url,
        PYTHONPATH=str(ROOT),
        HEALTH_PORT=str(port),
        LOG_LEVEL="WARNING",
        EXTRA_JOBS="tests.jobs_for_tests.spin",
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "worker", "run"],
        env=env,
        cwd=workdir,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}/healthz"

    def get() -> tuple[float, dict]:
        t = time.perf_counter()
        with urllib.request.urlopen(url, timeout=5) as r:
            body = json.loads(r.read())
        return (time.perf_counter() - t) * 1000, body

    try:
        for _ in range(100):
            try:
                if get()[1]["state"] == "idle":
                    break
            except OSError:
                pass
            time.sleep(0.1)
        idle = [get()[0] for _ in range(requests)]
        conn = Redis.from_url(redis_url)
        q = Queue("default", connection=conn, serializer=JSONSerializer)
        q.enqueue("tests.jobs_for_tests.spin", 30.0)
        while get()[1]["state"] != "busy":
            time.sleep(0.05)
        busy = sorted(get()[0] for _ in range(requests))
        return statistics.median(idle), statistics.median(busy), busy[int(len(busy) * 0.99) - 1]
    finally:
        proc.send_signal(2)  # cold shutdown: the spinning job is put back; we flush anyway
        proc.wait(20)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--jobs", type=int, default=300)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp, RedisServer(directory=Path(tmp) / "redis") as server:
        ours, theirs = [], []
        for _ in range(args.rounds):
            ours.append(drain("ours", server.url, args.jobs, Path(tmp)))
            theirs.append(drain("rq", server.url, args.jobs, Path(tmp)))
        mo, mt = statistics.median(ours), statistics.median(theirs)
        print(f"no-op jobs, {args.jobs} per round, {args.rounds} rounds (median jobs/s):")
        print(f"  ours (python -m worker run --burst): {mo:8.1f} jobs/s  ({1000 / mo:.1f} ms/job)")
        print(f"  rq worker --burst:                   {mt:8.1f} jobs/s  ({1000 / mt:.1f} ms/job)")
        print(f"  ratio ours/rq: {mo / mt:.2f}x")
        Redis.from_url(server.url).flushall()
        idle, busy, p99 = healthz_latency(server.url, Path(tmp))
        print(
            f"/healthz latency: idle median {idle:.2f} ms; "
            f"during a CPU-bound job median {busy:.2f} ms, p99 {p99:.2f} ms"
        )


if __name__ == "__main__":
    main()
