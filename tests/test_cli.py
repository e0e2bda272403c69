"""The functions the commands of worker/cli.py are made of, alone; then `enqueue --wait` giving up,
through `main` against the real Redis of the suite (no worker running)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import worker.settings
from worker import cli, display
from worker.exitcodes import EXIT_ERROR, EXIT_USAGE

TRACEBACK = """Traceback (most recent call last):
  File "/srv/worker/jobs.py", line 120, in ingest_pdf
    reader = open_pdf(src.data, password=password)
worker.errors.NotAPdfError: not a PDF: no %PDF header
"""


def test_summary_of_a_finished_job_carries_its_result() -> None:
    result = {"pages": 3, "chunks": 7, "page_errors": [], "timings": {"total": 1.25}}
    obj, text = cli.summary(Path("a.pdf"), "j1", "finished", result=result)
    assert obj == {"file": "a.pdf", "job_id": "j1", "status": "finished", "result": result}
    assert text == "a.pdf: 3 pages, 7 chunks, 0 page errors, 1.2 s"


def test_summary_of_a_failed_job_names_the_error() -> None:
    obj, text = cli.summary(Path("b.pdf"), "j2", "failed", exc_string=TRACEBACK)
    assert obj["error_type"] == "NotAPdfError"
    assert obj["error"] == "worker.errors.NotAPdfError: not a PDF: no %PDF header"
    assert text == "b.pdf: failed: NotAPdfError: not a PDF: no %PDF header"


def test_summary_of_a_job_without_a_result() -> None:
    obj, text = cli.summary(Path("c.pdf"), "j3", "stopped", exc_string="")
    assert (obj["error_type"], obj["error"], text) == (None, None, "c.pdf: stopped")


def test_queued_and_timed_out_records() -> None:
    assert cli.queued(Path("a.pdf"), "j1", "high") == (
        {"file": "a.pdf", "job_id": "j1", "queue": "high", "status": "queued"},
        "a.pdf: queued as j1 on high",
    )
    obj, text = cli.timed_out(Path("a.pdf"), "j1", "started")
    assert obj == {"file": "a.pdf", "job_id": "j1", "status": "timeout"}
    assert text == "a.pdf: still started (gave up waiting)"


def test_gave_up_only_past_a_deadline() -> None:
    assert not cli.gave_up(None, 10**9)  # no --timeout: wait for ever
    assert not cli.gave_up(100.0, 100.0)
    assert cli.gave_up(100.0, 100.5)


def test_plain_lines_print_a_line_when_it_changes(capsys) -> None:
    view = display.lines_for(False, ["a.pdf"])  # pytest's streams are not a terminal
    assert isinstance(view, display.PlainLines)
    progress = {"progress": {"stage": "embed", "done": 1, "total": 4}}
    for status, meta in (("queued", {}), ("queued", {}), ("started", progress), ("started", progress)):
        view.add("j1", "a.pdf", status, meta)
        view.show()
    assert capsys.readouterr() == ("", "a.pdf: queued\na.pdf: started embed 1/4\n")


def test_json_draws_nothing(capsys) -> None:
    view = display.lines_for(True, ["a.pdf"])
    view.add("j1", "a.pdf", "started", {"progress": {"stage": "read"}})
    view.show()
    view.clear()
    assert capsys.readouterr() == ("", "")


def test_parse_where() -> None:
    assert cli.parse_where(["lang=en", "tag=a=b"]) == {"lang": "en", "tag": "a=b"}
    with pytest.raises(ValueError, match="'=x'"):
        cli.parse_where(["lang=en", "=x"])


def test_hit_text() -> None:
    hit = {"score": 0.5, "name": None, "document": "d1", "pages": "pp. 2-3", "text": "a\n b", "snippet": "a **b**"}
    hit |= {"dense_rank": 4, "dense_score": 0.61, "keyword_rank": 1, "keyword_score": 7.25}
    assert cli.hit_text(hit, 2) == " 2. 0.5000  d1  pp. 2-3  [dense #4 (0.610), keyword #1 (7.250)]\n    a **b**"
    assert cli.hit_text(hit, 2, bold=True).endswith("a \033[1mb\033[0m")
    text = {"score": 0.03, "name": "notes.md", "document": "d2", "pages": None, "text": "x", "snippet": "x"}
    assert cli.hit_text(text | {"dense_rank": None, "keyword_rank": 3, "keyword_score": 1.0}) == (
        " 1. 0.0300  notes.md  [keyword #3 (1.000)]\n    x"
    )


def test_health_url_reaches_a_wildcard_address_on_loopback() -> None:
    assert cli.health_url("0.0.0.0", 8001) == "http://127.0.0.1:8001/healthz"
    assert cli.health_url("::1", 8001) == "http://[::1]:8001/healthz"


def test_status_lines() -> None:
    report = {
        "queues": {"default": {"depth": 2, "started": 1, "failed": 0}},
        "workers": [{"name": "w1", "state": "busy", "current_job": None, "heartbeat_age_seconds": None}],
        "store": {},
    }
    assert cli.status_lines(report) == [
        "queues:",
        "  default    depth      2  started    1  failed    0",
        "workers: 1",
        "  w1                             busy       -  (heartbeat unknown)",
        "store: none",
    ]


@pytest.fixture()
def in_process(monkeypatch):
    monkeypatch.setattr(worker.settings, "_settings", worker.settings._settings)  # main() installs its own


def test_bad_setting_is_a_usage_error(in_process, monkeypatch, capsys) -> None:
    monkeypatch.setenv("HEALTH_PORT", "not a port")
    assert cli.main(["healthcheck"]) == EXIT_USAGE
    assert "configuration error" in capsys.readouterr().err


def test_enqueue_wait_gives_up_at_its_timeout(in_process, redis_url, monkeypatch, tmp_path, capsys) -> None:
    """No worker takes the jobs: each one is reported as a timeout, and the exit says so."""
    monkeypatch.setenv("REDIS_URL", redis_url)
    files = [tmp_path / "a.pdf", tmp_path / "b.pdf"]
    args = ["enqueue", "--wait", "--json", "--timeout", "0.1", "--function", "worker.jobs.ping"]
    assert cli.main([*args, *map(str, files)]) == EXIT_ERROR
    out, err = capsys.readouterr()
    records = [json.loads(line) for line in out.splitlines()]
    assert [(r["file"], r["status"]) for r in records] == [(str(f), "timeout") for f in files]
    assert err == ""


def test_a_file_outside_the_roots_is_sent_inline_within_the_limit(tmp_path) -> None:
    import base64

    from worker.cli import source_for
    from worker.settings import Settings

    inside, outside = tmp_path / "in", tmp_path / "out"
    inside.mkdir()
    outside.mkdir()
    (inside / "a.pdf").write_bytes(b"%PDF-a")
    (outside / "b.pdf").write_bytes(b"%PDF-b")
    (outside / "big.pdf").write_bytes(b"%PDF-" + b"x" * 2000)
    settings = Settings.from_env({"INPUT_ROOTS": str(inside), "MAX_INLINE_BYTES": "1000", "MAX_JOB_DATA_BYTES": "4096"})
    assert source_for(inside / "a.pdf", settings) == (str(inside / "a.pdf"), None)
    source, note = source_for(outside / "b.pdf", settings)
    assert source == {"data_b64": base64.b64encode(b"%PDF-b").decode(), "filename": "b.pdf"}
    assert note == f"{outside / 'b.pdf'} is outside INPUT_ROOTS={inside}: sent inline (6 bytes)"
    source, note = source_for(outside / "big.pdf", settings)
    assert source == str(outside / "big.pdf") and "over MAX_INLINE_BYTES (1000): sent as a path" in note


def test_a_command_that_cannot_reach_redis_says_so_in_one_line(tmp_path) -> None:
    import os
    import subprocess
    import sys

    from tests.conftest import ROOT
    from worker.devredis import free_port

    (tmp_path / "a.pdf").write_bytes(b"%PDF-1.7")
    url = f"redis://127.0.0.1:{free_port()}/0"
    env = dict(os.environ, REDIS_URL=url, PYTHONPATH=str(ROOT))
    for args in (["enqueue", "a.pdf"], ["enqueue", "a.pdf", "--wait"], ["status"], ["status", "--failed"]):
        out = subprocess.run(
            [sys.executable, "-m", "worker", *args], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60
        )
        assert out.returncode == 3, (args, out.stderr)
        assert out.stderr.count("\n") == 1 and f"Redis at {url} unavailable (ConnectionError): start it" in out.stderr
