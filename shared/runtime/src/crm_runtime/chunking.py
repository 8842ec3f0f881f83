"""An upload (CSV or NDJSON) read as it streams in and cut into chunks of whole records, so an
import of any size never sits in memory at once: bytes go in piece by piece, lists of at most
``chunk_rows`` records come out. CSV is cut only at record boundaries (a quoted field may hold
newlines); the header is read once and kept for the whole upload. Record numbers are those of
``crm_runtime.uploads``: the NDJSON line, or the CSV record after the header (1 = first)."""

from __future__ import annotations

import codecs
import csv
import io
from collections.abc import Callable

import orjson

from .uploads import (
    CSV_TYPES,
    NDJSON_TYPES,
    UPLOAD_TYPES,
    UnreadableUpload,
    UploadRecord,
    media_type,
    nest_columns,
    unreadable_record,
)

DEFAULT_CHUNK_ROWS = 500


class UploadChunker:
    """Feed it the body's pieces with ``feed`` and call ``finish`` at the end; both return
    the chunks completed by then. Raises UnreadableUpload for what spoils the whole upload
    (unknown type, not UTF-8, no or a bad CSV header)."""

    def __init__(
        self,
        content_type: str,
        *,
        chunk_rows: int = DEFAULT_CHUNK_ROWS,
        check_columns: Callable[[list[str]], None] | None = None,
    ) -> None:
        kind = media_type(content_type)
        if kind in NDJSON_TYPES:
            self.format = "ndjson"
        elif kind in CSV_TYPES:
            self.format = "csv"
        else:
            raise UnreadableUpload(f"send one of {', '.join(UPLOAD_TYPES)}, not {kind or 'nothing'}")
        self._chunk_rows = chunk_rows
        self._check_columns = check_columns
        self._decoder = codecs.getincrementaldecoder("utf-8-sig")()
        self._partial = ""  # text after the last newline
        self._record = ""  # CSV: lines of a record whose quotes are still open
        self._quotes = 0
        self._number = 0
        self._bytes = 0
        self.columns: list[str] | None = None
        self._pending: list[UploadRecord] = []
        self.rows = 0  # records read (unreadable ones included, blank lines not)

    @property
    def bytes_read(self) -> int:
        return self._bytes

    def feed(self, data: bytes) -> list[list[UploadRecord]]:
        self._bytes += len(data)
        text = self._decode(data, final=False)
        lines = (self._partial + text).split("\n")
        self._partial = lines.pop()
        for line in lines:
            self._line(line + "\n")
        return self._full_chunks()

    def finish(self) -> list[list[UploadRecord]]:
        tail = self._partial + self._decode(b"", final=True)
        self._partial = ""
        if tail:
            self._line(tail)
        if self._record:  # an open quote at the very end: csv reads it to the end anyway
            self._csv_record(self._record)
            self._record = ""
        if self.format == "csv" and self.columns is None:
            raise UnreadableUpload("the CSV has no header row")
        chunks = self._full_chunks()
        if self._pending:
            chunks.append(self._pending)
            self._pending = []
        return chunks

    def _decode(self, data: bytes, *, final: bool) -> str:
        try:
            return self._decoder.decode(data, final=final)
        except UnicodeDecodeError as exc:
            raise UnreadableUpload(f"the upload is not UTF-8 (near byte {self._bytes}): {exc}") from exc

    def _line(self, line: str) -> None:
        if self.format == "ndjson":
            self._ndjson_line(line)
            return
        self._record += line
        self._quotes += line.count('"')
        if self._quotes % 2 == 0:  # every quote closed: the record is whole
            record, self._record, self._quotes = self._record, "", 0
            self._csv_record(record)

    def _ndjson_line(self, line: str) -> None:
        self._number += 1
        if not line.strip():
            return
        try:
            value = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            self._add(unreadable_record(self._number, f"not JSON: {exc}"))
            return
        if not isinstance(value, dict):
            self._add(unreadable_record(self._number, "not a JSON object"))
            return
        self._add(UploadRecord(self._number, value))

    def _csv_record(self, text: str) -> None:
        values = next(csv.reader(io.StringIO(text, newline="")), [])
        if self.columns is None:
            self._header(values)
            return
        self._number += 1
        if not any(value.strip() for value in values):
            return
        if len(values) > len(self.columns):
            self._add(
                unreadable_record(self._number, f"{len(values)} values for {len(self.columns)} columns")
            )
            return
        self._add(UploadRecord(self._number, nest_columns(zip(self.columns, values, strict=False))))

    def _header(self, values: list[str]) -> None:
        columns = [column.strip() for column in values]
        if not any(columns):
            raise UnreadableUpload("the CSV has no header row")
        if len(set(columns)) != len(columns):
            twice = next(column for column in columns if columns.count(column) > 1)
            raise UnreadableUpload(f"column {twice!r} appears twice", field=twice)
        if self._check_columns is not None:
            self._check_columns(columns)
        self.columns = columns

    def _add(self, record: UploadRecord) -> None:
        self._pending.append(record)
        self.rows += 1

    def _full_chunks(self) -> list[list[UploadRecord]]:
        chunks = []
        while len(self._pending) >= self._chunk_rows:
            chunks.append(self._pending[: self._chunk_rows])
            self._pending = self._pending[self._chunk_rows :]
        return chunks
