"""Sources: input roots (symlinks followed), regular files, byte limits, inline data."""

from __future__ import annotations

import base64
import os
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
    [42, None, ["a"], {"path": 3}, {"data_b64": "!!!notbase64"}, {"data_b64": 5}, {"path": "/x", "extra": 1},
     {"filename": "a.pdf"}, {"data_b64": "", "filename": 7}],
)
def test_malformed_sources(roots, source) -> None:
    with pytest.raises(InvalidArgumentsError):
        load_source(source, roots[2])
