"""`make run-worker`'s private Redis: started only when none answers, stopped afterwards."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.conftest import ROOT
from worker.devredis import answers, free_port

PRINT_URL = "import os, redis; u = os.environ['REDIS_URL']; redis.Redis.from_url(u).set('k', 1); print(u)"


def run(args: list[str], cwd, env_extra: dict | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
    env.update(env_extra or {}, PYTHONPATH=str(ROOT))
    return subprocess.run(
        [sys.executable, "-m", "worker.devredis", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=60
    )


def test_starts_private_redis_when_none_answers_and_stops_it(tmp_path):
    probe, private = free_port(), free_port()
    out = run(["--probe-port", str(probe), "--port", str(private), "--", sys.executable, "-c", PRINT_URL], tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"redis://127.0.0.1:{private}/0"
    assert "started a private redis-server" in out.stderr
    assert (tmp_path / "var" / "redis").is_dir()
    assert not answers("127.0.0.1", private)  # stopped with the command


def test_uses_existing_redis_untouched(redis_url, tmp_path):
    port = int(redis_url.rsplit(":", 1)[1].split("/")[0])
    out = run(
        ["--probe-port", str(port), "--", sys.executable, "-c", "import os; print(os.environ.get('REDIS_URL'))"],
        tmp_path,
    )
    assert out.returncode == 0 and out.stdout.strip() == "None"  # the worker's default URL is left to apply
    assert "started" not in out.stderr


def test_redis_url_set_is_respected(redis_url, tmp_path):
    out = run(
        ["--probe-port", str(free_port()), "--", sys.executable, "-c", PRINT_URL], tmp_path, {"REDIS_URL": redis_url}
    )
    assert out.returncode == 0 and out.stdout.strip() == redis_url
    assert "started" not in out.stderr


SECOND_TERMINAL = """
import os, subprocess, sys
from worker.settings import Settings
print(open("var/redis.url").read().strip())
print(Settings.from_env({}).redis_url)  # a command run from the same directory, REDIS_URL unset
env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
again = [sys.executable, "-m", "worker.devredis", "--probe-port", sys.argv[1], "--port", sys.argv[2], "--",
         sys.executable, "-c", "import os; print(os.environ['REDIS_URL'])"]
print(subprocess.run(again, env=env, capture_output=True, text=True).stdout.strip())
"""


def test_a_second_terminal_and_a_second_run_find_the_private_redis(tmp_path):
    """The README's second terminal used to go to 6379 while the worker's private Redis was on 6399;
    a second `make run-worker` started a second server on the same data directory."""
    probe, private, other = free_port(), free_port(), free_port()
    cmd = [sys.executable, "-c", SECOND_TERMINAL, str(probe), str(other)]
    out = run(["--probe-port", str(probe), "--port", str(private), "--", *cmd], tmp_path)
    assert out.returncode == 0, out.stderr
    url = f"redis://127.0.0.1:{private}/0"
    assert out.stdout.split() == [url, url, url]  # the file, the settings' default, the second run joined
    assert not answers("127.0.0.1", other)
    assert not (tmp_path / "var" / "redis.url").exists()  # gone with the server


def test_joining_a_redis_that_answers_says_so_with_the_queues(redis_url, tmp_path):
    port = int(redis_url.rsplit(":", 1)[1].split("/")[0])
    out = run(["--probe-port", str(port), "--", sys.executable, "-c", "pass"], tmp_path)
    assert out.returncode == 0 and f"using the Redis that answers on 127.0.0.1:{port}" in out.stderr
    assert "did not start" in out.stderr and "queues high,default,low (WORKER_QUEUES)" in out.stderr, out.stderr
