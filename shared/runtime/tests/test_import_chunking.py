"""Uploads are cut into chunks of whole records as they stream in, however the bytes arrive:
CSV quoted newlines survive, the BOM and blank lines are dropped, numbering matches the
synchronous reader, and whole-file problems (header, encoding, type) refuse the upload. The
suggestion logic proposes the closest known values."""

from __future__ import annotations

import pytest
from crm_runtime.chunking import UploadChunker
from crm_runtime.suggestions import closest, did_you_mean, unknown_reason
from crm_runtime.uploads import UnreadableUpload, UploadRecord

CSV = (
    "\ufeffexternal_id,person.first_name,notes\r\n"
    'A-1,Ada,"line one\nline two, with a comma"\r\n'
    "\r\n"
    'A-2,"Bob ""the builder""",\r\n'
    'A-3,Carol,"ends with\n"\r\n'
    "A-4,Dan,x,extra\r\n"
).encode()


def chunk_all(body: bytes, content_type: str, *, piece: int, rows: int = 2) -> list[list[UploadRecord]]:
    chunker = UploadChunker(content_type, chunk_rows=rows)
    chunks = []
    for start in range(0, len(body), piece):
        chunks += chunker.feed(body[start : start + piece])
    return chunks + chunker.finish()


@pytest.mark.parametrize("piece", [1, 3, 7, 1000])
def test_csv_is_cut_at_record_boundaries_however_the_bytes_arrive(piece: int) -> None:
    chunks = chunk_all(CSV, "text/csv; charset=utf-8", piece=piece)
    assert [len(chunk) for chunk in chunks] == [2, 2]
    records = [record for chunk in chunks for record in chunk]
    assert [r.number for r in records] == [1, 3, 4, 5]  # record 2 is the blank line
    assert records[0].fields == {
        "external_id": "A-1",
        "person": {"first_name": "Ada"},
        "notes": "line one\nline two, with a comma",
    }
    assert records[1].fields == {"external_id": "A-2", "person": {"first_name": 'Bob "the builder"'}}
    assert records[2].fields is not None and records[2].fields["notes"] == "ends with\n"
    assert records[3].fields is None and records[3].problem is not None
    assert records[3].problem.reason == "4 values for 3 columns"


def test_the_header_is_kept_and_checked_once() -> None:
    chunker = UploadChunker("text/csv", chunk_rows=10)
    assert chunker.feed(b"external_id,na") == []
    chunker.feed(b"me\nx,1\n")
    assert chunker.columns == ["external_id", "name"]
    [[record]] = chunker.finish()
    assert record.fields == {"external_id": "x", "name": "1"} and chunker.rows == 1


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"", "no header"),
        (b"\n\nx\n", "no header"),
        (b"a,b,a\n1,2,3\n", "appears twice"),
        (b"a\n\xff\xfe\n", "not UTF-8"),
    ],
)
def test_whole_file_problems_refuse_the_upload(body: bytes, message: str) -> None:
    with pytest.raises(UnreadableUpload, match=message):
        chunk_all(body, "text/csv", piece=2)


def test_a_refused_header_names_the_column() -> None:
    def only_known(columns: list[str]) -> None:
        for column in columns:
            if column != "external_id":
                raise UnreadableUpload(f"unknown column {column!r}", field=column)

    chunker = UploadChunker("text/csv", check_columns=only_known)
    with pytest.raises(UnreadableUpload) as refused:
        chunker.feed(b"external_id,emial\n")
    assert refused.value.field == "emial"


def test_an_unknown_content_type_is_refused() -> None:
    with pytest.raises(UnreadableUpload, match="send one of"):
        UploadChunker("application/xml")


@pytest.mark.parametrize("piece", [1, 5, 1000])
def test_ndjson_lines_are_numbered_and_bad_lines_kept_as_unreadable(piece: int) -> None:
    body = b'\xef\xbb\xbf{"external_id": "1"}\n\n[1]\n{broken\n{"external_id": "2", "note": "a\\nb"}'
    chunks = chunk_all(body, "application/x-ndjson", piece=piece, rows=3)
    records = [record for chunk in chunks for record in chunk]
    assert [len(chunk) for chunk in chunks] == [3, 1]
    assert [r.number for r in records] == [1, 3, 4, 5]
    assert records[0].fields == {"external_id": "1"}
    assert records[1].problem is not None and records[1].problem.reason == "not a JSON object"
    assert records[2].problem is not None and records[2].problem.reason.startswith("not JSON")
    assert records[3].fields == {"external_id": "2", "note": "a\nb"}


def test_a_multibyte_character_split_between_pieces_is_read_whole() -> None:
    chunks = chunk_all("name\nJosé Müller\n".encode(), "text/csv", piece=1)
    assert chunks[0][0].fields == {"name": "José Müller"}


def test_suggestions_are_the_closest_known_values_as_spelled() -> None:
    products = ["Widget Pro", "Widget Basic", "Gadget", "Support Plan"]
    assert closest("widget pro ", products)[0] == "Widget Pro"  # case and blanks aside: exact
    assert closest("Widgit Pro", products) == ["Widget Pro"]
    assert closest("Zebra", products) == []
    assert did_you_mean("Gadgte", products) == "; did you mean 'Gadget'?"
    assert did_you_mean("nothing alike", products) == ""
    assert unknown_reason("stage", "negotation", ["negotiation", "proposal"]) == (
        "unknown stage 'negotation'; did you mean 'negotiation'?"
    )
