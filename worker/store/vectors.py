"""Vector collections: the vectors of bulk embedding jobs, keyed by (collection, id), in the store.

Three tables beside the documents, on both stores, created when first needed:
- `collections`: one row a collection (its model and dimension, the last source file and its
  sha256, its record counts, whether the last run completed);
- `collection_shards`: one row a shard done (which bytes of which file), so that a run of the same
  file again skips the shards done already;
- `collection_vectors`: (collection, id) -> seq (the record's place in its file) and the vector.

A shard's vectors and its done mark go in one transaction, written with an upsert: a shard run
twice (a killed worker, a recovered job) leaves each id once. On PostgreSQL the rows go in with a
binary COPY into a temporary table, then one INSERT ... ON CONFLICT. Apps read the table directly
(docs/bulk.md shows the SQL).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from worker.errors import InvalidArgumentsError
from worker.store.base import DocumentStore

SQLITE_TABLES = """
CREATE TABLE IF NOT EXISTS collections (
    name          TEXT PRIMARY KEY,
    model         TEXT NOT NULL,
    dim           INTEGER NOT NULL,
    source        TEXT,
    source_sha256 TEXT,
    records       INTEGER NOT NULL DEFAULT 0,
    without_text  INTEGER NOT NULL DEFAULT 0,
    shards        INTEGER NOT NULL DEFAULT 0,
    complete      INTEGER NOT NULL DEFAULT 0,
    created_at    REAL NOT NULL,
    updated_at    REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS collection_shards (
    collection TEXT NOT NULL REFERENCES collections (name) ON DELETE CASCADE,
    sha256     TEXT NOT NULL,     -- of the shard's bytes: the same bytes are the same shard
    shard      INTEGER NOT NULL,
    vectors    INTEGER NOT NULL,
    done_at    REAL NOT NULL,
    PRIMARY KEY (collection, sha256, shard)
);
CREATE TABLE IF NOT EXISTS collection_vectors (
    collection TEXT NOT NULL REFERENCES collections (name) ON DELETE CASCADE,
    id         TEXT NOT NULL,
    seq        INTEGER NOT NULL,
    vector     BLOB NOT NULL,     -- float32, little-endian, dim values
    PRIMARY KEY (collection, id)
) WITHOUT ROWID;
"""

PG_TABLES = """
CREATE TABLE IF NOT EXISTS collections (
    name          text PRIMARY KEY,
    model         text NOT NULL,
    dim           integer NOT NULL,
    source        text,
    source_sha256 text,
    records       bigint NOT NULL DEFAULT 0,
    without_text  bigint NOT NULL DEFAULT 0,
    shards        integer NOT NULL DEFAULT 0,
    complete      boolean NOT NULL DEFAULT false,
    created_at    double precision NOT NULL,
    updated_at    double precision NOT NULL
);
CREATE TABLE IF NOT EXISTS collection_shards (
    collection text NOT NULL REFERENCES collections (name) ON DELETE CASCADE,
    sha256     text NOT NULL,
    shard      integer NOT NULL,
    vectors    integer NOT NULL,
    done_at    double precision NOT NULL,
    PRIMARY KEY (collection, sha256, shard)
);
CREATE TABLE IF NOT EXISTS collection_vectors (
    collection text NOT NULL REFERENCES collections (name) ON DELETE CASCADE,
    id         text NOT NULL,
    seq        bigint NOT NULL,
    embedding  vector NOT NULL,
    PRIMARY KEY (collection, id)
)
"""

COLLECTION_COLUMNS = "name, model, dim, source, source_sha256, records, without_text, shards, complete, updated_at"
EXPORT_BATCH = 10_000  # rows read at a time by an export


@dataclass(frozen=True)
class Collection:
    name: str
    model: str
    dim: int
    source: str | None
    source_sha256: str | None
    records: int
    without_text: int
    shards: int
    complete: bool
    updated_at: float
    vectors: int = 0

    def as_dict(self) -> dict:
        return self.__dict__.copy()


class Collections:
    """The collection tables of an open store (see the module docstring)."""

    def __init__(self, store: DocumentStore) -> None:
        self.store, self.p = store, store.mark
        self.pg = store.kind == "postgresql"
        with store.transaction():
            if self.pg:
                store.conn.execute("SELECT pg_advisory_xact_lock(0x776F726B6563)")  # one creator at a time
                store.conn.execute(PG_TABLES)
            else:
                for statement in SQLITE_TABLES.split(";"):
                    if statement.strip():
                        store.conn.execute(statement)

    def _one(self, sql: str, params: Sequence = ()) -> Any:
        with self.store.errors():
            return self.store.conn.execute(sql.replace("?", self.p), params).fetchone()

    def get(self, name: str) -> Collection | None:
        row = self._one(f"SELECT {COLLECTION_COLUMNS} FROM collections WHERE name = ?", (name,))
        if row is None:
            return None
        count = self._one("SELECT count(*) FROM collection_vectors WHERE collection = ?", (name,))[0]
        return Collection(*row[:8], bool(row[8]), float(row[9]), vectors=count)

    def list(self) -> list[Collection]:
        with self.store.errors():
            names = [r[0] for r in self.store.conn.execute("SELECT name FROM collections ORDER BY name").fetchall()]
        return [c for c in map(self.get, names) if c is not None]

    def start(self, name: str, model: str, dim: int, source: str, sha256: str, counts: dict[str, int]) -> None:
        """Create the collection or mark a new run of it (not complete until `finish`)."""
        existing = self.get(name)
        if existing is not None and (existing.model, existing.dim) != (model, dim):
            raise InvalidArgumentsError(
                f"collection {name!r} holds vectors of {existing.model} ({existing.dim} dimensions), not {model}:"
                " delete it first (vectors delete) or use another name"
            )
        now = time.time()
        values = (name, model, dim, source, sha256, counts["records"], counts["without_text"], counts["shards"])
        with self.store.transaction():
            self.store.conn.execute(
                (
                    "INSERT INTO collections (name, model, dim, source, source_sha256, records, without_text, shards,"
                    " complete, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
                    " ON CONFLICT (name) DO UPDATE SET source = excluded.source,"
                    " source_sha256 = excluded.source_sha256, records = excluded.records,"
                    " without_text = excluded.without_text, shards = excluded.shards, complete = excluded.complete,"
                    " updated_at = excluded.updated_at"
                ).replace("?", self.p),
                (*values, False if self.pg else 0, now, now),
            )

    def done_shards(self, name: str, shards: Sequence[tuple[int, str]]) -> set[int]:
        """Of the (shard, sha256) pairs, the shards whose bytes are stored already."""
        with self.store.errors():
            rows = self.store.conn.execute(
                f"SELECT shard, sha256 FROM collection_shards WHERE collection = {self.p}", (name,)
            ).fetchall()
        done = {(int(shard), sha) for shard, sha in rows}
        return {shard for shard, sha in shards if (shard, sha) in done}

    def write_shard(self, name: str, shard: int, sha256: str, ids: Sequence[str], seqs: Sequence[int], vectors) -> int:
        """The shard's vectors and its done mark, in one transaction; each id once however often it runs."""
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        with self.store.transaction():
            if self.pg:
                self._copy_pg(name, ids, seqs, vectors)
            else:
                self.store.conn.executemany(
                    "INSERT INTO collection_vectors (collection, id, seq, vector) VALUES (?, ?, ?, ?)"
                    " ON CONFLICT (collection, id) DO UPDATE SET seq = excluded.seq, vector = excluded.vector",
                    ((name, i, s, v.astype("<f4").tobytes()) for i, s, v in zip(ids, seqs, vectors, strict=True)),
                )
            self.store.conn.execute(
                (
                    "INSERT INTO collection_shards (collection, sha256, shard, vectors, done_at) VALUES (?, ?, ?, ?, ?)"
                    " ON CONFLICT (collection, sha256, shard) DO UPDATE SET done_at = excluded.done_at"
                ).replace("?", self.p),
                (name, sha256, shard, len(ids), time.time()),
            )
        return len(ids)

    def _copy_pg(self, name: str, ids: Sequence[str], seqs: Sequence[int], vectors: np.ndarray) -> None:
        conn = self.store.conn
        conn.execute(
            "CREATE TEMP TABLE IF NOT EXISTS bulk_in (id text, seq bigint, embedding vector) ON COMMIT DELETE ROWS"
        )
        with conn.cursor() as cur, cur.copy("COPY bulk_in (id, seq, embedding) FROM STDIN (FORMAT BINARY)") as copy:
            copy.set_types(["text", "int8", "vector"])
            for row in zip(ids, seqs, vectors, strict=True):
                copy.write_row(row)
        conn.execute(
            "INSERT INTO collection_vectors (collection, id, seq, embedding) SELECT %s, id, seq, embedding FROM bulk_in"
            " ON CONFLICT (collection, id) DO UPDATE SET seq = excluded.seq, embedding = excluded.embedding",
            (name,),
        )

    def finish(self, name: str, sha256: str, shard_hashes: Sequence[str]) -> tuple[list[int], Collection]:
        """The shards of this source (their sha256 in order) not done; none missing marks the collection
        complete."""
        collection = self.get(name)
        if collection is None:
            raise InvalidArgumentsError(f"collection {name!r} does not exist (deleted while its bulk job ran?)")
        done = self.done_shards(name, list(enumerate(shard_hashes)))
        missing = [n for n in range(len(shard_hashes)) if n not in done]
        if not missing and collection.source_sha256 == sha256:
            with self.store.transaction():
                self.store.conn.execute(
                    f"UPDATE collections SET complete = {self.p}, updated_at = {self.p} WHERE name = {self.p}",
                    (True if self.pg else 1, time.time(), name),
                )
            collection = self.get(name) or collection
        return missing, collection

    def delete(self, name: str) -> int:
        """Delete a collection and its vectors: how many vectors went, -1 when there was no such collection."""
        with self.store.transaction():
            count = self.store.conn.execute(
                f"SELECT count(*) FROM collection_vectors WHERE collection = {self.p}", (name,)
            ).fetchone()[0]
            for table, key in (("collection_vectors", "collection"), ("collection_shards", "collection")):
                self.store.conn.execute(f"DELETE FROM {table} WHERE {key} = {self.p}", (name,))
            deleted = self.store.conn.execute(f"DELETE FROM collections WHERE name = {self.p}", (name,)).rowcount
        return count if deleted else -1

    def export(self, name: str) -> Iterator[tuple[list[str], np.ndarray]]:
        """(ids, vectors) batches in record order, read in one snapshot."""
        collection = self.get(name)
        if collection is None:
            raise InvalidArgumentsError(f"no collection {name!r}")
        column = "embedding" if self.pg else "vector"
        sql = f"SELECT id, {column} FROM collection_vectors WHERE collection = {self.p} ORDER BY seq"
        with self.store.errors(), self._snapshot() as cur:
            cur.execute(sql, (name,))
            while True:
                rows = cur.fetchmany(EXPORT_BATCH)
                if not rows:
                    return
                yield [r[0] for r in rows], self._matrix([r[1] for r in rows], collection.dim)

    @contextlib.contextmanager
    def _snapshot(self) -> Iterator[Any]:
        conn = self.store.conn
        if self.pg:
            from worker.store.pg import _Float32Loader

            with conn.transaction(), conn.cursor(binary=True) as cur:
                cur.adapters.register_loader("vector", _Float32Loader)
                cur.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
                yield cur
        else:
            conn.execute("BEGIN")
            try:
                yield conn.cursor()
            finally:
                conn.execute("COMMIT")

    def _matrix(self, values: list, dim: int) -> np.ndarray:
        if self.pg:
            return np.stack([np.asarray(v, dtype=np.float32) for v in values]) if values else np.zeros((0, dim))
        return np.frombuffer(b"".join(values), dtype="<f4").reshape(len(values), dim).astype(np.float32)
