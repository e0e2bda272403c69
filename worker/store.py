"""The stores: one interface (`DocumentStore`), two implementations, chosen by `open_store(url)`.

`sqlite:///...` opens the SQLite store below (the embedded default, one host);
`postgresql://...` or `postgres://...` opens `worker.store_pg.PgStore` (pgvector, many hosts).
Jobs, the CLI and the health server only ever call `open_store` and the interface.

The SQLite store: documents and their chunks with float32 embedding vectors.

One file, WAL mode and a busy timeout so several worker processes on one host can write.
A document is keyed by (sha256 of its bytes, embedding model): storing the same bytes with
the same model again is a no-op that reports the existing row. Each document goes in one
transaction, so a failure part way leaves nothing behind.

Search is exact cosine (vectors are L2-normalized, so a dot product) with numpy over the
whole stored matrix. That is fine up to a few hundred thousand chunks (384 float32 each:
about 150 MB and well under a second per 100,000 chunks, see docs/benchmarks.md); past that, use an
approximate index or a shared store with pgvector.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Protocol

import numpy as np

from worker.chunking import Chunk
from worker.errors import StoreBusyError, WorkerError
from worker.settings import Settings, sqlite_path, store_kind

SCHEMA_VERSION = 1
DEFAULT_EF_SEARCH = Settings.hnsw_ef_search  # PostgreSQL search: hnsw.ef_search (HNSW_EF_SEARCH)
BUSY_TIMEOUT_S = 30.0

SCHEMA = """
CREATE TABLE documents (
    id                 INTEGER PRIMARY KEY,
    document_id        TEXT NOT NULL,
    sha256             TEXT NOT NULL,
    model              TEXT NOT NULL,
    dim                INTEGER NOT NULL,
    name               TEXT,
    title              TEXT,
    author             TEXT,
    producer           TEXT,
    pages              INTEGER NOT NULL,
    pages_without_text INTEGER NOT NULL,
    chunks             INTEGER NOT NULL,
    no_text            INTEGER NOT NULL,      -- 1: no page had text (a scan): stored, zero chunks
    page_errors        TEXT NOT NULL,         -- JSON list of {"page", "error"}
    metadata           TEXT NOT NULL,         -- JSON object given by the caller
    created_at         REAL NOT NULL,
    UNIQUE (sha256, model)
);
CREATE INDEX documents_document_id ON documents (document_id);
CREATE TABLE chunks (
    id          INTEGER PRIMARY KEY,
    document    INTEGER NOT NULL REFERENCES documents (id) ON DELETE CASCADE,
    seq         INTEGER NOT NULL,
    page_start  INTEGER NOT NULL,
    page_end    INTEGER NOT NULL,
    char_start  INTEGER NOT NULL,
    char_end    INTEGER NOT NULL,
    n_tokens    INTEGER NOT NULL,
    text        TEXT NOT NULL,
    vector      BLOB NOT NULL,               -- float32, little-endian, dim values
    UNIQUE (document, seq)
);
"""


class StoreSchemaError(WorkerError):
    """The store file was written by a newer version of this package."""


@dataclass(frozen=True)
class StoredDocument:
    id: int
    document_id: str
    sha256: str
    model: str
    name: str | None
    pages: int
    pages_without_text: int
    chunks: int
    page_errors: list[dict] = field(default_factory=list)  # {"page", "error"} of pages that failed


@dataclass(frozen=True)
class DocumentRecord:
    """A stored document in full, vectors included, as `export_document` reads it; its fields are
    `add_document`'s arguments, so `add_document(**record.as_kwargs())` stores it again elsewhere
    without embedding (`python -m worker store copy`)."""

    document_id: str
    sha256: str
    model: str
    name: str | None
    meta: dict  # title, author, producer of the PDF
    pages: int
    pages_without_text: int
    page_errors: list[dict]
    chunks: list[Chunk]
    vectors: np.ndarray  # float32, one row per chunk
    caller_metadata: dict
    created_at: float  # seconds since the epoch

    def as_kwargs(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_rows(
        cls, sha256: str, model: str, row: Sequence, chunk_rows: Sequence[Sequence], vectors: np.ndarray, **decoded
    ) -> DocumentRecord:
        """From `export_document`'s rows, the same in both stores: the document's (id, document_id,
        name, title, author, producer, pages, pages_without_text, ...) and its chunks' (the Chunk
        fields, then the vector). `decoded`: page_errors, caller_metadata, created_at as each store
        reads them."""
        _, document_id, name, title, author, producer, pages, pages_without_text = row[:8]
        return cls(
            document_id=document_id,
            sha256=sha256,
            model=model,
            name=name,
            meta={"title": title, "author": author, "producer": producer},
            pages=pages,
            pages_without_text=pages_without_text,
            chunks=[Chunk(*r[:-1]) for r in chunk_rows],
            vectors=vectors,
            **decoded,
        )


class DocumentStore(Protocol):
    """What jobs, the CLI and the health server need of a store, whichever it is."""

    kind: str  # "sqlite" or "postgresql"
    dim: int | None  # the one vector dimension the schema holds (PostgreSQL); None: any (SQLite)

    def counts(self) -> dict[str, int]: ...

    def document_keys(self) -> list[tuple[str, str, int]]:
        """(sha256, model, dim) of every stored document, oldest first (dim 0: no chunks)."""
        ...

    def export_document(self, sha256: str, model: str) -> DocumentRecord | None: ...

    def find(self, sha256: str, model: str) -> StoredDocument | None: ...

    def search(
        self,
        vector: np.ndarray,
        k: int = 5,
        model: str | None = None,
        document_id: str | None = None,
        where: Mapping[str, str] | None = None,
    ) -> list[dict]: ...

    def add_document(
        self,
        *,
        document_id: str,
        sha256: str,
        model: str,
        name: str | None,
        meta: dict,
        pages: int,
        pages_without_text: int,
        page_errors: Sequence[dict],
        chunks: Sequence[Chunk],
        vectors: np.ndarray,
        caller_metadata: dict | None = None,
        created_at: float | None = None,
    ) -> tuple[StoredDocument, bool]: ...


@contextlib.contextmanager
def open_store(
    store_url: str, busy_timeout: float = BUSY_TIMEOUT_S, *, ef_search: int = DEFAULT_EF_SEARCH, dim: int | None = None
) -> Iterator[DocumentStore]:
    """Open the store `store_url` names (creating or migrating its schema when needed).

    `busy_timeout`: seconds a write waits for another writer's lock (SQLite busy timeout,
    PostgreSQL lock_timeout). `ef_search`: HNSW candidate list of a PostgreSQL search.
    `dim`: vector dimension for a PostgreSQL schema created now (default: the model's, 384).
    """
    if store_kind(store_url) == "postgresql":
        from worker.store_pg import PgStore

        with PgStore.open(store_url, busy_timeout, ef_search=ef_search, dim=dim) as pg:
            yield pg
    else:
        with Store.open(store_url, busy_timeout) as store:
            yield store


def check_filters(document_id: str | None, where: Mapping[str, str] | None) -> None:
    """Filters are plain strings: a document id, and top-level metadata keys with string values."""
    if document_id is not None and not isinstance(document_id, str):
        raise ValueError("document_id filter must be a string")
    for key, value in (where or {}).items():
        if not isinstance(key, str) or not key or not isinstance(value, str):
            raise ValueError(f"metadata filter {key!r}={value!r}: key and value must be strings")


def _busy(exc: sqlite3.OperationalError) -> bool:
    msg = str(exc).lower()
    return "locked" in msg or "busy" in msg


class Store:
    """The SQLite store (see the module docstring)."""

    kind = "sqlite"
    dim = None  # each document has its own dimension; a search matches those of its query's

    def __init__(self, conn: sqlite3.Connection, path: Path) -> None:
        self.conn = conn
        self.path = path

    @classmethod
    @contextlib.contextmanager
    def open(cls, store_url: str, busy_timeout: float = BUSY_TIMEOUT_S) -> Iterator[Store]:
        """Open (creating if needed) the store named by a `sqlite:///` URL."""
        path = sqlite_path(store_url)
        path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(path, timeout=busy_timeout, isolation_level=None, check_same_thread=False)
        try:
            with _translate_busy():
                conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
                conn.execute("PRAGMA journal_mode = WAL")
                conn.execute("PRAGMA synchronous = NORMAL")
                conn.execute("PRAGMA foreign_keys = ON")
                store = cls(conn, path)
                store._migrate()
            yield store
        finally:
            conn.close()

    def _migrate(self) -> None:
        version = self.conn.execute("PRAGMA user_version").fetchone()[0]
        if version == SCHEMA_VERSION:
            return
        if version > SCHEMA_VERSION:
            raise StoreSchemaError(f"{self.path} has schema {version}; this version knows up to {SCHEMA_VERSION}")
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            # Another process may have created it while we waited for the lock.
            version = self.conn.execute("PRAGMA user_version").fetchone()[0]
            if version == 0:
                for statement in SCHEMA.split(";"):
                    if statement.strip():
                        self.conn.execute(statement)
                self.conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            self.conn.execute("COMMIT")
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise

    # -- reads ---------------------------------------------------------------------------
    def counts(self) -> dict[str, int]:
        with _translate_busy():
            docs = self.conn.execute("SELECT count(*) FROM documents").fetchone()[0]
            chunks = self.conn.execute("SELECT count(*) FROM chunks").fetchone()[0]
        return {"documents": docs, "chunks": chunks}

    def find(self, sha256: str, model: str) -> StoredDocument | None:
        with _translate_busy():
            row = self.conn.execute(
                "SELECT id, document_id, sha256, model, name, pages, pages_without_text, chunks, page_errors"
                " FROM documents WHERE sha256 = ? AND model = ?",
                (sha256, model),
            ).fetchone()
        if row is None:
            return None
        return StoredDocument(*row[:-1], page_errors=_page_errors(row[-1]))

    def document_keys(self) -> list[tuple[str, str, int]]:
        with _translate_busy():
            return [tuple(r) for r in self.conn.execute("SELECT sha256, model, dim FROM documents ORDER BY id")]

    def export_document(self, sha256: str, model: str) -> DocumentRecord | None:
        """The document stored under (sha256, model) with its chunks and vectors, read in one snapshot."""
        with _translate_busy():
            self.conn.execute("BEGIN")
            try:
                row = self.conn.execute(
                    "SELECT id, document_id, name, title, author, producer, pages, pages_without_text, page_errors,"
                    " metadata, created_at, dim FROM documents WHERE sha256 = ? AND model = ?",
                    (sha256, model),
                ).fetchone()
                rows = []
                if row is not None:
                    rows = self.conn.execute(
                        "SELECT seq, text, page_start, page_end, char_start, char_end, n_tokens, vector"
                        " FROM chunks WHERE document = ? ORDER BY seq",
                        (row[0],),
                    ).fetchall()
            finally:
                self.conn.execute("COMMIT")
        if row is None:
            return None
        errors, metadata, created, dim = row[8:]
        vectors = np.frombuffer(b"".join(r[-1] for r in rows), dtype="<f4").reshape(len(rows), dim)
        return DocumentRecord.from_rows(
            sha256,
            model,
            row,
            rows,
            vectors,
            page_errors=_page_errors(errors),
            caller_metadata=json.loads(metadata or "{}"),
            created_at=created,
        )

    def search(
        self,
        vector: np.ndarray,
        k: int = 5,
        model: str | None = None,
        document_id: str | None = None,
        where: Mapping[str, str] | None = None,
    ) -> list[dict]:
        """The k chunks nearest to `vector` by cosine, best first (vectors stored normalized),
        optionally only of one document id and of documents whose metadata has key == value."""
        check_filters(document_id, where)
        query = np.asarray(vector, dtype=np.float32).reshape(-1)
        sql = "SELECT c.id, c.vector FROM chunks c JOIN documents d ON d.id = c.document WHERE d.dim = ?"
        params: list[object] = [query.shape[0]]
        if model is not None:
            sql += " AND d.model = ?"
            params.append(model)
        if document_id is not None:
            sql += " AND d.document_id = ?"
            params.append(document_id)
        for key, value in (where or {}).items():
            # A string value only, as PostgreSQL's `metadata @> {"key": "value"}` matches.
            path = "$." + json.dumps(key)
            sql += " AND json_type(d.metadata, ?) = 'text' AND json_extract(d.metadata, ?) = ?"
            params += [path, path, value]
        with _translate_busy():
            rows = self.conn.execute(sql, params).fetchall()
        if not rows or k <= 0:
            return []
        ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
        matrix = np.frombuffer(b"".join(r[1] for r in rows), dtype="<f4").reshape(len(rows), -1)
        scores = matrix @ query
        k = min(k, len(rows))
        top = np.argpartition(-scores, k - 1)[:k]
        top = top[np.argsort(-scores[top], kind="stable")]
        wanted = [int(ids[i]) for i in top]
        marks = ",".join("?" * len(wanted))
        with _translate_busy():
            found = {
                r[0]: r[1:]
                for r in self.conn.execute(
                    "SELECT c.id, d.document_id, d.name, d.title, c.page_start, c.page_end, c.char_start,"
                    " c.char_end, c.text FROM chunks c JOIN documents d ON d.id = c.document"
                    f" WHERE c.id IN ({marks})",
                    wanted,
                )
            }
        out = []
        for i, cid in zip(top, wanted, strict=True):
            doc, name, title, p0, p1, c0, c1, text = found[cid]
            out.append(
                {
                    "document": doc,
                    "name": name,
                    "title": title,
                    "page_start": p0,
                    "page_end": p1,
                    "char_start": c0,
                    "char_end": c1,
                    "score": round(float(scores[i]), 6),
                    "text": text,
                }
            )
        return out

    # -- writes --------------------------------------------------------------------------
    def add_document(
        self,
        *,
        document_id: str,
        sha256: str,
        model: str,
        name: str | None,
        meta: dict,
        pages: int,
        pages_without_text: int,
        page_errors: Sequence[dict],
        chunks: Sequence[Chunk],
        vectors: np.ndarray,
        caller_metadata: dict | None = None,
        created_at: float | None = None,
    ) -> tuple[StoredDocument, bool]:
        """Store a document and its chunks in one transaction; returns (row, already_stored).
        `created_at` (default now) is kept from the source when copying from another store."""
        vectors = np.ascontiguousarray(vectors, dtype="<f4")
        if vectors.ndim != 2 or vectors.shape[0] != len(chunks):
            raise ValueError(f"{len(chunks)} chunks but vectors of shape {vectors.shape}")
        dim = int(vectors.shape[1]) if len(chunks) else 0
        with _translate_busy():
            self.conn.execute("BEGIN IMMEDIATE")
            try:
                existing = self.find(sha256, model)
                if existing is not None:
                    self.conn.execute("ROLLBACK")
                    return existing, True
                cur = self.conn.execute(
                    "INSERT INTO documents (document_id, sha256, model, dim, name, title, author, producer,"
                    " pages, pages_without_text, chunks, no_text, page_errors, metadata, created_at)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        document_id,
                        sha256,
                        model,
                        dim,
                        name,
                        meta.get("title"),
                        meta.get("author"),
                        meta.get("producer"),
                        pages,
                        pages_without_text,
                        len(chunks),
                        int(not chunks),
                        json.dumps(list(page_errors)),
                        json.dumps(caller_metadata or {}),
                        time.time() if created_at is None else created_at,
                    ),
                )
                doc = cur.lastrowid
                self.conn.executemany(
                    "INSERT INTO chunks (document, seq, page_start, page_end, char_start, char_end, n_tokens,"
                    " text, vector) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        (
                            doc,
                            c.seq,
                            c.page_start,
                            c.page_end,
                            c.char_start,
                            c.char_end,
                            c.n_tokens,
                            c.text,
                            vectors[i].tobytes(),
                        )
                        for i, c in enumerate(chunks)
                    ),
                )
                self.conn.execute("COMMIT")
            except BaseException:
                if self.conn.in_transaction:
                    self.conn.execute("ROLLBACK")
                raise
        stored = StoredDocument(
            doc, document_id, sha256, model, name, pages, pages_without_text, len(chunks), list(page_errors)
        )
        return stored, False


def _page_errors(text: str | None) -> list[dict]:
    try:
        return json.loads(text or "[]")
    except ValueError:
        return [{"page": None, "error": "unreadable page_errors in the store"}]


@contextlib.contextmanager
def _translate_busy() -> Iterator[None]:
    """A store locked past the busy timeout is a transient failure: the job is retried."""
    try:
        yield
    except sqlite3.OperationalError as exc:
        if _busy(exc):
            raise StoreBusyError(f"the store stayed locked: {exc}") from exc
        raise
