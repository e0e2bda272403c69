"""`python -m worker <command>`: run, enqueue, search, status, healthcheck, embed, store copy."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from worker.settings import Settings, SettingsError, flagged, set_settings

INGEST = "worker.jobs.ingest_pdf"


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

    p = sub.add_parser("enqueue", help="enqueue ingest_pdf for each file")
    p.add_argument("paths", nargs="+", type=Path)
    p.add_argument("--queue", default="default")
    p.add_argument("--wait", action="store_true", help="show progress, then a summary per file")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.add_argument("--timeout", type=float, default=0, help="with --wait: give up after this many seconds")
    p.add_argument("--function", default=INGEST, help=argparse.SUPPRESS)  # smoke checks: worker.jobs.ping

    p = sub.add_parser("search", help="nearest stored chunks to a query")
    p.add_argument("query")
    p.add_argument("-k", type=int, default=5)
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


COMMANDS = ("run", "enqueue", "search", "status", "healthcheck", "embed", "store")


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
        return 2
    set_settings(settings)
    handler = globals()[f"cmd_{command}"]
    try:
        return handler(settings, args)
    except KeyboardInterrupt:
        return 130


def cmd_run(settings: Settings, args: argparse.Namespace) -> int:
    from worker.app import run_daemon

    return run_daemon(settings, burst=args.burst, max_jobs=args.max_jobs)


def _queue(settings: Settings, name: str):
    from rq import Queue

    from worker.app import redis_client, serializer_for

    return Queue(name, connection=redis_client(settings), serializer=serializer_for(settings))


def cmd_enqueue(settings: Settings, args: argparse.Namespace) -> int:
    from worker import progressbar

    queue = _queue(settings, args.queue)
    jobs = []
    for path in args.paths:
        source = str(path.expanduser().resolve())
        job = queue.enqueue(args.function, source, job_timeout=settings.job_timeout)
        jobs.append((path, job))
        if not args.wait:
            _emit(
                args.json,
                {"file": str(path), "job_id": job.id, "queue": args.queue, "status": "queued"},
                f"{path}: queued as {job.id} on {args.queue}",
            )
    if not args.wait:
        return 0
    deadline = time.monotonic() + args.timeout if args.timeout else None
    pending = {job.id: (path, job) for path, job in jobs}
    failed = 0
    shown: dict[str, str] = {}
    live = _LiveLines() if not args.json and _is_terminal() else None
    trackers = {job.id: progressbar.Tracker() for _, job in jobs}
    name_cells = max(progressbar.cells(progressbar.clean(path)) for path, _ in jobs)
    while pending:
        lines = []
        columns = shutil.get_terminal_size().columns - 1  # the last column can wrap on some terminals
        for job_id, (path, job) in list(pending.items()):
            status = job.get_status(refresh=True)
            status = getattr(status, "value", status)
            if status in ("finished", "failed", "stopped", "canceled"):
                del pending[job_id]
                failed += status != "finished"
                if live:
                    live.clear()
                _emit_summary(args.json, path, job, status)
                continue
            meta = job.get_meta(refresh=True)
            progress = meta.get("progress")
            if live:
                lines.append(live.line(str(path), status, meta, trackers[job_id], columns, name_cells))
                continue
            line = f"{path}: {status}" + (f" {_fmt_progress(progress)}" if progress else "")
            if not args.json and shown.get(job_id) != line:
                shown[job_id] = line
                print(line, file=sys.stderr)
        if live:
            live.show(lines)
        if pending:
            if deadline is not None and time.monotonic() > deadline:
                if live:
                    live.clear()
                for path, job in pending.values():
                    _emit(
                        args.json,
                        {"file": str(path), "job_id": job.id, "status": "timeout"},
                        f"{path}: still {job.get_status()} (gave up waiting)",
                    )
                return 1
            time.sleep(0.2)
    return 1 if failed else 0


def _is_terminal() -> bool:
    """Live lines only when both streams are the terminal: progress goes to stderr, summaries
    to stdout, and a pipe on either (`| tee`) would interleave with the cursor moves."""
    return sys.stdout.isatty() and sys.stderr.isatty() and os.environ.get("TERM") != "dumb"


class _LiveLines:
    """One line per pending file on stderr, redrawn in place (cursor up, erase line) at most
    10 times a second; a summary is printed on stdout above them once the block is cleared."""

    MIN_INTERVAL = 0.1

    def __init__(self) -> None:
        self.drawn = 0  # lines of the block on screen, the cursor under them
        self.last = 0.0
        self.lines: list[str] = []
        self.unicode = "utf" in (sys.stderr.encoding or "").lower()

    def line(self, name: str, status: str, meta: dict, tracker, columns: int, name_cells: int) -> str:
        from worker import progressbar

        if status != "started":
            return progressbar.live_line(name, status, {}, None, columns, name_cells)
        stages = progressbar.stages_of(meta)
        latest = meta.get("progress", {}).get("stage") if isinstance(meta.get("progress"), dict) else None
        estimate = tracker.observe(stages, time.monotonic())
        return progressbar.live_line(name, status, stages, estimate, columns, name_cells, self.unicode, latest)

    def show(self, lines: list[str]) -> None:
        from worker.progressbar import block, frame

        now = time.monotonic()
        if self.drawn and now - self.last < self.MIN_INTERVAL:
            return
        size = shutil.get_terminal_size()
        lines = block(lines, size.columns, size.lines)
        if self.drawn and lines == self.lines:
            return  # nothing new: no bytes to a remote terminal
        sys.stderr.write(frame(lines, self.drawn))
        sys.stderr.flush()
        self.drawn, self.last, self.lines = len(lines), now, lines

    def clear(self) -> None:
        from worker.progressbar import frame

        if self.drawn:
            sys.stderr.write(frame([], self.drawn))
            sys.stderr.flush()
            self.drawn = 0


def _fmt_progress(p: dict) -> str:
    text = str(p.get("stage", ""))
    if "done" in p and "total" in p:
        text += f" {p['done']}/{p['total']}"
    return text


def _emit(as_json: bool, obj: dict, text: str) -> None:
    print(json.dumps(obj) if as_json else text, flush=True)


def _emit_summary(as_json: bool, path: Path, job, status: str) -> None:
    from worker.errors import error_type
    from worker.progressbar import summary_line

    obj: dict = {"file": str(path), "job_id": job.id, "status": status}
    if status == "finished":
        obj["result"] = job.return_value()
        text = summary_line(str(path), status, obj["result"])
    else:
        result = job.latest_result()
        exc = result.exc_string if result is not None else ""
        obj["error_type"] = error_type(exc)
        obj["error"] = (exc or "").strip().splitlines()[-1] if exc else None
        text = summary_line(str(path), status, exc_string=exc)
    _emit(as_json, obj, text)


def cmd_status(settings: Settings, args: argparse.Namespace) -> int:
    from redis.exceptions import RedisError

    from worker.app import redis_client
    from worker.metrics import queue_figures

    client = redis_client(settings, timeout=3)
    try:
        queues = queue_figures(client, settings.queues)
        workers = _workers(client)
    except RedisError as exc:
        print(f"worker: Redis at {settings.safe_redis_url} unavailable: {type(exc).__name__}", file=sys.stderr)
        return 1
    store = _store_counts(settings)
    report = {"queues": queues, "workers": workers, "store": store}
    if args.json:
        print(json.dumps(report))
        return 0
    print("queues:")
    for q, fig in queues.items():
        print(f"  {q:<10} depth {fig['depth']:>6}  started {fig['started']:>4}  failed {fig['failed']:>4}")
    print(f"workers: {len(workers)}")
    for w in workers:
        age = w["heartbeat_age_seconds"]
        age = f"{age:.0f}s ago" if age is not None else "unknown"
        print(f"  {w['name']:<30} {w['state']:<10} {w['current_job'] or '-'}  (heartbeat {age})")
    print("store: " + (", ".join(f"{k} {v}" for k, v in store.items()) if store else "none"))
    return 0


def _workers(client) -> list[dict]:
    """The workers registered in Redis, read leniently: a worker hash is whatever was written
    to Redis, so every value is made safe text (no terminal escapes, bounded) and a date that
    does not parse is unknown (None); RedisError is the caller's."""
    from redis.exceptions import ResponseError
    from rq.executions import WORKER_EXECUTIONS_KEY_TEMPLATE
    from rq.worker import Worker
    from rq.worker_registration import REDIS_WORKER_KEYS

    from worker.safe import safe_text

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
            }
        )
    return workers


def _current_job_id(client, template: str, name: bytes) -> str | None:
    """The job id of one of the worker's live executions (RQ's execution index), as safe text."""
    from rq.defaults import RQ_KEY_PREFIX

    from worker.safe import safe_text

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
    from rq.utils import utcparse

    try:
        when = utcparse(raw.decode("ascii")) if raw else None
    except (ValueError, OverflowError):  # UnicodeDecodeError is a ValueError
        when = None
    if when is None:
        return {"last_heartbeat": None, "heartbeat_age_seconds": None}
    age = max(time.time() - when.timestamp(), 0.0)
    return {"last_heartbeat": when.isoformat(), "heartbeat_age_seconds": round(age, 3)}


def _store_counts(settings: Settings) -> dict:
    """Counts of the store, or {"error": ...} (never its URL's password) when it cannot be read."""
    from worker.errors import WorkerError
    from worker.store import open_store

    if settings.store_kind == "sqlite" and not settings.store_path.exists():
        return {"documents": 0, "chunks": 0}
    try:
        with open_store(settings.store_url, settings.store_busy_timeout) as store:
            return store.counts()
    except WorkerError as exc:
        return {"error": f"{type(exc).__name__}: {exc}"}


def cmd_healthcheck(settings: Settings, args: argparse.Namespace) -> int:
    host = settings.health_host
    if host in ("0.0.0.0", "", "::"):
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    url = f"http://{host}:{settings.health_port}/healthz"
    try:
        with urllib.request.urlopen(url, timeout=3) as resp:
            body = json.loads(resp.read() or b"{}")
            ok = resp.status == 200 and body.get("status") == "ok"
    except urllib.error.HTTPError as exc:
        print(f"unhealthy: {url} answered {exc.code}", file=sys.stderr)
        return 1
    except (OSError, ValueError) as exc:
        print(f"unhealthy: {url}: {exc}", file=sys.stderr)
        return 1
    print("ok" if ok else "unhealthy")
    return 0 if ok else 1


def cmd_search(settings: Settings, args: argparse.Namespace) -> int:
    from worker.embedding import get_embedder
    from worker.errors import BadInputError, WorkerError
    from worker.store import MAX_SEARCH_K, check_encodable, check_filters, open_store

    if not 1 <= args.k <= MAX_SEARCH_K:  # the same bound on both stores
        print(f"worker: -k must be between 1 and {MAX_SEARCH_K}", file=sys.stderr)
        return 2
    where = {}
    for item in args.where:
        key, eq, value = item.partition("=")
        if not eq or not key:
            print(f"worker: --where wants KEY=VALUE, got {item!r}", file=sys.stderr)
            return 2
        where[key] = value
    try:  # e.g. bytes that are not UTF-8 in an argument: no store holds them, no metadata can match
        check_encodable("the query", args.query)
        check_filters(args.document_id, where)
    except BadInputError as exc:
        print(f"worker: search: {exc}", file=sys.stderr)
        return 2
    if settings.store_kind == "sqlite" and not settings.store_path.exists():
        print(f"worker: no store at {settings.store_path} (nothing ingested yet)", file=sys.stderr)
        return 1
    try:
        embedder = get_embedder(settings)
        vector = embedder.embed([args.query])[0]
        with open_store(
            settings.store_url, settings.store_busy_timeout, ef_search=settings.hnsw_ef_search, dim=embedder.dim
        ) as store:
            hits = store.search(
                vector, args.k, model=embedder.model_name, document_id=args.document_id, where=where or None
            )
    except WorkerError as exc:
        print(f"worker: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    for hit in hits:
        pages = f"p. {hit['page_start']}" + (f"-{hit['page_end']}" if hit["page_end"] != hit["page_start"] else "")
        text = " ".join(hit["text"].split())
        _emit(args.json, hit, f"{hit['score']:.4f}  {hit['name'] or hit['document']}  {pages}\n    {text[:300]}")
    return 0


def cmd_embed(settings: Settings, args: argparse.Namespace) -> int:
    """Embed a JSON list of strings in this process: JSON to stdout, or an .npy file with --out."""
    from worker.embedding import get_embedder
    from worker.errors import BadInputError, ModelUnavailableError
    from worker.jobs import validate_texts

    try:
        texts = validate_texts(json.loads(args.file.read_text(encoding="utf-8")))
    except (OSError, UnicodeDecodeError, ValueError, BadInputError) as exc:
        print(f"worker: embed: {args.file}: {exc}", file=sys.stderr)
        return 2
    try:
        embedder = get_embedder(settings)
    except ModelUnavailableError as exc:
        print(f"worker: {exc}", file=sys.stderr)
        return 3
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
    return 0


def cmd_store(settings: Settings, args: argparse.Namespace) -> int:
    """`store copy`: idempotent and resumable (see worker/store_copy.py); progress on stderr."""
    import sqlite3

    from worker.errors import WorkerError
    from worker.settings import check_store_url, redact_url
    from worker.store import pg as store_pg
    from worker.store.copy import CopyReport, copy_store

    for flag, url in (("--from", args.from_url), ("--to", args.to_url)):
        try:
            check_store_url(url)
        except SettingsError as exc:
            print(f"worker: store copy {flag}: {exc}", file=sys.stderr)
            return 2
    where = {"from": redact_url(args.from_url), "to": redact_url(args.to_url)}
    last: list[CopyReport] = []
    shown = [0.0]

    def progress(report: CopyReport) -> None:
        last[:] = [report]
        if time.monotonic() - shown[0] >= 1 or report.done == report.total:
            shown[0] = time.monotonic()
            counts = f"{report.copied} copied, {report.skipped} skipped" + (
                f", {report.refused} refused" if report.refused else ""
            )
            print(f"store copy: {report.done}/{report.total} documents ({counts})", file=sys.stderr, flush=True)

    failures: tuple[type[BaseException], ...] = (WorkerError, sqlite3.Error, OSError, ValueError)
    if store_pg.psycopg is not None:
        failures += (store_pg.psycopg.Error,)
    try:
        report = copy_store(args.from_url, args.to_url, settings.store_busy_timeout, progress)
    except SettingsError as exc:
        print(f"worker: store copy: {exc}", file=sys.stderr)
        return 2
    except failures as exc:
        error = store_pg.scrub(store_pg.scrub(f"{type(exc).__name__}: {exc}", args.from_url), args.to_url)
        so_far = last[0].as_dict() if last else {}
        if args.json:
            print(json.dumps({"status": "failed", **where, **so_far, "error": error}))
        done = f" after {so_far['copied']} copied, {so_far['skipped']} skipped of {so_far['total']}" if so_far else ""
        print(
            f"worker: store copy {where['from']} -> {where['to']} failed{done}: {error}"
            + ("\nRun the same command again to finish: documents already copied are skipped." if so_far else ""),
            file=sys.stderr,
        )
        return 1
    summary = report.as_dict()
    for refusal in report.refusals:  # the target cannot hold these: the rest was copied all the same
        print(
            f"worker: store copy: document {refusal['document_id']!r} (sha256 {refusal['sha256'][:12]},"
            f" model {refusal['model']}) not copied: {refusal['reason']}",
            file=sys.stderr,
        )
    _emit(
        args.json,
        {"status": "incomplete" if report.refused else "done", **where, **summary},
        f"store copy {where['from']} -> {where['to']}: {report.copied} documents copied ({report.chunks} chunks),"
        f" {report.skipped} already there, {report.total} in the source, {summary['seconds']:.1f}s"
        + (f"; {report.refused} refused (see above)" if report.refused else ""),
    )
    return 1 if report.refused else 0
