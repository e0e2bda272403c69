"""`python -m worker <command>`: run, enqueue, search, status, documents, healthcheck, embed, store copy.

Each command is a `cmd_*` function (see COMMANDS at the end) over functions that can be tested
alone. Commands import Redis and RQ (a fifth of a second, which `healthcheck`, the container's
HEALTHCHECK, does without), the model (onnxruntime, tokenizers), the stores (psycopg), numpy and
PDFium inside the functions that need them; everything else is imported here.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import re
import sqlite3
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from worker import cli_vectors, display
from worker.exitcodes import EXIT_ERROR, EXIT_INTERRUPTED, EXIT_OK, EXIT_UNAVAILABLE, EXIT_USAGE
from worker.safe import safe_text
from worker.settings import Settings, SettingsError, check_store_url, flagged, redact_url, set_settings
from worker.textdoc import TEXT_SUFFIXES

if TYPE_CHECKING:
    from worker.store.copy import CopyReport

INGEST = "worker.jobs.ingest_pdf"
INGEST_TEXT = "worker.jobs.ingest_text"  # what `enqueue` runs for a file named *.txt or *.md


def _run_flags(p: argparse.ArgumentParser) -> None:
    """The settings that have a flag (declared in worker/settings.py); a flag overrides its variable."""
    for flag, name, env in flagged():
        p.add_argument(flag, dest=name, metavar=env.rpartition("_")[2], help=f"{env} (see docs/configuration.md)")
    p.add_argument("--burst", action="store_true", help="exit when the queues are empty")
    p.add_argument("--max-jobs", type=int, help="exit after N jobs")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m worker", description="Document-ingestion worker on RQ.")
    sub = parser.add_subparsers(dest="command")
    _run_flags(sub.add_parser("run", help="run the worker daemon (default)"))

    p = sub.add_parser("enqueue", help="enqueue ingest_pdf for each file (ingest_text for .txt and .md)")
    p.add_argument("paths", nargs="+", type=Path)
    p.add_argument("--queue", default="default")
    p.add_argument("--wait", action="store_true", help="show progress, then a summary per file")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.add_argument("--timeout", type=float, default=0, help="with --wait: give up after this many seconds")
    p.add_argument("--function", default=INGEST, help=argparse.SUPPRESS)  # smoke checks: worker.jobs.ping
    p.add_argument("--document-id", metavar="ID", help="the document's id (one file only; default: its sha256)")
    p.add_argument("--metadata", metavar="JSON", help="a JSON object stored with each file (search --where)")
    cli_vectors.add_enqueue_flags(p)

    p = sub.add_parser("search", help="the stored chunks that best match a query")
    p.add_argument("query")
    p.add_argument("-k", type=int, default=5)
    modes = "hybrid (default): keyword and embedding ranks fused; dense: embeddings only; keyword: words only"
    p.add_argument("--mode", choices=("hybrid", "dense", "keyword"), default="hybrid", help=modes)
    p.add_argument("--document", dest="document_id", metavar="ID", help="only chunks of this document id")
    p.add_argument(
        "--where",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="only documents whose metadata has KEY with the string VALUE (repeatable: all must match)",
    )
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("status", help="queues, workers and store counts")
    p.add_argument("--json", action="store_true")
    p.add_argument("--failed", action="store_true", help="the recent failed jobs instead, newest first")
    p.add_argument("-n", type=int, default=FAILED_SHOWN, help=f"with --failed: how many (default {FAILED_SHOWN})")
    _documents_parser(sub)
    cli_vectors.add_parser(sub)

    sub.add_parser("healthcheck", help="exit 0 when the local /healthz says ok")

    p = sub.add_parser("embed", help="embed a JSON list of strings")
    p.add_argument("file", type=Path)
    p.add_argument("--out", type=Path, help="write an .npy file instead of JSON to stdout")

    p = sub.add_parser("store", help="store maintenance: copy")
    store_sub = p.add_subparsers(dest="store_command", required=True)
    p = store_sub.add_parser(
        "copy", help="copy documents, chunks and vectors into another store, without embedding again"
    )
    p.add_argument(
        "--from", dest="from_url", required=True, metavar="URL", help="source: sqlite:///... or postgresql://..."
    )
    p.add_argument(
        "--to", dest="to_url", required=True, metavar="URL", help="target: sqlite:///... or postgresql://..."
    )
    p.add_argument("--json", action="store_true", help="the summary as one JSON object on stdout")
    return parser


def _documents_parser(sub) -> None:
    p = sub.add_parser("documents", help="list, show or delete stored documents")
    docs = p.add_subparsers(dest="documents_command", required=True)
    p = docs.add_parser("list", help="id, name, pages, chunks and date of each stored document, oldest first")
    p.add_argument("--json", action="store_true", help="one JSON object per document")
    p = docs.add_parser("show", help="a document's fields, metadata and chunk count")
    p.add_argument("document_id", metavar="ID")
    p.add_argument("--json", action="store_true", help="one JSON object per document stored under ID")
    p = docs.add_parser("delete", help="remove a document with its chunks and vectors")
    p.add_argument("document_id", metavar="ID")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or (argv[0] not in COMMANDS and argv[0] not in ("-h", "--help")):
        argv = ["run", *argv]  # `run` is the default command, flags included: `python -m worker --burst`
    args = parser.parse_args(argv)
    command = args.command
    try:
        env = dict(os.environ)
        if command == "run":  # flags override their variables, through the same parsers
            env.update({var: raw for _, name, var in flagged() if (raw := getattr(args, name)) is not None})
        settings = Settings.from_env(env)
    except SettingsError as exc:
        print(f"worker: configuration error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    set_settings(settings)
    try:
        return COMMANDS[command](settings, args)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except Exception as exc:
        if not _is_redis_error(exc):
            raise
        print(
            f"worker: Redis at {settings.safe_redis_url} unavailable ({type(exc).__name__}): start it (make run-worker"
            " starts a private one), or point REDIS_URL at yours",
            file=sys.stderr,
        )
        return EXIT_UNAVAILABLE


def _is_redis_error(exc: BaseException) -> bool:
    """A Redis error, checked without importing redis into commands that never load it."""
    module = sys.modules.get("redis.exceptions")
    return module is not None and isinstance(exc, module.RedisError)


def cmd_run(settings: Settings, args: argparse.Namespace) -> int:
    from worker.app import run_daemon

    return run_daemon(settings, burst=args.burst, max_jobs=args.max_jobs)


def _queue(settings: Settings, name: str):
    from rq import Queue

    from worker.app import redis_client, serializer_for

    return Queue(name, connection=redis_client(settings), serializer=serializer_for(settings))


# -- enqueue ---------------------------------------------------------------------------------------

ENDED = ("finished", "failed", "stopped", "canceled")
POLL_SECONDS = 0.2  # between two looks at the jobs `enqueue --wait` waits for


def cmd_enqueue(settings: Settings, args: argparse.Namespace) -> int:
    """A job per file; with --wait, their progress on stderr and a summary per file on stdout."""
    try:
        kwargs = ingest_kwargs(args.document_id, args.metadata, len(args.paths))
    except ValueError as exc:
        print(f"worker: enqueue: {exc}", file=sys.stderr)
        return EXIT_USAGE
    queue = _queue(settings, args.queue)
    if args.collection:
        return _enqueue_bulk(settings, args, queue)
    jobs = []
    for path in args.paths:
        source, note = source_for(path, settings)
        if note and not args.json:  # --json: one JSON object a line, nothing else
            print(f"worker: {note}", file=sys.stderr)
        function = args.function
        if function == INGEST and path.suffix.lower() in TEXT_SUFFIXES:  # plain text or Markdown
            function = INGEST_TEXT
        job = queue.enqueue(function, args=(source,), kwargs=kwargs, job_timeout=settings.job_timeout)
        jobs.append((path, job))
        if not args.wait:
            _emit(args.json, *queued(path, job.id, args.queue))
    if not args.wait:
        return EXIT_OK
    return _wait(jobs, args.json, time.monotonic() + args.timeout if args.timeout else None)


def _enqueue_bulk(settings: Settings, args: argparse.Namespace, queue) -> int:
    """`enqueue FILE --collection NAME`: one embed_bulk job; every worker reads the file, so it
    must lie under INPUT_ROOTS (no inline bytes)."""
    if len(args.paths) != 1 or args.document_id or args.metadata:
        print("worker: enqueue --collection takes one file, without --document-id or --metadata", file=sys.stderr)
        return EXIT_USAGE
    path = args.paths[0]
    resolved = path.expanduser().resolve()
    if not any(resolved.is_relative_to(root.resolve()) for root in settings.input_roots):
        roots = ":".join(str(r) for r in settings.input_roots)
        print(
            f"worker: {path} is outside INPUT_ROOTS={roots}: every worker reads a bulk file itself,"
            " so put it under an input root (or set INPUT_ROOTS, for the workers too)",
            file=sys.stderr,
        )
        return EXIT_USAGE
    kwargs = {"collection": args.collection, "id_field": args.id_field, "text_field": args.text_field}
    job = queue.enqueue(cli_vectors.BULK, args=(str(resolved),), kwargs=kwargs, job_timeout=settings.job_timeout)
    if not args.wait:
        _emit(args.json, *queued(path, job.id, args.queue))
        return EXIT_OK
    return _wait([(path, job)], args.json, time.monotonic() + args.timeout if args.timeout else None)


def source_for(path: Path, settings: Settings) -> tuple[object, str | None]:
    """The job's source for a file: its absolute path when it lies in INPUT_ROOTS (as this
    command's environment has them, the worker's when both run from the same place), else its
    bytes inline when they fit MAX_INLINE_BYTES, with a line saying so."""
    resolved = path.expanduser().resolve()
    if any(resolved.is_relative_to(root.resolve()) for root in settings.input_roots):
        return str(resolved), None
    roots = ":".join(str(r) for r in settings.input_roots)
    limit = min(settings.max_inline_bytes, settings.max_pdf_bytes)
    try:
        size = resolved.stat().st_size
    except OSError:
        return str(resolved), None  # the worker says what is wrong with it
    outside = f"{path} is outside INPUT_ROOTS={roots}"
    if size > limit:
        return str(resolved), f"{outside} and over MAX_INLINE_BYTES ({limit}): sent as a path"
    data = base64.b64encode(resolved.read_bytes()).decode()
    return {"data_b64": data, "filename": resolved.name}, f"{outside}: sent inline ({size} bytes)"


def ingest_kwargs(document_id: str | None, metadata: str | None, files: int) -> dict:
    """`enqueue`'s --document-id and --metadata as ingest_pdf's keyword arguments, checked as the
    job checks them; ValueError saying what is wrong."""
    from worker.errors import BadInputError
    from worker.jobs import _check_ingest_arguments

    kwargs: dict = {}
    if document_id is not None:
        if files != 1:
            raise ValueError(f"--document-id names one document: give one file, not {files}")
        kwargs["document_id"] = document_id
    if metadata is not None:
        try:
            kwargs["metadata"] = json.loads(metadata)
        except ValueError as exc:
            raise ValueError(f'--metadata is not JSON ({exc}): give an object, e.g. \'{{"team": "red"}}\'') from None
    try:
        _check_ingest_arguments(kwargs.get("document_id"), kwargs.get("metadata"), None)
    except BadInputError as exc:
        raise ValueError(str(exc)) from None
    return kwargs


def _wait(jobs: list, as_json: bool, deadline: float | None) -> int:
    """Poll the jobs until each one ended (its summary printed) or the deadline passed (each
    job still pending said so): EXIT_ERROR when a job did not finish."""
    pending = {job.id: (path, job) for path, job in jobs}
    view = display.lines_for(as_json, [str(path) for path, _ in jobs])
    failed = 0
    while pending:
        failed += _poll(pending, view, as_json)
        if not pending:
            break
        if gave_up(deadline, time.monotonic()):
            view.clear()
            for path, job in pending.values():
                _emit(as_json, *timed_out(path, job.id, job.get_status()))
            return EXIT_ERROR
        time.sleep(POLL_SECONDS)
    return EXIT_ERROR if failed else EXIT_OK


def _poll(pending: dict, view: display.Lines, as_json: bool) -> int:
    """One look at each pending job: one that ended leaves `pending` and its summary is printed,
    the others go to the view. Returns how many ended other than finished."""
    failed = 0
    for job_id, (path, job) in list(pending.items()):
        status = job.get_status(refresh=True)
        status = getattr(status, "value", status)
        if status == "finished" and (bulk := cli_vectors.follow(job)) is not None:
            pending[job_id] = (path, bulk)  # its shards run on: follow them
            job = bulk
            status = getattr(bulk.get_status(), "value", "started")
        if status in ENDED:
            del pending[job_id]
            failed += status != "finished"
            view.clear()
            _emit_summary(as_json, path, job, status)
        elif status == "scheduled":  # a retry: say after what (not the last attempt's progress)
            view.add(job_id, str(path), retry_text(job.get_meta(refresh=True)), {})
        else:
            view.add(job_id, str(path), status, job.get_meta(refresh=True))
    view.show()
    return failed


def retry_text(meta: object) -> str:
    """A job scheduled for a retry, as `enqueue --wait` shows it: "scheduled (retry after
    StoreUnavailableError: ...)" from what the worker left in its meta, else "scheduled"."""
    error = meta.get("retried_after") if isinstance(meta, dict) else None
    return f"scheduled (retry after {safe_text(error, 300)})" if error else "scheduled"


def gave_up(deadline: float | None, now: float) -> bool:
    """Whether `enqueue --wait --timeout` stops waiting (no deadline: never)."""
    return deadline is not None and now > deadline


def queued(path: Path, job_id: str, queue: str) -> tuple[dict, str]:
    """What `enqueue` prints for a job it enqueued: (JSON object, text line)."""
    return {"file": str(path), "job_id": job_id, "queue": queue, "status": "queued"}, (
        f"{path}: queued as {job_id} on {queue}"
    )


def timed_out(path: Path, job_id: str, status: object) -> tuple[dict, str]:
    """What `enqueue --wait` prints for a job still pending when it gives up."""
    return {"file": str(path), "job_id": job_id, "status": "timeout"}, f"{path}: still {status} (gave up waiting)"


def summary(
    path: Path, job_id: str, status: str, result: object = None, exc_string: str | None = None
) -> tuple[dict, str]:
    """What `enqueue --wait` prints for a job that ended: its result when it finished, else the
    error's class and last line; (JSON object, text line)."""
    from worker.errors import error_type

    obj: dict = {"file": str(path), "job_id": job_id, "status": status}
    if status == "finished":
        obj["result"] = result
        return obj, display.summary_line(str(path), status, result)
    obj["error_type"] = error_type(exc_string)
    obj["error"] = (exc_string or "").strip().splitlines()[-1] if exc_string else None
    return obj, display.summary_line(str(path), status, exc_string=exc_string)


def _emit_summary(as_json: bool, path: Path, job, status: str) -> None:
    if status == "finished":
        _emit(as_json, *summary(path, job.id, status, result=job.return_value()))
        return
    result = job.latest_result()
    _emit(as_json, *summary(path, job.id, status, exc_string=result.exc_string if result is not None else ""))


def _emit(as_json: bool, obj: dict, text: str) -> None:
    print(json.dumps(obj) if as_json else text, flush=True)


# -- status ----------------------------------------------------------------------------------------


def cmd_status(settings: Settings, args: argparse.Namespace) -> int:
    """Queues, workers and store counts; an unreachable Redis is main()'s one line, exit 3."""
    from worker.app import redis_client
    from worker.metrics import queue_figures

    client = redis_client(settings, timeout=3)
    if args.failed:
        return _status_failed(settings, client, args)
    queues = queue_figures(client, settings.queues)
    workers = _workers(client)
    report = {"queues": queues, "workers": workers, "store": _store_counts(settings)}
    print(json.dumps(report) if args.json else "\n".join(status_lines(report)))
    if "error" in report["store"]:
        print(f"worker: store: {report['store']['error']}", file=sys.stderr)
        return EXIT_ERROR
    return EXIT_OK


FAILED_SHOWN = 20  # `status --failed` shows this many jobs unless -n says otherwise


def _status_failed(settings: Settings, client, args: argparse.Namespace) -> int:
    from worker.app import serializer_for

    if args.n < 1:
        print("worker: status: -n must be at least 1", file=sys.stderr)
        return EXIT_USAGE
    jobs = failed_jobs(client, settings.queues, args.n, serializer_for(settings))
    if not jobs and not args.json:
        print(f"no failed jobs on {', '.join(settings.queues)}")
    for job in jobs:
        line = f"{job['ended_at'] or '?'}  {job['queue']}  {job['job_id']}  {job['function']}"
        _emit(args.json, job, f"{line}\n    {job['error_type'] or 'error'}: {job['error']}")
    return EXIT_OK


def failed_jobs(client, queues: list[str], n: int, serializer) -> list[dict]:
    """The `n` most recent failed jobs of `queues` (their FailedJobRegistry), newest first, with the
    error's class and message on one line. Everything read is escaped (anyone can write to Redis)."""
    from rq.registry import FailedJobRegistry

    candidates = []
    for queue in queues:  # the registry's score is when the entry expires: the latest first
        for raw in client.zrange(FailedJobRegistry.key_template.format(queue), 0, n - 1, desc=True):
            candidates.append(_failed_job(client, queue, raw, serializer))
    candidates.sort(key=lambda job: job["ended_at"] or "", reverse=True)
    return candidates[:n]


def _failed_job(client, queue: str, raw: bytes, serializer) -> dict:
    """One failed job as `status --failed` shows it; what cannot be read is said so, never raised."""
    from redis.exceptions import RedisError
    from rq.job import Job

    from worker.errors import exception_of

    job_id = raw.decode("utf-8", "surrogateescape")
    entry = {"job_id": safe_text(raw, 100), "queue": safe_text(queue, 100), "function": "?", "ended_at": None}
    try:
        job = Job.fetch(job_id, connection=client, serializer=serializer)
        entry["ended_at"] = job.ended_at.replace(microsecond=0).isoformat() if job.ended_at else None
        result = job.latest_result()
        # No result: failed by a registry's cleanup (an abandoned job), which keeps it on the job itself.
        exc_string = result.exc_string if result is not None else job._exc_info
        entry["function"] = _function_of(job)
    except RedisError:
        raise
    except Exception as exc:  # noqa: BLE001 - a job hash anyone wrote: gone, not ours, unreadable
        exc_string = f"{type(exc).__name__}: the job cannot be read ({exc})"
    kind, message = exception_of(exc_string)
    entry["error_type"] = safe_text(kind, 100) if kind else None
    entry["error"] = safe_text(" ".join(message.split()), 300) if message.strip() else "(no error recorded)"
    return entry


def _function_of(job) -> str:
    try:
        return safe_text(job.func_name, 100)
    except Exception:  # noqa: BLE001 - data this serializer cannot read (a pickle on a JSON worker...)
        return "?"


def status_lines(report: dict) -> list[str]:
    """`status` without --json: the queues, the workers, the store counts."""
    lines = ["queues:"]
    for q, fig in report["queues"].items():
        lines.append(f"  {q:<10} depth {fig['depth']:>6}  started {fig['started']:>4}  failed {fig['failed']:>4}")
    lines.append(f"workers: {len(report['workers'])}")
    for w in report["workers"]:
        age = w["heartbeat_age_seconds"]
        age = f"{age:.0f}s ago" if age is not None else "unknown"
        lines.append(f"  {w['name']:<30} {w['state']:<10} {w['current_job'] or '-'}  (heartbeat {age})")
        if w.get("embed_precision"):
            lines.append(f"    embeddings {w['embed_precision']} ({w['embed_precision_reason'] or 'no reason given'})")
    store = report["store"]
    lines.append("store: " + (", ".join(f"{k} {v}" for k, v in store.items()) if store else "none"))
    return lines


def _workers(client) -> list[dict]:
    """The workers registered in Redis, read leniently: a worker hash is whatever was written
    to Redis, so every value is made safe text (no terminal escapes, bounded) and a date that
    does not parse is unknown (None); RedisError is the caller's."""
    from redis.exceptions import ResponseError
    from rq.executions import WORKER_EXECUTIONS_KEY_TEMPLATE
    from rq.worker import Worker
    from rq.worker_registration import REDIS_WORKER_KEYS

    from worker.state import PRECISION_FIELD, PRECISION_REASON_FIELD

    prefix = Worker.redis_worker_namespace_prefix.encode()
    workers = []
    for key in sorted(client.smembers(REDIS_WORKER_KEYS)):
        if not key.startswith(prefix):
            continue  # not a worker's key
        name = key[len(prefix) :]
        try:
            data = client.hgetall(key)
            current_job = _current_job_id(client, WORKER_EXECUTIONS_KEY_TEMPLATE, name)
        except ResponseError:  # WRONGTYPE: a key that is not a worker's hash
            data, current_job = {b"state": b"<unreadable>"}, None
        if not data:
            continue  # a worker gone since (RQ cleans the set up)
        queues = data.get(b"queues") or b""
        workers.append(
            {
                "name": safe_text(name, 100),
                "state": safe_text(data.get(b"state") or b"?", 40),
                "current_job": current_job,
                "queues": [safe_text(q, 100) for q in queues.split(b",")[:20] if q],
                **_heartbeat(data.get(b"last_heartbeat")),
                "embed_precision": _field(data, PRECISION_FIELD, 20),
                "embed_precision_reason": _field(data, PRECISION_REASON_FIELD, 300),
            }
        )
    return workers


def _field(data: dict, name: str, limit: int) -> str | None:
    value = data.get(name.encode())
    return safe_text(value, limit) if value is not None else None


def _current_job_id(client, template: str, name: bytes) -> str | None:
    """The job id of one of the worker's live executions (RQ's execution index), as safe text."""
    from rq.defaults import RQ_KEY_PREFIX

    try:
        index = template.format(name.decode("utf-8"))
    except UnicodeDecodeError:
        return None
    for member in sorted(client.smembers(index)):
        if client.exists(f"{RQ_KEY_PREFIX}:execution:".encode() + member):
            return safe_text(member.rpartition(b":")[0] or member, 100)
    return None


def _heartbeat(raw: bytes | None) -> dict:
    """The worker's last heartbeat as RQ wrote it (2026-12-03T10:00:00.123456Z) and its age;
    both None when missing or unreadable (a worker hash holds what anyone wrote)."""
    from worker.recovery import parse_heartbeat

    when = parse_heartbeat(raw)
    if when is None:
        return {"last_heartbeat": None, "heartbeat_age_seconds": None}
    age = max(time.time() - when.timestamp(), 0.0)
    return {"last_heartbeat": when.isoformat(), "heartbeat_age_seconds": round(age, 3)}


def _store_counts(settings: Settings) -> dict:
    """Counts of the store, or {"error": ...} (never its URL's password) when it cannot be read."""
    from worker.errors import WorkerError
    from worker.store import open_store

    if settings.store_kind == "sqlite" and not settings.store_path.exists():
        if problem := missing_store_folder(settings):
            return {"error": problem}
        return {"documents": 0, "chunks": 0}
    try:
        with open_store(settings.store_url, settings.store_busy_timeout) as store:
            return store.counts()
    except WorkerError as exc:
        return {"error": f"{type(exc).__name__}: {exc}"}


def missing_store_folder(settings: Settings) -> str | None:
    """What to say when STORE_URL names a SQLite file in a folder that does not exist (a typo,
    most likely: the worker would create both at its first job); None otherwise."""
    if settings.store_kind != "sqlite":
        return None
    path = settings.store_path.absolute()
    if path.exists() or path.parent.is_dir():
        return None
    return f"no store at {path}: its folder {path.parent} does not exist (check STORE_URL for a typo)"


# -- documents -------------------------------------------------------------------------------------


def cmd_documents(settings: Settings, args: argparse.Namespace) -> int:
    """`documents list|show|delete` on the configured store; a missing SQLite file is an empty store
    (not created here)."""
    from worker.errors import WorkerError
    from worker.store import open_store

    command, wanted = args.documents_command, getattr(args, "document_id", None)
    if problem := missing_store_folder(settings):
        print(f"worker: {problem}", file=sys.stderr)
        return EXIT_ERROR
    if settings.store_kind == "sqlite" and not settings.store_path.exists():
        if command == "list":
            print(f"no documents: no store at {settings.store_path} yet", file=sys.stderr)
            return EXIT_OK
        return _no_document(wanted, settings)
    try:
        with open_store(settings.store_url, settings.store_busy_timeout) as store:
            if command == "delete":
                removed = store.delete_document(wanted)
            else:
                docs = store.documents(wanted)
    except WorkerError as exc:
        print(f"worker: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_ERROR
    if command == "delete":
        if removed == (0, 0):
            return _no_document(wanted, settings)
        documents, chunks = removed
        print(f"deleted {safe_text(wanted)}: {documents} document{'s' * (documents != 1)}, {chunks} chunks")
        return EXIT_OK
    if command == "show" and not docs:
        return _no_document(wanted, settings)
    if command == "list":
        if not docs and not args.json:
            print("no documents", file=sys.stderr)
        for line in document_lines(docs, args.json):
            print(line)
    elif args.json:
        for doc in docs:
            print(json.dumps(document_json(doc)))
    else:  # one block per document stored under the id, a blank line between
        print("\n\n".join("\n".join(document_fields(doc)) for doc in docs))
    return EXIT_OK


def _no_document(document_id: str, settings: Settings) -> int:
    where = settings.store_path if settings.store_kind == "sqlite" else redact_url(settings.store_url)
    print(
        f"worker: no document {safe_text(document_id)!r} in {where} (`python -m worker documents list` lists them)",
        file=sys.stderr,
    )
    return EXIT_ERROR


def _when(seconds: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(seconds))


def document_json(doc) -> dict:
    """A stored document (worker.store.base.DocumentInfo) as `documents --json` prints it."""
    return {**doc.as_dict(), "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(doc.created_at))}


def document_lines(docs: list, as_json: bool) -> list[str]:
    """`documents list`: a table (id, name, pages, chunks, created UTC) or one JSON object per document."""
    if as_json:
        return [json.dumps({k: document_json(d)[k] for k in ("document_id", "name", "pages", "chunks", "created_at")})
                for d in docs]  # fmt: skip
    rows = [("ID", "NAME", "PAGES", "CHUNKS", "CREATED (UTC)")] + [
        (safe_text(d.document_id, 80), safe_text(d.name or "-", 60), str(d.pages), str(d.chunks), _when(d.created_at))
        for d in docs
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    return ["  ".join([*(cell.ljust(w) for cell, w in zip(row, widths, strict=False)), row[4]]) for row in rows]


def document_fields(doc) -> list[str]:
    """`documents show`: one field a line, every stored string escaped."""
    meta = {"title": doc.title, "author": doc.author, "producer": doc.producer}
    lines = [
        f"document_id: {safe_text(doc.document_id)}",
        f"name: {safe_text(doc.name or '-')}",
        f"sha256: {safe_text(doc.sha256)}",
        f"model: {safe_text(doc.model)}",
        *(f"{k}: {safe_text(v)}" for k, v in meta.items() if v is not None),
        f"pages: {doc.pages} ({doc.pages_without_text} without text)",
        f"chunks: {doc.chunks}",
        f"created: {_when(doc.created_at)} UTC",
        f"metadata: {safe_text(json.dumps(doc.metadata), 1000)}",
    ]
    for error in doc.page_errors:
        if isinstance(error, dict):
            lines.append(f"page {safe_text(error.get('page'), 20)} error: {safe_text(error.get('error'), 300)}")
        else:
            lines.append(f"page error: {safe_text(error, 300)}")
    return lines


def health_url(host: str, port: int) -> str:
    """The local /healthz of a worker serving on `host`: a wildcard address is reached on 127.0.0.1."""
    if host in ("0.0.0.0", "", "::"):
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}/healthz"


def cmd_healthcheck(settings: Settings, args: argparse.Namespace) -> int:
    url = health_url(settings.health_host, settings.health_port)
    try:
        with urllib.request.urlopen(url, timeout=3) as resp:
            body = json.loads(resp.read() or b"{}")
            ok = resp.status == 200 and body.get("status") == "ok"
    except urllib.error.HTTPError as exc:
        print(f"unhealthy: {url} answered {exc.code}", file=sys.stderr)
        return EXIT_ERROR
    except (OSError, ValueError) as exc:
        print(f"unhealthy: {url}: {exc}", file=sys.stderr)
        return EXIT_ERROR
    print("ok" if ok else "unhealthy")
    return EXIT_OK if ok else EXIT_ERROR


def cmd_search(settings: Settings, args: argparse.Namespace) -> int:
    from worker.errors import BadInputError, WorkerError
    from worker.search import check_query, search
    from worker.store import MAX_SEARCH_K, check_filters

    if not 1 <= args.k <= MAX_SEARCH_K:  # the same bound on both stores
        print(f"worker: -k must be between 1 and {MAX_SEARCH_K}", file=sys.stderr)
        return EXIT_USAGE
    try:
        where = parse_where(args.where)
    except ValueError as exc:
        print(f"worker: --where wants KEY=VALUE, got {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:  # e.g. bytes that are not UTF-8 in an argument: no store holds them, no metadata can match
        check_query(args.query, args.k, args.mode)
        check_filters(args.document_id, where)
    except BadInputError as exc:
        print(f"worker: search: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if settings.store_kind == "sqlite" and not settings.store_path.exists():
        problem = missing_store_folder(settings) or f"no store at {settings.store_path} (nothing ingested yet)"
        print(f"worker: {problem}", file=sys.stderr)
        return EXIT_ERROR
    try:
        hits = search(
            args.query, args.k, args.mode, document_id=args.document_id, where=where or None, settings=settings
        )
    except WorkerError as exc:
        print(f"worker: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_ERROR
    if not hits and not args.json:
        print("no match", file=sys.stderr)
    bold = sys.stdout.isatty() and not os.environ.get("NO_COLOR")
    for rank, hit in enumerate(hits, 1):
        _emit(args.json, hit, hit_text(hit, rank, bold))
    return EXIT_OK


def parse_where(items: list[str]) -> dict[str, str]:
    """`--where KEY=VALUE` arguments as a dict; ValueError naming (repr) the first that is not KEY=VALUE."""
    where = {}
    for item in items:
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise ValueError(repr(item))
        where[key] = value
    return where


def hit_text(hit: dict, rank: int = 1, bold: bool = False) -> str:
    """A search hit as `search` prints it: rank, score, document, pages and what each side ranked
    it, then the snippet (matched words in bold on a terminal, else **marked**)."""
    where = "  ".join(x for x in (hit["name"] or hit["document"], hit.get("pages")) if x)
    sides = [
        f"{side} #{hit[f'{side}_rank']} ({hit[f'{side}_score']:.3f})"
        for side in ("dense", "keyword")
        if hit.get(f"{side}_rank") is not None
    ]
    snippet = hit.get("snippet") or " ".join(hit["text"].split())[:300]
    if bold:
        snippet = re.sub(r"\*\*(.+?)\*\*", "\033[1m\\1\033[0m", snippet)
    return f"{rank:>2}. {hit['score']:.4f}  {where}  [{', '.join(sides)}]\n    {snippet}"


def cmd_embed(settings: Settings, args: argparse.Namespace) -> int:
    """Embed a JSON list of strings in this process: JSON to stdout, or an .npy file with --out."""
    from worker.embedding import get_embedder
    from worker.errors import BadInputError, ModelUnavailableError
    from worker.jobs import validate_texts

    try:
        texts = validate_texts(json.loads(args.file.read_text(encoding="utf-8")))
    except (OSError, UnicodeDecodeError, ValueError, BadInputError) as exc:
        print(f"worker: embed: {args.file}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        embedder = get_embedder(settings)
    except ModelUnavailableError as exc:
        print(f"worker: {exc}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    started = time.perf_counter()
    vectors, tokens = embedder.embed_counted(texts)
    elapsed = time.perf_counter() - started
    if args.out:
        import numpy as np

        np.save(args.out, vectors)
    else:
        print(json.dumps({"model": embedder.model_name, "dim": embedder.dim, "vectors": vectors.tolist()}))
    print(
        f"embedded {len(texts)} texts ({tokens} tokens) in {elapsed:.2f}s with {embedder.model_name} "
        f"{embedder.precision}" + (f" -> {args.out}" if args.out else ""),
        file=sys.stderr,
    )
    return EXIT_OK


def cmd_store(settings: Settings, args: argparse.Namespace) -> int:
    """`store copy`: idempotent and resumable (see worker/store/copy.py); progress on stderr."""
    from worker.errors import WorkerError
    from worker.store import pg as store_pg  # psycopg, when installed
    from worker.store.copy import copy_store

    for flag, url in (("--from", args.from_url), ("--to", args.to_url)):
        try:
            check_store_url(url)
        except SettingsError as exc:
            print(f"worker: store copy {flag}: {exc}", file=sys.stderr)
            return EXIT_USAGE
    where = {"from": redact_url(args.from_url), "to": redact_url(args.to_url)}
    progress = CopyProgress()
    failures: tuple[type[BaseException], ...] = (WorkerError, sqlite3.Error, OSError, ValueError)
    if store_pg.psycopg is not None:
        failures += (store_pg.psycopg.Error,)
    try:
        report = copy_store(args.from_url, args.to_url, settings.store_busy_timeout, progress)
    except SettingsError as exc:
        print(f"worker: store copy: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except failures as exc:
        error = store_pg.scrub(store_pg.scrub(f"{type(exc).__name__}: {exc}", args.from_url), args.to_url)
        _copy_failed(args.json, where, progress.last, error)
        return EXIT_ERROR
    _copy_done(args.json, where, report)
    return EXIT_ERROR if report.refused else EXIT_OK


class CopyProgress:
    """`store copy`'s progress on stderr, at most once a second and at the end; keeps the last report."""

    def __init__(self) -> None:
        self.last: CopyReport | None = None
        self.shown = 0.0

    def __call__(self, report: CopyReport) -> None:
        self.last = report
        if time.monotonic() - self.shown >= 1 or report.done == report.total:
            self.shown = time.monotonic()
            counts = f"{report.copied} copied, {report.skipped} skipped" + (
                f", {report.refused} refused" if report.refused else ""
            )
            print(f"store copy: {report.done}/{report.total} documents ({counts})", file=sys.stderr, flush=True)


def _copy_failed(as_json: bool, where: dict, last: CopyReport | None, error: str) -> None:
    """A copy that stopped: how far it got, and that running it again finishes it."""
    so_far = last.as_dict() if last is not None else {}
    if as_json:
        print(json.dumps({"status": "failed", **where, **so_far, "error": error}))
    done = f" after {so_far['copied']} copied, {so_far['skipped']} skipped of {so_far['total']}" if so_far else ""
    print(
        f"worker: store copy {where['from']} -> {where['to']} failed{done}: {error}"
        + ("\nRun the same command again to finish: documents already copied are skipped." if so_far else ""),
        file=sys.stderr,
    )


def _copy_done(as_json: bool, where: dict, report: CopyReport) -> None:
    """The documents the target refused, on stderr, then the summary."""
    summary = report.as_dict()
    for refusal in report.refusals:  # the target cannot hold these: the rest was copied all the same
        print(
            f"worker: store copy: document {refusal['document_id']!r} (sha256 {refusal['sha256'][:12]},"
            f" model {refusal['model']}) not copied: {refusal['reason']}",
            file=sys.stderr,
        )
    _emit(
        as_json,
        {"status": "incomplete" if report.refused else "done", **where, **summary},
        f"store copy {where['from']} -> {where['to']}: {report.copied} documents copied ({report.chunks} chunks),"
        f" {report.skipped} already there, {report.total} in the source, {summary['seconds']:.1f}s"
        + (f"; {report.refused} refused (see above)" if report.refused else ""),
    )


COMMANDS: dict[str, Callable[[Settings, argparse.Namespace], int]] = {
    "run": cmd_run,
    "enqueue": cmd_enqueue,
    "search": cmd_search,
    "status": cmd_status,
    "healthcheck": cmd_healthcheck,
    "embed": cmd_embed,
    "store": cmd_store,
    "documents": cmd_documents,
    "vectors": cli_vectors.cmd_vectors,
}
