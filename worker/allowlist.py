"""Only registered jobs run.

RQ imports and calls whatever dotted name a payload carries; anyone who can write to Redis
could name `os.system`. `GuardedJob` replaces RQ's `Job.func` so that the work-horse only
ever resolves names on an allowlist, and checks the arguments against the function's
signature before anything runs. Nothing outside the allowlist is even imported.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from typing import Any

from rq.job import Job

from worker.errors import ForbiddenJobError, InvalidArgumentsError
from worker.settings import get_settings

BUILTIN_JOBS: tuple[str, ...] = (
    "worker.jobs.ping",
    "worker.jobs.ingest_pdf",
    "worker.jobs.extract_text",
    "worker.jobs.embed_texts",
)


def registered_names() -> tuple[str, ...]:
    """The built-in jobs plus those named in EXTRA_JOBS (comma-separated dotted names)."""
    return BUILTIN_JOBS + get_settings().extra_jobs


def resolve(func_name: str | None) -> Callable[..., Any]:
    """The callable for a registered dotted name, or ForbiddenJobError."""
    if not func_name or func_name not in registered_names():
        raise ForbiddenJobError(f"{func_name!r} is not a registered job; registered: {', '.join(registered_names())}")
    module_name, _, attr = func_name.rpartition(".")
    func = getattr(importlib.import_module(module_name), attr, None)
    if not callable(func):
        raise ForbiddenJobError(f"{func_name!r} is registered but does not name a function")
    return func


def import_registered() -> list[str]:
    """Import every registered job's module now, in the parent, so that work-horses inherit
    them instead of importing per job; returns what failed (logged by the caller)."""
    failed = []
    for name in registered_names():
        module_name = name.rpartition(".")[0]
        try:
            importlib.import_module(module_name)
        except Exception as exc:
            failed.append(f"{name}: {type(exc).__name__}: {exc}")
    return failed


def check_arguments(func: Callable[..., Any], args: tuple | list, kwargs: dict) -> None:
    try:
        inspect.signature(func).bind(*args, **kwargs)
    except TypeError as exc:
        raise InvalidArgumentsError(f"{func.__module__}.{func.__name__}: {exc}") from None


class GuardedJob(Job):
    """An RQ job whose function must be registered and whose arguments must fit it."""

    @property
    def func(self) -> Callable[..., Any]:  # type: ignore[override]
        func = resolve(self.func_name)
        check_arguments(func, self.args, self.kwargs)
        return func
