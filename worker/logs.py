"""Logging as text for humans (default) or JSON lines for machines.

JSON lines carry a stable set of fields: time, level, logger, message, worker, and for job
events job_id, function, queue, duration, outcome, error_type. Both formats pass every
message through `redact`, so a Redis password never reaches a log.
"""

from __future__ import annotations

import json
import logging
import math
import sys
import time

from rq.logutils import colorizer as rq_colorizer

from worker.safe import cut, escape, safe_text
from worker.settings import redact  # the package's one redactor, also known by this name here

JOB_FIELDS = ("worker", "job_id", "function", "queue", "duration", "outcome", "error_type", "attempt")

LINE_LIMIT = 2_000  # characters of one line of a text record (a longer one is cut, with a marker)
MAX_LINES = 200  # lines of one text record, message and traceback; the middle of a longer one is left out
FIELD_LIMIT = 200  # characters of a job field (job_id, function...) in either format
MESSAGE_LIMIT = 20_000  # characters of a JSON record's message, and of its exception
CONTINUATION = "  | "  # starts each line of a text record after its first


def _text_line(line: str) -> str:
    # Redacted before it is cut, so that a cut never leaves half a password unrecognised.
    return cut(escape(redact(line), backslash=False), LINE_LIMIT)


class TextFormatter(logging.Formatter):
    """`time level logger: message [job fields]`, one record per line as far as a reader can tell.

    Messages carry what jobs and Redis hold (function names, exception texts), which may
    hold a newline followed by a fake record, or terminal escapes. So control characters
    are escaped, job fields are bounded, and the lines of a multi-line message or of a
    traceback follow on lines that start with CONTINUATION: only the logger starts a record.
    """

    def __init__(self) -> None:
        super().__init__(datefmt="%Y-%m-%dT%H:%M:%S")

    def format(self, record: logging.LogRecord) -> str:
        first, *more = record.getMessage().rstrip("\n").split("\n")
        head = f"{self.formatTime(record, self.datefmt)} {record.levelname:<7} {record.name}: {_text_line(first)}"
        extras = " ".join(
            f"{k}={safe_text(v, FIELD_LIMIT)}" for k in JOB_FIELDS[1:] if (v := getattr(record, k, None)) is not None
        )
        if extras:
            head += f" [{extras}]"
        if record.exc_info:
            more += self.formatException(record.exc_info).split("\n")
        if record.stack_info:
            more += self.formatStack(record.stack_info).split("\n")
        if len(more) > MAX_LINES:
            left_out = len(more) - MAX_LINES + 1
            more = [*more[: MAX_LINES // 2], f"...[{left_out} lines left out]...", *more[-(MAX_LINES // 2 - 1) :]]
        return redact("\n".join([head, *(CONTINUATION + _text_line(line) for line in more)]))


def _no_surrogates(text: str) -> str:
    """A lone surrogate written as `\\udXXX` text: JSON escapes it, but a strict reader rejects it."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


def _json_field(value: object) -> object:
    """A job field as JSON can carry it, bounded: strings and plain numbers as they are, anything
    else (a list or object from a job hash, NaN, a huge number) as safe text."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, str):
        return _no_surrogates(value) if len(value) <= FIELD_LIMIT else safe_text(value, FIELD_LIMIT)
    if isinstance(value, int) and abs(value) < 2**63 or isinstance(value, float) and math.isfinite(value):
        return value
    return safe_text(value, FIELD_LIMIT)


class JsonFormatter(logging.Formatter):
    def __init__(self, worker: str = "") -> None:
        super().__init__()
        self.worker = worker

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": cut(_no_surrogates(redact(record.getMessage())), MESSAGE_LIMIT),
            "worker": _json_field(getattr(record, "worker", None) or self.worker),
        }
        # A job event carries every job field, null when it does not apply (error_type of a
        # job that succeeded), so that log queries can rely on the keys being there.
        is_job_event = getattr(record, "job_id", None) is not None
        for key in JOB_FIELDS[1:]:
            value = getattr(record, key, None)
            if value is not None or is_job_event:
                entry[key] = _json_field(value)
        if record.exc_info:
            entry["exception"] = cut(_no_surrogates(redact(self.formatException(record.exc_info))), MESSAGE_LIMIT)
        return json.dumps(entry, default=str)


def setup_logging(level: str = "INFO", fmt: str = "text", worker: str = "") -> None:
    """Configure the root logger once; RQ's loggers then use it instead of their own."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(worker) if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    # RQ colours a few words when stdout is a terminal; in our records they would only show as
    # escaped codes (and a job's own codes must not reach a terminal raw).
    rq_colorizer.notty = True
    for name in ("rq.worker", "rq.job", "rq.queue"):
        logging.getLogger(name).setLevel(level)
