"""Sources: input roots (symlinks followed), regular files, byte limits, inline data."""

from __future__ import annotations

import base64
import os
import time
from pathlib import Path

import pytest

from worker.errors import InputNotFoundError, InputTooLargeError, InvalidArgumentsError, PathNotAllowedError
from worker.settings import Settings
from worker.sources import load_source


@pytest.fixture()
def roots(tmp_path: Path) -> tuple[Path, Path, Settings]:
    inside = tmp_path / "in"
    outside = tmp_path / "out"
    inside.mkdir()
    outside.mkdir()
    return inside, outside, Settings(input_roots=(inside,), max_pdf_bytes=1000, max_inline_bytes=100)


def test_path_string_and_dict_inside_roots(roots) -> None:
    inside, _, settings = roots
    (inside / "a.pdf").write_bytes(b"%PDF-1.7 data")
    for source in (str(inside / "a.pdf"), {"path": str(inside / "a.pdf")}):
        src = load_source(source, settings)
        assert src.data == b"%PDF-1.7 data"
        assert src.name == "a.pdf"
        assert src.path == (inside / "a.pdf").resolve()


def test_outside_roots_relative_and_dotdot_refused(roots) -> None:
    inside, outside, settings = roots
    (outside / "b.pdf").write_bytes(b"%PDF-")
    with pytest.raises(PathNotAllowedError):
        load_source(str(outside / "b.pdf"), settings)
    with pytest.raises(PathNotAllowedError):
        load_source(str(inside / ".." / "out" / "b.pdf"), settings)
    with pytest.raises(PathNotAllowedError):
        load_source("a.pdf", settings)
    with pytest.raises(PathNotAllowedError):  # not even told whether it exists
        load_source(str(outside / "missing.pdf"), settings)


def test_symlink_escaping_roots_refused(roots) -> None:
    inside, outside, settings = roots
    (outside / "secret.pdf").write_bytes(b"%PDF-secret")
    (inside / "link.pdf").symlink_to(outside / "secret.pdf")
    (inside / "dirlink").symlink_to(outside, target_is_directory=True)
    with pytest.raises(PathNotAllowedError):
        load_source(str(inside / "link.pdf"), settings)
    with pytest.raises(PathNotAllowedError):
        load_source({"path": str(inside / "dirlink" / "secret.pdf")}, settings)


def test_symlink_within_roots_allowed(roots) -> None:
    inside, _, settings = roots
    (inside / "real.pdf").write_bytes(b"%PDF-x")
    (inside / "alias.pdf").symlink_to(inside / "real.pdf")
    assert load_source(str(inside / "alias.pdf"), settings).name == "real.pdf"


def test_missing_directory_and_fifo_are_not_found(roots) -> None:
    inside, _, settings = roots
    with pytest.raises(InputNotFoundError):
        load_source(str(inside / "nope.pdf"), settings)
    (inside / "dir.pdf").mkdir()
    with pytest.raises(InputNotFoundError):
        load_source(str(inside / "dir.pdf"), settings)
    os.mkfifo(inside / "fifo.pdf")
    with pytest.raises(InputNotFoundError):  # must not block reading a pipe
        load_source(str(inside / "fifo.pdf"), settings)


def test_file_over_byte_limit(roots) -> None:
    inside, _, settings = roots
    (inside / "big.pdf").write_bytes(b"%PDF-" + b"x" * 1000)
    with pytest.raises(InputTooLargeError, match="MAX_PDF_BYTES"):
        load_source(str(inside / "big.pdf"), settings)
    (inside / "ok.pdf").write_bytes(b"x" * 1000)
    assert len(load_source(str(inside / "ok.pdf"), settings).data) == 1000


def test_inline_data(roots) -> None:
    _, _, settings = roots
    data = b"%PDF-1.4 inline"
    src = load_source({"data_b64": base64.b64encode(data).decode(), "filename": "../../etc/x.pdf"}, settings)
    assert src.data == data
    assert src.name == "x.pdf"  # never a path
    assert src.path is None
    wrapped = base64.encodebytes(b"y" * 90).decode()  # with newlines
    assert load_source({"data_b64": wrapped}, settings).data == b"y" * 90


def test_inline_over_limit_refused_before_decoding(roots) -> None:
    _, _, settings = roots
    with pytest.raises(InputTooLargeError, match="MAX_INLINE_BYTES"):
        load_source({"data_b64": base64.b64encode(b"z" * 101).decode()}, settings)
    with pytest.raises(InputTooLargeError):
        load_source({"data_b64": "A" * 10_000_000}, settings)


@pytest.mark.parametrize(
    "source",
    [
        42,
        None,
        ["a"],
        {"path": 3},
        {"data_b64": "!!!notbase64"},
        {"data_b64": 5},
        {"path": "/x", "extra": 1},
        {"filename": "a.pdf"},
        {"data_b64": "", "filename": 7},
    ],
)
def test_malformed_sources(roots, source) -> None:
    with pytest.raises(InvalidArgumentsError):
        load_source(source, roots[2])


@pytest.fixture(params=["openat2", "walk"])
def open_path(request, monkeypatch) -> str:
    """Both ways of opening beneath a root: openat2 (where the kernel has it) and the walk."""
    from worker import sources

    if request.param == "walk":
        monkeypatch.setattr(sources, "use_openat2", False, raising=False)
    elif not getattr(sources, "use_openat2", True):
        pytest.skip("no openat2 here")
    return request.param


def test_symlinks_inside_roots_relative_absolute_and_chained(roots, open_path) -> None:
    inside, outside, settings = roots
    (inside / "sub").mkdir()
    (inside / "sub" / "real.pdf").write_bytes(b"%PDF-real")
    (inside / "abs.pdf").symlink_to(inside / "sub" / "real.pdf")  # absolute: openat2 alone refuses it
    (inside / "rel.pdf").symlink_to("sub/real.pdf")
    (inside / "chain.pdf").symlink_to("abs.pdf")
    (inside / "subdir").symlink_to(inside / "sub", target_is_directory=True)
    (inside / "sub" / "up.pdf").symlink_to("../rel.pdf")
    for name in ("abs.pdf", "rel.pdf", "chain.pdf", "subdir/real.pdf", "sub/up.pdf", "sub/../sub/real.pdf"):
        src = load_source(str(inside / name), settings)
        assert (src.data, src.name) == (b"%PDF-real", "real.pdf"), name
    (outside / "secret.pdf").write_bytes(b"%PDF-secret")
    (inside / "sub" / "out.pdf").symlink_to("../../out/secret.pdf")
    (inside / "loop.pdf").symlink_to("loop.pdf")
    (inside / "dangling.pdf").symlink_to(inside / "gone.pdf")
    with pytest.raises(PathNotAllowedError):
        load_source(str(inside / "sub" / "out.pdf"), settings)
    with pytest.raises(InputNotFoundError):
        load_source(str(inside / "loop.pdf"), settings)
    with pytest.raises(InputNotFoundError):
        load_source(str(inside / "dangling.pdf"), settings)


def _swapper(inside: Path, outside: Path, stop, pause: float = 0.0) -> None:
    """Swap inside/doc.pdf between a regular file and a symlink to the outside file (atomic rename),
    and inside/d between a directory and a symlink to the outside directory (two renames)."""
    (inside / "file.tmp").write_bytes((inside / "doc.pdf").read_bytes())
    (inside / "spare_link").symlink_to(outside, target_is_directory=True)
    n = 0
    while not stop.is_set():
        n += 1
        tmp = inside / f"swap{n % 2}"
        if n % 2:
            tmp.symlink_to(outside / "doc.pdf")
        else:
            os.link(inside / "file.tmp", tmp)
        os.replace(tmp, inside / "doc.pdf")
        if n % 2:
            os.rename(inside / "d", inside / "spare_dir")
            os.rename(inside / "spare_link", inside / "d")
        else:
            os.rename(inside / "d", inside / "spare_link")
            os.rename(inside / "spare_dir", inside / "d")
        if pause:
            time.sleep(pause)  # leave the CPU to the worker


def test_swapping_a_file_and_a_symlink_never_leads_outside(roots, open_path) -> None:
    import threading

    from worker.errors import BadInputError

    inside, outside, settings = roots
    (outside / "doc.pdf").write_bytes(b"%PDF-OUTSIDE secret")
    (inside / "doc.pdf").write_bytes(b"%PDF-inside")
    (inside / "d").mkdir()
    (inside / "d" / "doc.pdf").write_bytes(b"%PDF-inside")
    stop = threading.Event()
    swapper = threading.Thread(target=_swapper, args=(inside, outside, stop), daemon=True)
    swapper.start()
    seen: dict[str, int] = {}
    try:
        for i in range(3000):
            try:
                data = load_source(str(inside / ("doc.pdf" if i % 2 else "d/doc.pdf")), settings).data
                key = data.decode()
            except BadInputError as exc:
                key = type(exc).__name__
            seen[key] = seen.get(key, 0) + 1
    finally:
        stop.set()
        swapper.join()
    assert "%PDF-OUTSIDE secret" not in seen, seen
    assert set(seen) <= {"%PDF-inside", "PathNotAllowedError", "InputNotFoundError"}, seen
    assert seen.get("%PDF-inside") and seen.get("PathNotAllowedError"), seen  # the race was really run


def test_swapping_while_a_real_worker_reads_never_leads_outside(start_worker, redis_conn, tmp_path) -> None:
    """The same race through Redis and `python -m worker run` (its INPUT_ROOTS is tmp_path)."""
    import threading

    from tests import pdfs
    from tests.conftest import queue, wait_for
    from worker.errors import error_type

    inside, outside = tmp_path / "in", tmp_path.parent / f"{tmp_path.name}-outside"
    inside.mkdir()
    outside.mkdir()
    (outside / "doc.pdf").write_bytes(pdfs.text_bomb(pages=1, glyphs=1, expand=8, fill="S"))  # "SSSSSSS "
    (inside / "doc.pdf").write_bytes(pdfs.text_bomb(pages=1, glyphs=1, expand=8, fill="i"))
    (inside / "d").mkdir()
    (inside / "d" / "doc.pdf").write_bytes((inside / "doc.pdf").read_bytes())
    start_worker()
    stop = threading.Event()
    swapper = threading.Thread(target=_swapper, args=(inside, outside, stop, 0.002), daemon=True)
    q = queue(redis_conn)
    swapper.start()
    try:
        paths = [str(inside / ("doc.pdf" if i % 2 else "d/doc.pdf")) for i in range(30)]
        jobs = [q.enqueue("worker.jobs.extract_text", path) for path in paths]
        wait_for(lambda: all(j.get_status(refresh=True) in ("finished", "failed") for j in jobs), 120, 0.2, "jobs")
    finally:
        stop.set()
        swapper.join()
    outcomes: dict[str, int] = {}
    for job in jobs:
        if job.get_status() == "finished":
            key = job.return_value()["pages"][0].strip()
        else:
            key = error_type(job.latest_result().exc_string) or "?"
        outcomes[key] = outcomes.get(key, 0) + 1
    assert "SSSSSSS" not in outcomes, outcomes
    assert set(outcomes) <= {"iiiiiii", "PathNotAllowedError", "InputNotFoundError"}, outcomes
    print("outcomes", outcomes)


def test_a_path_outside_the_roots_is_told_the_roots_and_the_fix(roots) -> None:
    inside, outside, settings = roots
    (outside / "b.pdf").write_bytes(b"%PDF-")
    with pytest.raises(PathNotAllowedError, match=f"INPUT_ROOTS={inside}.*add its directory to INPUT_ROOTS"):
        load_source(str(outside / "b.pdf"), settings)
