"""Limits that are settings: their defaults and how they are read."""

from __future__ import annotations

from pathlib import Path

from worker.settings import Settings, default_horse_memory_mb, memory_limit_bytes


def _fake_root(tmp: Path, meminfo_kb: int | None, cgroup: str | None = None, memory_max: str | None = None) -> Path:
    """A directory laid out like / with the files memory_limit_bytes reads."""
    (tmp / "proc/self").mkdir(parents=True)
    if meminfo_kb is not None:
        (tmp / "proc/meminfo").write_text(f"MemTotal:       {meminfo_kb} kB\nMemFree:        1 kB\n")
    if cgroup is not None:
        (tmp / "proc/self/cgroup").write_text(f"0::{cgroup}\n")
        if memory_max is not None:
            d = tmp / "sys/fs/cgroup" / cgroup.lstrip("/")
            d.mkdir(parents=True)
            (d / "memory.max").write_text(memory_max + "\n")
    return tmp


def test_horse_memory_default_is_half_the_cgroup_limit_or_of_the_host(tmp_path: Path) -> None:
    gib = 1024 * 1024 * 1024
    host = _fake_root(tmp_path / "host", meminfo_kb=24 * 1024 * 1024)
    assert memory_limit_bytes(host) == 24 * gib
    assert default_horse_memory_mb(host) == 12 * 1024
    limited = _fake_root(tmp_path / "ct", 24 * 1024 * 1024, "/kubepods/pod1", str(6 * gib))
    assert memory_limit_bytes(limited) == 6 * gib
    assert default_horse_memory_mb(limited) == 3 * 1024
    unlimited = _fake_root(tmp_path / "max", 24 * 1024 * 1024, "/", "max")
    assert default_horse_memory_mb(unlimited) == 12 * 1024
    small = _fake_root(tmp_path / "small", 1024 * 1024)  # 1 GiB: the floor, a horse maps more than that
    assert default_horse_memory_mb(small) == 2048
    huge = _fake_root(tmp_path / "huge", 1024 * 1024 * 1024)  # 1 TiB: capped
    assert default_horse_memory_mb(huge) == 64 * 1024
    assert default_horse_memory_mb(_fake_root(tmp_path / "none", None)) == 2048


def test_horse_memory_is_on_by_default_and_zero_turns_it_off() -> None:
    assert Settings.from_env({}).horse_memory_mb == default_horse_memory_mb() > 0
    assert Settings().horse_memory_mb > 0
    assert Settings.from_env({"HORSE_MEMORY_MB": "0"}).horse_memory_mb == 0
    assert Settings.from_env({"HORSE_MEMORY_MB": "3000"}).horse_memory_mb == 3000


def test_text_limits_are_settings() -> None:
    s = Settings.from_env({})
    assert (s.max_page_chars, s.max_document_chars) == (100_000, 10_000_000)
    s = Settings.from_env({"MAX_PAGE_CHARS": "5000", "MAX_DOCUMENT_CHARS": "80000"})
    assert (s.max_page_chars, s.max_document_chars) == (5000, 80_000)
