"""Typed errors that a failed job carries, so a user sees plainly what went wrong.

`BadInputError` and its subclasses are final: retrying cannot help, so they are never
retried. `TransientError` marks failures worth retrying with backoff (a locked store,
a lost connection).
"""

from __future__ import annotations


class WorkerError(Exception):
    """Base of every error this package raises on purpose."""


class BadInputError(WorkerError):
    """The job's input cannot be processed; retrying will not help."""


class ForbiddenJobError(BadInputError):
    """The payload names a function that is not a registered job."""


class InvalidArgumentsError(BadInputError):
    """The payload's arguments do not fit the job's signature or types."""


class PathNotAllowedError(BadInputError):
    """A path input resolves outside INPUT_ROOTS."""


class InputNotFoundError(BadInputError):
    """A path input does not exist or is not a regular file."""


class InputReadError(BadInputError):
    """A path input inside the roots could not be opened or read (an I/O error)."""


class InputTooLargeError(BadInputError):
    """The input is over a byte, page or count limit."""


class TextTooLargeError(InputTooLargeError):
    """The PDF expands to more text than MAX_PAGE_CHARS or MAX_DOCUMENT_CHARS allow."""


class NotAPdfError(BadInputError):
    """The bytes are not a PDF."""


class EmptyInputError(BadInputError):
    """The input has no bytes."""


class TruncatedPdfError(BadInputError):
    """The PDF is cut short or its structure is broken beyond repair."""


class EncryptedPdfError(BadInputError):
    """The PDF is encrypted and no usable password was given."""


class DecompressionBombError(BadInputError):
    """A stream decompresses to far more than any real document."""


class TransientError(WorkerError):
    """A failure that may go away by itself; the job is retried with backoff."""


class StoreBusyError(TransientError):
    """The store stayed locked by another writer for too long."""


class ModelUnavailableError(WorkerError):
    """The embedding model files are missing or unreadable (run `make model`)."""


def error_type(exc_string: str | None) -> str | None:
    """The exception class name from the last line of a formatted traceback."""
    if not exc_string:
        return None
    for line in reversed(exc_string.strip().splitlines()):
        head = line.split(":", 1)[0].strip()
        if head and " " not in head:
            return head.rsplit(".", 1)[-1]
    return None
