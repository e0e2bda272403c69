"""The store interface (`DocumentStore`), its records, and what both stores do the same way.

A store keeps documents and their chunks with float32 embedding vectors. A document is keyed by
(sha256 of its bytes, embedding model): storing the same bytes with the same model again is a
no-op that reports the existing row. Each document goes in one transaction, so a failure part
way leaves nothing behind. The two stores (worker/store/sqlite.py, worker/store/pg.py) share
the schema's column names, so the SQL that reads or writes those columns is written here once;
each store supplies its connection, its parameter mark, its error translation, its nearest-chunk
search and its insert.
"""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

import numpy as np

from worker.errors import InvalidArgumentsError, WorkerError
from worker.settings import Settings
from worker.store.hybrid import CANDIDATES, MODES, Ranked, fuse, pages_label, query_terms, single, snippet
from worker.store.storable import check_storable

DEFAULT_EF_SEARCH = Settings.hnsw_ef_search  # PostgreSQL search: hnsw.ef_search (HNSW_EF_SEARCH)
BUSY_TIMEOUT_S = Settings.store_busy_timeout  # the declared default of STORE_BUSY_TIMEOUT
MAX_SEARCH_K = 1000  # hits one search returns at most, on both stores (a larger k is clamped)


class StoreSchemaError(WorkerError):
    """The store was written by a newer version of this package."""


@dataclass(frozen=True)
class Chunk:
    """A piece of a document's text as the chunker cuts it and a store keeps it (offsets: see
    worker/chunking.py)."""

    seq: int
    text: str
    page_start: int | None  # None: a text without pages (ingest_text); stored as 0 (NO_PAGE)
    page_end: int | None
    char_start: int
    char_end: int
    n_tokens: int  # word pieces including the special tokens, as the model sees it


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
        """From `export_document`'s rows (EXPORT_DOCUMENT_SQL, EXPORT_CHUNKS_SQL), the same in both
        stores. `decoded`: page_errors, caller_metadata, created_at as each store reads them."""
        _, document_id, name, title, author, producer, pages, pages_without_text = row[:8]
        return cls(
            document_id=document_id,
            sha256=sha256,
            model=model,
            name=name,
            meta={"title": title, "author": author, "producer": producer},
            pages=pages,
            pages_without_text=pages_without_text,
            chunks=[Chunk(r[0], r[1], page(r[2]), page(r[3]), *r[4:-1]) for r in chunk_rows],
            vectors=vectors,
            **decoded,
        )


@dataclass(frozen=True)
class DocumentInfo:
    """A stored document as `documents list` and `documents show` report it: its row without
    chunks or vectors; `chunks` is the count of its chunk rows."""

    document_id: str
    sha256: str
    model: str
    name: str | None
    title: str | None
    author: str | None
    producer: str | None
    pages: int
    pages_without_text: int
    chunks: int
    page_errors: list[dict]
    metadata: dict  # given by the caller
    created_at: float  # seconds since the epoch

    def as_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def as_text(value: object) -> str | None:
    """A PDF metadata value as both stores keep it."""
    return None if value is None else str(value)


@dataclass(frozen=True)
class DocumentRow:
    """A new document's row in `documents`, fields in column order, as both stores insert it."""

    document_id: str
    sha256: str
    model: str
    dim: int  # 0: no chunks
    name: str | None
    title: str | None
    author: str | None
    producer: str | None
    pages: int
    pages_without_text: int
    chunks: int
    no_text: bool  # no page had text (a scan): stored, zero chunks
    page_errors: list[dict]
    metadata: dict  # given by the caller
    created_at: float | None  # None: now

    def values(self, as_json: Callable[[Any], Any], now: float | None = None) -> tuple:
        """The values to bind, page_errors and metadata through `as_json`, a missing created_at as `now`."""
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        values.update(page_errors=as_json(self.page_errors), metadata=as_json(self.metadata))
        if self.created_at is None:
            values["created_at"] = now
        return tuple(values.values())

    def stored(self, doc: int) -> StoredDocument:
        """The row as stored under the id `doc`."""
        return StoredDocument(
            doc,
            self.document_id,
            self.sha256,
            self.model,
            self.name,
            self.pages,
            self.pages_without_text,
            self.chunks,
            list(self.page_errors),
        )


DOCUMENT_COLUMNS = ", ".join(f.name for f in fields(DocumentRow))
CHUNK_COLUMNS = "document, seq, page_start, page_end, char_start, char_end, n_tokens, text"
# Both stores' SQL, with {p} for the driver's parameter mark and {vector} for the vector column.
FIND_SQL = (
    "SELECT id, document_id, sha256, model, name, pages, pages_without_text, chunks, page_errors"
    " FROM documents WHERE sha256 = {p} AND model = {p}"
)
KEYS_SQL = "SELECT sha256, model, dim FROM documents ORDER BY id"
EXPORT_DOCUMENT_SQL = (
    "SELECT id, document_id, name, title, author, producer, pages, pages_without_text, page_errors,"
    " metadata, created_at, dim FROM documents WHERE sha256 = {p} AND model = {p}"
)
EXPORT_CHUNKS_SQL = (
    "SELECT seq, text, page_start, page_end, char_start, char_end, n_tokens, {vector}"
    " FROM chunks WHERE document = {p} ORDER BY seq"
)
INFO_SQL = (
    "SELECT document_id, sha256, model, name, title, author, producer, pages, pages_without_text,"
    " (SELECT count(*) FROM chunks c WHERE c.document = documents.id), page_errors, metadata, created_at"
    " FROM documents"
)
HIT_COLUMNS = "d.document_id, d.name, d.title, c.page_start, c.page_end, c.char_start, c.char_end, c.text"
CHUNKS_OF_DOCUMENTS = "FROM chunks c JOIN documents d ON d.id = c.document"
NO_PAGE = 0  # page_start and page_end of a chunk of a text without pages, as stored (pages count from 1)


def page(stored: int) -> int | None:
    """A stored page number as a chunk or hit has it: None for NO_PAGE."""
    return None if stored == NO_PAGE else stored


def chunk_rows(doc: int, chunks: Sequence[Chunk], vectors: Sequence) -> Iterator[tuple]:
    """The rows of `chunks` (CHUNK_COLUMNS, then the vector as given) of document `doc`."""
    for c, vec in zip(chunks, vectors, strict=True):
        p0 = NO_PAGE if c.page_start is None else c.page_start
        p1 = NO_PAGE if c.page_end is None else c.page_end
        yield (doc, c.seq, p0, p1, c.char_start, c.char_end, c.n_tokens, c.text, vec)


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(float(value), 6)


def hit(row: Sequence[Any], ranked: Ranked, terms: Sequence[tuple[str, ...]]) -> dict:
    """One search hit (a row of HIT_COLUMNS and what the search said of it), the same on both stores."""
    document, name, title, p0, p1, c0, c1, text = row
    p0, p1 = page(p0), page(p1)
    return {
        "document": document,
        "name": name,
        "title": title,
        "page_start": p0,
        "page_end": p1,
        "pages": pages_label(p0, p1),
        "char_start": c0,
        "char_end": c1,
        "score": _rounded(ranked.score),
        "dense_rank": ranked.dense_rank,
        "dense_score": _rounded(ranked.dense_score),
        "keyword_rank": ranked.keyword_rank,
        "keyword_score": _rounded(ranked.keyword_score),
        "fused_score": _rounded(ranked.fused_score),
        "snippet": snippet(text, terms),
        "text": text,
    }


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


def checked_vectors(chunks: Sequence[Chunk], vectors: np.ndarray) -> tuple[np.ndarray, int]:
    """`vectors` as contiguous little-endian float32, one row per chunk, and their dimension (0: no chunks);
    ValueError for any other shape."""
    vectors = np.ascontiguousarray(vectors, dtype="<f4")
    if vectors.ndim != 2 or vectors.shape[0] != len(chunks):
        raise ValueError(f"{len(chunks)} chunks but vectors of shape {vectors.shape}")
    return vectors, int(vectors.shape[1]) if len(chunks) else 0


def filter_conditions(p: str, model: str | None, document_id: str | None) -> tuple[list[str], list[object]]:
    """The search conditions written alike on both stores (`p`: the parameter mark), and their parameters."""
    conds: list[str] = []
    params: list[object] = []
    if model is not None:
        conds.append(f"d.model = {p}")
        params.append(model)
    if document_id is not None:
        conds.append(f"d.document_id = {p}")
        params.append(document_id)
    return conds, params


class DocumentStore(ABC):
    """What jobs, the CLI and the health server need of a store, whichever it is; written here once
    where both stores do the same."""

    kind: ClassVar[str]  # "sqlite" or "postgresql"
    dim: int | None  # the one vector dimension the schema holds (PostgreSQL); None: any (SQLite)
    mark: ClassVar[str]  # the driver's parameter mark
    conn: Any  # a DB-API connection: execute(sql, params) returns a cursor

    @abstractmethod
    def errors(self) -> contextlib.AbstractContextManager[None]:
        """A context that turns the driver's errors into typed ones (worker/errors.py)."""

    @abstractmethod
    def counts(self) -> dict[str, int]: ...

    @abstractmethod
    def export_document(self, sha256: str, model: str) -> DocumentRecord | None:
        """The document stored under (sha256, model) with its chunks and vectors, read in one snapshot."""

    @abstractmethod
    def _page_errors(self, value: Any) -> list[dict]:
        """The stored page_errors column as a list."""

    @abstractmethod
    def _metadata(self, value: Any) -> dict:
        """The stored metadata column as a dict."""

    @abstractmethod
    def _timestamp(self, value: Any) -> float:
        """The stored created_at column as seconds since the epoch."""

    @abstractmethod
    def _transaction(self) -> contextlib.AbstractContextManager[None]:
        """A write transaction, committed unless the block raises, its errors typed as errors() types them."""

    def transaction(self) -> contextlib.AbstractContextManager[None]:
        """A write transaction on the store's connection, for modules that keep tables beside it."""
        return self._transaction()

    @abstractmethod
    def _nearest(
        self, query: np.ndarray, k: int, model: str | None, document_id: str | None, where: Mapping[str, str] | None
    ) -> list[tuple[int, float]]:
        """The k nearest chunks: (chunk id, cosine score), best first."""

    @abstractmethod
    def _keyword(
        self,
        terms: Sequence[tuple[str, ...]],
        k: int,
        model: str | None,
        document_id: str | None,
        where: Mapping[str, str] | None,
    ) -> list[tuple[int, float]]:
        """The k chunks best matching any of `terms` (worker/store/hybrid.py): (chunk id, keyword
        score, higher is better), best first."""

    @abstractmethod
    def _insert(self, row: DocumentRow, chunks: Sequence[Chunk], vectors: np.ndarray) -> tuple[StoredDocument, bool]:
        """Insert `row` and its chunks in one transaction unless (sha256, model) is stored: see add_document."""

    def _read(self, sql: str, params: Sequence = ()) -> list:
        with self.errors():
            return self.conn.execute(sql, params).fetchall()

    def find(self, sha256: str, model: str) -> StoredDocument | None:
        rows = self._read(FIND_SQL.format(p=self.mark), (sha256, model))
        if not rows:
            return None
        return StoredDocument(*rows[0][:-1], page_errors=self._page_errors(rows[0][-1]))

    def document_keys(self) -> list[tuple[str, str, int]]:
        """(sha256, model, dim) of every stored document, oldest first (dim 0: no chunks)."""
        return [tuple(r) for r in self._read(KEYS_SQL)]

    def documents(self, document_id: str | None = None) -> list[DocumentInfo]:
        """The stored documents, oldest first; with `document_id`, those stored under that id (one id
        may name several rows: other bytes given the same id, or the same bytes under another model)."""
        sql = INFO_SQL + (f" WHERE document_id = {self.mark}" if document_id is not None else "") + " ORDER BY id"
        rows = self._read(sql, () if document_id is None else (document_id,))
        return [
            DocumentInfo(
                *row[:10],
                page_errors=self._page_errors(row[10]),
                metadata=self._metadata(row[11]),
                created_at=self._timestamp(row[12]),
            )
            for row in rows
        ]

    def delete_document(self, document_id: str) -> tuple[int, int]:
        """Remove the documents stored under `document_id`, their chunks and vectors, in one
        transaction; returns (documents, chunks) removed, (0, 0) when there was none.

        Only rows committed when it looks are removed: an ingest of the same document committing
        meanwhile keeps its whole document (each add_document is one transaction)."""
        p = self.mark
        with self._transaction():
            ids = [r[0] for r in self.conn.execute(f"SELECT id FROM documents WHERE document_id = {p}", (document_id,))]
            if not ids:
                return 0, 0
            marks = ", ".join([p] * len(ids))
            chunks = self.conn.execute(f"DELETE FROM chunks WHERE document IN ({marks})", ids).rowcount
            documents = self.conn.execute(f"DELETE FROM documents WHERE id IN ({marks})", ids).rowcount
        return documents, chunks

    def search(
        self,
        vector: np.ndarray | None = None,
        k: int = 5,
        model: str | None = None,
        document_id: str | None = None,
        where: Mapping[str, str] | None = None,
        *,
        text: str | None = None,
        mode: str = "dense",
        candidates: int = CANDIDATES,
    ) -> list[dict]:
        """The k best chunks, best first, optionally only of one document id and of documents whose
        metadata has key == value (the same filters on both sides). At most MAX_SEARCH_K hits.

        `mode`: "dense" ranks by cosine to `vector` (vectors stored normalized; SQLite exact,
        PostgreSQL through the HNSW index); "keyword" by the keyword index's score for the terms
        of `text`; "hybrid" fuses the `candidates` best of each (worker/store/hybrid.py), and is
        dense alone when `text` has no terms."""
        if mode not in MODES:
            raise InvalidArgumentsError(f"search mode must be one of {', '.join(MODES)}, got {mode!r}")
        check_filters(document_id, where)
        k = min(k, MAX_SEARCH_K)
        terms = query_terms(text) if mode != "dense" else []
        if mode != "keyword" and vector is None:
            raise InvalidArgumentsError(f"a {mode} search needs the query's vector")
        if k <= 0:
            return []
        dense: list[tuple[int, float]] = []
        keyword: list[tuple[int, float]] = []
        n = k if mode != "hybrid" else max(k, candidates)
        query = None if mode == "keyword" else np.asarray(vector, dtype=np.float32).reshape(-1)
        if mode == "hybrid" and terms:
            dense, keyword = self._both(query, terms, n, model, document_id, where)
        elif query is not None:
            dense = self._nearest(query, n, model, document_id, where)
        elif terms:
            keyword = self._keyword(terms, n, model, document_id, where)
        if mode == "hybrid" and terms:
            ranked = fuse(dense, keyword, k)
        else:
            ranked = single(keyword, "keyword") if mode == "keyword" else single(dense[:k], "dense")
        rows = self._hit_rows([r.chunk for r in ranked])
        return [hit(rows[r.chunk], r, terms) for r in ranked]

    def _both(
        self,
        query: np.ndarray,
        terms: Sequence[tuple[str, ...]],
        n: int,
        model: str | None,
        document_id: str | None,
        where: Mapping[str, str] | None,
    ) -> tuple[list[tuple[int, float]], list[tuple[int, float]]]:
        """Both sides of a hybrid search: (dense, keyword), `n` chunks each. One after the other
        here; a store may run them side by side."""
        return self._nearest(query, n, model, document_id, where), self._keyword(terms, n, model, document_id, where)

    def _hit_rows(self, chunk_ids: Sequence[int]) -> dict[int, tuple]:
        """The rows of HIT_COLUMNS of these chunks, by chunk id."""
        if not chunk_ids:
            return {}
        marks = ", ".join([self.mark] * len(chunk_ids))
        sql = f"SELECT c.id, {HIT_COLUMNS} {CHUNKS_OF_DOCUMENTS} WHERE c.id IN ({marks})"
        return {r[0]: tuple(r[1:]) for r in self._read(sql, list(chunk_ids))}

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
        UnstorableInputError, before anything is written, for what either store could not hold."""
        check_document(
            document_id=document_id,
            name=name,
            meta=meta,
            page_errors=page_errors,
            chunks=chunks,
            caller_metadata=caller_metadata,
        )
        vectors, dim = checked_vectors(chunks, vectors)
        row = DocumentRow(
            document_id=document_id,
            sha256=sha256,
            model=model,
            dim=dim,
            name=name,
            title=as_text(meta.get("title")),
            author=as_text(meta.get("author")),
            producer=as_text(meta.get("producer")),
            pages=pages,
            pages_without_text=pages_without_text,
            chunks=len(chunks),
            no_text=not chunks,
            page_errors=list(page_errors),
            metadata=caller_metadata or {},
            created_at=created_at,
        )
        return self._insert(row, chunks, vectors)
