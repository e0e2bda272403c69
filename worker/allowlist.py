"""Only registered jobs run.

RQ imports and calls whatever dotted name a payload carries; anyone who can write to Redis
could name `os.system`. `GuardedJob` replaces RQ's `Job.func` so that the work-horse only
ever resolves names on an allowlist, and checks the arguments against the function's
signature before anything runs. The success, failure and stopped callbacks a job hash names
pass the same allowlist. Nothing outside the allowlist is even imported.

RQ 3 also sends the webhooks a job carries (any URL, the producer's headers, the traceback).
Here they go only to hosts in WEBHOOK_HOSTS (none by default: off), with a short timeout,
and never hold up the daemon's main loop.
"""

from __future__ import annotations

import importlib
import inspect
import logging
import threading
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from rq.job import Job

from worker.errors import ForbiddenJobError, InvalidArgumentsError
from worker.settings import get_settings

log = logging.getLogger(__name__)

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
    func = _import_dotted(func_name)
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


def _import_dotted(name: str) -> Any:
    """What a dotted name names, found as RQ finds it: the longest importable module prefix,
    then attributes (`pkg.mod.func`, `pkg.mod.Class.static_method`). Only ever called with a
    registered name. None when nothing is there."""
    parts = name.split(".")
    for split in range(len(parts) - 1, 0, -1):
        module_name = ".".join(parts[:split])
        try:
            obj: Any = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name and module_name.startswith(exc.name):
                continue  # not a module: perhaps a class inside a shorter one
            raise
        for attr in parts[split:]:
            obj = getattr(obj, attr, None)
        return obj
    return None


def check_arguments(func: Callable[..., Any], args: tuple | list, kwargs: dict) -> None:
    """InvalidArgumentsError when the arguments do not fit the function's signature. A registered
    function with no signature to read (a builtin such as `time.sleep`, some C extensions) is
    called unchecked, as RQ calls it: it is on the allowlist, and a bad call fails the job."""
    try:
        signature = inspect.signature(func)
    except (ValueError, TypeError):
        return
    try:
        signature.bind(*args, **kwargs)
    except TypeError as exc:
        raise InvalidArgumentsError(f"{func.__module__}.{func.__name__}: {exc}") from None


class GuardedJob(Job):
    """An RQ job whose function must be registered and whose arguments must fit it."""

    @property
    def func(self) -> Callable[..., Any]:  # type: ignore[override]
        if self.instance is not None:
            raise ForbiddenJobError(
                f"{self.func_name!r} is a method of a pickled instance: only functions and static methods "
                "registered by dotted name run here"
            )
        func = resolve(self.func_name)
        check_arguments(func, self.args, self.kwargs)
        return func

    def _callback(self, name: str | None) -> Callable[..., Any] | None:
        if not name:
            return None
        try:
            return resolve(name)
        except ForbiddenJobError as exc:
            raise ForbiddenJobError(f"callback {exc}") from None

    @property
    def success_callback(self) -> Callable[..., Any] | None:  # type: ignore[override]
        return self._callback(self._success_callback_name)

    @property
    def failure_callback(self) -> Callable[..., Any] | None:  # type: ignore[override]
        return self._callback(self._failure_callback_name)

    @property
    def stopped_callback(self) -> Callable[..., Any] | None:  # type: ignore[override]
        return self._callback(self._stopped_callback_name)

    def send_webhooks(self, status, *, exc_string: str | None = None) -> None:
        """RQ's, restricted: allowed hosts only, WEBHOOK_TIMEOUT at most, in a thread. A work-horse
        waits for it (it would die with the horse); the daemon never does."""
        settings = get_settings()
        hooks = []
        for hook in self.webhooks:
            if hook.job_status != status:
                continue
            host = (urlsplit(hook.url).hostname or "").lower()
            if host not in settings.webhook_hosts:
                log.warning("job %s: webhook to %r not sent: host not in WEBHOOK_HOSTS", self.id, host)
                continue
            hook.timeout = min(hook.timeout, settings.webhook_timeout)
            hooks.append(hook)
        if not hooks:
            return
        sender = threading.Thread(
            target=lambda: [hook.send(self, exc_string=exc_string) for hook in hooks], name="webhooks", daemon=True
        )
        sender.start()
        if in_work_horse:
            sender.join(settings.webhook_timeout * len(hooks) + 1)


in_work_horse = False  # set by the daemon in each work-horse


def mark_work_horse() -> None:
    global in_work_horse
    in_work_horse = True
