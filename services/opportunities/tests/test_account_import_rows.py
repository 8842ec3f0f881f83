"""Account import rows without I/O: a chunk's rows are applied parents first whatever their
order in the file, and rows whose parents loop are found; countries come as ISO codes or
English names and an unknown one says what was meant; the year established and the revenue's
currency are checked naming their column."""

from __future__ import annotations

from typing import Any

import pytest
from crm_opportunities.countries import UnknownCountry, country_code
from crm_opportunities.import_targets import parents_first
from crm_opportunities.imports import AccountRow
from crm_runtime.imports import ImportRow, rejections_of
from pydantic import ValidationError


def rows(*pairs: tuple[str, str | None]) -> list[tuple[ImportRow, AccountRow]]:
    found = []
    for number, (external_id, parent) in enumerate(pairs, start=1):
        fields: dict[str, Any] = {"external_id": external_id, "name": f"Account {external_id}"}
        if parent is not None:
            fields["parent_external_id"] = parent
        found.append((ImportRow(number, fields), AccountRow.model_validate(fields)))
    return found


def order(items: list[tuple[ImportRow, AccountRow]]) -> list[str]:
    return [account.external_id for _, account in items]


def test_a_chain_in_reverse_order_is_applied_parents_first() -> None:
    ordered, looping = parents_first(rows(("grandchild", "child"), ("child", "parent"), ("parent", None)))
    assert order(ordered) == ["parent", "child", "grandchild"] and looping == []


def test_rows_whose_parent_is_not_in_the_chunk_keep_the_file_order() -> None:
    chunk = rows(("b", "elsewhere"), ("a", None), ("c", "b"), ("d", "elsewhere"))
    ordered, looping = parents_first(chunk)
    assert order(ordered) == ["b", "a", "d", "c"] and looping == []


def test_rows_whose_parents_loop_within_the_chunk_are_set_apart_with_those_below_them() -> None:
    chunk = rows(("x", "y"), ("y", "x"), ("below", "x"), ("free", None))
    ordered, looping = parents_first(chunk)
    assert order(ordered) == ["free"] and order(looping) == ["x", "y", "below"]


@pytest.mark.parametrize(
    ("given", "code"),
    [
        ("DE", "DE"),
        ("de", "DE"),
        ("DEU", "DE"),
        ("Germany", "DE"),
        ("  united   kingdom ", "GB"),
        ("England", "GB"),
        ("UK", "GB"),
        ("United States of America", "US"),
        ("Russia", "RU"),
        ("Viet Nam", "VN"),
        ("Vietnam", "VN"),
    ],
)
def test_a_country_is_given_as_an_iso_code_or_an_english_name(given: str, code: str) -> None:
    assert country_code(given) == code


@pytest.mark.parametrize(("given", "meant"), [("Germny", "'Germany'"), ("Frnace", "'France'")])
def test_an_unknown_country_says_which_was_meant(given: str, meant: str) -> None:
    with pytest.raises(UnknownCountry, match=f"did you mean {meant}"):
        country_code(given)


def test_a_numeric_code_is_not_taken_for_a_country() -> None:
    with pytest.raises(UnknownCountry):
        country_code("276")


def rejected(fields: dict[str, Any]) -> list[tuple[str, str | None, str]]:
    row = ImportRow(1, {"external_id": "A-1", "name": "Engines", **fields})
    with pytest.raises(ValidationError) as caught:
        AccountRow.model_validate(row.fields)
    return [(r.column, r.value, r.reason) for r in rejections_of(row, caught.value)]


def test_bad_account_fields_are_rejected_naming_the_column_and_the_value() -> None:
    [(column, value, reason)] = rejected({"country": "Atlantis"})
    assert (column, value) == ("country", "Atlantis") and "ISO 3166-1 code" in reason
    [(column, value, _)] = rejected({"year_established": "3000"})
    assert (column, value) == ("year_established", "3000")
    [(column, _, _)] = rejected({"year_established": "999"})
    assert column == "year_established"
    [(column, value, reason)] = rejected({"annual_revenue_currency": "USD"})
    assert (column, value, reason) == (
        "annual_revenue_currency",
        "USD",
        "Value error, a currency needs an annual_revenue",
    )
    [(column, _, _)] = rejected({"annual_revenue": "100", "annual_revenue_currency": "dollars"})
    assert column == "annual_revenue_currency"
    [(column, value, _)] = rejected({"parent_external_id": "A-1"})
    assert (column, value) == ("parent_external_id", "A-1")


def test_a_good_row_keeps_its_revenue_currency_year_and_country_code() -> None:
    row = AccountRow.model_validate(
        {
            "external_id": "A-1",
            "name": "Engines",
            "country": "France",
            "year_established": "1990",
            "annual_revenue": "1200000.50",
            "annual_revenue_currency": "EUR",
        }
    )
    assert (row.country, row.year_established, str(row.annual_revenue), row.annual_revenue_currency) == (
        "FR",
        1990,
        "1200000.50",
        "EUR",
    )
