"""Every command that reads the store says, in one line on stderr, what it tried and what to do
when the store cannot be reached or is not one, and exits non-zero; no traceback. Real
`python -m worker` processes; the PostgreSQL URL points at a port where nothing listens."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests import pdfs
from tests.conftest import MODEL_DIR, ROOT

NOTHING_LISTENS = "postgresql://127.0.0.1:1/x"
COMMANDS = [
    ["search", "refund policy"],
    ["documents", "list"],
    ["documents", "show", "report-1"],
    ["documents", "delete", "report-1"],
    ["status"],
    ["status", "--json"],
]


def cli(args: list[str], env_extra: dict, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("STORE_URL", "REDIS_URL", "INPUT_ROOTS")}
    env.update(PYTHONPATH=str(ROOT), EMBED_MODEL_DIR=str(MODEL_DIR), **env_extra)
    return subprocess.run(
        [sys.executable, "-m", "worker", *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=120
    )


def bad_stores(tmp_path: Path) -> dict[str, tuple[str, str]]:
    """kind -> (STORE_URL, what the line must say to do)."""
    not_a_db = tmp_path / "notes.sqlite"
    not_a_db.write_text("these are notes, not a database\n")
    return {
        "postgresql, nothing listening": (NOTHING_LISTENS, "unreachable"),
        "sqlite, no such folder": (f"sqlite:///{tmp_path}/typo/store.db", "check STORE_URL"),
        "sqlite, not a database": (f"sqlite:///{not_a_db}", "not a SQLite database"),
    }


@pytest.mark.parametrize("kind", ["postgresql, nothing listening", "sqlite, no such folder", "sqlite, not a database"])
def test_each_store_command_says_in_one_line_what_failed(kind: str, redis_url: str, tmp_path: Path) -> None:
    url, says = bad_stores(tmp_path)[kind]
    for args in COMMANDS:
        out = cli(args, {"STORE_URL": url, "REDIS_URL": redis_url}, tmp_path)
        lines = out.stderr.strip().splitlines()
        assert out.returncode == 1, (args, out.returncode, out.stderr)
        assert len(lines) == 1 and "Traceback" not in out.stderr, (args, out.stderr)
        assert says in lines[0] and "STORE_URL" in lines[0], (args, lines[0])
        if url.startswith("postgresql"):
            assert "127.0.0.1:1" in lines[0] and "start it, or fix STORE_URL" in lines[0], lines[0]
    assert not (tmp_path / "typo").exists()  # nothing created by reading


def test_embed_does_not_need_the_store(tmp_path: Path) -> None:
    texts = tmp_path / "texts.json"
    texts.write_text('["a refund within thirty days"]')
    out = cli(["embed", str(texts)], {"STORE_URL": NOTHING_LISTENS, "REDIS_URL": "redis://127.0.0.1:1/0"}, tmp_path)
    assert out.returncode == 0 and '"dim": 384' in out.stdout, out.stderr


def test_enqueue_wait_says_why_a_job_is_retried_and_why_it_failed(start_worker, redis_url, tmp_path) -> None:
    """A worker whose store is down: the job is retried once (RETRY_INTERVALS=3), then fails; the
    waiting command says after what it is retried, then the failure in one summary line."""
    # 3 s in the scheduled state: a waiting command on a loaded machine still sees it
    start_worker({"STORE_URL": NOTHING_LISTENS, "RETRY_INTERVALS": "3"}, ready=False).wait_ready(60)
    pdf = tmp_path / "report.pdf"
    pdf.write_bytes(pdfs.make_pdf([pdfs.BREAD]))
    out = cli(
        ["enqueue", str(pdf), "--wait", "--timeout", "90"],
        {"REDIS_URL": redis_url, "INPUT_ROOTS": str(tmp_path)},
        tmp_path,
    )
    assert out.returncode == 1, out.stderr
    assert f"{pdf}: scheduled (retry after StoreUnavailableError: PostgreSQL at {NOTHING_LISTENS}" in out.stderr
    (summary,) = out.stdout.strip().splitlines()
    assert summary.startswith(f"{pdf}: failed: StoreUnavailableError: PostgreSQL at {NOTHING_LISTENS} unreachable")
    assert summary.endswith("start it, or fix STORE_URL"), summary
    assert "Traceback" not in out.stderr + out.stdout
