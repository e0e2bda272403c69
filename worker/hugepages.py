"""Huge pages under the daemon's memory, so that forking it costs less.

A worker forks a work-horse for every job, and the horse forks a PDFium child for every PDF.
fork() copies the page tables of the process's private memory, and exit tears them down: with
the model loaded that is over a hundred MiB in 4 KiB pages, twice a job. Collapsed into 2 MiB
pages (MADV_COLLAPSE, Linux 6.1 and later), the same memory takes 512 times fewer entries
(figures: docs/benchmarks.md, "Ingest with defaults against the plain script", bench/bench_fork.py).

Nothing else changes. A write after a fork still copies 4 KiB, as before: the kernel splits a
shared huge page first. The resident size hardly changes (the daemon's memory is dense), and no
range is advised for huge pages later (no MADV_HUGEPAGE), so new allocations fault in as before.

Best effort: on another OS, on an older kernel, or with transparent huge pages set to `never`
(the system's switch), it does nothing.
"""

from __future__ import annotations

import ctypes
import logging
import sys
from pathlib import Path

log = logging.getLogger(__name__)

MADV_COLLAPSE = 25  # linux/mman.h, since 6.1
HUGE = 2 << 20  # x86-64's and arm64's (4 KiB granule) PMD size, where the kernel does not say
THP_SETTING = Path("/sys/kernel/mm/transparent_hugepage/enabled")
THP_SIZE = Path("/sys/kernel/mm/transparent_hugepage/hpage_pmd_size")


def thp_mode(text: str) -> str:
    """The selected mode of a `transparent_hugepage/enabled` file ("always [madvise] never")."""
    start, end = text.find("["), text.find("]")
    return text[start + 1 : end] if 0 <= start < end else ""


def private_ranges(maps: str, huge: int = HUGE) -> list[tuple[int, int]]:
    """The `huge`-aligned parts, at least `huge` long, of the private writable anonymous
    mappings (the heap included) of a /proc/PID/maps text."""
    ranges = []
    for line in maps.splitlines():
        fields = line.split()
        if len(fields) < 5 or fields[1][:2] != "rw" or fields[1][3:4] != "p":
            continue
        name = fields[5] if len(fields) > 5 else ""
        if name not in ("", "[heap]"):  # files, the stack, vdso: not ours to touch
            continue
        low, high = (int(x, 16) for x in fields[0].split("-"))
        start, end = -(-low // huge) * huge, high // huge * huge
        if end - start >= huge:
            ranges.append((start, end))
    return ranges


def collapse() -> int:
    """Collapse this process's private memory into huge pages where the kernel can; the MiB it
    did (0 where it does nothing). Call it once the model is loaded, before the first fork."""
    if not sys.platform.startswith("linux"):
        return 0
    try:
        if thp_mode(THP_SETTING.read_text()) == "never":
            return 0
        huge = int(THP_SIZE.read_text()) if THP_SIZE.exists() else HUGE  # 512 MiB on 64 KiB-page arm64
        ranges = private_ranges(Path("/proc/self/maps").read_text(), huge)
        libc = ctypes.CDLL(None, use_errno=True)
        madvise = libc.madvise
        madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    except (OSError, AttributeError, ValueError) as exc:
        log.debug("huge pages: not available here (%s)", exc)
        return 0
    done = 0
    for start, end in ranges:
        if madvise(start, end - start, MADV_COLLAPSE) == 0:  # partly done ranges fail: not counted
            done += end - start
    log.debug("huge pages: %d MiB of %d collapsed", done >> 20, sum(e - s for s, e in ranges) >> 20)
    return done >> 20
