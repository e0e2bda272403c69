"""The stores: one interface (`DocumentStore`), two implementations, chosen by `open_store(url)`.

`sqlite:///...` opens the SQLite store (worker/store/sqlite.py: the embedded default, one host);
`postgresql://...` or `postgres://...` opens the PostgreSQL store (worker/store/pg.py: pgvector,
many hosts). Jobs, the CLI and the health server only ever call `open_store` and the interface
(worker/store/base.py); what no store can hold is checked in worker/store/storable.py, and
worker/store/copy.py copies one store into another through the interface.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from worker.settings import Settings, store_kind
from worker.store.base import (
    BUSY_TIMEOUT_S,
    DEFAULT_EF_SEARCH,
    MAX_SEARCH_K,
    Chunk,
    DocumentRecord,
    DocumentStore,
    StoredDocument,
    StoreSchemaError,
    as_text,
    check_document,
    check_filters,
)
from worker.store.sqlite import SCHEMA_VERSION, SqliteStore, sqlite_problem
from worker.store.storable import check_encodable, check_storable, storable, storable_text, unstorable

Store = SqliteStore  # its name before the store package, kept for the code and tests that use it

__all__ = [
    "BUSY_TIMEOUT_S",
    "DEFAULT_EF_SEARCH",
    "MAX_SEARCH_K",
    "SCHEMA_VERSION",
    "Chunk",
    "DocumentRecord",
    "DocumentStore",
    "SqliteStore",
    "Store",
    "StoreSchemaError",
    "StoredDocument",
    "as_text",
    "check_document",
    "check_encodable",
    "check_filters",
    "check_storable",
    "open_store",
    "open_configured_store",
    "sqlite_problem",
    "storable",
    "storable_text",
    "unstorable",
]


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
        # Imported here: psycopg is an optional extra, and a SQLite worker never loads it.
        from worker.store.pg import PgStore

        with PgStore.open(store_url, busy_timeout, ef_search=ef_search, dim=dim) as pg:
            yield pg
    else:
        with SqliteStore.open(store_url, busy_timeout) as store:
            yield store


def open_configured_store(
    settings: Settings, dim: int | None = None
) -> contextlib.AbstractContextManager[DocumentStore]:
    """`open_store` with the settings' URL, busy timeout and HNSW ef_search: what jobs open."""
    return open_store(settings.store_url, settings.store_busy_timeout, ef_search=settings.hnsw_ef_search, dim=dim)
