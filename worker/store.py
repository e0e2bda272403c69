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
import errno
import json
import math
import re
import sqlite3
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Protocol

import numpy as np

from worker.chunking import Chunk
from worker.errors import (
    InvalidArgumentsError,
    StoreBusyError,
    StoreConfigError,
    StoreDiskError,
    UnstorableInputError,
    WorkerError,
)
from worker.settings import Settings, sqlite_path, store_kind

SCHEMA_VERSION = 1
DEFAULT_EF_SEARCH = Settings.hnsw_ef_search  # PostgreSQL search: hnsw.ef_search (HNSW_EF_SEARCH)
BUSY_TIMEOUT_S = 30.0
MAX_SEARCH_K = 1000  # hits one search returns at most, on both stores (a larger k is clamped)
SQLITE_HEADER = b"SQLite format 3\x00"  # the first 16 bytes of every SQLite database file

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
    """Filters are plain strings: a document id, and top-level metadata keys with string values;
    InvalidArgumentsError (a WorkerError) otherwise, the same on both stores."""
    if document_id is not None and not isinstance(document_id, str):
        raise InvalidArgumentsError("document_id filter must be a string")
    for key, value in (where or {}).items():
        if not isinstance(key, str) or not key or not isinstance(value, str):
            raise InvalidArgumentsError(f"metadata filter {key!r}={value!r}: key and value must be strings")
    check_storable("document_id filter", document_id)
    check_storable("metadata filter", dict(where or {}))


# -- what no store can hold ------------------------------------------------------------------
# Both stores keep text as UTF-8: a lone surrogate (which Python strings may hold, e.g. from JSON
# "\\ud800") has no UTF-8 form. PostgreSQL's text and jsonb hold no NUL (SQLite does: a document
# holding one could never be copied to PostgreSQL), and its jsonb no NaN or infinity. One check for
# both stores: a job's arguments are refused with it before any work, and `add_document` runs it
# again on everything it is given, so both stores refuse exactly the same documents.
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")
_SURROGATE = re.compile("[\ud800-\udfff]")


def _why(char: str) -> str:
    if char == "\x00":
        return "holds a NUL character (U+0000), which PostgreSQL cannot store"
    return f"holds a lone surrogate (U+{ord(char):04X}), which is not text any store can encode"


def _label(key: object) -> str:
    text = repr(key)  # escapes NUL, surrogates and control characters
    return text if len(text) <= 40 else text[:37] + "..."


def unstorable(value: object, where: str = "") -> str | None:
    """Why `value` (a string, or JSON-like data: dicts, lists, strings, numbers) cannot be held by
    every store, starting with the path `where` to the bad part; None when it can."""
    stack: list[tuple[object, str]] = [(value, where)]
    while stack:  # no recursion: a deeply nested value cannot overflow the stack
        item, at = stack.pop()
        if isinstance(item, str):
            found = _UNSTORABLE.search(item)
            if found:
                return f"{at} {_why(found.group())}".strip()
        elif isinstance(item, float):
            if not math.isfinite(item):
                return f"{at} is {item}, which JSON cannot carry".strip()
        elif isinstance(item, Mapping):
            for key, val in item.items():
                stack.append((val, f"{at}[{_label(key)}]"))
                stack.append((key, f"{at} key {_label(key)}"))
        elif isinstance(item, list | tuple):
            stack.extend((val, f"{at}[{i}]") for i, val in enumerate(item))
    return None


def check_storable(what: str, value: object) -> None:
    """UnstorableInputError naming `what` and the bad part when no store can hold `value`."""
    reason = unstorable(value, what)
    if reason is not None:
        raise UnstorableInputError(reason)


def check_encodable(what: str, value: object) -> None:
    """UnstorableInputError when the string `value` holds a lone surrogate: no UTF-8 form, so neither
    a store nor the tokenizer takes it. (A NUL is fine where nothing is stored: a password, a text to embed.)"""
    if isinstance(value, str):
        found = _SURROGATE.search(value)
        if found:
            raise UnstorableInputError(f"{what} {_why(found.group())}")


def storable_text(text: str) -> str:
    """`text` with each NUL and lone surrogate replaced by U+FFFD, character for character (offsets
    into it stay valid): for text that comes out of a document, which is kept rather than refused."""
    return _UNSTORABLE.sub("\ufffd", text) if _UNSTORABLE.search(text) else text


def storable(value: object) -> object:
    """`value` (JSON-like) with `storable_text` applied to every string in it, keys included."""
    if isinstance(value, str):
        return storable_text(value)
    if isinstance(value, dict):
        return {storable(k): storable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [storable(v) for v in value]
    return value


def check_document(
    *,
    document_id: object,
    name: object,
    meta: Mapping,
    page_errors: Sequence[dict],
    chunks: Sequence[Chunk],
    caller_metadata: object,
) -> None:
    """`add_document`'s own check, in both stores: UnstorableInputError before anything is written."""
    check_storable("document_id", document_id)
    check_storable("name", name)
    check_storable("PDF metadata", {k: as_text(meta.get(k)) for k in ("title", "author", "producer")})
    check_storable("page_errors", list(page_errors))
    check_storable("metadata", caller_metadata)
    for chunk in chunks:
        check_storable(f"chunk {chunk.seq} text", chunk.text)


def as_text(value: object) -> str | None:
    """A PDF metadata value as both stores keep it."""
    return None if value is None else str(value)


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
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            if exc.errno == errno.ENOSPC:
                raise StoreDiskError(f"cannot create the folder of the SQLite store {path}: {exc}") from exc
            raise StoreConfigError(f"cannot create the folder of the SQLite store {path}: {exc}") from exc
        with _translate_errors(path):
            conn = sqlite3.connect(path, timeout=busy_timeout, isolation_level=None, check_same_thread=False)
        try:
            with _translate_errors(path):
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
            if self.conn.in_transaction:
                self.conn.execute("ROLLBACK")
            raise

    # -- reads ---------------------------------------------------------------------------
    def counts(self) -> dict[str, int]:
        with _translate_errors(self.path):
            docs = self.conn.execute("SELECT count(*) FROM documents").fetchone()[0]
            chunks = self.conn.execute("SELECT count(*) FROM chunks").fetchone()[0]
        return {"documents": docs, "chunks": chunks}

    def find(self, sha256: str, model: str) -> StoredDocument | None:
        with _translate_errors(self.path):
            row = self.conn.execute(
                "SELECT id, document_id, sha256, model, name, pages, pages_without_text, chunks, page_errors"
                " FROM documents WHERE sha256 = ? AND model = ?",
                (sha256, model),
            ).fetchone()
        if row is None:
            return None
        return StoredDocument(*row[:-1], page_errors=_page_errors(row[-1]))

    def document_keys(self) -> list[tuple[str, str, int]]:
        with _translate_errors(self.path):
            return [tuple(r) for r in self.conn.execute("SELECT sha256, model, dim FROM documents ORDER BY id")]

    def export_document(self, sha256: str, model: str) -> DocumentRecord | None:
        """The document stored under (sha256, model) with its chunks and vectors, read in one snapshot."""
        with _translate_errors(self.path):
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
        optionally only of one document id and of documents whose metadata has key == value.
        At most MAX_SEARCH_K hits, whatever `k` asks."""
        check_filters(document_id, where)
        k = min(k, MAX_SEARCH_K)
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
            # A top-level key with a string value, as PostgreSQL's `metadata @> {"key": "value"}`
            # matches. The key is compared as a value, never put into a JSON path: any key works.
            sql += (
                " AND EXISTS (SELECT 1 FROM json_each(d.metadata) m"
                " WHERE m.key = ? AND m.type = 'text' AND m.value = ?)"
            )
            params += [key, value]
        with _translate_errors(self.path):
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
        with _translate_errors(self.path):
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
        `created_at` (default now) is kept from the source when copying from another store.
        UnstorableInputError, before anything is written, for what PostgreSQL could not hold either."""
        check_document(
            document_id=document_id,
            name=name,
            meta=meta,
            page_errors=page_errors,
            chunks=chunks,
            caller_metadata=caller_metadata,
        )
        vectors = np.ascontiguousarray(vectors, dtype="<f4")
        if vectors.ndim != 2 or vectors.shape[0] != len(chunks):
            raise ValueError(f"{len(chunks)} chunks but vectors of shape {vectors.shape}")
        dim = int(vectors.shape[1]) if len(chunks) else 0
        with _translate_errors(self.path):
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
                        as_text(meta.get("title")),
                        as_text(meta.get("author")),
                        as_text(meta.get("producer")),
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


_CONFIG_ERRORS = {
    "SQLITE_NOTADB": "STORE_URL names {path}, which is not a SQLite database",
    "SQLITE_CORRUPT": "the SQLite store {path} is damaged: restore it from a backup or point STORE_URL elsewhere",
    "SQLITE_CANTOPEN": "the SQLite store {path} cannot be opened (a directory, or a folder this worker cannot write?)",
    "SQLITE_READONLY": "the SQLite store {path} is read-only to this worker",
    "SQLITE_PERM": "the SQLite store {path} is read-only to this worker",
}


def _typed(exc: sqlite3.Error, path: Path | None) -> WorkerError | None:
    """The typed error for one of SQLite's (None: leave it as it is, e.g. a constraint violation)."""
    name = getattr(exc, "sqlite_errorname", "") or ""
    base = name.split("_", 2)[:2]  # SQLITE_IOERR_WRITE -> SQLITE_IOERR
    base_name = "_".join(base)
    if base_name in ("SQLITE_BUSY", "SQLITE_LOCKED") or (isinstance(exc, sqlite3.OperationalError) and _busy(exc)):
        return StoreBusyError(f"the store stayed locked: {exc}")
    if base_name in ("SQLITE_FULL", "SQLITE_IOERR"):
        return StoreDiskError(f"the SQLite store {path} could not be written or read (disk full or failing): {exc}")
    if base_name in _CONFIG_ERRORS:
        return StoreConfigError(f"{_CONFIG_ERRORS[base_name].format(path=path)} ({exc})")
    return None


@contextlib.contextmanager
def _translate_errors(path: Path | None = None) -> Iterator[None]:
    """SQLite's errors as typed ones. Transient (the job is retried): locked past the busy timeout
    (StoreBusyError), disk full or an I/O error (StoreDiskError: space may be freed meanwhile).
    Final: not a database, damaged, cannot be opened, read-only (StoreConfigError)."""
    try:
        yield
    except sqlite3.Error as exc:
        typed = _typed(exc, path)
        if typed is None:
            raise
        raise typed from exc


def sqlite_problem(path: Path) -> str | None:
    """Why the SQLite file at `path` cannot be a store, from a look at it alone (no lock taken,
    nothing created), or None: a missing file is fine (the first job creates it)."""
    try:
        with open(path, "rb") as f:
            head = f.read(len(SQLITE_HEADER))
    except FileNotFoundError:
        return None
    except NotADirectoryError:
        return f"a folder on the way to the SQLite store {path} is not a directory: it cannot be created"
    except IsADirectoryError:
        return f"STORE_URL names {path}, which is a directory, not a SQLite database"
    except OSError as exc:
        return f"cannot read the SQLite store {path}: {exc.strerror or exc}"
    if head and head != SQLITE_HEADER:  # an empty file is a new, empty database to SQLite
        return f"STORE_URL names {path}, which is not a SQLite database"
    return None
