"""A document's pages to chunks and vectors, read and embedded in bounded memory.

The calling thread reads pages (PDFium's text, from its child process) and cuts them into
chunks as they come (`ChunkStream`); a second thread embeds the chunks (onnxruntime, which
releases the GIL), taking whatever has queued up to a token budget at a time. It starts once the
queue is full or holds the document's end: PDFium reads pages many times faster than the model
embeds them, so running both at once won little and cost more (each took cores from the other;
docs/ingestion.md, "Pipeline"); a document longer than the queue is still read while its first
chunks are embedded.

- The queue between the two is bounded (`QUEUE_CHUNKS`): reading waits for the model, never
  runs ahead of it without limit. Page texts are dropped once chunked; what grows with the
  document is its chunks and vectors (about 2.5 KB a chunk), which the store takes at the end.
- The calling thread is the one RQ's job timeout interrupts (SIGALRM, main thread): it only
  ever waits with a timeout, so the timeout ends the job whatever stage is running. On any
  failure, the embedding thread is told to stop and ends after its current batch.
- A failure in either thread is raised in the calling thread, typed as it was raised.
- Page texts are made storable first (`storable_text`: a NUL or lone surrogate from the PDF becomes
  U+FFFD, one character for one, so offsets hold): the tokenizer and both stores take them.
- Vectors are those of `Embedder.embed` on the chunk texts: the ids are the tokenizer's own,
  and a text's vector does not depend on the batch it ran in (tested).
"""

from __future__ import annotations

import contextlib
import queue
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np

from worker.chunking import Chunk, ChunkStream
from worker.store import storable_text

QUEUE_CHUNKS = 512  # chunks read ahead of the model at most (about 1.5 MB of text and ids)
TAKE_BATCHES = 16  # the embedding thread takes up to this many token batches' worth at a time
WAIT_S = 0.05  # the longest the calling thread waits at once: it stays responsive to signals
SWITCH_INTERVAL_S = 0.001  # the GIL handover while both run: the model's thread waits less for it


@dataclass
class WorkDone:
    """What the pipeline has done so far; `report` is called with it now and then."""

    pages: int = 0
    pages_total: int = 0
    chunks: int = 0  # cut so far
    embedded: int = 0  # of those, embedded
    reading_done: bool = False


@dataclass
class Embedded:
    chunks: list[Chunk]
    vectors: np.ndarray  # (len(chunks), dim) float32, L2-normalized
    tokens: int
    timings: dict[str, float] = field(default_factory=dict)  # seconds: extract, chunk, embed (overlapping)


class _End:
    """The queue's last item."""


class _EmbeddingThread(threading.Thread):
    def __init__(self, embed_ids: Callable, inbox: queue.Queue, batch_tokens: int) -> None:
        super().__init__(name="embedding", daemon=True)
        self.embed_ids, self.inbox, self.take_tokens = embed_ids, inbox, batch_tokens * TAKE_BATCHES
        self.stop = threading.Event()
        self.go = threading.Event()  # set once the queue is full or holds the document's end
        self.parts: list[np.ndarray] = []
        self.done = 0
        self.tokens = 0
        self.busy = 0.0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            ended = False
            while not self.go.wait(WAIT_S):  # reading first: it is fast, and the model then has the cores
                if self.stop.is_set():
                    return
            while not ended and not self.stop.is_set():
                try:
                    first = self.inbox.get(timeout=WAIT_S)
                except queue.Empty:
                    continue
                if isinstance(first, _End):
                    break
                batch, tokens = [first], len(first)
                while tokens < self.take_tokens:  # what has queued meanwhile, without waiting
                    try:
                        item = self.inbox.get_nowait()
                    except queue.Empty:
                        break
                    if isinstance(item, _End):
                        ended = True
                        break
                    batch.append(item)
                    tokens += len(item)
                started = time.perf_counter()
                vectors, n = self.embed_ids(batch)
                self.busy += time.perf_counter() - started
                self.parts.append(vectors)
                self.tokens += n
                self.done += len(batch)
        except BaseException as exc:  # handed to the calling thread, which raises it
            self.error = exc

    def put(self, item: object) -> None:
        """From the calling thread: queue `item`, waiting for room a little at a time (signals
        get through); this thread's failure, if any, is raised instead."""
        while True:
            if self.error is not None:
                raise self.error
            try:
                self.inbox.put(item, timeout=WAIT_S)
                if isinstance(item, _End):
                    self.go.set()
                return
            except queue.Full:
                self.go.set()
                continue


def embed_pages(
    pages: Iterable[str],
    stream: ChunkStream,
    embed_ids: Callable,
    dim: int,
    batch_tokens: int,
    report: Callable[[WorkDone], None] | None = None,
    pages_total: int = 0,
) -> Embedded:
    """Chunk the texts `pages` yields with `stream`, embed them with `embed_ids` (Embedder.embed_ids)
    on a second thread as they come, and return the chunks with their vectors, in order."""
    worker = _EmbeddingThread(embed_ids, queue.Queue(maxsize=QUEUE_CHUNKS), batch_tokens)
    state = WorkDone(pages_total=pages_total)
    chunks: list[Chunk] = []
    timings = {"extract": 0.0, "chunk": 0.0}

    def tell() -> None:
        state.embedded = worker.done
        if report is not None:
            report(state)

    switch = sys.getswitchinterval()
    sys.setswitchinterval(SWITCH_INTERVAL_S)
    worker.start()
    try:
        _read_pages(pages, stream, worker, chunks, state, timings, tell)
        while worker.is_alive():
            worker.join(WAIT_S)
            tell()
        if worker.error is not None:
            raise worker.error
    finally:
        worker.stop.set()
        sys.setswitchinterval(switch)
    tell()
    vectors = np.concatenate(worker.parts) if worker.parts else np.zeros((0, dim), np.float32)
    if len(vectors) != len(chunks):  # cannot happen unless a stage lost items: never store that
        raise RuntimeError(f"pipeline lost chunks: {len(chunks)} cut, {len(vectors)} embedded")
    timings["embed"] = worker.busy
    return Embedded(chunks=chunks, vectors=vectors, tokens=worker.tokens, timings=timings)


def _read_pages(
    pages: Iterable[str],
    stream: ChunkStream,
    worker: _EmbeddingThread,
    chunks: list[Chunk],
    state: WorkDone,
    timings: dict[str, float],
    tell: Callable[[], None],
) -> None:
    """In the calling thread: read and cut every page (timed as extract and chunk), appending each
    chunk to `chunks` and handing its ids to `worker` as it is cut; then the queue's end."""
    page_iter = iter(pages)
    with contextlib.closing(page_iter) if hasattr(page_iter, "close") else contextlib.nullcontext():
        while True:
            t = time.perf_counter()
            text = next(page_iter, None)
            timings["extract"] += time.perf_counter() - t
            if text is None:
                break
            t = time.perf_counter()
            cut = stream.add_page(storable_text(text))  # a NUL or lone surrogate: U+FFFD, kept
            timings["chunk"] += time.perf_counter() - t
            state.pages += 1
            for chunk, ids in cut:
                chunks.append(chunk)
                worker.put(ids)
            state.chunks = len(chunks)
            tell()
    t = time.perf_counter()
    for chunk, ids in stream.finish():
        chunks.append(chunk)
        worker.put(ids)
    timings["chunk"] += time.perf_counter() - t
    state.chunks, state.reading_done = len(chunks), True
    worker.put(_End())
