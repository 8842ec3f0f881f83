"""Uploads are read as CSV or NDJSON; unreadable rows are kept, with their number, for the report."""

from __future__ import annotations

import pytest
from crm_runtime.uploads import UnreadableUpload, read_upload


def test_csv_rows_nest_dotted_columns_and_keep_unreadable_rows() -> None:
    records = read_upload(
        b"external_id,person.email,employees\nA-1,ada@x.example,\n\nA-2,b@x.example,40,extra\n",
        "text/csv; charset=utf-8",
    )
    assert [r.number for r in records] == [1, 3]
    assert records[0].fields == {"external_id": "A-1", "person": {"email": "ada@x.example"}}
    assert records[1].fields is None and records[1].problem is not None
    assert records[1].problem.reason == "4 values for 3 columns"


def test_ndjson_rows_are_numbered_by_line() -> None:
    records = read_upload(b'{"external_id": "O-1"}\n\n[1]\n{broken\n', "application/x-ndjson")
    assert [r.number for r in records] == [1, 3, 4]
    assert records[0].external_id == "O-1"
    assert records[1].problem is not None and records[1].problem.reason == "not a JSON object"
    assert records[2].problem is not None and records[2].problem.reason.startswith("not JSON")


def test_whole_uploads_are_refused_with_the_reason() -> None:
    with pytest.raises(UnreadableUpload, match="send one of"):
        read_upload(b"{}", "application/xml")
    with pytest.raises(UnreadableUpload, match="appears twice") as twice:
        read_upload(b"a,a\n1,2\n", "text/csv")
    assert twice.value.field == "a"
    with pytest.raises(UnreadableUpload, match="at most 2 rows"):
        read_upload(b"{}\n{}\n{}\n", "application/x-ndjson", max_rows=2)
    with pytest.raises(UnreadableUpload, match="not UTF-8"):
        read_upload(b"\xff\xfe", "text/csv")
