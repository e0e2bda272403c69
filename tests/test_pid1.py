"""The worker as PID 1, as in a container (exec-form ENTRYPOINT): run in a PID namespace of
its own with `unshare`, it gets SIGTERM and shuts down warm, and a restart after a crash
(same hostname, same pid 1) is not refused by RQ over the dead worker's name."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import http_get, queue, wait_for, worker_env
from worker.devredis import free_port

unshare = shutil.which("unshare")
pytestmark = pytest.mark.skipif(unshare is None or os.geteuid() != 0, reason="needs unshare and root")


class Pid1Worker:
    def __init__(self, redis_url: str, tmp: Path) -> None:
        self.port = free_port()
        self.log_path = tmp / f"pid1-{self.port}.log"
        env = worker_env(redis_url, tmp, self.port, "tests.jobs_for_tests.sleep")
        env.pop("WORKER_NAME", None)
        self._log = open(self.log_path, "ab")  # noqa: SIM115 (closed in close())
        self.proc = subprocess.Popen(
            [unshare, "--pid", "--fork", sys.executable, "-m", "worker", "run"],
            env=env,
            cwd=tmp,
            stdout=self._log,
            stderr=self._log,
        )
        self.inner = wait_for(self._child, timeout=10, message="the namespaced child")

    def _child(self) -> int | None:
        try:
            kids = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text().split()
        except OSError:
            return None
        return int(kids[0]) if kids else None

    def health(self) -> tuple[int, dict | str]:
        return http_get(f"http://127.0.0.1:{self.port}/healthz")

    def wait_ready(self, timeout: float = 20.0) -> None:
        def ready() -> bool:
            assert self.proc.poll() is None, self.log_path.read_text()[-3000:]
            try:
                return http_get(f"http://127.0.0.1:{self.port}/readyz")[0] == 200
            except OSError:
                return False

        wait_for(ready, timeout=timeout, interval=0.1, message="worker as PID 1 ready")

    def close(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.inner, signal.SIGKILL)
            self.proc.wait(10)
        self._log.close()


@pytest.fixture()
def pid1_worker(redis_url, tmp_path):
    started: list[Pid1Worker] = []

    def start() -> Pid1Worker:
        w = Pid1Worker(redis_url, tmp_path)
        started.append(w)
        return w

    yield start
    for w in started:
        w.close()


def test_worker_as_pid1_shuts_down_warm_on_sigterm(pid1_worker, redis_conn):
    w = pid1_worker()
    w.wait_ready()
    name = w.health()[1]["worker"]
    assert name.split(".")[-2] == "1", name  # it really is PID 1 in its namespace
    job = queue(redis_conn).enqueue("tests.jobs_for_tests.sleep", 2)
    wait_for(lambda: job.get_status(refresh=True) == "started", message="job started")
    os.kill(w.inner, signal.SIGTERM)  # what `docker stop` / the kubelet send to PID 1
    assert w.proc.wait(30) == 0
    assert job.get_status(refresh=True) == "finished"


def test_restart_after_a_crash_as_pid1_is_not_refused(pid1_worker, redis_conn):
    first = pid1_worker()
    first.wait_ready()
    first_name = first.health()[1]["worker"]
    os.kill(first.inner, signal.SIGKILL)  # OOM killer, liveness failure, power loss
    first.proc.wait(10)
    # Same hostname, same pid 1: RQ would see the dead worker's name still registered.
    again = pid1_worker()
    again.wait_ready()
    time.sleep(1.5)
    assert again.proc.poll() is None
    second_name = again.health()[1]["worker"]
    assert second_name != first_name and second_name.split(".")[-2] == "1"
