"""What `enqueue --wait` shows: one live line per file on a terminal, and a summary per file.

Most of it is pure functions of a job's progress meta and of a clock passed in, testable without
a terminal; the views at the end (`lines_for`) draw them on stderr. What a job reports is
worker/progress.py.

Stages may overlap (extract later pages while embedding earlier chunks), so a line is built from
the latest report of every stage (`meta["stages"]`, see progress.py), not only the last one.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
import time
import unicodedata
from dataclasses import dataclass, field

# Share of an ingest's work per stage, from the stage times bench/bench_ingest.py measures on the
# sequential path (docs/benchmarks.md).
WEIGHTS = {"extract": 0.17, "chunk": 0.02, "embed": 0.78, "store": 0.03}
UNITS = {"extract": "pages", "embed": "chunks"}
ORDER = ("read", "extract", "chunk", "embed", "store")
# When the time left is shown. A rate taken too early swings (a stage's first second may hold one
# slow page, or none): 10 minutes left was once shown for a 27 s job. So a rate is estimated only
# from MIN_ELAPSED seconds and MIN_PROGRESS of the work (of the job, or of a stage since it was
# first seen), and the time left is shown once two such estimates of the end, at least
# RECHECK_SECONDS apart, agree within AGREEMENT of the time left; from then on it stays shown.
MIN_ELAPSED = 2.0
MIN_PROGRESS = 0.05
RECHECK_SECONDS = 1.0
AGREEMENT = 0.25
NAME_CELLS = 40  # a longer file name is shortened in its middle on the live line (less when narrow)
ERASE_LINE, ERASE_BELOW = "\x1b[2K", "\x1b[J"


# -- text that fits a terminal -----------------------------------------------------------------


def clean(text: object) -> str:
    """One line of printable text: whitespace runs become one space, control characters '?'
    (a file name or an error message must not move the cursor or change colours)."""
    text = " ".join(str(text).split())
    return "".join("?" if unicodedata.category(ch)[0] == "C" else ch for ch in text)


def _cell(ch: str) -> int:
    if unicodedata.combining(ch):
        return 0
    return 2 if unicodedata.east_asian_width(ch) in ("W", "F") else 1


def cells(text: str) -> int:
    """Columns `text` takes on a terminal (wide East Asian characters take two)."""
    return sum(_cell(ch) for ch in text)


def _take(chars, width: int) -> str:
    out, used = [], 0
    for ch in chars:
        w = _cell(ch)
        if used + w > width:
            break
        out.append(ch)
        used += w
    return "".join(out)


def fit(text: str, width: int) -> str:
    """`text` cut to at most `width` columns, ending in '…' when cut: a line never wraps."""
    if cells(text) <= width:
        return text
    return _take(text, width - 1) + "…" if width > 0 else ""


def shorten_middle(text: str, width: int) -> str:
    """`text` in at most `width` columns, its middle replaced by '…'; the end, a path's file
    name, keeps two thirds."""
    if cells(text) <= width or width < 5:
        return fit(text, width)
    head = _take(text, (width - 1) // 3)
    return head + "…" + _take(reversed(text), width - 1 - cells(head))[::-1]


def pad(text: str, width: int) -> str:
    return text + " " * max(0, width - cells(text))


def duration(seconds: float) -> str:
    """0:07, 12:41, 1:02:03."""
    s = max(0, int(seconds + 0.5))
    h, rest = divmod(s, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def bar(fraction: float, width: int, unicode: bool = True) -> str:
    """A bar `width` columns wide: "█████░░░░░", or "[#####-----]" (two more) without `unicode`."""
    full = int(min(1.0, max(0.0, fraction)) * width)
    if unicode:
        return "█" * full + "░" * (width - full)
    return "[" + "#" * full + "-" * (width - full) + "]"


# -- where a job is --------------------------------------------------------------------------------


def _number(value: object) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) and value >= 0:
        return value
    return None


def stages_of(meta: object) -> dict[str, dict]:
    """The latest report of each stage in a job's meta; a worker that writes only
    `meta["progress"]` (before per-stage reports) gives its one stage.

    ingest_pdf's pipeline reads, chunks and embeds at once and reports "extract" with the chunks
    cut and embedded so far as extras (`chunks`, `embedded`), then "embed" with the pages read
    (`pages`): these become an "embed" stage, and the pages read, as the two stages they are.
    """
    if not isinstance(meta, dict):
        return {}
    found: dict[str, dict] = {}
    for source in (meta.get("stages"), {"": meta.get("progress")}):
        if isinstance(source, dict):
            for value in source.values():
                if isinstance(value, dict) and isinstance(value.get("stage"), str):
                    found[value["stage"]] = value
    extract = found.get("extract")
    if extract is not None:
        embedded, chunks = _number(extract.get("embedded")), _number(extract.get("chunks"))
        if "embed" not in found and embedded is not None and chunks is not None:
            found["embed"] = {"stage": "embed", "done": embedded, "total": chunks}
        done, read = _number(extract.get("done")), max(_number(r.get("pages")) or 0 for r in found.values())
        if done is not None and read > done:  # a later report saw more pages read than the last extract one
            found["extract"] = {**extract, "done": read}
    return found


def stage_fraction(stages: dict[str, dict], name: str) -> float | None:
    """done/total of one stage; 1 when its total is 0 (no chunks to embed); None when unknown."""
    report = stages.get(name)
    if report is None:
        return None
    done, total = _number(report.get("done")), _number(report.get("total"))
    if done is None or total is None:
        return None
    return 1.0 if total == 0 else min(1.0, done / total)


def fraction_done(stages: dict[str, dict]) -> float | None:
    """Share of the job's work done, from 0 to 1, or None before any weighed stage reported.

    Each stage's done/total is weighed by WEIGHTS. The stages after extraction count what the
    pages extracted so far gave (their total grows while extraction runs), so their share is
    scaled by the share of pages extracted.
    """
    if not any(name in WEIGHTS for name in stages):
        return None
    pages = stage_fraction(stages, "extract")
    if pages is None:  # a later stage reported first: extraction is not reported, take it as done
        pages = 1.0 if any(name in stages for name in WEIGHTS if name != "extract") else 0.0
    done = 0.0
    for name, weight in WEIGHTS.items():
        share = stage_fraction(stages, name)
        if name == "chunk" and share is None and "embed" in stages:
            share = 1.0  # not reported apart: the pipeline chunks the pages as it reads them
        done += weight * (share or 0.0) * (1.0 if name == "extract" else pages)
    return min(1.0, done)


def pages_total(stages: dict[str, dict]) -> int | None:
    report = stages.get("extract")
    total = _number(report.get("total")) if report else None
    return int(total) if total is not None else None


@dataclass
class Estimate:
    fraction: float | None
    elapsed: float
    left: float | None  # seconds
    pages_per_s: float | None


@dataclass
class Tracker:
    """One file's job across polls: when it was first seen started, and when each stage was first
    seen (with its share then), to estimate the time left from the slowest stage's own rate; and
    whether that estimate has settled (see MIN_ELAPSED), before which no time left is shown."""

    started: float | None = None
    first: dict[str, tuple[float, float]] = field(default_factory=dict)
    candidate: tuple[float, float] | None = None  # (when, the end it predicted), not yet confirmed
    settled: bool = False

    def observe(self, stages: dict[str, dict], now: float) -> Estimate:
        if self.started is None:
            self.started = now
        elapsed = now - self.started
        fraction = fraction_done(stages)
        if fraction is None:
            return Estimate(None, elapsed, None, None)
        left = self._shown(self._raw_left(stages, fraction, elapsed, now), now)
        total = pages_total(stages)
        rate = total / (elapsed + left) if total and left is not None and elapsed + left > 0 else None
        return Estimate(fraction, elapsed, left, rate)

    def _raw_left(self, stages: dict[str, dict], fraction: float, elapsed: float, now: float) -> float | None:
        """The time left by the work done so far, or by the slowest stage's own rate if longer."""
        left = _left(fraction, elapsed)
        pages = stage_fraction(stages, "extract") or 0.0
        for name in WEIGHTS:
            share = stage_fraction(stages, name)
            if share is None:
                continue
            share = share if name == "extract" else share * pages
            first = self.first.setdefault(name, (now, share))
            stage_left = _stage_left(first, share, now)
            if stage_left is not None and (left is None or stage_left > left):
                left = stage_left
        return left

    def _shown(self, left: float | None, now: float) -> float | None:
        """`left` once two estimates RECHECK_SECONDS apart have agreed, else None."""
        if left is None or self.settled or left == 0.0:
            self.settled = self.settled or left == 0.0
            return left if self.settled else None
        end = now + left
        if self.candidate is None:
            self.candidate = (now, end)
        elif now - self.candidate[0] >= RECHECK_SECONDS:
            if abs(end - self.candidate[1]) <= AGREEMENT * left:
                self.settled = True
                return left
            self.candidate = (now, end)
        return None


def _left(fraction: float, elapsed: float) -> float | None:
    """Time left if the rest goes as fast as the work done so far went."""
    if fraction >= 1.0:
        return 0.0
    if elapsed < MIN_ELAPSED or fraction < MIN_PROGRESS:
        return None
    return elapsed * (1.0 - fraction) / fraction


def _stage_left(first: tuple[float, float], share: float, now: float) -> float | None:
    """Time one stage needs at the rate it has kept since it was first seen: when stages overlap,
    the slowest one (embedding) sets the end, which the overall share alone underestimates."""
    t0, share0 = first
    if share >= 1.0 or now - t0 < MIN_ELAPSED or share - share0 < MIN_PROGRESS:
        return None
    return (1.0 - share) * (now - t0) / (share - share0)


# -- lines -----------------------------------------------------------------------------------------


def stage_text(stages: dict[str, dict], latest: str | None = None) -> str:
    """The stages still running, e.g. "extract 120/196 pages, embed 256/540 chunks"; when all
    reported stages are complete, the latest one."""
    names = sorted(stages, key=lambda n: (ORDER.index(n) if n in ORDER else len(ORDER), n))
    # running: not complete, and for a stage without counts (read), the latest reported
    running = [n for n in names if (f := stage_fraction(stages, n)) != 1.0 and (f is not None or n == latest)]
    shown = running or ([latest if latest in stages else names[-1]] if names else [])
    parts = []
    for name in shown:
        report = stages[name]
        done, total = _number(report.get("done")), _number(report.get("total"))
        text = clean(name)
        if done is not None and total is not None and (total > 1 or name in UNITS):
            text += f" {int(done)}/{int(total)}" + (f" {UNITS[name]}" if name in UNITS else "")
        elif done is not None and name in UNITS:
            text += f" {int(done)} {UNITS[name]}"
        parts.append(text)
    return ", ".join(parts)


def live_line(
    name: str,
    status: str,
    stages: dict[str, dict],
    estimate: Estimate | None,
    width: int,
    name_cells: int = 0,
    unicode: bool = True,
    latest: str | None = None,
) -> str:
    """One file's line, at most `width` columns: name, bar and share, stages, pages/s, elapsed,
    time left. The bar goes first when the line is too wide; then the line is cut."""
    room = min(NAME_CELLS, max(8, width * 2 // 5))  # a narrow terminal keeps room for the rest
    label = pad(shorten_middle(clean(name), room), min(name_cells, room))
    if status != "started" or estimate is None:
        return fit(f"{label}  {clean(status)}", width)
    tail = []
    what = stage_text(stages, latest)
    if what:
        tail.append(what)
    if estimate.pages_per_s is not None:
        tail.append(f"{estimate.pages_per_s:.1f} pages/s")
    times = f"{duration(estimate.elapsed)} elapsed"
    if estimate.left is not None:
        times += f", {duration(estimate.left)} left"
    tail.append(times)
    rest = "  ".join(tail)
    if estimate.fraction is None:
        return fit(f"{label}  {rest}", width)
    pct = f"{int(estimate.fraction * 100):3d}%"
    line = f"{label}  {bar(estimate.fraction, 20, unicode)} {pct}  {rest}"
    if cells(line) > width:
        line = f"{label}  {pct}  {rest}"
    return fit(line, width)


def block(lines: list[str], columns: int, rows: int) -> list[str]:
    """The lines to draw: each within `columns - 1` (the last column can wrap on some terminals),
    and no more than the screen holds, the rest counted on the last line."""
    room = max(1, rows - 1)
    if len(lines) > room:
        more = len(lines) - (room - 1)
        lines = [*lines[: room - 1], f"… and {more} more files"]
    return [fit(line, max(1, columns - 1)) for line in lines]


def frame(lines: list[str], drawn: int) -> str:
    """What redraws `lines` over the `drawn` lines drawn before: back up to the first of them,
    erase and write each, erase what a longer block left below. The cursor ends under the block."""
    up = f"\x1b[{drawn}A" if drawn else ""
    return "\r" + up + "".join(f"{ERASE_LINE}{line}\n" for line in lines) + ERASE_BELOW


# -- summary ---------------------------------------------------------------------------------------


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def error_of(exc_string: str | None) -> tuple[str | None, str]:
    """(exception class name, its message on one line) from a formatted traceback."""
    from worker.errors import exception_of  # here: worker.errors loads redis, which drawing does not need

    kind, message = exception_of(exc_string)
    return kind, clean(message)


def pages_named(numbers: list) -> str:
    """E.g. "p. 3" or "pp. 1-3, 7" (at most ten runs, then "..."), from page numbers in order."""
    runs: list[list[int]] = []
    for n in (int(x) for x in numbers if isinstance(x, int)):
        if runs and n == runs[-1][1] + 1:
            runs[-1][1] = n
        else:
            runs.append([n, n])
    named = ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in runs[:10]) + (", ..." if len(runs) > 10 else "")
    return ("p. " if len(numbers) == 1 else "pp. ") + named


def summary_line(name: str, status: str, result: object = None, exc_string: str | None = None) -> str:
    """E.g. "asymptote.pdf: 196 pages, 724 chunks, 0 page errors, 41.2 s", with "2 without text,
    scanned, need OCR: pp. 4-5" when pages are scans; for a failure the
    exception's class and message, on one line."""
    name = clean(name)
    if status != "finished":
        kind, message = error_of(exc_string)
        what = ": ".join(part for part in (kind, message) if part)
        return f"{name}: {status}" + (f": {what}" if what else "")
    if isinstance(result, dict) and "collection" in result and "records" in result:
        return f"{name}: " + bulk_summary(result)
    if not (isinstance(result, dict) and _number(result.get("pages")) is not None and "chunks" in result):
        return f"{name}: done {json.dumps(result)}"
    parts = [_plural(int(result["pages"]), "page"), _plural(int(result.get("chunks") or 0), "chunk")]
    errors = result.get("page_errors")
    parts.append(_plural(len(errors) if isinstance(errors, list) else int(_number(errors) or 0), "page error"))
    if not result["pages"]:  # a text (ingest_text) has no pages
        parts = parts[1:2]
    blank = _number(result.get("pages_without_text"))
    if blank:
        parts.append(f"{int(blank)} without text")
    scanned = result.get("scanned_pages")
    if isinstance(scanned, list) and scanned:
        parts.append(f"scanned, need OCR: {pages_named(scanned)}")
    timings = result.get("timings")
    total = _number(timings.get("total")) if isinstance(timings, dict) else None
    if total is not None:
        parts.append(f"{total:.1f} s")
    if result.get("already_stored"):
        parts.append("already stored")
    return f"{name}: " + ", ".join(parts)


def bulk_summary(result: dict) -> str:
    """E.g. "200000 vectors in products, 3 records without text (lines 5, 9, 12), 100 shards (40 done before)"."""
    final = result.get("result") if isinstance(result.get("result"), dict) else {}
    vectors = _number(final.get("vectors"))
    texts = int(_number(result.get("texts")) or 0)
    count = _plural(int(vectors), "vector") if vectors is not None else _plural(texts, "text")
    parts = [f"{count} in {clean(str(result.get('collection')))}"]
    without = result.get("without_text")
    if isinstance(without, dict) and _number(without.get("count")):
        lines = ", ".join(str(int(n)) for n in without.get("lines", []) if _number(n) is not None)
        more = " ..." if int(_number(without["count"]) or 0) > len(without.get("lines", [])) else ""
        parts.append(f"{_plural(int(without['count']), 'record')} without text (lines {lines}{more})")
    shards, skipped = _number(result.get("shards")), _number(result.get("shards_skipped"))
    if shards is not None:
        parts.append(_plural(int(shards), "shard") + (f" ({int(skipped)} done before)" if skipped else ""))
    return ", ".join(parts)


# -- drawing ---------------------------------------------------------------------------------------


def progress_text(name: str, status: str, progress: object) -> str:
    """A file's status line without a terminal, e.g. "a.pdf: started embed 3/9"."""
    line = f"{name}: {status}"
    if not progress:
        return line
    text = str(progress.get("stage", ""))
    if "done" in progress and "total" in progress:
        text += f" {progress['done']}/{progress['total']}"
    return f"{line} {text}"


class Lines:
    """Where `enqueue --wait` shows the jobs still running; this one shows nothing (--json)."""

    def add(self, key: str, name: str, status: str, meta: dict) -> None:
        """One pending job's state at this poll."""

    def show(self) -> None:
        """The end of a poll: draw what was added."""

    def clear(self) -> None:
        """Take the drawing off the screen before a summary is printed on stdout."""


class PlainLines(Lines):
    """Not a terminal: a file's status line on stderr each time it changes."""

    def __init__(self) -> None:
        self.shown: dict[str, str] = {}

    def add(self, key: str, name: str, status: str, meta: dict) -> None:
        line = progress_text(name, status, meta.get("progress"))
        if self.shown.get(key) != line:
            self.shown[key] = line
            print(line, file=sys.stderr)


class LiveLines(Lines):
    """One line per pending file on stderr, redrawn in place (cursor up, erase line) at most
    10 times a second; a summary is printed on stdout above them once the block is cleared."""

    MIN_INTERVAL = 0.1

    def __init__(self, names: list[str]) -> None:
        self.drawn = 0  # lines of the block on screen, the cursor under them
        self.last = 0.0
        self.lines: list[str] = []
        self.unicode = "utf" in (sys.stderr.encoding or "").lower()
        self.name_cells = max((cells(clean(name)) for name in names), default=0)
        self.trackers: dict[str, Tracker] = {}
        self.added: list[str] = []
        self.columns: int | None = None

    def add(self, key: str, name: str, status: str, meta: dict) -> None:
        if self.columns is None:  # once a poll; the last column can wrap on some terminals
            self.columns = shutil.get_terminal_size().columns - 1
        tracker = self.trackers.setdefault(key, Tracker())
        self.added.append(self.line(name, status, meta, tracker, self.columns))

    def line(self, name: str, status: str, meta: dict, tracker: Tracker, columns: int) -> str:
        if status != "started":
            return live_line(name, status, {}, None, columns, self.name_cells)
        stages = stages_of(meta)
        latest = meta.get("progress", {}).get("stage") if isinstance(meta.get("progress"), dict) else None
        estimate = tracker.observe(stages, time.monotonic())
        return live_line(name, status, stages, estimate, columns, self.name_cells, self.unicode, latest)

    def show(self) -> None:
        added, self.added, self.columns = self.added, [], None
        now = time.monotonic()
        if self.drawn and now - self.last < self.MIN_INTERVAL:
            return
        size = shutil.get_terminal_size()
        lines = block(added, size.columns, size.lines)
        if self.drawn and lines == self.lines:
            return  # nothing new: no bytes to a remote terminal
        sys.stderr.write(frame(lines, self.drawn))
        sys.stderr.flush()
        self.drawn, self.last, self.lines = len(lines), now, lines

    def clear(self) -> None:
        if self.drawn:
            sys.stderr.write(frame([], self.drawn))
            sys.stderr.flush()
            self.drawn = 0


def is_terminal() -> bool:
    """Live lines only when both streams are the terminal: progress goes to stderr, summaries
    to stdout, and a pipe on either (`| tee`) would interleave with the cursor moves."""
    return sys.stdout.isatty() and sys.stderr.isatty() and os.environ.get("TERM") != "dumb"


def lines_for(as_json: bool, names: list[str]) -> Lines:
    """The view `enqueue --wait` draws its pending jobs with: none with --json, live lines on a
    terminal, else a line on stderr per change."""
    if as_json:
        return Lines()
    return LiveLines(names) if is_terminal() else PlainLines()
