"""Copy documents, chunks and vectors from one store to another without embedding again.

`python -m worker store copy --from URL --to URL`, any direction between SQLite and PostgreSQL.
Only the store interface is used: `document_keys` and `export_document` on the source, `add_document`
(the ingest path: one transaction per document, exactly once per (sha256, model)) on the target.
So a copy is idempotent (documents the target has are skipped, never duplicated) and resumable
(killed part way, the target holds whole documents only; a re-run copies the rest).

A document the target cannot hold (SQLite takes a NUL in metadata or text, PostgreSQL does not:
`UnstorableInputError` from the stores' shared check) is refused with its reason and the copy goes
on with the next one: one such document never stops the rest from being copied.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from worker.errors import StoreConfigError, UnstorableInputError
from worker.settings import sqlite_path, store_kind
from worker.store import DocumentStore, open_store


@dataclass
class CopyReport:
    total: int  # documents in the source
    copied: int = 0
    skipped: int = 0  # already in the target
    chunks: int = 0  # chunks copied
    refusals: list[dict] = field(default_factory=list)  # {document_id, sha256, model, reason}: not copied
    started: float = field(default_factory=time.monotonic)

    @property
    def refused(self) -> int:
        return len(self.refusals)

    @property
    def done(self) -> int:
        return self.copied + self.skipped + self.refused

    def as_dict(self) -> dict:
        return {
            "total": self.total,
            "copied": self.copied,
            "skipped": self.skipped,
            "refused": self.refused,
            "chunks": self.chunks,
            "seconds": round(time.monotonic() - self.started, 3),
            **({"refused_documents": self.refusals} if self.refusals else {}),
        }


def check_dimensions(keys: list[tuple[str, str, int]], target: DocumentStore) -> None:
    """StoreConfigError when the target's schema cannot hold the source's vectors (before any write)."""
    if target.dim is None:
        return
    wrong = sorted({(model, dim) for _, model, dim in keys if dim and dim != target.dim})
    if wrong:
        found = ", ".join(f"{model} ({dim} dimensions)" for model, dim in wrong)
        raise StoreConfigError(
            f"the target {target.kind} store holds vectors of {target.dim} dimensions (its schema was created"
            f" for that model), but the source has vectors of {found}; copy into an empty database instead"
            " (its schema is then created with the source's dimension)"
        )


def copy_documents(
    source: DocumentStore,
    target: DocumentStore,
    keys: list[tuple[str, str, int]] | None = None,
    on_progress: Callable[[CopyReport], None] | None = None,
) -> CopyReport:
    """Copy every document of `source` that `target` lacks, oldest first, one transaction each;
    those the target cannot hold are left out and listed in the report's `refusals`."""
    keys = source.document_keys() if keys is None else keys
    check_dimensions(keys, target)
    have = {(sha, model) for sha, model, _ in target.document_keys()}
    report = CopyReport(total=len(keys))
    for sha256, model, _ in keys:
        record = None if (sha256, model) in have else source.export_document(sha256, model)
        if record is None:  # in the target already (or deleted from the source since it was listed)
            report.skipped += 1
        else:
            try:
                _, already = target.add_document(**record.as_kwargs())  # another writer may have stored it since
            except UnstorableInputError as exc:  # nothing of it was written: go on with the next one
                report.refusals.append(
                    {"document_id": record.document_id, "sha256": sha256, "model": model, "reason": str(exc)}
                )
            else:
                if already:
                    report.skipped += 1
                else:
                    report.copied += 1
                    report.chunks += len(record.chunks)
        if on_progress is not None:
            on_progress(report)
    return report


def copy_store(
    from_url: str,
    to_url: str,
    busy_timeout: float,
    on_progress: Callable[[CopyReport], None] | None = None,
) -> CopyReport:
    """Open both stores and copy. A missing SQLite source is an error (never created empty); a new
    PostgreSQL target gets its schema with the source's vector dimension.
    SettingsError for a URL that names no store; WorkerError (or a driver's error) otherwise."""
    if store_kind(from_url) == "sqlite" and not sqlite_path(from_url).is_file():
        raise StoreConfigError(f"no SQLite store at {sqlite_path(from_url)}")
    store_kind(to_url)
    with open_store(from_url, busy_timeout) as source:
        keys = source.document_keys()
        dims = {dim for _, _, dim in keys if dim}
        with open_store(to_url, busy_timeout, dim=dims.pop() if len(dims) == 1 else None) as target:
            return copy_documents(source, target, keys, on_progress)
