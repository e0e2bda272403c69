"""Cost of systemd notification on job throughput: the same burst of no-op jobs run by the
real worker (fork per job) with and without NOTIFY_SOCKET + WATCHDOG_USEC, alternating, on a
private redis-server. Reports medians and the ratio.

    .venv/bin/python bench/bench_sdnotify.py [--jobs 300] [--rounds 5]
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import uuid
from pathlib import Path

from redis import Redis
from rq import Queue
from rq.serializers import JSONSerializer

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from worker.devredis import RedisServer, free_port  # noqa: E402

# READY=1 (and so the STATUS lines of a ready worker) needs the model (make model).
MODEL_DIR = Path(os.environ.get("EMBED_MODEL_DIR", ROOT / "var" / "model"))


def drain(sock: socket.socket, count: list[int]) -> None:
    while True:
        try:
            sock.recv(4096)
            count[0] += 1
        except OSError:
            return


def one_round(url: str, jobs: int, notify: str | None, tmp: str) -> float:
    conn = Redis.from_url(url)
    conn.flushall()
    q = Queue("default", connection=conn, serializer=JSONSerializer)
    enqueued = [q.enqueue("worker.jobs.ping", "x") for _ in range(jobs)]
    env = dict(
        os.environ,
        REDIS_URL=url,
        HEALTH_PORT=str(free_port()),
        LOG_LEVEL="WARNING",
        STORE_URL=f"sqlite:///{tmp}/store.db",
        INPUT_ROOTS=tmp,
        PYTHONPATH=str(ROOT),
        EMBED_MODEL_DIR=str(MODEL_DIR),
    )
    if notify:
        env.update(NOTIFY_SOCKET=notify, WATCHDOG_USEC="2000000")
    subprocess.run(
        [sys.executable, "-m", "worker", "run", "--burst"], env=env, cwd=tmp, check=True, stdout=subprocess.DEVNULL
    )
    first, last = enqueued[0], enqueued[-1]
    first.refresh()
    last.refresh()
    assert last.get_status() == "finished"
    return jobs / (last.ended_at - first.started_at).total_seconds()


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    if not (MODEL_DIR / "model.onnx").is_file():
        print(f"warning: no model in {MODEL_DIR}: the worker never gets READY (make model)", file=sys.stderr)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    name = f"bench-{uuid.uuid4().hex[:8]}"
    sock.bind("\0" + name)
    received = [0]
    threading.Thread(target=drain, args=(sock, received), daemon=True).start()
    rates: dict[str, list[float]] = {"without": [], "with sd_notify": []}
    with tempfile.TemporaryDirectory() as tmp, RedisServer(directory=Path(tmp) / "redis") as server:
        for i in range(args.rounds):
            order = [("without", None), ("with sd_notify", "@" + name)]
            for label, notify in order if i % 2 == 0 else reversed(order):
                rates[label].append(one_round(server.url, args.jobs, notify, tmp))
    base = statistics.median(rates["without"])
    notified = statistics.median(rates["with sd_notify"])
    print(f"{args.jobs} ping jobs x {args.rounds} rounds, fork per job, medians:")
    print(f"  without notification : {base:7.1f} jobs/s")
    print(f"  with sd_notify       : {notified:7.1f} jobs/s  ({received[0]} datagrams received)")
    print(f"  ratio with/without   : {notified / base:.3f}")
    for label, values in rates.items():
        print(f"  {label:<21}: " + " ".join(f"{v:.1f}" for v in values))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
