"""`python -m worker status` shows what workers wrote in Redis; anyone who can write to Redis
writes worker hashes too, so what it prints is escaped, bounded, and never a traceback."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.conftest import worker_env
from worker.devredis import free_port

EVIL_NAME = b"evil\x1b]0;pwned\x07\x1b[2J\n2026-12-03 fake line"


def status(redis_url: str, tmp_path, *flags: str) -> subprocess.CompletedProcess:
    env = worker_env(redis_url, tmp_path, free_port(), "")
    return subprocess.run(
        [sys.executable, "-m", "worker", "status", *flags], env=env, capture_output=True, timeout=60, cwd=tmp_path
    )


def test_hostile_worker_hashes_print_escaped_unreadable_dates_unknown(start_worker, redis_conn, redis_url, tmp_path):
    w = start_worker()
    key = b"rq:worker:" + EVIL_NAME
    redis_conn.sadd("rq:workers", key, b"rq:worker:bytes\xff\xfe", b"not-a-worker-key", b"rq:worker:a-string")
    redis_conn.set("rq:worker:a-string", "not a hash")
    redis_conn.hset(
        key,
        mapping={
            "state": "\x1b[31mbusy\r",
            "last_heartbeat": "yesterday",
            "birth": "x",
            "pid": "many",
            "queues": "default,\x1b[5mblink," + "q" * 100_000,
        },
    )
    redis_conn.hset(b"rq:worker:bytes\xff\xfe", mapping={"state": b"\xff", "last_heartbeat": b"\xff\x00"})

    out = status(redis_url, tmp_path)
    assert out.returncode == 0, out.stderr
    assert b"Traceback" not in out.stderr
    text = out.stdout.decode()
    assert "\x1b" not in text and "\x07" not in text and "\r" not in text
    assert "workers: 4" in text
    evil = [line for line in text.splitlines() if line.lstrip().startswith("evil")]
    assert len(evil) == 1 and "\\x1b]0;pwned\\x07" in evil[0] and "\\n2026-12-03 fake line" in evil[0]
    assert evil[0].endswith("(heartbeat unknown)")
    assert len(evil[0]) < 400
    real = [line for line in text.splitlines() if line.lstrip().startswith(w.get("/healthz")[1]["worker"])]
    assert len(real) == 1 and "unknown" not in real[0] and "s ago)" in real[0]

    out = status(redis_url, tmp_path, "--json")
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    by_name = {entry["name"]: entry for entry in report["workers"]}
    bad = by_name["evil\\x1b]0;pwned\\x07\\x1b[2J\\n2026-12-03 fake line"]
    assert bad["last_heartbeat"] is None and bad["heartbeat_age_seconds"] is None
    assert bad["state"] == "\\x1b[31mbusy\\r"
    assert len(json.dumps(bad)) < 2000
    assert by_name["bytes\\xff\\xfe"]["last_heartbeat"] is None
    assert by_name["a-string"]["state"] == "<unreadable>"
    assert sum(1 for entry in report["workers"] if entry["last_heartbeat"] is not None) == 1
