"""The registered jobs: plain functions that RQ, a test or a Python shell can call.

They know nothing of the daemon. Enqueue them by dotted name, e.g.
`Queue("default").enqueue("worker.jobs.ping")`.
"""

from __future__ import annotations

import json
import os
import socket
import time
from dataclasses import replace

from worker import progress
from worker.bulk import embed_bulk, embed_shard, finish_bulk
from worker.chunking import Chunker
from worker.display import pages_named
from worker.embedding import Embedder, get_embedder
from worker.errors import InputTooLargeError, InvalidArgumentsError
from worker.pdf import PageTexts, PdfDocument, extract, open_pdf, sha256
from worker.pdf import metadata as pdf_metadata
from worker.pipeline import Embedded, WorkDone, embed_pages
from worker.search import search as run_search
from worker.settings import Settings, get_settings
from worker.sources import load_source
from worker.store import DocumentStore, StoredDocument, check_encodable, check_storable, open_configured_store, storable
from worker.textdoc import decode_text

__all__ = ["embed_bulk", "embed_shard", "embed_texts", "extract_text", "finish_bulk", "ingest_pdf", "ping"]

MAX_STR_CHARS = 1000  # characters of a string argument at most (ping's message, a password...)


def ping(message: str = "pong") -> dict:
    """A trivial job for smoke checks: echoes `message` with the host and process."""
    if not isinstance(message, str) or len(message) > MAX_STR_CHARS:
        raise InvalidArgumentsError(f"ping: message must be a string of at most {MAX_STR_CHARS} characters")
    return {"message": message, "host": socket.gethostname(), "pid": os.getpid(), "at": time.time()}


def validate_texts(texts: object, max_count: int | None = None) -> list[str]:
    """`texts` as a list of strings, or InvalidArgumentsError / InputTooLargeError saying why not."""
    if not isinstance(texts, list | tuple):
        raise InvalidArgumentsError(f"texts must be a list of strings, got {type(texts).__name__}")
    if max_count is not None and len(texts) > max_count:
        raise InputTooLargeError(f"{len(texts)} texts, at most {max_count} per job (MAX_EMBED_TEXTS)")
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise InvalidArgumentsError(f"texts[{i}] must be a string, got {type(text).__name__}")
        check_encodable(f"texts[{i}]", text)  # the tokenizer takes UTF-8 only
    return list(texts)


def embed_texts(texts: list[str]) -> dict:
    """Embed `texts`: {"model", "dim", "vectors"}, one L2-normalized vector (list of floats) per text.

    Texts longer than the model's window (MODEL_WINDOW, 256 word pieces) are embedded from their beginning;
    an empty string gets the model's vector for an empty input, as sentence-transformers gives.
    """
    settings = get_settings()
    texts = validate_texts(texts, settings.max_embed_texts)
    embedder = get_embedder(settings)
    vectors, tokens = embedder.embed_counted(texts)
    progress.count(embedding_tokens=tokens, embedding_texts=len(texts))
    return {"model": embedder.model_name, "dim": embedder.dim, "vectors": vectors.tolist()}


# -- PDF ingestion -------------------------------------------------------------------------

MAX_METADATA_BYTES = 64 * 1024


def _check_optional_str(name: str, value: object, max_len: int = MAX_STR_CHARS) -> None:
    if value is not None and (not isinstance(value, str) or not value or len(value) > max_len):
        raise InvalidArgumentsError(f"{name} must be a non-empty string of at most {max_len} characters")
    check_encodable(name, value)


def _check_metadata(metadata: object) -> dict:
    if metadata is None:
        return {}
    if not isinstance(metadata, dict):
        raise InvalidArgumentsError("metadata must be a JSON object")
    check_storable("metadata", metadata)  # before json.dumps, which would take a NaN or a surrogate
    try:
        size = len(json.dumps(metadata))
    except (TypeError, ValueError, RecursionError) as exc:
        raise InvalidArgumentsError(f"metadata must be JSON-serializable: {exc}") from None
    if size > MAX_METADATA_BYTES:
        raise InvalidArgumentsError(f"metadata is {size} bytes of JSON, over {MAX_METADATA_BYTES}")
    return metadata


def extract_text(source: object, password: str | None = None) -> dict:
    """Text per page of a PDF, nothing stored: {"name", "sha256", "pages": [...], ...}."""
    _check_optional_str("password", password)
    settings = get_settings()
    src = load_source(source, settings)
    on_page = progress.Throttle(
        lambda done, total: progress.report("extract", done, total), always=lambda done, total: done >= total
    )
    doc = extract(src.data, password=password, max_pages=settings.max_pages, on_page=on_page)
    progress.count(pages=doc.page_count, pages_without_text=doc.pages_without_text)
    return {
        "name": src.name,
        "sha256": doc.sha256,
        "metadata": doc.metadata,
        "pages": doc.pages,
        "pages_without_text": doc.pages_without_text,
        **scan_report(doc.scanned_pages, stored=False),
        "page_errors": doc.page_errors,
    }


def scan_report(scanned: list[int], stored: bool) -> dict:
    """`scanned_pages` (pages with an image and no text layer) and, when there are any, a note."""
    if not scanned:
        return {"scanned_pages": []}
    rest = "; the document is stored with the text of its other pages" if stored else ""
    return {"scanned_pages": scanned, "note": ocr_note(scanned) + rest}


def ocr_note(scanned: list[int]) -> str:
    """E.g. "pp. 1-3, 7 are scanned images without a text layer: OCR them to make them searchable"."""
    verb = "is a scanned image" if len(scanned) == 1 else "are scanned images"
    return f"{pages_named(scanned)} {verb} without a text layer: OCR them to make them searchable"


def ingest_pdf(
    source: object, document_id: str | None = None, metadata: dict | None = None, password: str | None = None
) -> dict:
    """Extract, chunk, embed and store a PDF; idempotent per (bytes, model).

    Returns document_id, sha256, pages, chunks, pages_without_text, already_stored and the
    seconds spent per stage (extract, chunk, embed, store).
    """
    caller_metadata = _check_ingest_arguments(document_id, metadata, password)
    settings = get_settings()
    timings = {"extract": 0.0, "chunk": 0.0, "embed": 0.0, "store": 0.0}
    t_start = time.perf_counter()

    progress.report("read")
    src = load_source(source, settings)
    digest = sha256(src.data)
    with open_pdf(src.data, password=password, max_pages=settings.max_pages) as reader:  # bad input fails fast
        timings["extract"] += time.perf_counter() - t_start
        return _ingest(src.name, digest, reader, document_id, caller_metadata, timings, t_start)


def _ingest(
    name: str,
    digest: str,
    reader: PdfDocument,
    document_id: str | None,
    caller_metadata: dict,
    timings: dict[str, float],
    t_start: float,
) -> dict:
    """`ingest_pdf` once the PDF is open: unless already stored, read, chunk, embed and store it."""
    settings = get_settings()
    embedder = get_embedder(settings)
    summary = {"document_id": document_id or digest, "name": name, "sha256": digest, "model": embedder.model_name}
    with open_configured_store(settings, embedder.dim) as store:
        existing = store.find(digest, embedder.model_name)
        if existing is not None:  # what was stored, page errors included, on every later answer too
            t = time.perf_counter()
            summary.update(scan_report(_scanned_pages(reader, existing), stored=True))
            timings["extract"] += time.perf_counter() - t
            return _ingest_answer(summary, existing, True, timings, t_start)

        pages = PageTexts(reader)
        done = _chunk_and_embed(pages, embedder, settings)
        for stage in ("extract", "chunk", "embed"):
            timings[stage] += done.timings[stage]
        doc_meta = storable(pdf_metadata(reader))  # from the file: kept, NUL and surrogates as U+FFFD
        progress.count(
            pages=pages.total,
            pages_without_text=pages.without_text,
            embedding_tokens=done.tokens,
            embedding_texts=len(done.chunks),
        )

        t = time.perf_counter()
        record = {"document_id": document_id or digest, "sha256": digest, "model": embedder.model_name}
        row, already = _store_document(store, record, name, doc_meta, pages, done, caller_metadata)
        timings["store"] = time.perf_counter() - t
    if not already:
        progress.count(chunks=len(done.chunks))
    summary.update(scan_report(pages.scanned, stored=True))  # the same bytes, if another job stored them first
    return _ingest_answer(summary, row, already, timings, t_start)  # the stored row's, if another job was first


def _scanned_pages(reader: PdfDocument, stored: StoredDocument) -> list[int]:
    """The scanned pages of a document already stored. The store keeps how many pages have no text,
    not which of them are scans: when there are any, the pages are read again (under the same
    limits as on ingest; nothing is chunked or embedded), so the answer names them as the first did."""
    if not stored.pages_without_text:
        return []
    pages = PageTexts(reader)
    for _ in pages:
        pass
    return pages.scanned


def _check_ingest_arguments(document_id: object, metadata: object, password: object) -> dict:
    """The caller's metadata, once the arguments are checked: those no store can hold are refused
    here, before any work (add_document checks again)."""
    _check_optional_str("document_id", document_id, 200)
    check_storable("document_id", document_id)
    _check_optional_str("password", password)
    return _check_metadata(metadata)


def _chunk_and_embed(pages: PageTexts, embedder: Embedder, settings: Settings) -> Embedded:
    """The document's chunks and vectors, pages read while earlier chunks are embedded."""
    chunker = Chunker(embedder.tokenizer, settings.chunk_tokens, settings.chunk_overlap)
    return embed_pages(
        pages,
        chunker.stream(),
        embedder.embed_ids,
        embedder.dim,
        settings.embed_batch_tokens,
        report=progress.Throttle(_report_pipeline),
        pages_total=pages.total,
    )


def _store_document(
    store: DocumentStore,
    record: dict[str, str],
    name: str,
    doc_meta: dict,
    pages: PageTexts,
    done: Embedded,
    caller_metadata: dict,
) -> tuple[StoredDocument, bool]:
    """Store the document (`record`: its id, sha256 and model) with its chunks and vectors."""
    progress.report("store", 0, 1)
    stored = store.add_document(
        **record,
        name=name,
        meta=doc_meta,
        pages=pages.total,
        pages_without_text=pages.without_text,
        page_errors=storable(pages.errors),
        chunks=done.chunks,
        vectors=done.vectors,
        caller_metadata=caller_metadata,
    )
    progress.report("store", 1, 1)
    return stored


def _ingest_answer(
    summary: dict, row: StoredDocument, already: bool, timings: dict[str, float], t_start: float
) -> dict:
    """`ingest_pdf`'s answer: the stored document's figures, as its store holds them."""
    return {
        **summary,
        "document_id": row.document_id,
        "pages": row.pages,
        "chunks": row.chunks,
        "pages_without_text": row.pages_without_text,
        "page_errors": row.page_errors,
        "already_stored": already,
        "timings": _rounded(timings, t_start),
    }


def _report_pipeline(p: WorkDone) -> None:
    """One progress entry for overlapping stages: "extract" while pages are read (with the chunks
    cut and embedded so far), then "embed" until every chunk has its vector."""
    if not p.reading_done:
        progress.report("extract", p.pages, p.pages_total, chunks=p.chunks, embedded=p.embedded)
    else:
        progress.report("embed", p.embedded, p.chunks, pages=p.pages, chunks=p.chunks)


# -- plain text and Markdown ---------------------------------------------------------------


def ingest_text(source: object, document_id: str | None = None, metadata: dict | None = None) -> dict:
    """Chunk, embed and store a plain text or Markdown file (UTF-8), as a PDF's text is from chunking
    on; idempotent per (bytes, model). Its chunks have no page numbers (None); the answer is
    ingest_pdf's, with pages 0."""
    caller_metadata = _check_ingest_arguments(document_id, metadata, None)
    settings = get_settings()
    t_start = time.perf_counter()
    progress.report("read")
    src = load_source(source, settings)
    name = "inline.txt" if isinstance(source, dict) and not source.get("filename") else src.name
    text = decode_text(src.data, name, settings.max_document_chars)
    digest = sha256(src.data)
    timings = {"extract": time.perf_counter() - t_start, "chunk": 0.0, "embed": 0.0, "store": 0.0}

    embedder = get_embedder(settings)
    summary = {"document_id": document_id or digest, "name": name, "sha256": digest, "model": embedder.model_name}
    with open_configured_store(settings, embedder.dim) as store:
        existing = store.find(digest, embedder.model_name)
        if existing is not None:
            return _ingest_answer(summary, existing, True, timings, t_start)
        chunker = Chunker(embedder.tokenizer, settings.chunk_tokens, settings.chunk_overlap)
        done = embed_pages(
            [text], chunker.stream(), embedder.embed_ids, embedder.dim, settings.embed_batch_tokens, pages_total=1
        )
        timings["chunk"], timings["embed"] = done.timings["chunk"], done.timings["embed"]
        progress.count(embedding_tokens=done.tokens, embedding_texts=len(done.chunks))
        t = time.perf_counter()
        progress.report("store", 0, 1)
        row, already = store.add_document(
            document_id=document_id or digest,
            sha256=digest,
            model=embedder.model_name,
            name=name,
            meta={},
            pages=0,
            pages_without_text=0,
            page_errors=[],
            chunks=[replace(c, page_start=None, page_end=None) for c in done.chunks],  # a text has no pages
            vectors=done.vectors,
            caller_metadata=caller_metadata,
        )
        progress.report("store", 1, 1)
        timings["store"] = time.perf_counter() - t
    if not already:
        progress.count(chunks=len(done.chunks))
    return _ingest_answer(summary, row, already, timings, t_start)


# -- search ---------------------------------------------------------------------------------


def search(
    query: str, k: int = 5, mode: str = "hybrid", document_id: str | None = None, where: dict | None = None
) -> dict:
    """Search the store (worker/search.py) for a program that does not load the model: enqueue it
    on `high`, read {"query", "mode", "k", "hits"} from the job's result."""
    if where is not None and not isinstance(where, dict):
        raise InvalidArgumentsError("where must be a JSON object of string keys and values")
    hits = run_search(query, k, mode, document_id=document_id, where=where)
    return {"query": query, "mode": mode, "k": k, "hits": hits}


def _rounded(timings: dict[str, float], t_start: float) -> dict[str, float]:
    out = {k: round(v, 4) for k, v in timings.items()}
    out["total"] = round(time.perf_counter() - t_start, 4)
    return out
