"""Only registered jobs run.

RQ imports and calls whatever dotted name a payload carries; anyone who can write to Redis
could name `os.system`. `GuardedJob` replaces RQ's `Job.func` so that the work-horse only
ever resolves names on an allowlist, and checks the arguments against the function's
signature before anything runs. The success, failure and stopped callbacks a job hash names
pass the same allowlist. Nothing outside the allowlist is even imported.

RQ 3 also sends the webhooks a job carries (any URL, the producer's headers, the traceback).
Here they go only to hosts in WEBHOOK_HOSTS (none by default: off), redirects included, with
a short timeout, and never hold up the daemon's main loop.

The daemon reads job hashes that anyone with Redis access may have written, so `GuardedJob`
also reads them defensively: a hash over MAX_JOB_DATA_BYTES is not fetched, its zlib-packed
fields are unpacked with that bound (RQ unpacks without one: a 1 MB zlib bomb is 1 GB in the
daemon), and retry and repeat intervals are clamped to MAX_SCHEDULE_INTERVAL (RQ adds them to
the current time: 10**12 s is an OverflowError where the job ends).
"""

from __future__ import annotations

import importlib
import inspect
import json
import logging
import math
import threading
import urllib.request
import zlib
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import urlsplit

from redis import Redis
from rq.exceptions import NoSuchJobError
from rq.job import Job, parse_job_id
from rq.webhook import Webhook

from worker.errors import ForbiddenJobError, InputTooLargeError, InvalidArgumentsError, UnreadableJobError
from worker.settings import get_settings

log = logging.getLogger(__name__)

BUILTIN_JOBS: tuple[str, ...] = (
    "worker.jobs.ping",
    "worker.jobs.ingest_pdf",
    "worker.jobs.extract_text",
    "worker.jobs.embed_texts",
    "worker.jobs.embed_bulk",
    "worker.jobs.embed_shard",
    "worker.jobs.finish_bulk",
    "worker.jobs.ingest_text",
    "worker.jobs.search",
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
    """Import every registered job now, in the parent, so that work-horses inherit them instead of
    importing per job, and so that a typo in EXTRA_JOBS shows at start rather than when a job
    names it; returns what failed (logged by the caller)."""
    failed = []
    for name in registered_names():
        try:
            func = _import_dotted(name)
        except Exception as exc:
            failed.append(f"{name}: {type(exc).__name__}: {exc}")
            continue
        if not callable(func):
            failed.append(f"{name}: nothing callable by that name (a typo in EXTRA_JOBS?)")
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


# The longest wait, in seconds, a job's retry or repeat interval can ask for.
MAX_SCHEDULE_INTERVAL = 24 * 3600
# The most retries or repeats a job may ask for: RQ runs them without bound (10**12 from a
# producer is a job that runs again for good and keeps others waiting).
MAX_RETRIES_OR_REPEATS = 100
# Fields a job hash may have: RQ writes about 35.
MAX_JOB_FIELDS = 256

# Reads a job hash only when it is small enough: in one step, so that it cannot grow between
# the check and the read. {0}: no such job; {-1, fields} or {-2, bytes}: too large; else
# {1, field, value, ...}.
_READ_JOB = """
local n = redis.call('HLEN', KEYS[1])
if n == 0 then return {0} end
if n > tonumber(ARGV[2]) then return {-1, n} end
local size = 0
for _, f in ipairs(redis.call('HKEYS', KEYS[1])) do
  size = size + #f + redis.call('HSTRLEN', KEYS[1], f)
end
if size > tonumber(ARGV[1]) then return {-2, size} end
local reply = redis.call('HGETALL', KEYS[1])
table.insert(reply, 1, 1)
return reply
"""


def _hash_from_reply(job_id: str, reply: list) -> dict[bytes, bytes] | None:
    """The job's fields from a `_READ_JOB` reply; None when there is no such job."""
    if reply[0] == 0:
        return None
    limit = get_settings().max_job_data_bytes
    if reply[0] == -1:
        raise InputTooLargeError(f"job {job_id}: its hash has {reply[1]} fields, over {MAX_JOB_FIELDS}")
    if reply[0] == -2:
        raise InputTooLargeError(
            f"job {job_id}: its hash holds {reply[1]} bytes in Redis, over the limit of {limit} (MAX_JOB_DATA_BYTES)"
        )
    flat = reply[1:]
    return dict(zip(flat[::2], flat[1::2], strict=True))


def unpack(raw: bytes, limit: int, what: str) -> bytes:
    """`zlib.decompress(raw)` as RQ does it (bytes that are not a whole zlib stream are taken as
    they are), but InputTooLargeError past `limit` bytes, before unpacking any more of them."""
    unpacker = zlib.decompressobj()
    try:
        out = unpacker.decompress(raw, limit + 1)
    except zlib.error:
        return raw
    if len(out) > limit:
        raise InputTooLargeError(f"{what} unpacks to more than the limit of {limit} bytes (MAX_JOB_DATA_BYTES)")
    return out if unpacker.eof else raw


def clamp_intervals(value: object, what: str) -> list[int | float] | None:
    """Retry or repeat intervals as RQ can use them: each in [0, MAX_SCHEDULE_INTERVAL]
    (negative: 0; huge or infinite: the maximum). A bare number counts as a list of one;
    anything else but numbers (NaN, strings, objects) is UnreadableJobError."""
    if value is None:
        return None
    values = [value] if isinstance(value, int | float) else value
    if isinstance(values, str | bytes | dict) or not isinstance(values, Iterable):
        raise UnreadableJobError(f"{what} must be a list of numbers of seconds, got {type(value).__name__}")
    clamped: list[int | float] = []
    for v in values:
        if isinstance(v, bool) or not isinstance(v, int | float) or (isinstance(v, float) and math.isnan(v)):
            raise UnreadableJobError(f"{what} must be a list of numbers of seconds, got {v!r:.50}")
        clamped.append(min(max(v, 0), MAX_SCHEDULE_INTERVAL))
    return clamped or None


class GuardedJob(Job):
    """An RQ job whose function must be registered and whose arguments must fit it, read from
    Redis within MAX_JOB_DATA_BYTES, with retry and repeat intervals RQ can schedule."""

    # -- reading the hash ----------------------------------------------------------------
    def refresh(self) -> None:
        """RQ's, but the hash is measured in Redis before it is read (see `_READ_JOB`)."""
        reply = self.connection.register_script(_READ_JOB)(keys=[self.key], args=_read_args())
        obj = _hash_from_reply(self.id, reply)
        if obj is None:
            raise NoSuchJobError(f"No such job: {self.key}")
        self.restore(obj)

    @classmethod
    def fetch_many(cls, job_ids: Iterable[str], connection: Redis, serializer=None) -> list[Job | None]:
        """RQ's, with `refresh`'s size check for each job."""
        parsed = [parse_job_id(job_id) for job_id in job_ids]
        script = connection.register_script(_READ_JOB)
        with connection.pipeline() as pipe:
            for job_id in parsed:
                script(keys=[cls.key_for(job_id)], args=_read_args(), client=pipe)
            replies = pipe.execute()
        jobs: list[Job | None] = []
        for job_id, reply in zip(parsed, replies, strict=True):
            obj = _hash_from_reply(job_id, reply)
            if obj is None:
                jobs.append(None)
                continue
            job = cls(job_id, connection=connection, serializer=serializer)
            job.restore(obj)
            jobs.append(job)
        return jobs

    def restore(self, raw_data) -> None:
        """RQ's, with `data` and `exc_info` unpacked within MAX_JOB_DATA_BYTES and the retry
        and repeat intervals clamped."""
        limit = get_settings().max_job_data_bytes
        obj = {(k.decode() if isinstance(k, bytes) else k): v for k, v in raw_data.items()}
        packed = {name: obj.pop(name) for name in ("data", "exc_info") if name in obj}
        if "data" in packed:
            obj["data"] = b""  # RQ reads it as a stream it cannot unpack: kept as is, replaced below
        super().restore(obj)  # NoSuchJobError without data, as RQ's
        self.data = unpack(packed["data"], limit, f"job {self.id}: its data")
        if packed.get("exc_info"):
            self._exc_info = unpack(packed["exc_info"], limit, f"job {self.id}: its exc_info").decode(
                "utf-8", "replace"
            )
        self.retry_intervals = clamp_intervals(self.retry_intervals, "retry_intervals")
        self.repeat_intervals = clamp_intervals(self.repeat_intervals, "repeat_intervals")
        if self.retries_left is not None:
            self.retries_left = min(self.retries_left, MAX_RETRIES_OR_REPEATS)
        if self.repeats_left is not None:
            self.repeats_left = min(self.repeats_left, MAX_RETRIES_OR_REPEATS)

    # -- what RQ imports and calls --------------------------------------------------------

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
            if not allowed_url(hook.url, settings.webhook_hosts):
                log.warning("job %s: webhook to %r not sent: host not in WEBHOOK_HOSTS", self.id, _host(hook.url))
                continue
            hook.timeout = min(hook.timeout, settings.webhook_timeout)
            hooks.append(hook)
        if not hooks:
            return
        sender = threading.Thread(
            target=lambda: [send_webhook(hook, self, exc_string) for hook in hooks], name="webhooks", daemon=True
        )
        sender.start()
        if in_work_horse:
            sender.join(settings.webhook_timeout * len(hooks) + 1)


def _read_args() -> list[int]:
    return [get_settings().max_job_data_bytes, MAX_JOB_FIELDS]


def _host(url: str) -> str:
    return (urlsplit(url).hostname or "").lower()


def allowed_url(url: str, hosts: tuple[str, ...]) -> bool:
    """An http(s) URL to one of `hosts`."""
    return urlsplit(url).scheme in ("http", "https") and _host(url) in hosts


class _AllowedRedirects(urllib.request.HTTPRedirectHandler):
    """Follows a redirect only to a host in WEBHOOK_HOSTS (urllib follows any, and takes the
    producer's headers along); any other ends the request as the 3xx it was."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        if not allowed_url(newurl, get_settings().webhook_hosts):
            log.warning(
                "webhook to %r: redirect to %r not followed: host not in WEBHOOK_HOSTS", req.host, _host(newurl)
            )
            return None
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def send_webhook(hook: Webhook, job: Job, exc_string: str | None) -> None:
    """`Webhook.send` of RQ, whose `urlopen` follows redirects anywhere, through an opener that
    checks each redirect against WEBHOOK_HOSTS. Errors are logged, never raised (as RQ's)."""
    try:
        headers = dict(hook.headers or {})
        body = None
        if hook.method != "GET":
            body = json.dumps(hook.get_payload(job, exc_string=exc_string)).encode("utf-8")
            headers = {"Content-Type": "application/json", **headers}
        request = urllib.request.Request(hook.url, data=body, headers=headers, method=hook.method)
        with urllib.request.build_opener(_AllowedRedirects).open(request, timeout=hook.timeout):
            pass
    except Exception as exc:
        log.warning(
            "webhook to %r for job %s not delivered (%s: %.200r)", _host(hook.url), job.id, type(exc).__name__, str(exc)
        )


in_work_horse = False  # set by the daemon in each work-horse


def mark_work_horse() -> None:
    global in_work_horse
    in_work_horse = True
