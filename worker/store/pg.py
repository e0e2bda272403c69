"""The PostgreSQL store: documents and chunks with pgvector vectors, shared by many hosts.

Selected by `STORE_URL=postgresql://user:pass@host:5432/db` (or `postgres://`); the URL goes to
libpq as it is, so query options such as `sslmode` or `connect_timeout` pass through. It needs the
optional extra `pip install 'worker[postgres]'` (psycopg 3 and pgvector's adapter).

Same contract as the SQLite store (worker/store/base.py): a document is keyed by (sha256, model); the
same bytes with the same model are stored once, whoever stores them first; each document goes in
one transaction. Exactly once under concurrency comes from `INSERT ... ON CONFLICT DO NOTHING`:
a second writer of the same key waits for the first one's transaction, then inserts nothing and
reads the row the first one committed. Chunks go in with binary COPY.

Keyword search is PostgreSQL's full text search: a generated `tsvector` column (`chunks.tsv`,
English stemming) with a GIN index, ranked by `ts_rank(tsv, term, 1)` (divided by 1 + the log of
the chunk's length) of each term, weighted by its rarity (PgStore._keyword). PostgreSQL's parser
keeps `worker.store_pg.PgStore` or `config_v2.yaml` as one token, so the column also holds such
tokens split on `.`, `_`, `-`, `/` (`worker_split_words`): `PgStore` and `config_v2` find them.
Each query term is a phrase of its parts, terms ORed.

Schema changes are numbered migrations applied under a transaction-scoped advisory lock, so
workers starting together apply each one once. Vectors are `vector(dim)` with an HNSW index
(cosine); the dimension is fixed when the schema is created (the model's, 384 by default).

Errors that a retry can outlive (connection refused or lost, admin shutdown, a restart or
failover, serialization failure, deadlock, a lock wait past the timeout) become
`StoreUnavailableError`, a TransientError: the job is retried. Their text never holds the URL
or its password.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

import numpy as np

from worker.errors import StoreConfigError, StoreUnavailableError, UnstorableInputError
from worker.settings import MAX_EF_SEARCH, redact, redact_url
from worker.store.base import (
    BUSY_TIMEOUT_S,
    CHUNK_COLUMNS,
    CHUNKS_OF_DOCUMENTS,
    DEFAULT_EF_SEARCH,
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

log = logging.getLogger("worker.store_pg")  # the name it logged under before the store package

try:
    import psycopg
    from pgvector.psycopg.vector import register_vector_info
    from psycopg.types import TypeInfo
    from psycopg.types.json import Jsonb
except ImportError:  # the base install has no PostgreSQL driver; open() says how to get one
    psycopg = None  # type: ignore[assignment]

SCHEMA_VERSION = 4
DEFAULT_DIM = 384  # all-MiniLM-L6-v2; a schema is created with the embedder's own dimension
CONNECT_TIMEOUT_S = 5
# Key of pg_advisory_xact_lock while migrating ("worker" in ASCII): one migrator at a time.
MIGRATION_LOCK = 0x776F726B6572
# HNSW build options: why these and not pgvector's defaults (recall at 1M chunks, build time) is
# measured in docs/benchmarks.md (bench_store_pg.py).
HNSW_OPTIONS = "m = 32, ef_construction = 128"


def _schema(dim: int) -> list[str]:
    """Migration 1: the tables, vectors of `dim` dimensions with an HNSW index."""
    return [
        """CREATE TABLE documents (
            id                 bigserial PRIMARY KEY,
            document_id        text NOT NULL,
            sha256             text NOT NULL,
            model              text NOT NULL,
            dim                integer NOT NULL,
            name               text,
            title              text,
            author             text,
            producer           text,
            pages              integer NOT NULL,
            pages_without_text integer NOT NULL,
            chunks             integer NOT NULL,
            no_text            boolean NOT NULL,
            page_errors        jsonb NOT NULL,
            metadata           jsonb NOT NULL,
            created_at         timestamptz NOT NULL DEFAULT now(),
            UNIQUE (sha256, model)
        )""",
        "CREATE INDEX documents_document_id ON documents (document_id)",
        f"""CREATE TABLE chunks (
            id          bigserial PRIMARY KEY,
            document    bigint NOT NULL REFERENCES documents (id) ON DELETE CASCADE,
            seq         integer NOT NULL,
            page_start  integer NOT NULL,
            page_end    integer NOT NULL,
            char_start  integer NOT NULL,
            char_end    integer NOT NULL,
            n_tokens    integer NOT NULL,
            text        text NOT NULL,
            embedding   vector({int(dim)}) NOT NULL,
            UNIQUE (document, seq)
        )""",
        "CREATE INDEX chunks_embedding_hnsw ON chunks USING hnsw (embedding vector_cosine_ops)",
    ]


# Migration 3: an empty index is made again with HNSW_OPTIONS. A filled one is not rebuilt here (that
# takes minutes per million chunks, with every worker waiting): its options are set, so that
# `REINDEX INDEX CONCURRENTLY chunks_embedding_hnsw` applies them, and the notice says so in the log.
_HNSW_OPTIONS_MIGRATION = f"""DO $$ BEGIN
    IF EXISTS (SELECT 1 FROM chunks) THEN
        ALTER INDEX chunks_embedding_hnsw SET ({HNSW_OPTIONS});
        RAISE NOTICE 'the HNSW index keeps the graph it was built with until'
            ' REINDEX INDEX CONCURRENTLY chunks_embedding_hnsw (better recall: {HNSW_OPTIONS})';
    ELSE
        DROP INDEX chunks_embedding_hnsw;
        CREATE INDEX chunks_embedding_hnsw ON chunks
            USING hnsw (embedding vector_cosine_ops) WITH ({HNSW_OPTIONS});
    END IF;
END $$"""


# Migration 4: the keyword index. The split words of compound tokens (letters and digits joined by
# `.`, `_`, `-`, `/`) are added to the English tsvector, after its own positions.
TS_CONFIG = "english"
_KEYWORD_MIGRATION = [
    r"""CREATE FUNCTION worker_split_words(t text) RETURNS text
        LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
        SELECT coalesce(string_agg(regexp_replace(m[1], '[._/-]+', ' ', 'g'), ' '), '')
        FROM regexp_matches(t, '([[:alnum:]]+(?:[._/-]+[[:alnum:]]+)+)', 'g') AS m
    $$""",
    f"""ALTER TABLE chunks ADD COLUMN tsv tsvector GENERATED ALWAYS AS (
        to_tsvector('{TS_CONFIG}'::regconfig, text) || to_tsvector('{TS_CONFIG}'::regconfig, worker_split_words(text))
    ) STORED""",
    "CREATE INDEX chunks_tsv ON chunks USING gin (tsv)",
]
RANKED_AT_MOST = 2_000  # chunks one keyword search ranks at most (PgStore._selector)
MIGRATION_NAMES = {4: "keyword index (tsvector column, GIN index)"}


def _migrations(dim: int) -> list[tuple[int, list[str]]]:
    """(version, statements). Never edit one that has shipped: add the next."""
    return [
        (1, _schema(dim)),
        (2, ["CREATE INDEX documents_metadata ON documents USING gin (metadata jsonb_path_ops)"]),
        (3, [_HNSW_OPTIONS_MIGRATION]),
        (4, _KEYWORD_MIGRATION),
    ]


def _require_driver() -> None:
    if psycopg is None:
        raise StoreConfigError(
            "STORE_URL names PostgreSQL but psycopg is not installed: pip install 'worker[postgres]'"
            " (psycopg[binary] and pgvector)"
        )


def _password(url: str) -> str | None:
    try:
        password = urlsplit(url).password
    except ValueError:
        return None
    return unquote(password) if password else None


def scrub(text: str, url: str) -> str:
    """`text` with the URL's password (raw and percent-encoded) and any URL credentials hidden."""
    for secret in {_password(url), (urlsplit(url).password if "://" in url else None)}:
        if secret:
            text = text.replace(secret, "***")
    return redact(text)


def _describe(exc: BaseException, url: str) -> str:
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {scrub(first, url)}" if first else type(exc).__name__


_TRANSIENT_STATES = ("25006",)  # read_only_sql_transaction: a primary turned standby in a failover


@contextlib.contextmanager
def translate_errors(url: str) -> Iterator[None]:
    """psycopg errors a retry can outlive -> StoreUnavailableError; their text never holds a secret."""
    try:
        yield
    except psycopg.OperationalError as exc:  # refused, lost, admin shutdown, serialization, deadlock, lock
        raise StoreUnavailableError(f"PostgreSQL unavailable ({_describe(exc, url)})") from None
    except psycopg.DataError as exc:  # a value PostgreSQL cannot hold that check_document let through
        raise UnstorableInputError(f"PostgreSQL refused a value ({_describe(exc, url)})") from None
    except psycopg.Error as exc:
        if getattr(exc, "sqlstate", None) in _TRANSIENT_STATES:
            raise StoreUnavailableError(f"PostgreSQL unavailable ({_describe(exc, url)})") from None
        raise


def connect(url: str, lock_timeout: float | None = None, connect_timeout: float | None = None):
    """A psycopg connection in autocommit mode (writes open their own transaction)."""
    _require_driver()
    kwargs: dict[str, Any] = {"autocommit": True}
    query = dict(parse_qsl(urlsplit(url).query))
    if "connect_timeout" not in query:
        kwargs["connect_timeout"] = max(1, round(connect_timeout or CONNECT_TIMEOUT_S))
    if "application_name" not in query:
        kwargs["application_name"] = "worker"
    try:
        conn = psycopg.connect(url, **kwargs)
    except psycopg.OperationalError as exc:
        raise StoreUnavailableError(
            f"PostgreSQL at {redact_url(url)} unreachable ({_describe(exc, url)}): start it, or fix STORE_URL"
        ) from None
    except psycopg.Error as exc:  # a conninfo libpq cannot parse: its message may quote the URL
        raise StoreConfigError(f"STORE_URL {redact_url(url)} refused by libpq ({_describe(exc, url)})") from None
    if lock_timeout:
        with translate_errors(url):
            conn.execute(f"SET lock_timeout = {int(lock_timeout * 1000)}")
    return conn


def check_reachable(url: str, timeout: float = 2.0) -> tuple[bool, str]:
    """Readiness: can we connect and run a query within `timeout`? The reason names no secret."""
    try:
        conn = connect(url, connect_timeout=timeout)
    except (StoreUnavailableError, StoreConfigError) as exc:
        return False, str(exc)
    try:
        with translate_errors(url):
            conn.execute("SELECT 1")
        return True, "ok"
    except StoreUnavailableError as exc:
        return False, str(exc)
    finally:
        conn.close()


class PgStore(DocumentStore):
    """The PostgreSQL store (see the module docstring)."""

    kind = "postgresql"
    dim: int  # vector(dim) of chunks.embedding, fixed when the schema was created
    mark = "%s"

    def __init__(self, conn, url: str, dim: int, ef_search: int = DEFAULT_EF_SEARCH) -> None:
        self.conn = conn
        self.url = url
        self.dim = dim
        self.ef_search = ef_search
        self._common: dict[str, float] | None = None  # lexeme -> chunks holding it (estimated), once read
        self._rows = 0.0  # chunks, as the statistics count them

    @classmethod
    @contextlib.contextmanager
    def open(
        cls,
        url: str,
        busy_timeout: float = BUSY_TIMEOUT_S,
        *,
        ef_search: int = DEFAULT_EF_SEARCH,
        dim: int | None = None,
    ) -> Iterator[PgStore]:
        """Connect, apply pending migrations (creating the schema with `dim`), yield the store."""
        conn = connect(url, lock_timeout=busy_timeout)
        try:
            with translate_errors(url):
                store_dim = _migrate(conn, url, dim or DEFAULT_DIM)
                register_vector_info(conn, TypeInfo.fetch(conn, "vector"))
            yield cls(conn, url, store_dim, ef_search)
        finally:
            conn.close()

    def errors(self) -> contextlib.AbstractContextManager[None]:
        return translate_errors(self.url)

    # -- reads ---------------------------------------------------------------------------
    def counts(self) -> dict[str, int]:
        with translate_errors(self.url):
            docs, chunks = self.conn.execute(
                "SELECT (SELECT count(*) FROM documents), (SELECT count(*) FROM chunks)"
            ).fetchone()
        return {"documents": docs, "chunks": chunks}

    def _page_errors(self, value: Any) -> list[dict]:
        return value if isinstance(value, list) else []

    def _metadata(self, value: Any) -> dict:
        return value if isinstance(value, dict) else {}

    def _timestamp(self, value: Any) -> float:
        return value.timestamp()

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        with translate_errors(self.url), self.conn.transaction():
            yield

    def export_document(self, sha256: str, model: str) -> DocumentRecord | None:
        """The document stored under (sha256, model) with its chunks and vectors, read in one snapshot;
        vectors come back in binary, the float32 values as stored."""
        with translate_errors(self.url), self.conn.transaction(), self.conn.cursor(binary=True) as cur:
            cur.adapters.register_loader("vector", _Float32Loader)
            cur.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            row = cur.execute(EXPORT_DOCUMENT_SQL.format(p="%s"), (sha256, model)).fetchone()
            if row is None:
                return None
            rows = cur.execute(EXPORT_CHUNKS_SQL.format(p="%s", vector="embedding"), (row[0],)).fetchall()
        errors, metadata, created, dim = row[8:]
        vectors = np.zeros((len(rows), dim), dtype=np.float32)
        for i, r in enumerate(rows):
            vectors[i] = r[-1]  # big-endian float32 to native: exact
        return DocumentRecord.from_rows(
            sha256,
            model,
            row,
            rows,
            vectors,
            page_errors=self._page_errors(errors),
            caller_metadata=metadata if isinstance(metadata, dict) else {},
            created_at=created.timestamp(),
        )

    def _filters(
        self, model: str | None, document_id: str | None, where: Mapping[str, str] | None
    ) -> tuple[list[str], list[object]]:
        conds, params = filter_conditions("%s", model, document_id)
        if where:
            conds.append("d.metadata @> %s")
            params.append(Jsonb(dict(where)))
        return conds, params

    def search_sql(
        self, model: str | None, document_id: str | None, where: Mapping[str, str] | None
    ) -> tuple[str, list[object]]:
        """The nearest-chunks query: ORDER BY the cosine distance operator, so the HNSW index
        serves it; filters join on documents (the iterative scan keeps looking past misses).
        The first parameter is the query vector, the last the limit."""
        conds, params = self._filters(model, document_id, where)
        sql = (
            f"SELECT c.id, c.embedding <=> %s AS distance {CHUNKS_OF_DOCUMENTS}"
            + (" WHERE " + " AND ".join(conds) if conds else "")
            + " ORDER BY distance LIMIT %s"
        )
        return sql, params

    def _keyword(
        self,
        terms: Sequence[tuple[str, ...]],
        k: int,
        model: str | None,
        document_id: str | None,
        where: Mapping[str, str] | None,
    ) -> list[tuple[int, float]]:
        """Through the GIN index on chunks.tsv, among the chunks holding the terms `_selector` picks
        (at most RANKED_AT_MOST), ranked by the sum over every term of ts_rank(tsv, term, 1) weighted
        by the term's inverse document frequency as BM25 has it (ts_rank has none: on Cranfield the
        weights take keyword nDCG@10 from 0.316 to 0.320 and hybrid from 0.388 to 0.399)."""
        conds, params = self._filters(model, document_id, where)
        texts = [" ".join(parts) for parts in terms]
        chosen, weights = self._selector(texts)
        if not chosen:
            return []
        phrase = f"phraseto_tsquery('{TS_CONFIG}', %s)"
        selected = " || ".join([phrase] * len(chosen))
        rank = " + ".join([f"%s * ts_rank(m.tsv, {phrase}, 1)"] * len(weights))
        rank_params = [x for text, weight in weights.items() for x in (weight, text)]
        sql = (
            f"SELECT m.id, {rank} AS score FROM"
            f" (SELECT c.id, c.tsv {CHUNKS_OF_DOCUMENTS} WHERE c.tsv @@ ({selected})"
            + "".join(f" AND {cond}" for cond in conds)
            + f" LIMIT {RANKED_AT_MOST}) m ORDER BY score DESC, m.id LIMIT %s"
        )
        rows = self._read(sql, [*rank_params, *chosen, *params, int(k)])
        return [(r[0], float(r[1])) for r in rows]

    def _selector(self, texts: list[str]) -> tuple[list[str], dict[str, float]]:
        """The terms whose chunks a keyword search ranks: the rarest, as many as hold together about
        RANKED_AT_MOST chunks (at least one), by the planner's statistics of chunks.tsv (which
        ANALYZE, so autovacuum, keeps); terms of stop words only are none.

        Ranking is what a keyword search costs in PostgreSQL: every selected row is read and ranked,
        the GIN index gives no order. A common word (`flow` in a fluid-dynamics library) selects a
        large share of the store, and ts_rank, which has no notion of a word's rarity, learns
        little from it: chunks that hold only common terms are not ranked (at 100,000 chunks), and
        the ranking itself still counts every term. Measured in docs/benchmarks.md."""
        rows = self._read(
            f"SELECT tsvector_to_array(to_tsvector('{TS_CONFIG}', t))"
            " FROM unnest(%s::text[]) WITH ORDINALITY AS u(t, n) ORDER BY n",
            [texts],
        )
        words = {text: row[0] for text, row in zip(texts, rows, strict=True) if row[0]}  # none: stop words only
        if self._common is None:
            stats = self._read(
                "SELECT s.most_common_elems::text::text[], s.most_common_elem_freqs, c.reltuples FROM pg_stats s"
                " JOIN pg_class c ON c.oid = to_regclass('chunks') WHERE s.schemaname = current_schema()"
                " AND s.tablename = 'chunks' AND s.attname = 'tsv'"
            )
            self._common, self._rows = {}, 0.0
            if stats and stats[0][0]:
                self._rows = max(0.0, float(stats[0][2]))
                self._common = {w: f * self._rows for w, f in zip(stats[0][0], stats[0][1], strict=False)}
        held = {t: min(self._common.get(w, 0.0) for w in ws) for t, ws in words.items()}  # chunks, estimated
        chosen, total = [], 0.0
        for text in sorted(held, key=held.__getitem__):
            if chosen and total + held[text] > RANKED_AT_MOST:
                break
            chosen.append(text)
            total += held[text]
        # BM25's inverse document frequency of each term (1 for all without statistics)
        n = self._rows
        weights = {t: math.log(1 + (n - h + 0.5) / (h + 0.5)) if n else 1.0 for t, h in held.items()}
        return chosen, weights

    def _nearest(
        self, query: np.ndarray, k: int, model: str | None, document_id: str | None, where: Mapping[str, str] | None
    ) -> list[tuple[int, float]]:
        """Through the HNSW index: hnsw.ef_search candidates, at least k."""
        if k <= 0 or query.shape[0] != self.dim:
            return []
        sql, params = self.search_sql(model, document_id, where)
        ef = min(MAX_EF_SEARCH, max(self.ef_search, k))
        with translate_errors(self.url), self.conn.transaction():
            self.conn.execute(f"SET LOCAL hnsw.ef_search = {int(ef)}")
            self.conn.execute("SET LOCAL hnsw.iterative_scan = relaxed_order")
            rows = self.conn.execute(sql, [query, *params, int(k)]).fetchall()
        rows.sort(key=lambda r: r[-1])  # relaxed_order may hand them back slightly out of order
        return [(r[0], 1.0 - float(r[1])) for r in rows]

    # -- writes --------------------------------------------------------------------------
    def _insert(self, row: DocumentRow, chunks: Sequence[Chunk], vectors: np.ndarray) -> tuple[StoredDocument, bool]:
        """`INSERT ... ON CONFLICT DO NOTHING`: a second writer of the same key waits for the first
        one's transaction, then inserts nothing and reads the row the first one committed."""
        if chunks and row.dim != self.dim:
            raise StoreConfigError(
                f"vectors of {row.dim} dimensions, but this PostgreSQL store holds vector({self.dim}):"
                " its schema was created for another model"
            )
        with translate_errors(self.url), self.conn.transaction():
            inserted = self.conn.execute(
                f"INSERT INTO documents ({DOCUMENT_COLUMNS}) VALUES ({'%s, ' * 14}"
                "coalesce(to_timestamp(%s::float8), now())) ON CONFLICT (sha256, model) DO NOTHING RETURNING id",
                row.values(Jsonb),
            ).fetchone()
            if inserted is None:  # another writer committed this (sha256, model) first: report its row
                existing = self.find(row.sha256, row.model)
                if existing is None:  # it was deleted in between: let the retry decide
                    raise StoreUnavailableError("the stored document vanished while being read; retry")
                return existing, True
            doc = inserted[0]
            if chunks:
                self._copy_chunks(doc, chunks, vectors)
        return row.stored(doc), False

    def _copy_chunks(self, doc: int, chunks: Sequence[Chunk], vectors: np.ndarray) -> None:
        """Binary COPY: one round trip for all chunks, vectors sent as float32 (no text parsing)."""
        with (
            self.conn.cursor() as cur,
            cur.copy(f"COPY chunks ({CHUNK_COLUMNS}, embedding) FROM STDIN (FORMAT BINARY)") as copy,
        ):
            copy.set_types(["int8", "int4", "int4", "int4", "int4", "int4", "int4", "text", "vector"])
            for values in chunk_rows(doc, chunks, vectors):
                copy.write_row(values)


if psycopg is not None:

    class _Float32Loader(psycopg.adapt.Loader):
        """pgvector's binary `vector` as a numpy array: uint16 dim, uint16 unused, dim big-endian float32.
        (pgvector's own loader returns a numpy array or a `Vector` depending on its version.)"""

        format = psycopg.pq.Format.BINARY

        def load(self, data) -> np.ndarray:
            return np.frombuffer(data, dtype=">f4", offset=4)


def _state(conn) -> tuple[int, int | None]:
    """(schema version, vector dimension of chunks.embedding) as the database has them."""
    if conn.execute("SELECT to_regclass('worker_migrations')").fetchone()[0] is None:
        return 0, None
    version, dim = conn.execute(
        "SELECT (SELECT coalesce(max(version), 0) FROM worker_migrations),"
        " (SELECT atttypmod FROM pg_attribute WHERE attrelid = to_regclass('chunks') AND attname = 'embedding')"
    ).fetchone()
    return version, dim


def _ensure_vector_extension(conn, url: str) -> None:
    if conn.execute("SELECT 1 FROM pg_extension WHERE extname = 'vector'").fetchone():
        return
    try:
        with conn.transaction():  # a savepoint: the failure is ours to explain
            conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
    except psycopg.OperationalError:
        raise
    except psycopg.Error as exc:
        database = conn.info.dbname
        raise StoreConfigError(
            f"the pgvector extension is not enabled in database {database!r} and this user cannot enable it"
            f" ({_describe(exc, url)}). Fix: as a superuser or the database owner run"
            f" `CREATE EXTENSION vector;` in {database!r} (the pgvector package must be installed on the"
            " server; managed PostgreSQL services offer it), then restart the worker."
        ) from None


def _log_notice(diagnostic) -> None:
    """A migration's NOTICE (what the operator should do next) goes to the worker's log."""
    if diagnostic.severity_nonlocalized == "NOTICE" and diagnostic.message_primary:
        log.warning("PostgreSQL store: %s", diagnostic.message_primary)


def _apply(conn, number: int, statements: list[str], existing: bool) -> None:
    """Apply migration `number`; on an existing store, one INFO line says what it cost."""
    started = time.perf_counter()
    for statement in statements:
        conn.execute(statement)
    conn.execute("INSERT INTO worker_migrations (version) VALUES (%s)", (number,))
    if existing and number in MIGRATION_NAMES:
        chunks = conn.execute("SELECT count(*) FROM chunks").fetchone()[0]
        log.info(
            "PostgreSQL store: migration %d, %s, applied over %d chunks in %.2fs",
            number,
            MIGRATION_NAMES[number],
            chunks,
            time.perf_counter() - started,
        )


def _migrate(conn, url: str, dim: int) -> int:
    """Apply the migrations this database lacks, one migrator at a time; returns the vector dim."""
    version, current_dim = _state(conn)
    if version == SCHEMA_VERSION and current_dim:
        return int(current_dim)
    if version > SCHEMA_VERSION:
        raise StoreSchemaError(f"PostgreSQL store has schema {version}; this version knows up to {SCHEMA_VERSION}")
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
        _ensure_vector_extension(conn, url)
        conn.execute(
            "CREATE TABLE IF NOT EXISTS worker_migrations"
            " (version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        version, _ = _state(conn)  # another worker may have migrated while we waited for the lock
        if version > SCHEMA_VERSION:
            raise StoreSchemaError(f"PostgreSQL store has schema {version}; this version knows up to {SCHEMA_VERSION}")
        conn.add_notice_handler(_log_notice)  # what a migration says to the operator (not "already exists")
        try:
            for number, statements in _migrations(dim):
                if number > version:
                    _apply(conn, number, statements, existing=version > 0)
        finally:
            conn.remove_notice_handler(_log_notice)
    _, current_dim = _state(conn)
    return int(current_dim)
