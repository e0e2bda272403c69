"""Kept for the code and tests that import `worker.store_pg`: the PostgreSQL store is worker/store/pg.py."""

from worker.store.pg import (  # noqa: F401
    CONNECT_TIMEOUT_S,
    DEFAULT_DIM,
    HNSW_OPTIONS,
    MAX_EF_SEARCH,
    MIGRATION_LOCK,
    SCHEMA_VERSION,
    PgStore,
    check_reachable,
    connect,
    psycopg,
    scrub,
    translate_errors,
)
