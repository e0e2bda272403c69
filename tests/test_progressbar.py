"""`enqueue --wait` on a terminal: the line formatting (pure functions), then the real CLI under a
pseudo-terminal against a real worker (live lines redrawn in place, readable summaries)."""

from __future__ import annotations

import fcntl
import json
import os
import re
import select
import struct
import subprocess
import sys
import termios
import time

from tests import pdfs
from tests.conftest import ROOT
from worker import progressbar as pb

TRACEBACK = """Traceback (most recent call last):
  File "/srv/worker/jobs.py", line 120, in ingest_pdf
    reader = open_pdf(src.data, password=password)
             ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^
worker.errors.NotAPdfError: not a PDF: no %PDF header
in the first 1024 bytes
"""


def _stage(name: str, done: int, total: int, **extra) -> dict:
    return {"stage": name, "done": done, "total": total, **extra}


# -- pure functions ------------------------------------------------------------------------------


def test_fit_truncates_to_columns_counting_wide_characters() -> None:
    assert pb.fit("asymptote.pdf", 20) == "asymptote.pdf"
    assert pb.fit("asymptote.pdf", 8) == "asympto…"
    assert pb.cells(pb.fit("日本語のファイル.pdf", 7)) <= 7
    assert pb.fit("日本語のファイル.pdf", 7) == "日本語…"
    long = "/data/in/reports/2024/very-long-directory-name/asymptote.pdf"
    short = pb.shorten_middle(long, 30)
    assert pb.cells(short) == 30 and short.endswith("asymptote.pdf") and "…" in short
    assert pb.clean("a\x1b[2Jb\nc\td") == "a?[2Jb c d"  # no cursor moves from a name or a message


def test_duration_and_bar() -> None:
    assert [pb.duration(s) for s in (0, 7.4, 61, 3723)] == ["0:00", "0:07", "1:01", "1:02:03"]
    assert pb.bar(0.5, 10, unicode=False) == "[#####-----]"
    assert pb.bar(0.0, 4) == "░░░░" and pb.bar(0.74, 4) == "██░░" and pb.bar(1.0, 4) == "████"
    assert all(pb.cells(pb.bar(f / 100, 20)) == 20 for f in range(101))


def test_stages_of_reads_per_stage_reports_and_an_older_worker_meta() -> None:
    meta = {"stages": {"extract": _stage("extract", 196, 196)}, "progress": _stage("embed", 10, 700)}
    assert set(pb.stages_of(meta)) == {"extract", "embed"}
    assert pb.stages_of({"progress": _stage("extract", 3, 10)}) == {"extract": _stage("extract", 3, 10)}
    assert pb.stages_of({"stages": "garbage", "progress": 7}) == {}


def test_fraction_weighs_stages_and_scales_later_ones_by_the_pages_extracted() -> None:
    assert pb.fraction_done({"read": {"stage": "read"}}) is None
    assert pb.fraction_done({"extract": _stage("extract", 98, 196)}) == 0.17 * 0.5
    sequential = {
        "extract": _stage("extract", 196, 196),
        "chunk": _stage("chunk", 1, 1),
        "embed": _stage("embed", 362, 724),
    }
    assert abs(pb.fraction_done(sequential) - (0.17 + 0.02 + 0.78 * 0.5)) < 1e-9
    # overlapped: half the pages extracted, and half the chunks those pages gave embedded
    overlapped = {"extract": _stage("extract", 98, 196), "embed": _stage("embed", 181, 362)}
    assert abs(pb.fraction_done(overlapped) - (0.17 * 0.5 + 0.02 * 0.5 + 0.78 * 0.25)) < 1e-9  # chunked as read
    done = {**sequential, "embed": _stage("embed", 724, 724), "store": _stage("store", 1, 1)}
    assert pb.fraction_done(done) == 1.0
    scan = {"extract": _stage("extract", 3, 3), "embed": _stage("embed", 0, 0)}  # no text: no chunks
    assert pb.stage_fraction(scan, "embed") == 1.0


def test_the_pipelines_reports_become_its_two_stages() -> None:
    """ingest_pdf reports "extract" with the chunks cut and embedded so far while it reads, then
    "embed" with the pages read: the line shows reading and embedding as the stages they are."""
    reading = _stage("extract", 120, 196, chunks=400, embedded=256)
    stages = pb.stages_of({"stages": {"read": {"stage": "read"}, "extract": reading}, "progress": reading})
    assert stages["embed"] == {"stage": "embed", "done": 256, "total": 400}
    assert pb.stage_text(stages, "extract") == "extract 120/196 pages, embed 256/400 chunks"
    read = 120 / 196
    assert abs(pb.fraction_done(stages) - (0.17 * read + 0.02 * read + 0.78 * 0.64 * read)) < 1e-9
    # reading done: the last "extract" report was throttled at 190 pages; "embed" says all 196 were read
    embedding = _stage("embed", 500, 724, pages=196, chunks=724)
    stages = pb.stages_of({"stages": {"extract": _stage("extract", 190, 196), "embed": embedding}})
    assert pb.stage_text(stages, "embed") == "embed 500/724 chunks"
    assert abs(pb.fraction_done(stages) - (0.17 + 0.02 + 0.78 * 500 / 724)) < 1e-9
    stages["store"] = _stage("store", 1, 1)
    assert pb.fraction_done({**stages, "embed": _stage("embed", 724, 724, pages=196)}) == 1.0


def test_rate_and_time_left_sequential() -> None:
    """Extraction at 196 pages in 4 s, then embedding: the time left follows the work done (the
    estimate taken as settled here; when it is shown: the tests after the next)."""
    tracker = pb.Tracker(settled=True)
    assert tracker.observe({}, 100.0).left is None  # started, nothing reported: no guess
    est = tracker.observe({"extract": _stage("extract", 196, 196)}, 104.0)
    assert abs(est.fraction - 0.17) < 1e-9
    assert abs(est.left - 4.0 * 0.83 / 0.17) < 1e-6  # as fast as the work so far went
    assert abs(est.pages_per_s - 196 / (4.0 + est.left)) < 1e-9
    stages = {"extract": _stage("extract", 196, 196), "chunk": _stage("chunk", 1, 1)}
    tracker.observe({**stages, "embed": _stage("embed", 0, 724)}, 105.0)
    est = tracker.observe({**stages, "embed": _stage("embed", 362, 724)}, 125.0)  # half in 20 s
    assert abs(est.left - 20.0) < 1e-6  # embedding's own rate: 20 s more; the share alone says 18.1 s
    assert est.left > 25.0 * (1 - est.fraction) / est.fraction and est.elapsed == 25.0
    final = tracker.observe({**stages, "embed": _stage("embed", 724, 724), "store": _stage("store", 1, 1)}, 146.0)
    assert final.left == 0.0 and abs(final.pages_per_s - 196 / 46.0) < 1e-9


def test_time_left_when_stages_overlap_follows_the_slowest_stage() -> None:
    """Extraction runs ahead while embedding is the bottleneck: the weighted share alone would
    promise an early end; embedding's own rate gives the time left."""
    tracker = pb.Tracker(settled=True)
    tracker.observe({"extract": _stage("extract", 0, 200)}, 0.0)
    tracker.observe({"extract": _stage("extract", 20, 200), "embed": _stage("embed", 0, 50)}, 1.0)
    est = tracker.observe({"extract": _stage("extract", 200, 200), "embed": _stage("embed", 150, 750)}, 11.0)
    # embedding: 20% of the pages' chunks in 10 s -> 40 s more; the weighted share (0.326) says 22.7 s
    assert abs(est.left - 40.0) < 1e-6
    assert est.left > 11.0 * (1 - est.fraction) / est.fraction


def _extracting(tracker: pb.Tracker, pages_per_s: float, until: float, step: float = 0.2) -> list:
    """A job reading 100 pages at a steady rate, polled every `step` s from t=0 to `until`:
    (t, time left shown) at each poll."""
    shown = []
    for i in range(int(until / step) + 1):
        t = i * step
        done = min(100, int(pages_per_s * t))
        shown.append((t, tracker.observe({"extract": _stage("extract", done, 100)}, t).left))
    return shown


def test_no_time_left_before_the_rate_is_known_then_it_is_shown() -> None:
    """A steady job: nothing before MIN_ELAPSED and MIN_PROGRESS, nothing until two estimates
    RECHECK_SECONDS apart agree; then an estimate near the truth, shown at every later poll."""
    shown = _extracting(pb.Tracker(), pages_per_s=2.0, until=12.0)  # 100 pages: 50 s of extraction
    first = next(t for t, left in shown if left is not None)
    known = max(pb.MIN_ELAPSED, pb.MIN_PROGRESS * 100 / 2.0)  # the first rate: 2 s, and 5 pages at 2 a second
    assert all(left is None for t, left in shown if t < known + pb.RECHECK_SECONDS)
    assert first <= known + pb.RECHECK_SECONDS + 0.2 + 1e-9  # a steady rate settles at the next check
    assert all(left is not None for t, left in shown if t >= first)  # it stays
    for t, left in shown:
        if left is not None:  # extraction alone says 50 - t; the job's weights add the stages after it
            assert 50 - t - 5 <= left, (t, left)


def test_a_swinging_rate_shows_no_time_left_until_it_settles() -> None:
    """The first seconds of a job: one slow page, then a burst, then slow again (the estimates
    of the end disagree): no time left is shown while they swing, and one is once they agree."""
    tracker = pb.Tracker()
    pattern = [(0.0, 0), (1.0, 0), (2.2, 1), (2.4, 30), (3.0, 31), (3.5, 32), (4.0, 60), (4.5, 61)]
    swinging = [tracker.observe({"extract": _stage("extract", done, 100)}, t).left for t, done in pattern]
    assert swinging == [None] * len(pattern), swinging
    steady = [tracker.observe({"extract": _stage("extract", 61 + int(2 * (t - 4.5)), 100)}, t).left
              for t in (5.0, 5.5, 6.0, 6.5, 7.0)]  # fmt: skip
    assert steady[-1] is not None and None not in steady[steady.index(next(x for x in steady if x)) :]


def test_live_line_has_stage_counts_rate_times_and_never_exceeds_the_width() -> None:
    stages = {"extract": _stage("extract", 120, 196), "embed": _stage("embed", 256, 540)}
    est = pb.Estimate(fraction=0.4, elapsed=12.2, left=20.0, pages_per_s=6.1)
    line = pb.live_line("asymptote.pdf", "started", stages, est, 200, unicode=True)
    bar = "█" * 8 + "░" * 12
    assert line.startswith(f"asymptote.pdf  {bar}  40%  extract 120/196 pages, embed 256/540 chunks")
    assert line.endswith("6.1 pages/s  0:12 elapsed, 0:20 left")
    for width in range(1, 140):
        assert pb.cells(pb.live_line("日本語のファイル.pdf", "started", stages, est, width)) <= width
    no_bar = pb.live_line("asymptote.pdf", "started", stages, est, 100)
    assert "█" not in no_bar and "40%" in no_bar  # the bar goes first when the line is too wide
    assert pb.live_line("b.pdf", "queued", {}, None, 80, name_cells=13) == "b.pdf          queued"
    long = "/srv/data/incoming/2024/reports/asymptote.pdf"
    assert pb.live_line(long, "queued", {}, None, 30) == "/sr…tote.pdf  queued"  # room for the rest
    finished_stages = {"extract": _stage("extract", 5, 5), "chunk": _stage("chunk", 1, 1)}
    assert pb.stage_text(finished_stages, "chunk") == "chunk"
    assert pb.stage_text({"read": {"stage": "read"}, "embed": _stage("embed", 1, 9)}, "embed") == "embed 1/9 chunks"
    assert pb.stage_text({"read": {"stage": "read"}}, "read") == "read"


def test_block_fits_the_screen_and_frame_redraws_in_place() -> None:
    lines = pb.block([f"file{i}.pdf  queued" for i in range(30)], columns=12, rows=6)
    assert len(lines) == 5 and lines[-1] == "… and 26 m…" and all(pb.cells(x) <= 11 for x in lines)
    assert pb.frame(["a", "b"], 0) == "\r\x1b[2Ka\n\x1b[2Kb\n\x1b[J"
    assert pb.frame(["a"], 2) == "\r\x1b[2A\x1b[2Ka\n\x1b[J"  # up over the 2 drawn, erase the one left
    assert pb.frame([], 3) == "\r\x1b[3A\x1b[J"


def test_summary_lines() -> None:
    result = {"pages": 196, "chunks": 724, "page_errors": [], "pages_without_text": 0, "timings": {"total": 41.23}}
    assert (
        pb.summary_line("asymptote.pdf", "finished", result)
        == "asymptote.pdf: 196 pages, 724 chunks, 0 page errors, 41.2 s"
    )
    again = {**result, "pages": 1, "chunks": 1, "page_errors": [{"page": 1, "error": "x"}], "already_stored": True}
    assert pb.summary_line("a.pdf", "finished", again) == "a.pdf: 1 page, 1 chunk, 1 page error, 41.2 s, already stored"
    assert pb.summary_line("b.pdf", "failed", exc_string=TRACEBACK) == (
        "b.pdf: failed: NotAPdfError: not a PDF: no %PDF header in the first 1024 bytes"
    )
    timeout = "rq.timeouts.JobTimeoutException: Task exceeded maximum timeout value (3 seconds)"
    assert pb.error_of(timeout) == ("JobTimeoutException", "Task exceeded maximum timeout value (3 seconds)")
    assert pb.summary_line("p", "finished", {"pong": 1}) == 'p: done {"pong": 1}'  # not an ingest
    assert pb.summary_line("c.pdf", "stopped") == "c.pdf: stopped"


# -- the real CLI on a pseudo-terminal -------------------------------------------------------------

ESC = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def _on_pty(args: list[str], redis_url: str, columns: int, rows: int = 24, timeout: float = 150) -> tuple[int, str]:
    """Run `python -m worker ARGS` with stdin, stdout and stderr on a new pseudo-terminal of
    `columns` x `rows`; its exit code and everything it wrote."""
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES", "NO_COLOR")}
    env.update(REDIS_URL=redis_url, PYTHONPATH=str(ROOT), TERM="xterm-256color", PYTHONIOENCODING="utf-8")
    proc = subprocess.Popen(
        [sys.executable, "-m", "worker", *args],
        env=env,
        stdin=slave,
        stdout=slave,
        stderr=slave,
        start_new_session=True,
    )
    os.close(slave)
    out = bytearray()
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if select.select([master], [], [], 0.5)[0]:
                try:
                    data = os.read(master, 65536)
                except OSError:  # EIO: every end of the terminal closed, the process is gone
                    break
                if not data:
                    break
                out += data
        else:
            proc.kill()
        return proc.wait(10), out.decode("utf-8", "replace")
    finally:
        os.close(master)


def _drawn_lines(output: str) -> list[str]:
    """The live lines written: each follows an erase-line sequence."""
    return [ESC.sub("", part.split("\r\n")[0]) for part in output.split(pb.ERASE_LINE)[1:]]


def _worker(start_worker):
    worker = start_worker(ready=False)
    worker.wait_ready(60)
    return worker


def test_tty_shows_live_lines_in_place_then_readable_summaries(start_worker, redis_url, tmp_path) -> None:
    _worker(start_worker)
    good, bad = tmp_path / "slow.pdf", tmp_path / "notes.pdf"
    slow = pdfs.slow_page(200_000)  # a second or more of parsing each: the job lasts a few seconds
    good.write_bytes(pdfs.make_pdf([pdfs.long_page("part", 30), slow, slow, pdfs.BREAD]))
    bad.write_bytes(b"just some text, not a PDF")
    code, out = _on_pty(["enqueue", str(good), str(bad), "--wait", "--timeout", "120"], redis_url, columns=200)

    assert code == 1, out  # one failed
    assert "\x1b[2A" in out, out  # the cursor went back up over both lines to redraw them
    name, bad_name = (pb.shorten_middle(str(path), pb.NAME_CELLS) for path in (good, bad))  # 40 columns each
    live = [line for line in _drawn_lines(out) if line.startswith(f"{name}  ")]
    assert f"{bad_name}  queued" in _drawn_lines(out), out  # one line each
    assert len(set(live)) >= 2, live  # updated in place, not drawn once
    # the stage with its counts, the share done, elapsed (the time left: the next test)
    pattern = (
        r"█*░* +\d+%  extract \d/4 pages(, embed \d+/\d+ chunks)?"
        r"(  \d+\.\d pages/s)?  \d+:\d\d elapsed(, \d+:\d\d left)?"
    )
    assert any(re.fullmatch(f"{re.escape(name)}  +{pattern}", line) for line in live), live
    text = ESC.sub("", out).replace("\r", "")
    assert re.search(
        rf"^{re.escape(str(good))}: 4 pages, \d+ chunks, 0 page errors, 2 without text, \d+\.\d s$", text, re.M
    )
    assert re.search(rf"^{re.escape(str(bad))}: failed: NotAPdfError: not a PDF\b.*$", text, re.M), text
    assert "{" not in text

    # again: already stored; and --json on a terminal stays one JSON object a line, no escapes
    code, out = _on_pty(["enqueue", str(good), "--wait", "--timeout", "60"], redis_url, columns=200)
    assert code == 0 and re.search(r"slow.pdf: 4 pages, .*, \d+\.\d s, already stored\r?$", out, re.M), out
    code, out = _on_pty(["enqueue", str(good), "--wait", "--json", "--timeout", "60"], redis_url, columns=200)
    assert code == 0 and "\x1b" not in out, out
    (obj,) = [json.loads(line) for line in out.splitlines() if line.strip()]
    assert obj["status"] == "finished" and obj["result"]["already_stored"] is True


def test_tty_shows_the_time_left_once_the_rate_is_known(start_worker, redis_url, tmp_path) -> None:
    """A job that reads 24 pages at a steady 4 a second, whatever the machine's speed: its
    first lines show no time left, later ones do, with the rate."""
    _worker(start_worker)
    path = tmp_path / "paced.pdf"
    path.write_bytes(pdfs.make_pdf(["one page"]))
    args = ["enqueue", str(path), "--function", "tests.jobs_for_tests.paced", "--wait", "--timeout", "60"]
    code, out = _on_pty(args, redis_url, columns=200)
    assert code == 0, out
    live = [line for line in _drawn_lines(out) if "extract" in line]
    eta = re.compile(r"\d+\.\d pages/s  \d+:\d\d elapsed, \d+:\d\d left$")
    with_eta = [n for n, line in enumerate(live) if eta.search(line)]
    assert with_eta, live  # shown once known
    assert with_eta[0] > 0 and all(" left" not in line for line in live[: with_eta[0]]), live  # not before
    assert re.search(r"extract (\d+)/24 pages", live[with_eta[0]]), live


def test_tty_narrow_and_short_terminal_truncates_and_never_wraps(start_worker, redis_url, tmp_path) -> None:
    _worker(start_worker)
    paths = []
    for i in range(4):
        path = tmp_path / f"a-rather-long-file-name-number-{i}.pdf"
        path.write_bytes(pdfs.make_pdf([f"document {i}\n\n{pdfs.VOLCANO}"]))
        paths.append(str(path))
    code, out = _on_pty(["enqueue", *paths, "--wait", "--timeout", "120"], redis_url, columns=30, rows=4)
    assert code == 0, out
    drawn = _drawn_lines(out)
    assert drawn and all(pb.cells(line) <= 29 for line in drawn), drawn
    assert "… and 2 more files" in drawn, drawn  # 4 files, room for 3 lines
    kept = re.escape(paths[0][:3]) + r"…r-[0-3]\.pdf  queued"  # the name's end kept
    assert any(re.fullmatch(kept, line) for line in drawn), drawn


def test_report_keeps_each_stage_from_threads_and_a_new_attempt_drops_them(redis_conn) -> None:
    """report() keeps `progress` (the latest report) and `stages` (the latest of each stage), also
    when stages report from threads at once; reset_counters() at an attempt's start drops them."""
    import contextvars
    import threading

    from rq.job import Job, _current_job

    from worker import progress

    job = Job.create("worker.jobs.ping", connection=redis_conn)
    job.save()
    token = _current_job.set(job)  # as RQ does in a work-horse
    try:
        progress.report("extract", 0, 50)

        def stage(name: str) -> None:
            for i in range(51):
                progress.report(name, i, 50)
                progress.count(pages=1)

        threads = [
            threading.Thread(target=contextvars.copy_context().run, args=(stage, n)) for n in ("extract", "embed")
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        _current_job.reset(token)
    meta = Job.fetch(job.id, connection=redis_conn).get_meta(refresh=True)
    assert meta["stages"] == {"extract": _stage("extract", 50, 50), "embed": _stage("embed", 50, 50)}
    assert meta["progress"] in meta["stages"].values() and meta["counters"] == {"pages": 102}
    progress.reset_counters(job)
    assert "stages" not in Job.fetch(job.id, connection=redis_conn).get_meta(refresh=True)
