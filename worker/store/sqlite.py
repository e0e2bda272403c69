"""The SQLite store: one file on one host, the embedded default (`STORE_URL=sqlite:///...`).

WAL mode and a busy timeout so several worker processes on one host can write. The contract
(keyed by (sha256, model), one transaction per document) is worker/store/base.py's.

Search is exact cosine (vectors are L2-normalized, so a dot product) with numpy over the
whole stored matrix. That is fine up to a few hundred thousand chunks (384 float32 each:
about 150 MB and well under a second per 100,000 chunks, see docs/benchmarks.md); past that, use an
approximate index or a shared store with pgvector.

Keyword search is FTS5 (in the sqlite3 every Python ships) over the chunks' text, an
external-content table (`chunks_fts`: the index alone, the text stays in `chunks`) kept exact
by triggers on every insert, update and delete of a chunk, cascaded deletes included; ranked by
BM25, with the Porter stemmer over unicode61 words.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import errno
import json
import logging
import sqlite3
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np

from worker.errors import StoreBusyError, StoreConfigError, StoreDiskError, WorkerError
from worker.settings import sqlite_path
from worker.store.base import (
    BUSY_TIMEOUT_S,
    CHUNK_COLUMNS,
    CHUNKS_OF_DOCUMENTS,
    DOCUMENT_COLUMNS,
    EXPORT_CHUNKS_SQL,
    EXPORT_DOCUMENT_SQL,
    Chunk,
    DocumentRecord,
    DocumentRow,
    DocumentStore,
    StoredDocument,
    StoreSchemaError,
    chunk_rows,
    filter_conditions,
)
from worker.store.hybrid import fts5_query

log = logging.getLogger("worker.store")

SCHEMA_VERSION = 2
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
# page_start and page_end are 0 (NO_PAGE) for a text without pages.

# Version 2: the keyword index. Never edit a version that has shipped: add the next.
KEYWORD_INDEX = """
CREATE VIRTUAL TABLE chunks_fts USING fts5(
    text, content = 'chunks', content_rowid = 'id', tokenize = 'porter unicode61 remove_diacritics 2'
);
CREATE TRIGGER chunks_fts_insert AFTER INSERT ON chunks BEGIN
    INSERT INTO chunks_fts (rowid, text) VALUES (new.id, new.text);
END;
CREATE TRIGGER chunks_fts_delete AFTER DELETE ON chunks BEGIN
    INSERT INTO chunks_fts (chunks_fts, rowid, text) VALUES ('delete', old.id, old.text);
END;
CREATE TRIGGER chunks_fts_update AFTER UPDATE OF id, text ON chunks BEGIN
    INSERT INTO chunks_fts (chunks_fts, rowid, text) VALUES ('delete', old.id, old.text);
    INSERT INTO chunks_fts (rowid, text) VALUES (new.id, new.text);
END;
INSERT INTO chunks_fts (chunks_fts) VALUES ('rebuild');
"""
MIGRATIONS = {1: SCHEMA, 2: KEYWORD_INDEX}  # version -> the statements that bring the one before to it


def _statements(script: str) -> list[str]:
    """The statements of `script`, split on the `;` that end them (trigger bodies kept whole)."""
    out, current = [], ""
    for line in script.strip().splitlines(keepends=True):
        current += line
        if current.rstrip().endswith(";") and sqlite3.complete_statement(current):
            out.append(current.strip())
            current = ""
    return out


class SqliteStore(DocumentStore):
    """The SQLite store (see the module docstring)."""

    kind = "sqlite"
    dim = None  # each document has its own dimension; a search matches those of its query's
    mark = "?"

    def __init__(self, conn: sqlite3.Connection, path: Path, busy_timeout: float = BUSY_TIMEOUT_S) -> None:
        self.conn = conn
        self.path = path
        self.busy_timeout = busy_timeout
        self._reader: sqlite3.Connection | None = None  # a hybrid search's keyword side, opened when first needed

    @classmethod
    @contextlib.contextmanager
    def open(cls, store_url: str, busy_timeout: float = BUSY_TIMEOUT_S) -> Iterator[SqliteStore]:
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
        store = None
        try:
            with _translate_errors(path):
                conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
                conn.execute("PRAGMA journal_mode = WAL")
                conn.execute("PRAGMA synchronous = NORMAL")
                conn.execute("PRAGMA foreign_keys = ON")
                store = cls(conn, path, busy_timeout)
                store._migrate()
            yield store
        finally:
            if store is not None and store._reader is not None:
                store._reader.close()
            conn.close()

    def _migrate(self) -> None:
        version = self.conn.execute("PRAGMA user_version").fetchone()[0]
        if version == SCHEMA_VERSION:
            return
        if version > SCHEMA_VERSION:
            raise StoreSchemaError(f"{self.path} has schema {version}; this version knows up to {SCHEMA_VERSION}")
        with self._write():
            # Another process may have migrated it while we waited for the lock.
            version = self.conn.execute("PRAGMA user_version").fetchone()[0]
            for number in range(version + 1, SCHEMA_VERSION + 1):
                started = time.perf_counter()
                for statement in _statements(MIGRATIONS[number]):
                    self.conn.execute(statement)
                if number == 2 and version > 0:  # an existing store: its keyword index was built now
                    chunks = self.conn.execute("SELECT count(*) FROM chunks").fetchone()[0]
                    log.info(
                        "SQLite store %s: keyword index built over %d chunks in %.2fs (schema %d -> %d)",
                        self.path,
                        chunks,
                        time.perf_counter() - started,
                        version,
                        SCHEMA_VERSION,
                    )
            self.conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    @contextlib.contextmanager
    def _write(self) -> Iterator[None]:
        """A write transaction (BEGIN IMMEDIATE: the write lock now), committed unless the block
        raises or rolled back by it."""
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield
            if self.conn.in_transaction:
                self.conn.execute("COMMIT")
        except BaseException:
            if self.conn.in_transaction:
                self.conn.execute("ROLLBACK")
            raise

    def errors(self) -> contextlib.AbstractContextManager[None]:
        return _translate_errors(self.path)

    # -- reads ---------------------------------------------------------------------------
    def counts(self) -> dict[str, int]:
        with _translate_errors(self.path):
            docs = self.conn.execute("SELECT count(*) FROM documents").fetchone()[0]
            chunks = self.conn.execute("SELECT count(*) FROM chunks").fetchone()[0]
        return {"documents": docs, "chunks": chunks}

    def _page_errors(self, value: str | None) -> list[dict]:
        return _page_errors(value)

    def _metadata(self, value: str | None) -> dict:
        try:
            metadata = json.loads(value or "{}")
        except ValueError:
            return {}
        return metadata if isinstance(metadata, dict) else {}

    def _timestamp(self, value: float) -> float:
        return float(value)

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        with _translate_errors(self.path), self._write():
            yield

    def export_document(self, sha256: str, model: str) -> DocumentRecord | None:
        with _translate_errors(self.path):
            self.conn.execute("BEGIN")
            try:
                row = self.conn.execute(EXPORT_DOCUMENT_SQL.format(p="?"), (sha256, model)).fetchone()
                rows = []
                if row is not None:
                    rows = self.conn.execute(EXPORT_CHUNKS_SQL.format(p="?", vector="vector"), (row[0],)).fetchall()
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

    def _filters(
        self, model: str | None, document_id: str | None, where: Mapping[str, str] | None
    ) -> tuple[list[str], list[object]]:
        conds, params = filter_conditions("?", model, document_id)
        for key, value in (where or {}).items():
            # A top-level key with a string value, as PostgreSQL's `metadata @> {"key": "value"}`
            # matches. The key is compared as a value, never put into a JSON path: any key works.
            conds.append(
                "EXISTS (SELECT 1 FROM json_each(d.metadata) m WHERE m.key = ? AND m.type = 'text' AND m.value = ?)"
            )
            params += [key, value]
        return conds, params

    def _nearest(
        self, query: np.ndarray, k: int, model: str | None, document_id: str | None, where: Mapping[str, str] | None
    ) -> list[tuple[int, float]]:
        """Exact: every candidate's vector scored with numpy."""
        conds, params = self._filters(model, document_id, where)
        sql = f"SELECT c.id, c.vector {CHUNKS_OF_DOCUMENTS} WHERE " + " AND ".join(["d.dim = ?", *conds])
        rows = self._read(sql, [query.shape[0], *params])
        if not rows or k <= 0:
            return []
        ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
        matrix = np.frombuffer(b"".join(r[1] for r in rows), dtype="<f4").reshape(len(rows), -1)
        scores = matrix @ query
        k = min(k, len(rows))
        top = np.argpartition(-scores, k - 1)[:k]
        top = top[np.argsort(-scores[top], kind="stable")]
        return [(int(ids[i]), float(scores[i])) for i in top]

    def _keyword(
        self,
        terms: Sequence[tuple[str, ...]],
        k: int,
        model: str | None,
        document_id: str | None,
        where: Mapping[str, str] | None,
        conn: sqlite3.Connection | None = None,
    ) -> list[tuple[int, float]]:
        """FTS5, ranked by BM25 (SQLite's bm25() is lower for better: its negation is the score);
        on `conn` when given (another connection to the same file)."""
        conds, params = self._filters(model, document_id, where)
        sql = (
            "SELECT c.id, -bm25(chunks_fts) AS score FROM chunks_fts JOIN chunks c ON c.id = chunks_fts.rowid"
            " JOIN documents d ON d.id = c.document WHERE chunks_fts MATCH ?"
            + "".join(f" AND {cond}" for cond in conds)
            + " ORDER BY score DESC, c.id LIMIT ?"
        )
        with _translate_errors(self.path):
            rows = (conn or self.conn).execute(sql, [fts5_query(terms), *params, k]).fetchall()
        return [(r[0], float(r[1])) for r in rows]

    def _both(
        self,
        query: np.ndarray,
        terms: Sequence[tuple[str, ...]],
        n: int,
        model: str | None,
        document_id: str | None,
        where: Mapping[str, str] | None,
    ) -> tuple[list[tuple[int, float]], list[tuple[int, float]]]:
        """Side by side: the keyword side in a thread on a second connection (SQLite runs a query
        without Python's lock, numpy its product too), so a hybrid search takes about as long as
        the longer side rather than both (measured in docs/benchmarks.md)."""
        if self._reader is None:
            with _translate_errors(self.path):
                self._reader = sqlite3.connect(self.path, timeout=self.busy_timeout, check_same_thread=False)
                self._reader.execute("PRAGMA query_only = ON")
        with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="keyword") as pool:
            keyword = pool.submit(self._keyword, terms, n, model, document_id, where, self._reader)
            dense = self._nearest(query, n, model, document_id, where)
            return dense, keyword.result()

    # -- writes --------------------------------------------------------------------------
    def _insert(self, row: DocumentRow, chunks: Sequence[Chunk], vectors: np.ndarray) -> tuple[StoredDocument, bool]:
        with _translate_errors(self.path), self._write():
            existing = self.find(row.sha256, row.model)
            if existing is not None:
                self.conn.execute("ROLLBACK")
                return existing, True
            values = row.values(json.dumps, now=time.time())
            doc = self.conn.execute(
                f"INSERT INTO documents ({DOCUMENT_COLUMNS}) VALUES ({', '.join('?' * len(values))})", values
            ).lastrowid
            self.conn.executemany(
                f"INSERT INTO chunks ({CHUNK_COLUMNS}, vector) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                chunk_rows(doc, chunks, (v.tobytes() for v in vectors)),
            )
        return row.stored(doc), False


def _busy(exc: sqlite3.OperationalError) -> bool:
    msg = str(exc).lower()
    return "locked" in msg or "busy" in msg


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
