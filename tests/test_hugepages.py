"""Huge pages under the daemon's memory (worker/hugepages.py): the ranges it picks, a real
collapse in a real process, and a real worker that has them once it is ready."""

from __future__ import annotations

import platform
import re
import subprocess
import sys
from pathlib import Path

import pytest

from worker.hugepages import HUGE, THP_SETTING, private_ranges, thp_mode

ROOT = Path(__file__).resolve().parent.parent


def _collapse_possible() -> str | None:
    """Why this machine cannot collapse (None: it can)."""
    if not sys.platform.startswith("linux"):
        return "not Linux"
    version = re.match(r"(\d+)\.(\d+)", platform.release())
    if version is None or (int(version[1]), int(version[2])) < (6, 1):
        return f"kernel {platform.release()} has no MADV_COLLAPSE (6.1+)"
    if not THP_SETTING.exists() or thp_mode(THP_SETTING.read_text()) == "never":
        return "transparent huge pages are off here"
    return None


def anon_huge_kib(pid: int | str = "self") -> int:
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("AnonHugePages:"):
            return int(line.split()[1])
    return 0


def test_thp_mode_reads_the_selected_mode() -> None:
    assert thp_mode("always [madvise] never\n") == "madvise"
    assert thp_mode("[always] madvise never") == "always"
    assert thp_mode("always madvise [never]") == "never"
    assert thp_mode("") == ""


def test_private_ranges_takes_aligned_private_anonymous_memory_only() -> None:
    mb = 1 << 20
    maps = "\n".join(
        [
            f"{0x55A000000000:x}-{0x55A000000000 + 9 * mb:x} rw-p 00000000 00:00 0          [heap]",
            f"{0x7F0000100000:x}-{0x7F0000100000 + 7 * mb:x} rw-p 00000000 00:00 0 ",  # unaligned start
            f"{0x7F1000000000:x}-{0x7F1000000000 + 1 * mb:x} rw-p 00000000 00:00 0 ",  # too short
            f"{0x7F2000000000:x}-{0x7F2000000000 + 8 * mb:x} r--p 00000000 00:00 0 ",  # read-only
            f"{0x7F3000000000:x}-{0x7F3000000000 + 8 * mb:x} rw-s 00000000 00:05 7   /dev/zero (deleted)",
            f"{0x7F4000000000:x}-{0x7F4000000000 + 8 * mb:x} rw-p 00001000 08:01 42  /usr/lib/libfoo.so",
            f"{0x7FFD00000000:x}-{0x7FFD00000000 + 8 * mb:x} rw-p 00000000 00:00 0   [stack]",
        ]
    )
    assert private_ranges(maps) == [
        (0x55A000000000, 0x55A000000000 + 8 * mb),  # 9 MiB: the last MiB is not a whole huge page
        (0x7F0000200000, 0x7F0000200000 + 6 * mb),  # rounded in at both ends
    ]
    assert all(start % HUGE == 0 and end % HUGE == 0 for start, end in private_ranges(maps))
    assert private_ranges(maps, huge=4 * mb) == [  # another PMD size: aligned to it
        (0x55A000000000, 0x55A000000000 + 8 * mb),
        (0x7F0000400000, 0x7F0000400000 + 4 * mb),
    ]


COLLAPSE_CHILD = r"""
import os, sys
sys.path.insert(0, sys.argv[1])
from worker.hugepages import collapse
def anon_huge_kib():
    lines = open("/proc/self/smaps_rollup").read().splitlines()
    return next(int(x.split()[1]) for x in lines if x.startswith("AnonHugePages:"))
block = bytearray(os.urandom(64 << 20))  # 64 MiB, written: resident in 4 KiB pages
before = anon_huge_kib()
done = collapse()
after = anon_huge_kib()
r, w = os.pipe()
pid = os.fork()
if pid == 0:
    block[0:4] = b"kid!"  # copied on write: the parent's bytes stay
    os.write(w, bytes(block[0:4]) + bytes(block[-4:]))
    os._exit(0)
_, status = os.waitpid(pid, 0)
seen = os.read(r, 8)
print(before, done, after, int(seen[:4] == b"kid!"), int(seen[4:] == bytes(block[-4:])), int(block[0:4] != b"kid!"))
"""


def test_collapse_backs_written_memory_with_huge_pages_and_fork_still_copies_on_write() -> None:
    if why := _collapse_possible():
        pytest.skip(why)
    out = subprocess.run(
        [sys.executable, "-c", COLLAPSE_CHILD, str(ROOT)], capture_output=True, text=True, timeout=60, check=True
    ).stdout.split()
    before, done_mib, after, child_wrote, child_read, parent_kept = (int(x) for x in out)
    assert done_mib >= 48, out  # most of the 64 MiB block (the allocator's edges aside)
    assert after - before >= 48 * 1024, out
    assert (child_wrote, child_read, parent_kept) == (1, 1, 1), out


def test_a_ready_worker_has_its_memory_in_huge_pages(start_worker) -> None:
    if why := _collapse_possible():
        pytest.skip(why)
    w = start_worker()
    # the model (tens of MiB) is loaded before the worker is ready, and collapsed with the rest
    assert anon_huge_kib(w.proc.pid) >= 32 * 1024, Path(f"/proc/{w.proc.pid}/smaps_rollup").read_text()


def test_collapse_does_nothing_where_the_system_says_never(tmp_path, monkeypatch) -> None:
    from worker import hugepages

    setting = tmp_path / "enabled"
    setting.write_text("always madvise [never]\n")
    monkeypatch.setattr(hugepages, "THP_SETTING", setting)
    assert hugepages.collapse() == 0  # this test process has tens of MiB it would collapse otherwise
