"""Bulk embeddings: one job embeds a file of records on every worker at once, each id once.

`embed_bulk` (the parent job) reads its file once, streaming, checks every record and cuts the
file into shards of BULK_SHARD_RECORDS records at record boundaries (worker/records.py). Bad input
fails it before any shard exists. Then it enqueues one `embed_shard` job per shard on its own queue
(ordinary RQ jobs: every worker on every host takes them) and a `finish_bulk` job that depends on
all of them (RQ's depends_on, failures allowed, so that it runs and says which shards are missing).

A shard reads its byte range (after checking those bytes are the ones the scan saw), embeds, and
writes its vectors with its done mark in one transaction with an upsert (worker/store/vectors.py):
run twice, it leaves each id once. Running the same bulk job again skips the shards done already.
The whole job's progress (shards and texts done, texts/s, time left) is kept in the parent's meta,
which each shard updates under WATCH, so `enqueue --wait` and dashboards follow one job.

Called as plain functions (a test, a shell), `embed_bulk` does the shards itself, one after another.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import stat
import time
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from redis.exceptions import RedisError, WatchError
from rq import Queue, get_current_job
from rq.job import Dependency, Job

from worker import progress
from worker.embedding import get_embedder
from worker.errors import BulkIncompleteError, InputNotFoundError, InvalidArgumentsError, PathNotAllowedError
from worker.records import Reader, Shard, check_field_name, file_format, read, scan
from worker.settings import Settings, get_settings
from worker.sources import _typed, open_beneath
from worker.store import open_configured_store
from worker.store.vectors import Collections

log = logging.getLogger(__name__)

COLLECTION_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")
PROGRESS_TTL = 7 * 24 * 3600  # the parent job's hash (its meta: the progress) lives this long while shards run
SHARD_FUNC, FINISH_FUNC = "worker.jobs.embed_shard", "worker.jobs.finish_bulk"


def embed_bulk(source: object, collection: str, id_field: str = "id", text_field: str = "text") -> dict:
    """Embed every record of a JSON Lines or CSV file into `collection` (see the module docstring).

    Returns the collection, records, texts, records without text (count and first lines), shards,
    shards skipped (done by an earlier run) and the id of the job that ends the run (`final_job_id`).
    """
    name = check_collection(collection)
    path = _path_of(source)
    reader = Reader(
        file_format(path), check_field_name("id_field", id_field), check_field_name("text_field", text_field)
    )
    settings = get_settings()
    progress.report("read")
    started = time.perf_counter()
    with open_input(path, settings) as f:
        plan = scan(f, reader, settings.bulk_shard_records, settings.max_bulk_records)
    scanned = round(time.perf_counter() - started, 4)
    embedder = get_embedder(settings)
    counts = {"records": plan.records, "without_text": plan.without_text, "shards": len(plan.shards)}
    with collections(settings, embedder.dim) as store:
        store.start(name, embedder.model_name, embedder.dim, Path(path).name, plan.sha256, counts)
        done = store.done_shards(name, [(s.shard, s.sha256) for s in plan.shards])
    todo = [s for s in plan.shards if s.shard not in done]
    summary = {
        "collection": name,
        "model": embedder.model_name,
        "sha256": plan.sha256,
        "records": plan.records,
        "texts": plan.texts,
        "without_text": {"count": plan.without_text, "lines": plan.without_text_lines},
        "shards": len(plan.shards),
        "shards_skipped": len(done),
        "timings": {"scan": scanned},
    }
    common = {"source": path, "collection": name, "fields": [reader.fmt, id_field, text_field, plan.columns]}
    finish = {"collection": name, "sha256": plan.sha256, "shard_hashes": [s.sha256 for s in plan.shards]}
    job = get_current_job()
    if job is None:  # a plain call: do the shards here
        for shard in todo:
            embed_shard(shard=shard.as_dict(), **common)
        return {**summary, "final_job_id": None, "result": finish_bulk(**finish)}
    skipped = {str(s.shard): s.texts for s in plan.shards if s.shard in done}
    start_progress(job, len(plan.shards), plan.texts, skipped)
    return {**summary, "final_job_id": enqueue_shards(job, todo, common, finish)}


def check_collection(collection: object) -> str:
    if not isinstance(collection, str) or not COLLECTION_NAME.fullmatch(collection):
        raise InvalidArgumentsError(
            "collection must be 1 to 100 letters, digits, '_', '.' or '-', starting with a letter or digit"
        )
    return collection


def _path_of(source: object) -> str:
    """A bulk source is a path (a string or {"path": ...}): shards on other hosts read it too."""
    if isinstance(source, dict) and set(source) == {"path"}:
        source = source["path"]
    if not isinstance(source, str) or not source:
        raise InvalidArgumentsError("a bulk source is a path (a string or {'path': ...}) under INPUT_ROOTS")
    if not os.path.isabs(source):
        raise PathNotAllowedError(f"source path must be absolute, got {source!r}")
    return source


@contextlib.contextmanager
def open_input(path: str, settings: Settings) -> Iterator[BinaryIO]:
    """The file opened beneath its input root, as a PDF's path is (worker/sources.py)."""
    try:
        fd = open_beneath(path, settings)
    except OSError as exc:
        raise _typed(exc, path) from None
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            raise InputNotFoundError(f"{path!r} is not a regular file")
        try:
            yield f
        except OSError as exc:
            raise _typed(exc, path) from None


@contextlib.contextmanager
def collections(settings: Settings, dim: int) -> Iterator[Collections]:
    with open_configured_store(settings, dim) as store:
        yield Collections(store)


def enqueue_shards(job: Job, todo: list[Shard], common: dict, finish: dict) -> str:
    """One shard job per shard to do and the job that ends the run, on the parent's queue; its id."""
    queue = Queue(job.origin, connection=job.connection, serializer=job.serializer)
    shard_jobs = queue.enqueue_many(
        [
            Queue.prepare_data(
                SHARD_FUNC,
                kwargs={**common, "shard": shard.as_dict(), "parent": job.id},
                job_id=f"{job.id}-shard-{shard.shard}",
                timeout=job.timeout,
                description=f"{common['collection']}: shard {shard.shard} (lines {shard.line}+)",
            )
            for shard in todo
        ]
    )
    depends = Dependency(jobs=[j.id for j in shard_jobs], allow_failure=True) if shard_jobs else None
    final = queue.enqueue(
        FINISH_FUNC,
        kwargs={**finish, "parent": job.id},
        job_id=f"{job.id}-final",
        depends_on=depends,
        description=f"{common['collection']}: check the totals",
    )
    return final.id


def embed_shard(source: str, collection: str, fields: list, shard: dict, parent: str | None = None) -> dict:
    """Embed one shard's records and store them with the shard's done mark (one transaction)."""
    part, (fmt, id_field, text_field, columns) = _shard_arguments(shard, fields)
    settings = get_settings()
    t0 = time.perf_counter()
    with open_input(_path_of(source), settings) as f:
        records = [
            r for r in read(f, reader=Reader(fmt, id_field, text_field, columns), shard=part) if r.text is not None
        ]
    embedder = get_embedder(settings)
    t1 = time.perf_counter()
    progress.report("embed", 0, len(records))
    vectors, tokens = embedder.embed_counted([r.text for r in records])
    progress.count(embedding_tokens=tokens, embedding_texts=len(records))
    t2 = time.perf_counter()
    with collections(settings, embedder.dim) as store:
        if store.get(collection) is None:
            raise InvalidArgumentsError(f"collection {collection!r} does not exist (deleted while its bulk job ran?)")
        ids, seqs = [r.id for r in records], [r.seq for r in records]
        store.write_shard(collection, part.shard, part.sha256, ids, seqs, vectors)
    progress.report("embed", len(records), len(records))
    job = get_current_job()
    if job is not None and parent:
        shard_done(job, parent, part.shard, len(records))
    timings = {"read": t1 - t0, "embed": t2 - t1, "store": time.perf_counter() - t2}
    return {
        "collection": collection,
        "shard": part.shard,
        "vectors": len(records),
        "tokens": tokens,
        "timings": {k: round(v, 4) for k, v in timings.items()},
    }


def _shard_arguments(shard: object, fields: object) -> tuple[Shard, list]:
    """A shard job's `shard` and `fields` as embed_bulk writes them, else InvalidArgumentsError
    (whoever can write to Redis can write a shard job)."""
    try:
        part = Shard(**shard)  # type: ignore[arg-type]
        ok = all(
            isinstance(v, int) and not isinstance(v, bool) and v >= 0 for k, v in vars(part).items() if k != "sha256"
        )
        ok = ok and isinstance(part.sha256, str) and isinstance(fields, list) and len(fields) == 4
        fmt, id_field, text_field, columns = fields  # type: ignore[misc]
        ok = ok and fmt in ("jsonl", "csv") and all(isinstance(f, str) for f in (id_field, text_field))
        ok = ok and (columns is None or (isinstance(columns, list) and all(isinstance(c, str) for c in columns)))
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise InvalidArgumentsError("embed_shard: shard and fields must be as embed_bulk enqueues them")
    return part, fields  # type: ignore[return-value]


def finish_bulk(collection: str, sha256: str, shard_hashes: list[str], parent: str | None = None) -> dict:
    """Check that every shard of the run is stored, then mark the collection complete."""
    settings = get_settings()
    with collections(settings, get_embedder(settings).dim) as store:
        missing, found = store.finish(collection, sha256, shard_hashes)
    job = get_current_job()
    if job is not None and parent:
        update_parent(
            job, parent, lambda meta: meta.setdefault("bulk", {}).update(missing=missing, complete=not missing)
        )
    if missing:
        shown = ", ".join(map(str, missing[:20])) + (" ..." if len(missing) > 20 else "")
        raise BulkIncompleteError(
            f"{len(missing)} of {len(shard_hashes)} shards of {collection!r} did not finish ({shown}): "
            "see their failed jobs; running the same embed_bulk again does only those"
        )
    return {"collection": collection, "complete": True, "vectors": found.vectors, "records": found.records}


# -- progress of the whole job, in the parent's meta -----------------------------------------------


def start_progress(job: Job, shards: int, texts: int, done: dict[str, int]) -> None:
    """The parent's meta before any shard runs (shards may start before the parent returns)."""
    state = {"shards": shards, "texts": texts, "done": done, "started": time.time()}
    job.meta["bulk"] = state
    job.meta["progress"] = job.meta.setdefault("stages", {})["embed"] = _progress(state)
    job.save_meta()


def _progress(state: dict) -> dict:
    done = sum(v for v in state["done"].values() if isinstance(v, int))
    elapsed = max(time.time() - float(state.get("started", time.time())), 1e-9)
    rate = done / elapsed
    out = {
        "stage": "embed",
        "done": done,
        "total": state["texts"],
        "shards_done": len(state["done"]),
        "shards": state["shards"],
        "texts_per_s": round(rate, 1),
    }
    if rate > 0:
        out["eta_s"] = round((state["texts"] - done) / rate, 1)
    return out


def shard_done(job: Job, parent: str, shard: int, texts: int) -> None:
    def add(meta: dict) -> None:
        state = meta.get("bulk")
        if isinstance(state, dict) and isinstance(state.get("done"), dict):
            state["done"][str(shard)] = texts
            meta["progress"] = meta.setdefault("stages", {})["embed"] = _progress(state)

    update_parent(job, parent, add)


def update_parent(job: Job, parent: str, change) -> None:
    """Apply `change` to the parent's meta under WATCH (shards end at once on many workers).
    Best effort: the parent may be gone or hold meta this code did not write; never fails a shard."""
    key = Job.key_for(parent)
    try:
        with job.connection.pipeline() as pipe:
            for _ in range(50):
                try:
                    pipe.watch(key)
                    raw = pipe.hget(key, "meta")
                    meta = job.serializer.loads(raw) if raw else None
                    if not isinstance(meta, dict):
                        return
                    change(meta)
                    ttl = pipe.ttl(key)
                    pipe.multi()
                    pipe.hset(key, "meta", job.serializer.dumps(meta))
                    if 0 <= ttl < PROGRESS_TTL:
                        pipe.expire(key, PROGRESS_TTL)
                    pipe.execute()
                    return
                except WatchError:
                    continue
    except (RedisError, ValueError, TypeError) as exc:
        log.warning("could not record progress in bulk job %s: %s", parent, exc)
