"""A newcomer's first session, played inside a network namespace of its own (no Redis on 6379):
`python tests/first_contact.py CLONE PDF COMMANDS_JSON` runs, from the fresh clone CLONE,

1. `make run-worker` (the venv and model targets taken as made: there is no network here),
2. in a second process with none of the worker's variables set, each README command of
   COMMANDS_JSON (a list of shell lines, PDF already in place), once the worker answers /healthz,
3. a second `make run-worker` in the same clone, then `status` again,

or, with `--shared-redis`, only `make run-worker` against an unrelated Redis already on 6379,

stops both as Ctrl-C would, and prints a JSON report of what each step printed and returned,
and which redis-server processes ran on the clone's data directory. tests/test_first_contact.py
asserts on it. Standard library only: it runs under the namespace's `unshare`.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

MAKE = ["make", "-o", ".venv/.installed", "-o", "venv", "run-worker"]
CLEAN_ENV = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "TERM")}


def shell(line: str, cwd: Path, timeout: float = 120) -> dict:
    """One command as a user types it, in a shell with no worker variables set."""
    started = time.monotonic()
    out = subprocess.run(
        line, shell=True, cwd=cwd, env=CLEAN_ENV, capture_output=True, text=True, timeout=timeout, check=False
    )
    return {
        "command": line,
        "returncode": out.returncode,
        "stdout": out.stdout,
        "stderr": out.stderr,
        "seconds": round(time.monotonic() - started, 1),
    }


def start_worker(clone: Path, log: Path) -> subprocess.Popen:
    """`make run-worker` in its own process group, as a terminal runs it."""
    with open(log, "w") as out:
        return subprocess.Popen(MAKE, cwd=clone, env=CLEAN_ENV, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)  # fmt: skip


def wait_for(predicate, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.2)
    return False


def redis_servers(data_dir: Path) -> list[int]:
    """Pids of the redis-server processes working in `data_dir` (redis-server changes into its
    --dir, and rewrites its command line, so the working directory is what tells)."""
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            if (proc / "comm").read_text().strip() == "redis-server" and (proc / "cwd").resolve() == data_dir.resolve():
                pids.append(int(proc.name))
        except OSError:
            continue
    return pids


def stop(process: subprocess.Popen) -> int | None:
    """Ctrl-C to the process group, then wait; None if it did not end."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGINT)
    try:
        return process.wait(30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        return None


def session(clone: Path, commands: list[str], report: dict) -> None:
    first = start_worker(clone, clone.parent / "worker1.log")
    report["processes"] = [first]
    healthy = wait_for(
        lambda: first.poll() is not None or shell("curl -sf localhost:8001/healthz", clone)["returncode"] == 0, 90
    )
    healthy = healthy and first.poll() is None
    report["healthy"] = healthy
    if not healthy:
        return
    report["package"] = shell(".venv/bin/python -c 'import worker; print(worker.__file__)'", clone)["stdout"]
    report["commands"] = [shell(line, clone) for line in commands]
    report["redis_servers_with_one_run"] = len(redis_servers(clone / "var" / "redis"))
    second = start_worker(clone, clone.parent / "worker2.log")
    report["processes"].append(second)
    log2 = clone.parent / "worker2.log"
    report["second_started"] = wait_for(lambda: "starting: queues" in log2.read_text() or second.poll() is not None, 60)
    report["redis_servers_with_two_runs"] = len(redis_servers(clone / "var" / "redis"))
    report["status_with_two_runs"] = shell(".venv/bin/python -m worker status --json", clone)


def shared_session(clone: Path, commands: list[str], report: dict) -> None:
    """An unrelated Redis already on 6379, holding another RQ app's pickled job on `default`:
    `make run-worker` uses it, and says so and what it found, in its first lines."""
    from rq import Queue
    from rq.serializers import DefaultSerializer

    from worker.devredis import RedisServer

    other = RedisServer(port=6379, directory=clone.parent / "other-redis").start()
    report["cleanup"] = other.stop
    Queue("default", connection=other_client(other.url), serializer=DefaultSerializer).enqueue("app.tasks.send_mail")
    first = start_worker(clone, clone.parent / "worker1.log")
    report["processes"] = [first]
    log = clone.parent / "worker1.log"
    report["started"] = wait_for(lambda: "starting: queues" in log.read_text() or first.poll() is not None, 90)
    report["redis_servers_with_one_run"] = len(redis_servers(clone / "var" / "redis"))


def other_client(url: str):
    from redis import Redis

    return Redis.from_url(url)


def main(clone: Path, commands: list[str], shared: bool = False) -> int:
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    report: dict = {}
    try:
        (shared_session if shared else session)(clone, commands, report)
    finally:
        processes = report.pop("processes", [])
        report["exit_codes"] = [stop(p) for p in reversed(processes)][::-1]
        if cleanup := report.pop("cleanup", None):
            cleanup()
        report["redis_servers_after"] = len(redis_servers(clone / "var" / "redis"))
        report["url_file_after"] = (clone / "var" / "redis.url").exists()
        for n in (1, 2):
            log = clone.parent / f"worker{n}.log"
            report[f"log{n}"] = log.read_text() if log.exists() else ""
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(Path(sys.argv[1]), json.loads(sys.argv[2]), "--shared-redis" in sys.argv[3:]))
