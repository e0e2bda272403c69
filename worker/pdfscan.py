"""Find decompression bombs in a PDF's bytes before any parser inflates them.

Every stream that says /FlateDecode (images aside: text extraction never decodes them) and is
long enough to inflate past MAX_STREAM_BYTES at deflate's best ratio is inflated once, chunk by
chunk, its output counted and thrown away; one that does inflate past it is a bomb. Most
streams are far too short to matter, so the scan costs little more than a search of the bytes.
It reads the bytes as they are, so it also sees streams in objects a cross-reference table does
not list; a stream it cannot inflate (encrypted, or not zlib) is left to the parser, whose
memory the caller caps.
"""

from __future__ import annotations

import re
import zlib

from worker.errors import DecompressionBombError

MAX_STREAM_BYTES = 75_000_000  # what pypdf allows one stream to inflate to (its ZLIB_MAX_OUTPUT_LENGTH)
MAX_DEFLATE_RATIO = 1100  # deflate's best is 1032:1 (a run of one byte)
_STREAM = re.compile(rb"stream\r?\n")  # "endstream" is skipped by hand: a look-behind is 25 times slower
_DICT_WINDOW = 4096  # bytes before `stream` where its dictionary is looked for
_IN_CHUNK = 1 << 16
_OUT_CHUNK = 1 << 22


def check_streams(data: bytes, limit: int = MAX_STREAM_BYTES) -> None:
    """Raise DecompressionBombError if a Flate stream of `data` inflates past `limit` bytes."""
    if b"Fl" not in data:
        return
    for match in _STREAM.finditer(data):
        if data[match.start() - 3 : match.start()] == b"end":
            continue
        head = data[max(0, match.start() - _DICT_WINDOW) : match.start()]
        head = head[head.rfind(b"obj") + 1 :]  # this object's dictionary, not the one before
        if (b"/FlateDecode" not in head and b"/Fl" not in head) or b"/Image" in head:
            continue
        end = data.find(b"endstream", match.end())
        if end != -1 and (end - match.end()) * MAX_DEFLATE_RATIO <= limit:
            continue  # too short to inflate past the limit: deflate packs at most 1032 to 1
        size = inflated_size(data, match.end(), limit)
        if size > limit:
            raise DecompressionBombError(
                f"a stream at byte {match.end()} inflates to over {limit} bytes: a decompression bomb"
            )


def inflated_size(data: bytes, start: int, limit: int) -> int:
    """How many bytes the zlib stream at `start` inflates to, counting stops past `limit`."""
    inflater = zlib.decompressobj()
    total, pos = 0, start
    try:
        while not inflater.eof and total <= limit:
            if inflater.unconsumed_tail:
                chunk = inflater.unconsumed_tail
            else:
                chunk = data[pos : pos + _IN_CHUNK]
                pos += len(chunk)
                if not chunk:
                    break
            total += len(inflater.decompress(chunk, _OUT_CHUNK))
    except zlib.error:
        pass  # not zlib (encrypted, or broken): PDFium decides, in its capped child
    return total
