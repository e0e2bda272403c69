"""Records of a bulk input file (JSON Lines or CSV), read by byte range.

A bulk job reads its file twice: once whole, streaming, to check every record and cut it into
shards at record boundaries (`scan`), then each shard reads only its own byte range (`read`). Both
go through one reader, so a record means the same thing in both. Nothing holds the whole file:
the scan keeps one 8-byte hash per id (to find duplicates) and one entry per shard.
"""

from __future__ import annotations

import csv
import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import BinaryIO

import numpy as np

from worker.errors import DuplicateIdError, InputTooLargeError, InvalidArgumentsError, RecordError
from worker.store import unstorable

FORMATS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv"}
MAX_RECORD_BYTES = 1 << 20  # one line (JSONL) or one record (CSV) at most
MAX_ID_CHARS = 512
MAX_FIELD_NAME_CHARS = 100
SHOWN_LINES = 20  # line numbers of records without text named in a summary, at most
BOM = b"\xef\xbb\xbf"


def file_format(name: str) -> str:
    """`jsonl` or `csv`, from the file name's extension; InvalidArgumentsError otherwise."""
    for ext, fmt in FORMATS.items():
        if name.lower().endswith(ext):
            return fmt
    raise InvalidArgumentsError(f"{name}: a bulk input is JSON Lines (.jsonl, .ndjson) or CSV (.csv)")


def check_field_name(what: str, value: object) -> str:
    if not isinstance(value, str) or not value or len(value) > MAX_FIELD_NAME_CHARS:
        raise InvalidArgumentsError(f"{what} must be a non-empty string of at most {MAX_FIELD_NAME_CHARS} characters")
    return value


@dataclass(frozen=True)
class Record:
    line: int  # where the record starts, counted from 1 as an editor does
    seq: int  # its place among the file's records, from 0: vectors are exported in this order
    id: str
    text: str | None  # None: the record has no text to embed (missing, null or blank)


@dataclass(frozen=True)
class Shard:
    """A byte range of whole records: [start, end), its first line and record, and its hash."""

    shard: int
    start: int
    end: int
    line: int
    seq: int
    records: int
    texts: int
    sha256: str

    def as_dict(self) -> dict:
        return self.__dict__.copy()


@dataclass
class Plan:
    """What a scan found: the shards, the totals and the records without text."""

    format: str
    columns: list[str] | None
    sha256: str
    size: int
    records: int = 0
    texts: int = 0
    without_text: int = 0
    without_text_lines: list[int] = field(default_factory=list)
    shards: list[Shard] = field(default_factory=list)


class _Cursor:
    """Lines of a binary file from `start` to `end`, decoded, with the byte position and line number."""

    def __init__(self, f: BinaryIO, start: int, end: int | None, line: int) -> None:
        f.seek(start)
        self.f, self.pos, self.end, self.line = f, start, end, line - 1
        self.raw: list[bytes] = []  # the bytes read since the last take(), for the shard's hash

    def __iter__(self) -> Iterator[str]:
        return self

    def __next__(self) -> str:
        if self.end is not None and self.pos >= self.end:
            raise StopIteration
        raw = self.f.readline(MAX_RECORD_BYTES + 1)
        if not raw:
            raise StopIteration
        self.line += 1
        if len(raw) > MAX_RECORD_BYTES:
            raise InputTooLargeError(f"line {self.line} is over {MAX_RECORD_BYTES} bytes")
        raw_text = raw[len(BOM) :] if self.pos == 0 and raw.startswith(BOM) else raw
        self.pos += len(raw)
        self.raw.append(raw)
        try:
            return raw_text.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise RecordError(f"line {self.line} is not UTF-8 (byte {exc.start + 1} of the line)") from None

    def take(self) -> list[bytes]:
        raw, self.raw = self.raw, []
        return raw


def _identifier(value: object, line: int, id_field: str) -> str:
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise RecordError(f"line {line}: field {id_field!r} must be a string or an integer, got {_kind(value)}")
    text = str(value)
    if not text or len(text) > MAX_ID_CHARS:
        raise RecordError(f"line {line}: field {id_field!r} must be 1 to {MAX_ID_CHARS} characters")
    bad = unstorable(text)
    if bad:
        raise RecordError(f"line {line}: field {id_field!r} {bad}")
    return text


def _text(value: object, line: int, text_field: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise RecordError(f"line {line}: field {text_field!r} must be a string or null, got {_kind(value)}")
    bad = unstorable(value)
    if bad:
        raise RecordError(f"line {line}: field {text_field!r} {bad}")
    return value if value.strip() else None


def _kind(value: object) -> str:
    return "null" if value is None else type(value).__name__


class Reader:
    """Records of one file in one format with the id and text fields named by the caller."""

    def __init__(self, fmt: str, id_field: str, text_field: str, columns: list[str] | None = None) -> None:
        self.fmt, self.id_field, self.text_field, self.columns = fmt, id_field, text_field, columns

    def header(self, f: BinaryIO) -> int:
        """For CSV, read and check the header (the first record); the byte offset after it."""
        if self.fmt != "csv":
            return 0
        cursor = _Cursor(f, 0, None, 1)
        row = next(csv.reader(cursor, strict=True), None)
        if row is None:
            raise RecordError("the CSV file is empty: its first line must name the columns")
        missing = [name for name in (self.id_field, self.text_field) if name not in row]
        if missing:
            raise RecordError(
                f"the CSV header has no column {', '.join(map(repr, missing))}; its columns: "
                f"{', '.join(row[:20])}; set id_field / text_field to the columns to use"
            )
        self.columns = row
        return cursor.pos

    def records(self, cursor: _Cursor, seq: int) -> Iterator[Record]:
        """The records from the cursor's position on, numbered from `seq`."""
        if self.fmt == "csv":
            yield from self._csv(cursor, seq)
        else:
            yield from self._jsonl(cursor, seq)

    def _jsonl(self, cursor: _Cursor, seq: int) -> Iterator[Record]:
        for line_text in cursor:
            if not line_text.strip():
                continue
            try:
                obj = json.loads(line_text)
            except ValueError as exc:
                why = getattr(exc, "msg", str(exc))
                raise RecordError(f"line {cursor.line} is not JSON ({why}): JSON Lines is one object a line") from None
            except RecursionError:
                raise RecordError(f"line {cursor.line} is JSON nested too deeply") from None
            if not isinstance(obj, dict):
                raise RecordError(f"line {cursor.line} is a JSON {_kind(obj)}, not an object")
            if self.id_field not in obj:
                raise RecordError(
                    f"line {cursor.line} has no field {self.id_field!r}; its fields: "
                    f"{', '.join(list(obj)[:20])}; set id_field to the one that identifies a record"
                )
            ident = _identifier(obj[self.id_field], cursor.line, self.id_field)
            yield Record(cursor.line, seq, ident, _text(obj.get(self.text_field), cursor.line, self.text_field))
            seq += 1

    def _csv(self, cursor: _Cursor, seq: int) -> Iterator[Record]:
        assert self.columns is not None
        id_at, text_at = self.columns.index(self.id_field), self.columns.index(self.text_field)
        reader = csv.reader(cursor, strict=True)
        while True:
            first = cursor.line + 1
            try:
                row = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                raise RecordError(f"line {cursor.line}: not CSV ({exc})") from None
            if not row:
                continue
            if len(row) != len(self.columns):
                raise RecordError(f"line {first} has {len(row)} fields, the header {len(self.columns)}")
            ident = _identifier(row[id_at], first, self.id_field)
            yield Record(first, seq, ident, _text(row[text_at], first, self.text_field))
            seq += 1


def scan(f: BinaryIO, reader: Reader, shard_records: int, max_records: int) -> Plan:
    """Check every record of `f` and cut the file into shards of `shard_records` records.

    Raises RecordError for a record that cannot be used (naming its line), DuplicateIdError for an
    id seen twice (naming both lines), InputTooLargeError past `max_records`.
    """
    start = reader.header(f)
    f.seek(0)
    cutter = _Cutter(Plan(reader.fmt, reader.columns, "", 0), f.read(start), start, shard_records)
    cursor = _Cursor(f, start, None, first_line(reader))
    for rec in reader.records(cursor, 0):
        if cutter.plan.records >= max_records:
            raise InputTooLargeError(f"over {max_records} records (MAX_BULK_RECORDS)")
        cutter.add(rec, cursor)
    plan = cutter.finish(cursor)
    if plan.records == 0:
        raise RecordError("the file holds no record")
    _check_unique(f, reader, cutter.ids[: plan.records])
    return plan


def first_line(reader: Reader) -> int:
    return 2 if reader.fmt == "csv" else 1


class _Cutter:
    """Cuts records into shards as a scan reads them, hashing the bytes of each and of the whole."""

    def __init__(self, plan: Plan, head: bytes, start: int, shard_records: int) -> None:
        self.plan, self.start, self.shard_records = plan, start, shard_records
        self.whole = hashlib.sha256(head)
        self.ids = np.zeros(1024, dtype=np.uint64)  # an 8-byte hash per id, to find duplicates
        self._new_shard(start)

    def _new_shard(self, start: int) -> None:
        self.start, self.first, self.count, self.texts, self.part = start, None, 0, 0, hashlib.sha256()

    def _take(self, cursor: _Cursor) -> None:
        for piece in cursor.take():
            self.whole.update(piece)
            self.part.update(piece)

    def add(self, rec: Record, cursor: _Cursor) -> None:
        plan = self.plan
        self._take(cursor)
        self.first = self.first or rec
        if plan.records == len(self.ids):
            self.ids = np.resize(self.ids, 2 * len(self.ids))
        self.ids[plan.records] = _id_hash(rec.id)
        plan.records += 1
        self.count += 1
        if rec.text is None:
            plan.without_text += 1
            if len(plan.without_text_lines) < SHOWN_LINES:
                plan.without_text_lines.append(rec.line)
        else:
            self.texts += 1
        if self.count == self.shard_records:
            self._cut(cursor.pos)

    def _cut(self, end: int) -> None:
        first = self.first
        assert first is not None
        digest = self.part.hexdigest()
        self.plan.shards.append(
            Shard(len(self.plan.shards), self.start, end, first.line, first.seq, self.count, self.texts, digest)
        )
        self._new_shard(end)

    def finish(self, cursor: _Cursor) -> Plan:
        self._take(cursor)  # blank lines at the end
        if self.count:
            self._cut(cursor.pos)
        plan = self.plan
        plan.texts = plan.records - plan.without_text
        plan.sha256, plan.size = self.whole.hexdigest(), cursor.pos
        return plan


def _id_hash(ident: str) -> int:
    return int.from_bytes(hashlib.blake2b(ident.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "little")


def _check_unique(f: BinaryIO, reader: Reader, ids: np.ndarray) -> None:
    """DuplicateIdError naming the first id seen twice and both lines. Equal 8-byte hashes are
    rare; only then is the file read again, comparing the ids themselves."""
    ordered = np.sort(ids)
    clash = set(ordered[1:][ordered[1:] == ordered[:-1]].tolist())
    if not clash:
        return
    seen: dict[str, int] = {}
    start = reader.header(f)
    for rec in reader.records(_Cursor(f, start, None, first_line(reader)), 0):
        if _id_hash(rec.id) in clash:
            if rec.id in seen:
                raise DuplicateIdError(f"id {rec.id!r} appears twice: on line {seen[rec.id]} and on line {rec.line}")
            seen[rec.id] = rec.line


def read(f: BinaryIO, reader: Reader, shard: Shard) -> list[Record]:
    """The records of one shard, after checking that its bytes are those the scan saw."""
    cursor = _Cursor(f, shard.start, shard.end, shard.line)
    records = list(reader.records(cursor, shard.seq))
    digest = hashlib.sha256(b"".join(cursor.take())).hexdigest()
    if digest != shard.sha256 or cursor.pos != shard.end or len(records) != shard.records:
        raise RecordError(
            f"lines {shard.line} onwards changed since the bulk job read the file: "
            "run the job again on the file as it is now"
        )
    return records
