"""worker.errors: reading a failed job's traceback (the one parser of the package)."""

from __future__ import annotations

import traceback

from worker.errors import InputTooLargeError, error_type


def _formatted(exc: BaseException) -> str:
    try:
        raise exc
    except BaseException as raised:
        return "".join(traceback.format_exception(raised))


def test_a_message_over_several_lines_keeps_the_class() -> None:
    """The class used to be read from the last line, which was the message's ("y" here)."""
    text = _formatted(InputTooLargeError("x\ny"))
    assert error_type(text) == "InputTooLargeError"


def test_class_and_message_of_a_traceback() -> None:
    from worker.errors import exception_of

    assert exception_of(_formatted(InputTooLargeError("x\ny"))) == ("InputTooLargeError", " x y")
    assert exception_of("") == (None, "")


def test_chained_and_frameless_tracebacks() -> None:
    try:
        try:
            raise KeyError("k")
        except KeyError as exc:
            raise ValueError("v") from exc
    except ValueError as exc:
        text = "".join(traceback.format_exception(exc))
    assert error_type(text) == "ValueError"
    assert error_type("worker.errors.WorkHorseDied: the work-horse running this job was killed") == "WorkHorseDied"
    assert error_type(None) is None
