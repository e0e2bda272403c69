"""The registered jobs: plain functions that RQ, a test or a Python shell can call.

They know nothing of the daemon. Enqueue them by dotted name, e.g.
`Queue("default").enqueue("worker.jobs.ping")`.
"""

from __future__ import annotations

import os
import socket
import time


def ping(message: str = "pong") -> dict:
    """A trivial job for smoke checks: echoes `message` with the host and process."""
    if not isinstance(message, str) or len(message) > 1000:
        from worker.errors import InvalidArgumentsError

        raise InvalidArgumentsError("ping: message must be a string of at most 1000 characters")
    return {"message": message, "host": socket.gethostname(), "pid": os.getpid(), "at": time.time()}


def validate_texts(texts: object, max_count: int | None = None) -> list[str]:
    """`texts` as a list of strings, or InvalidArgumentsError / InputTooLargeError saying why not."""
    from worker.errors import InputTooLargeError, InvalidArgumentsError

    if not isinstance(texts, list | tuple):
        raise InvalidArgumentsError(f"texts must be a list of strings, got {type(texts).__name__}")
    if max_count is not None and len(texts) > max_count:
        raise InputTooLargeError(f"{len(texts)} texts, at most {max_count} per job (MAX_EMBED_TEXTS)")
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise InvalidArgumentsError(f"texts[{i}] must be a string, got {type(text).__name__}")
    return list(texts)


def embed_texts(texts: list[str]) -> dict:
    """Embed `texts`: {"model", "dim", "vectors"}, one L2-normalized vector (list of floats) per text.

    Texts longer than the model's window (256 word pieces) are embedded from their beginning;
    an empty string gets the model's vector for an empty input, as sentence-transformers gives.
    """
    from worker import progress
    from worker.embedding import get_embedder
    from worker.settings import get_settings

    settings = get_settings()
    texts = validate_texts(texts, settings.max_embed_texts)
    embedder = get_embedder(settings)
    vectors, tokens = embedder.embed_counted(texts)
    progress.count(embedding_tokens=tokens, embedding_texts=len(texts))
    return {"model": embedder.model_name, "dim": embedder.dim, "vectors": vectors.tolist()}
