"""Logging as text for humans (default) or JSON lines for machines.

JSON lines carry a stable set of fields: time, level, logger, message, worker, and for job
events job_id, function, queue, duration, outcome, error_type. Both formats pass every
message through `redact`, so a Redis password never reaches a log.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time

JOB_FIELDS = ("worker", "job_id", "function", "queue", "duration", "outcome", "error_type", "attempt")

# The password runs to the LAST "@" before a blank: it may hold "@", "/" or "#" unencoded.
_URL_PASSWORD = re.compile(r"(\b[a-z][a-z0-9+.-]*://)([^/@\s:]*):(\S+)@", re.IGNORECASE)
_QUERY_SECRET = re.compile(r"([?&][^=\s&#]*(?:pass|pwd|secret|token|auth|credential)[^=\s&#]*=)[^&\s#]*", re.IGNORECASE)


def redact(text: str) -> str:
    """Hide passwords in URLs (redis://user:secret@host -> redis://user:***@host, ?password=***)."""
    return _QUERY_SECRET.sub(r"\1***", _URL_PASSWORD.sub(r"\1\2:***@", text))


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s", "%Y-%m-%dT%H:%M:%S")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        extras = " ".join(f"{k}={getattr(record, k)}" for k in JOB_FIELDS[1:] if getattr(record, k, None) is not None)
        return redact(f"{text} [{extras}]" if extras else text)


class JsonFormatter(logging.Formatter):
    def __init__(self, worker: str = "") -> None:
        super().__init__()
        self.worker = worker

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": redact(record.getMessage()),
            "worker": getattr(record, "worker", None) or self.worker,
        }
        # A job event carries every job field, null when it does not apply (error_type of a
        # job that succeeded), so that log queries can rely on the keys being there.
        is_job_event = getattr(record, "job_id", None) is not None
        for key in JOB_FIELDS[1:]:
            value = getattr(record, key, None)
            if value is not None or is_job_event:
                entry[key] = value
        if record.exc_info:
            entry["exception"] = redact(self.formatException(record.exc_info))
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
    for name in ("rq.worker", "rq.job", "rq.queue"):
        logging.getLogger(name).setLevel(level)
