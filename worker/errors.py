"""Typed errors that a failed job carries, so a user sees plainly what went wrong.

`BadInputError` and its subclasses are final: retrying cannot help, so they are never
retried. `TransientError` marks failures worth retrying with backoff (a locked store,
a lost connection). The rules that follow from them (what is retried, how a job's end is
named, which error a failed job carries) live here too.
"""

from __future__ import annotations

from enum import StrEnum

import redis.exceptions
from rq.job import JobStatus


class WorkerError(Exception):
    """Base of every error this package raises on purpose."""


class BadInputError(WorkerError):
    """The job's input cannot be processed; retrying will not help."""


class ForbiddenJobError(BadInputError):
    """The payload names a function that is not a registered job."""


class InvalidArgumentsError(BadInputError):
    """The payload's arguments do not fit the job's signature or types."""


class UnstorableInputError(InvalidArgumentsError):
    """An argument holds what no store can hold: a NUL character or a lone surrogate in a string,
    or a number JSON cannot carry (NaN, infinity). Refused before any work, the same on both stores."""


class PathNotAllowedError(BadInputError):
    """A path input resolves outside INPUT_ROOTS."""


class InputNotFoundError(BadInputError):
    """A path input does not exist or is not a regular file."""


class InputReadError(BadInputError):
    """A path input inside the roots could not be opened or read (an I/O error)."""


class InputTooLargeError(BadInputError):
    """The input is over a byte, page or count limit."""


class RecordError(BadInputError):
    """A record of a bulk input file cannot be used (not JSON, no id, not UTF-8...): names its line."""


class DuplicateIdError(RecordError):
    """An id appears twice in a bulk input file: names the id and both lines."""


class TextTooLargeError(InputTooLargeError):
    """The PDF expands to more text than MAX_PAGE_CHARS or MAX_DOCUMENT_CHARS allow."""


class NotAPdfError(BadInputError):
    """The bytes are not a PDF."""


class NotTextError(BadInputError):
    """The bytes given as plain text or Markdown are not UTF-8 text (binary, or another encoding)."""


class EmptyInputError(BadInputError):
    """The input has no bytes."""


class TruncatedPdfError(BadInputError):
    """The PDF is cut short or its structure is broken beyond repair."""


class EncryptedPdfError(BadInputError):
    """The PDF is encrypted and no usable password was given."""


class DecompressionBombError(BadInputError):
    """A stream decompresses to far more than any real document."""


class UnreadableJobError(BadInputError):
    """The job's hash cannot be read: a payload or field this worker cannot decode."""


class TransientError(WorkerError):
    """A failure that may go away by itself; the job is retried with backoff."""


class StoreBusyError(TransientError):
    """The store stayed locked by another writer for too long."""


class StoreUnavailableError(TransientError):
    """The shared store (PostgreSQL) could not be reached, went away, or aborted the transaction
    (restart, failover, admin shutdown, serialization failure, deadlock); nothing was half-written."""


class StoreDiskError(TransientError):
    """The SQLite store's disk is full or failed a read or write; nothing was half-written. Retried:
    space may be freed (or the disk come back) meanwhile."""


class StoreConfigError(WorkerError):
    """The store cannot be used as configured (a missing extra, pgvector not installed in the
    database, a dimension the schema does not hold); retrying will not help until someone fixes it."""


class BulkIncompleteError(WorkerError):
    """Shards of a bulk job did not all finish: names them; running the job again does only those."""


class ModelUnavailableError(WorkerError):
    """The embedding model files are missing or unreadable (run `make model`)."""


class EmbeddingError(WorkerError):
    """The model failed at run time on this job's input (onnxruntime raised); not retried."""


def exception_of(exc_string: str | None) -> tuple[str | None, str]:
    """(the exception's class name, its message) from a formatted traceback, as RQ stores it.

    The exception line follows the last frame's indented lines (a message may span lines, and
    a chained exception's traceback comes first); without frames, it is the last line. The
    message is the exception line's text after the class, with any following lines, joined
    by spaces; None for the class when that line does not start with one."""
    lines = (exc_string or "").strip().splitlines()
    if not lines:
        return None, ""
    start = 0
    for i, line in enumerate(lines):
        if line.startswith("  File "):
            start = i + 1
    while start < len(lines) and lines[start][:1].isspace():
        start += 1
    if start >= len(lines) or not any(line.startswith("  File ") for line in lines):
        start = len(lines) - 1
    head, _, message = lines[start].partition(":")
    head = head.strip()
    if not head or " " in head:
        return None, " ".join(lines[start:])
    return head.rsplit(".", 1)[-1], " ".join([message, *lines[start + 1 :]])


def error_type(exc_string: str | None) -> str | None:
    """The exception class name of a formatted traceback (see `exception_of`)."""
    return exception_of(exc_string)[0]


class Outcome(StrEnum):
    """How a job's run ended, as counted in /metrics and written in job-end log lines."""

    OK = "ok"
    FAILED = "failed"
    RETRIED = "retried"  # failed, and RQ scheduled another attempt
    REQUEUED = "requeued"  # not finished (shutdown): put back at the front of its queue
    STOPPED = "stopped"  # stopped on request (rq's send_stop_job_command)
    UNKNOWN = "unknown"  # Redis could not be read when the horse ended
    TAKEN_OVER = "taken_over"  # another worker took the job over while this one was cut off; outcome dropped


def is_transient(exc: BaseException | None) -> bool:
    """Worth retrying with backoff: our TransientError (a busy store) or a lost Redis connection."""
    return isinstance(exc, TransientError | redis.exceptions.ConnectionError | redis.exceptions.TimeoutError)


def redis_unusable(exc: BaseException) -> bool:
    """Whether an error means Redis cannot be used for a while (back off and carry on) rather
    than something tied to one job or one entry. Any Redis error counts (connection, timeout,
    LOADING, READONLY after a failover, BUSY, OOM, MASTERDOWN...) except an optimistic lock
    lost (WatchError: look again), a value redis-py refused to send (DataError) and WRONGTYPE
    (a key a producer wrote with the wrong type: that entry's problem, not Redis's)."""
    if not isinstance(exc, redis.exceptions.RedisError):
        return False
    if isinstance(exc, redis.exceptions.WatchError | redis.exceptions.DataError):
        return False
    return "WRONGTYPE" not in str(exc)[:200]


def outcome_of(status: JobStatus | None) -> Outcome:
    """The outcome of a run from the job's status after its horse ended (None: the job has
    already expired, which only a finished job with result_ttl=0 does)."""
    if status is None or status == JobStatus.FINISHED:
        return Outcome.OK
    if status in (JobStatus.QUEUED, JobStatus.SCHEDULED, JobStatus.DEFERRED):
        return Outcome.RETRIED
    if status == JobStatus.STOPPED:
        return Outcome.STOPPED
    return Outcome.FAILED
