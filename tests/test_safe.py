"""What a job or Redis holds reaches an output (log, sd_notify, metric label, terminal) only
as one bounded, printable line: worker.safe, the log formatters, and a real worker's log."""

from __future__ import annotations

import json
import logging
import re
import signal
import sys
import zlib

import pytest
from rq.job import Job

from tests.conftest import queue, wait_for
from worker.logs import CONTINUATION, FIELD_LIMIT, LINE_LIMIT, JsonFormatter, TextFormatter
from worker.safe import UNREGISTERED, function_label, safe_text

HOSTILE = [
    "plain",
    "a\nb\r\nc",
    "\x1b[2J\x1b]0;title\x07",
    "nul\x00here",
    "\ud800 lone surrogate",
    "\u2028\u2029\x85\u202e bidi and separators",
    "x" * 100_000,
    "back\\slash\\n",
    b"bytes \xff\xfe\n",
    b"\xe2\x82\xac" * 10_000,
    ["a", {"b": None, "c": [1, 2, 3]}],
    {"k": "v" * 10**6},
    None,
    10**5000,
    float("nan"),
    [[[[[[[[[["deep"]]]]]]]]]],
]


@pytest.mark.parametrize("value", HOSTILE, ids=range(len(HOSTILE)))
@pytest.mark.parametrize("limit", [16, 200, 1000])
def test_safe_text_is_one_printable_bounded_line(value, limit):
    text = safe_text(value, limit)
    assert isinstance(text, str)
    assert text.isprintable()  # no newline, CR, ESC, NUL, surrogate, separator
    assert len(text) <= limit
    text.encode("utf-8")  # writable anywhere


def test_safe_text_reads_like_repr_and_marks_what_it_cuts():
    assert safe_text("worker.jobs.ping") == "worker.jobs.ping"
    assert safe_text("é€😀") == "é€😀"  # printable text stays as it is
    assert safe_text("a\nb\x1b[31m\x00\ud800\\") == "a\\nb\\x1b[31m\\x00\\ud800\\\\"
    assert safe_text(b"ab\xff\n") == "ab\\xff\\n"
    assert safe_text(["a", 1]) == "['a', 1]"
    assert safe_text(None) == "None"
    cut = safe_text("y" * 1000, 50)
    assert cut.startswith("yyyy") and cut.endswith("...[1000 chars]") and len(cut) == 50
    assert safe_text(b"z" * 1000, 50).endswith("...[1000 bytes]")
    assert safe_text("y" * 50, 50) == "y" * 50  # exactly the limit: not cut
    # an escape is never cut in half
    assert safe_text("\x1b" * 100, 30) == "\\x1b" * 4 + "...[100 chars]"


def test_function_label_is_a_registered_name_or_one_fixed_label():
    assert function_label("worker.jobs.ingest_pdf") == "worker.jobs.ingest_pdf"
    for name in ("os.system", "x" * 100_000, ["worker.jobs.ping"], {"a": 1}, None, 3, "worker.jobs.ping\n"):
        assert function_label(name) == UNREGISTERED


def record(msg: str, *args: object, **extra: object) -> logging.LogRecord:
    rec = logging.LogRecord("rq.worker", logging.ERROR, __file__, 1, msg, args, None)
    rec.__dict__.update(extra)
    return rec


FORGED = "worker.jobs.x\n2026-12-03T00:00:00 INFO    worker.daemon: job abc ok in 0.1s\x1b[2J"
RECORD_START = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d ")


def test_text_records_cannot_be_forged_by_what_they_carry():
    fmt = TextFormatter()
    # as the daemon logs a job's end, and as RQ logs a failure (traceback in the message)
    end = record("job %s %s in %.3fs", "abc", "failed", 0.5, job_id="abc", function=FORGED, queue="default")
    failure = record(
        "Worker %s: job %s: exception raised while executing (%s)\n%s",
        "w",
        "abc",
        FORGED,
        "Traceback (most recent call last):\n  File 'x', line 1\nValueError: one\n2026-12-03T00:00:00 INFO fake",
        job_id="abc",
        queue="\x1b[31mdefault",
    )
    for rec in (end, failure):
        text = fmt.format(rec)
        lines = text.split("\n")
        assert RECORD_START.match(lines[0])
        assert all(line.startswith(CONTINUATION) for line in lines[1:]), text
        assert all(line.isprintable() for line in lines), text
    assert "function=worker.jobs.x\\n2026-12-03T00:00:00 INFO" in fmt.format(end)
    assert "\n" not in fmt.format(end)
    tail = fmt.format(failure).split("\n")[-2:]
    assert tail == [f"{CONTINUATION}ValueError: one", f"{CONTINUATION}2026-12-03T00:00:00 INFO fake"]


def test_text_records_are_bounded():
    fmt = TextFormatter()
    huge = record("job %s\n%s", "x" * 100_000, "\n".join(["line"] * 10_000), function="f" * 100_000)
    lines = fmt.format(huge).split("\n")
    assert len(lines) <= 201
    assert max(map(len, lines)) <= LINE_LIMIT + 2 * FIELD_LIMIT + 100
    assert any("lines left out" in line for line in lines)


def test_json_records_stay_valid_and_bounded():
    fmt = JsonFormatter("w")
    for function in (FORGED, ["a", {"b": 1}], float("nan"), 10**5000, "\ud800", "f" * 100_000, b"\xff"):
        line = fmt.format(record("job %s failed: %s", "abc", "\ud800" + "m" * 100_000, job_id="abc", function=function))
        assert "\n" not in line
        entry = json.loads(line, parse_constant=lambda c: pytest.fail(f"not JSON: {c}"))
        line.encode("utf-8")
        assert isinstance(entry["function"], str) and len(entry["function"]) <= FIELD_LIMIT
        assert len(entry["message"]) <= 20_000
    assert json.loads(fmt.format(record("m", job_id="abc", function=FORGED)))["function"] == FORGED


def put_function_name(conn, job: Job, name: object) -> None:
    """Rewrite the (JSON) payload of a queued job so that its function name is `name`."""
    _, instance, args, kwargs = json.loads(zlib.decompress(conn.hget(job.key, "data")))
    conn.hset(job.key, "data", zlib.compress(json.dumps([name, instance, args, kwargs]).encode()))


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_a_real_workers_log_is_not_forged_by_function_names(start_worker, redis_conn, fmt):
    """A newline in a function name used to write a line of its own in the text log; a JSON
    list or object as the name used to end the daemon (item 6)."""
    q = queue(redis_conn)
    forged = q.enqueue(FORGED)
    as_list = q.enqueue("worker.jobs.ping", "list")
    as_dict = q.enqueue("worker.jobs.ping", "dict")
    put_function_name(redis_conn, as_list, ["worker.jobs.ping", "\n2026-12-03T00:00:00 INFO forged"])
    put_function_name(redis_conn, as_dict, {"name": "\x1b[2J"})
    good = q.enqueue("worker.jobs.ping", "after")
    w = start_worker(extra_env={"LOG_FORMAT": fmt})
    wait_for(lambda: good.get_status(refresh=True) == "finished", message="the job after")
    wait_for(lambda: w.get("/healthz")[1]["jobs_failed"] == 3, message="the parent to count the three")
    assert [j.get_status(refresh=True) for j in (forged, as_list, as_dict)] == ["failed"] * 3
    assert w.proc.poll() is None
    w.signal(signal.SIGTERM)
    assert w.wait(30) == 0
    raw = w.log_path.read_text(errors="strict")
    assert "\x1b" not in raw
    for line in raw.splitlines():
        if fmt == "json":
            json.loads(line)
        else:
            assert RECORD_START.match(line) or line.startswith(CONTINUATION), line
            assert not line.startswith("2026-12-03T00:00:00"), line
    if fmt == "text":
        assert "2026-12-03T00:00:00 INFO" in raw  # still there to read, as escaped text
    print(raw[-3000:], file=sys.stderr)
