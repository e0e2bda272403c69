"""`python -m worker vectors list|show|export|delete`: the collections bulk embedding jobs fill.

`export NAME --out FILE.npy` writes the vectors in record order as one float32 matrix (written a
batch at a time into the .npy file: a million vectors never sit in memory twice), and the ids
beside it, one a line, in FILE.ids.txt. An id holding a line break is written JSON-quoted there.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from worker.exitcodes import EXIT_ERROR, EXIT_OK, EXIT_USAGE
from worker.safe import safe_text
from worker.settings import Settings, redact_url


def add_enqueue_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--collection",
        metavar="NAME",
        help="embed_bulk instead: embed every record of a .jsonl or .csv file into this vector collection",
    )
    p.add_argument("--id-field", default="id", help="with --collection: the field that identifies a record")
    p.add_argument("--text-field", default="text", help="with --collection: the field holding the text")


def add_parser(sub) -> None:
    p = sub.add_parser("vectors", help="list, show, export or delete vector collections (embed_bulk)")
    cmds = p.add_subparsers(dest="vectors_command", required=True)
    p = cmds.add_parser("list", help="each collection: vectors, records, model, complete")
    p.add_argument("--json", action="store_true", help="one JSON object per collection")
    p = cmds.add_parser("show", help="one collection's fields")
    p.add_argument("name")
    p.add_argument("--json", action="store_true")
    p = cmds.add_parser("export", help="the vectors in record order to FILE.npy, the ids to FILE.ids.txt")
    p.add_argument("name")
    p.add_argument("--out", type=Path, required=True, metavar="FILE.npy")
    p = cmds.add_parser("delete", help="remove a collection and its vectors")
    p.add_argument("name")


@contextlib.contextmanager
def _collections(settings: Settings) -> Iterator:
    from worker.store import open_store
    from worker.store.vectors import Collections

    with open_store(settings.store_url, settings.store_busy_timeout) as store:
        yield Collections(store)


def cmd_vectors(settings: Settings, args: argparse.Namespace) -> int:
    from worker.errors import WorkerError

    command = args.vectors_command
    if settings.store_kind == "sqlite" and not settings.store_path.exists():
        print(f"worker: no collections: no store at {settings.store_path} yet", file=sys.stderr)
        return EXIT_OK if command == "list" else EXIT_ERROR
    if command == "export" and args.out.suffix != ".npy":
        print(f"worker: vectors export: --out must name a .npy file, got {args.out}", file=sys.stderr)
        return EXIT_USAGE
    try:
        with _collections(settings) as collections:
            return _run(collections, command, args, settings)
    except WorkerError as exc:
        print(f"worker: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_ERROR


def _run(collections, command: str, args: argparse.Namespace, settings: Settings) -> int:
    if command == "list":
        found = collections.list()
        if not found and not args.json:
            print("no collections", file=sys.stderr)
        for c in found:
            print(json.dumps(c.as_dict()) if args.json else collection_line(c))
        return EXIT_OK
    found = collections.get(args.name)
    if found is None:
        where = settings.store_path if settings.store_kind == "sqlite" else redact_url(settings.store_url)
        print(f"worker: no collection {safe_text(args.name)!r} in {where} (`vectors list` lists them)", file=sys.stderr)
        return EXIT_ERROR
    if command == "show":
        print(json.dumps(found.as_dict()) if args.json else "\n".join(collection_fields(found)))
    elif command == "delete":
        collections.delete(args.name)
        print(f"deleted collection {safe_text(args.name)}: {found.vectors} vectors")
    else:
        rows = export(collections, found, args.out)
        print(f"{safe_text(args.name)}: {rows} vectors of {found.dim} to {args.out}, ids to {ids_path(args.out)}")
    return EXIT_OK


def collection_line(c) -> str:
    state = "complete" if c.complete else "incomplete"
    return (
        f"{safe_text(c.name)}  {c.vectors} vectors  {c.records} records ({c.without_text} without text)"
        f"  {state}  {safe_text(c.model)}"
    )


def collection_fields(c) -> list[str]:
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(c.updated_at))
    return [
        f"collection  {safe_text(c.name)}",
        f"model       {safe_text(c.model)} ({c.dim} dimensions)",
        f"source      {safe_text(c.source or '')} (sha256 {c.source_sha256})",
        f"records     {c.records} ({c.without_text} without text, not embedded)",
        f"vectors     {c.vectors}",
        f"shards      {c.shards}",
        f"complete    {'yes' if c.complete else 'no: its last run has not ended, or shards failed'}",
        f"updated     {when} UTC",
    ]


def ids_path(out: Path) -> Path:
    return out.with_suffix(".ids.txt")


def export(collections, found, out: Path) -> int:
    """Write the collection's vectors and ids; the number of rows. The files appear whole or not at all."""
    import numpy as np

    tmp, tmp_ids = out.with_name(out.name + ".part"), out.with_name(ids_path(out).name + ".part")
    matrix = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(found.vectors, found.dim))
    rows = 0
    with open(tmp_ids, "w", encoding="utf-8") as ids_file:
        for ids, vectors in collections.export(found.name):
            n = min(len(ids), found.vectors - rows)  # rows written since the count was taken wait for the next export
            matrix[rows : rows + n] = vectors[:n]
            ids_file.writelines(_id_line(i) for i in ids[:n])
            rows += n
    matrix.flush()
    del matrix
    if rows < found.vectors:  # vectors deleted since the count: keep the rows read
        np.save(out.with_name(out.name + ".tmp.npy"), np.load(tmp, mmap_mode="r")[:rows])
        out.with_name(out.name + ".tmp.npy").replace(tmp)
    tmp.replace(out)
    tmp_ids.replace(ids_path(out))
    return rows


def _id_line(ident: str) -> str:
    return (json.dumps(ident) if "\n" in ident or "\r" in ident or ident.startswith('"') else ident) + "\n"


# -- enqueue --wait follows a bulk job -------------------------------------------------------------


class FollowBulk:
    """An `embed_bulk` job that finished enqueueing its shards, followed until the job ending its run
    ends: status and error are that job's, progress is the parent's meta (where the shards write it)."""

    def __init__(self, parent, final) -> None:
        self.parent, self.final, self.id = parent, final, parent.id

    def get_status(self, refresh: bool = True):
        return self.final.get_status(refresh=refresh)

    def get_meta(self, refresh: bool = True) -> dict:
        return self.parent.get_meta(refresh=refresh)

    def return_value(self) -> dict:
        return {**(self.parent.return_value(refresh=True) or {}), "result": self.final.return_value(refresh=True)}

    def latest_result(self):
        return self.final.latest_result()


def follow(job) -> FollowBulk | None:
    """The bulk run to keep following when `job` is an embed_bulk parent that handed over to shards."""
    from rq.exceptions import NoSuchJobError
    from rq.job import Job

    if isinstance(job, FollowBulk) or getattr(job, "func_name", None) != BULK:
        return None
    result = job.return_value()
    final_id = result.get("final_job_id") if isinstance(result, dict) else None
    if not isinstance(final_id, str):
        return None
    try:
        final = Job.fetch(final_id, connection=job.connection, serializer=job.serializer)
    except NoSuchJobError:
        return None
    return FollowBulk(job, final)


BULK = "worker.jobs.embed_bulk"
