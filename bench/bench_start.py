"""Worker start time and idle memory per EMBED_PRECISION.

Run: .venv/bin/python bench/bench_start.py [PRECISION ...]   (default: auto fp32 auto fp32)

For each precision, starts `python -m worker run` against a private Redis, times it to the first
`/healthz` that says "idle", waits 2 s, and reads the parent's VmRSS and VmHWM from /proc.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from worker.devredis import RedisServer, free_port  # noqa: E402

MODEL_DIR = Path(os.environ.get("EMBED_MODEL_DIR", ROOT / "var" / "model"))


def memory_mib(pid: int) -> tuple[float, float]:
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


def idle_body(port: int) -> dict | None:
    try:
        body = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1).read())
    except OSError:
        return None
    return body if body.get("state") == "idle" else None


def main() -> None:
    precisions = sys.argv[1:] or ["auto", "fp32", "auto", "fp32"]
    with tempfile.TemporaryDirectory() as tmp, RedisServer(directory=Path(tmp) / "redis") as server:
        for precision in precisions:
            port = free_port()
            env = dict(
                os.environ,
                REDIS_URL=server.url,
                HEALTH_PORT=str(port),
                EMBED_MODEL_DIR=str(MODEL_DIR),
                EMBED_PRECISION=precision,
                PYTHONPATH=str(ROOT),
                STORE_URL=f"sqlite:///{tmp}/store.db",
                LOG_LEVEL="WARNING",
            )
            started = time.perf_counter()
            command = [sys.executable, "-m", "worker", "run"]
            proc = subprocess.Popen(command, env=env, cwd=tmp, stderr=subprocess.DEVNULL)
            try:
                while (body := idle_body(port)) is None:
                    time.sleep(0.05)
                ready = time.perf_counter() - started
                time.sleep(2)
                rss, peak = memory_mib(proc.pid)
            finally:
                proc.terminate()
                proc.wait(30)
            print(
                f"EMBED_PRECISION={precision}: runs {body['embedding']['precision']}; ready in {ready:.2f}s;"
                f" idle RSS {rss:.0f} MiB (peak {peak:.0f})"
            )


if __name__ == "__main__":
    main()
