"""What the contracts accept as input: dates and times only as ISO 8601 text (never epoch
numbers), text without control characters (single-line text without line breaks either), and a
captured lead that says who it is. The exported JSON Schemas carry the text rule too."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime
from typing import Annotated, Any

import jsonschema
import pytest
from crm_contracts import catalog
from crm_contracts.envelope import CloudEvent
from crm_contracts.events.common import (
    ID_PATTERN,
    Actor,
    Id,
    IsoDate,
    IsoDateTime,
    LongText,
    MultiLine,
    ShortText,
    SingleLine,
)
from crm_contracts.events.leads import IDENTIFYING_FIELDS, LeadCaptured, lead_captured_example
from crm_contracts.schemas import event_schema
from hypothesis import given
from hypothesis import strategies as st
from pydantic import TypeAdapter, ValidationError

# pydantic's lax mode would read each of these as seconds since 1970.
NUMBERS: list[Any] = [1700000000, 0, 86400, 1700000000.5, True, "1700000000", " 0 ", "20260305", "-86400"]


def refusal(adapter: TypeAdapter[Any], value: Any, *, json_mode: bool = False) -> dict[str, Any]:
    with pytest.raises(ValidationError) as caught:
        if json_mode:
            adapter.validate_json(json.dumps(value))
        else:
            adapter.validate_python(value)
    [error] = caught.value.errors(include_url=False)
    return dict(error)


@pytest.mark.parametrize("value", NUMBERS)
@pytest.mark.parametrize("json_mode", [False, True])
def test_a_number_is_never_a_date(value: Any, json_mode: bool) -> None:
    error = refusal(TypeAdapter(IsoDate), value, json_mode=json_mode)
    assert error["type"] == "iso_date"
    assert error["msg"] == "must be an ISO 8601 date, e.g. 2026-03-05"


@pytest.mark.parametrize("value", NUMBERS)
@pytest.mark.parametrize("json_mode", [False, True])
def test_a_number_is_never_a_time(value: Any, json_mode: bool) -> None:
    error = refusal(TypeAdapter(IsoDateTime), value, json_mode=json_mode)
    assert error["type"] == "iso_datetime"
    assert error["msg"] == "must be an ISO 8601 date-time with a time zone, e.g. 2026-03-05T09:30:00Z"


def test_iso_text_and_python_values_are_still_dates_and_times() -> None:
    day, moment = TypeAdapter(IsoDate), TypeAdapter(IsoDateTime)
    assert day.validate_python("2026-03-05") == date(2026, 3, 5)
    assert day.validate_json('"2026-03-05"') == date(2026, 3, 5)
    assert day.validate_python(date(2026, 3, 5)) == date(2026, 3, 5)
    # MongoDB keeps a date as midnight UTC; reading it back must still work.
    assert day.validate_python(datetime(2026, 3, 5, tzinfo=UTC)) == date(2026, 3, 5)
    at = datetime(2026, 3, 5, 9, 30, tzinfo=UTC)
    assert moment.validate_python("2026-03-05T09:30:00Z") == at
    assert moment.validate_json('"2026-03-05T10:30:00+01:00"') == at
    assert moment.validate_python(at) == at
    assert refusal(moment, "2026-03-05T09:30:00")["type"] == "timezone_aware"  # as before


Line = TypeAdapter(Annotated[str, SingleLine(max_length=20)])
Lines = TypeAdapter(Annotated[str, MultiLine(max_length=20)])


@pytest.mark.parametrize(
    "char", ["\x00", "\x01", "\x07", "\x0b", "\x0c", "\x1b", "\x1f", "\x7f", "\x80", "\x9b"]
)
def test_control_characters_are_refused_in_any_text_naming_the_character(char: str) -> None:
    for adapter in (Line, Lines, TypeAdapter(ShortText), TypeAdapter(LongText)):
        error = refusal(adapter, f"Ada{char}Lovelace")
        assert error["type"] == "text_control_character"
        assert error["msg"] == f"must not contain control characters (found U+{ord(char):04X})"


@pytest.mark.parametrize("char", ["\t", "\n", "\r"])
def test_single_line_text_refuses_tabs_and_line_breaks_multi_line_text_keeps_them(char: str) -> None:
    error = refusal(Line, f"Ada{char}Lovelace")
    assert error["type"] == "text_line_break" and f"U+{ord(char):04X}" in error["msg"]
    assert refusal(TypeAdapter(ShortText), f"a{char}b")["type"] == "text_line_break"
    assert Lines.validate_python(f"Ada{char}Lovelace") == f"Ada{char}Lovelace"


def test_ordinary_unicode_text_passes_and_lengths_keep_their_string_messages() -> None:
    assert Line.validate_python("Zoë Ångström 😀 日本") == "Zoë Ångström 😀 日本"
    assert refusal(Line, "x" * 21)["type"] == "string_too_long"
    assert refusal(TypeAdapter(ShortText), "")["type"] == "string_too_short"
    with pytest.raises(ValidationError, match="lone surrogate"):
        TypeAdapter(Annotated[str, SingleLine()]).validate_python("a\ud800b")


def test_contract_text_fields_refuse_control_characters_naming_the_field() -> None:
    with pytest.raises(ValidationError) as caught:
        Actor.model_validate({"id": "rep-1", "name": "Rita\x00Rep"})
    assert [e["loc"] for e in caught.value.errors()] == [("name",)]
    body = lead_captured_example() | {"person": {"first_name": "Ada\x00", "email": "ada@engines.example"}}
    with pytest.raises(ValidationError) as caught:
        LeadCaptured.model_validate_json(json.dumps(body))
    assert [e["loc"] for e in caught.value.errors()] == [("person", "first_name")]


def test_a_capture_with_epoch_seconds_is_refused_naming_captured_at() -> None:
    body = lead_captured_example() | {"captured_at": 1700000000}
    with pytest.raises(ValidationError) as caught:
        LeadCaptured.model_validate_json(json.dumps(body))
    [error] = caught.value.errors()
    assert (error["loc"], error["type"]) == (("captured_at",), "iso_datetime")


CAPTURE_KEY = {"source_system": "webforms", "external_id": "f-1", "captured_at": "2026-11-02T09:30:00Z"}


@pytest.mark.parametrize(
    "identity",
    [
        {"person": {"first_name": "Ada"}},
        {"person": {"last_name": "Lovelace"}},
        {"person": {"email": "ada@engines.example"}},
        {"person": {"phone": "+44 20 7946 0000"}},
        {"company": {"name": "Analytical Engines"}},
    ],
)
def test_any_one_identifying_field_is_enough_for_a_capture(identity: dict[str, Any]) -> None:
    assert LeadCaptured.model_validate(CAPTURE_KEY | identity).external_id == "f-1"


@pytest.mark.parametrize(
    "anonymous",
    [
        {},
        {"person": {"first_name": "   ", "job_title": "CTO"}, "company": {"website": "https://x.example"}},
        {"company": {"size": 40, "country": "GB"}, "custom": {"note": "called us"}},
    ],
)
def test_a_capture_nobody_can_name_call_or_mail_is_refused_naming_every_field_that_would_do(
    anonymous: dict[str, Any],
) -> None:
    with pytest.raises(ValidationError) as caught:
        LeadCaptured.model_validate(CAPTURE_KEY | anonymous)
    errors = caught.value.errors(include_url=False)
    assert [".".join(map(str, e["loc"])) for e in errors] == list(IDENTIFYING_FIELDS)
    assert IDENTIFYING_FIELDS == (
        "person.first_name",
        "person.last_name",
        "person.email",
        "person.phone",
        "company.name",
    )
    for error in errors:
        assert error["type"] == "lead_unidentified"
        assert error["msg"] == ("a lead needs a name, an e-mail, a phone or a company name; none is given")


def test_the_exported_schema_refuses_what_the_models_refuse() -> None:
    schema = event_schema(catalog.LEAD_CAPTURED)
    validator = jsonschema.Draft202012Validator(schema)

    def envelope(data: dict[str, Any]) -> dict[str, Any]:
        return {
            "specversion": "1.0",
            "id": "e-1",
            "source": "/webforms",
            "type": catalog.LEAD_CAPTURED.type,
            "time": "2026-11-02T09:30:00Z",
            "data": data,
        }

    valid = lead_captured_example() | {"custom": {"message": "Call me\nafter 5"}}
    assert list(validator.iter_errors(envelope(valid))) == []
    for person in ({"first_name": "Ada\x00"}, {"first_name": "Ada\nLovelace"}, {"last_name": "\x1b[31m"}):
        data = lead_captured_example() | {"person": person}
        assert list(validator.iter_errors(envelope(data))), person
    assert list(validator.iter_errors(envelope(valid | {"custom": {"message": "a\x00b"}})))


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"time": 1700000000}, "time"),
        ({"time": "1700000000"}, "time"),
        ({"id": "evt\x00-1"}, "id"),
        ({"source": "/web\nforms"}, "source"),
        ({"subject": "lead\x7f"}, "subject"),
    ],
)
def test_the_envelope_refuses_number_times_and_control_characters(change: dict[str, Any], field: str) -> None:
    envelope = {
        "specversion": "1.0",
        "id": "e-1",
        "source": "/webforms",
        "type": catalog.LEAD_CAPTURED.type,
        "time": "2026-11-02T09:30:00Z",
        "data": lead_captured_example(),
    }
    with pytest.raises(ValidationError) as caught:
        CloudEvent[LeadCaptured].model_validate_json(json.dumps(envelope | change))
    assert [e["loc"] for e in caught.value.errors()] == [(field,)]


# -- ids (issue 18): what another system calls its records, names included --------------------
IDS = TypeAdapter(Id)
ACCEPTED_IDS = [
    "7c9e6679-7425-40de-944b-e07fc1f90ae7",
    "Rita Rep",
    "Team Nord & Ost",
    "Müller Holding GmbH",
    "SKU #12 (blue), 50% off?",
    "a.b:c|d\\e",
    "...",
    '{"$gt": ""}',  # text, compared for equality: never an operator
    "营业部",
    "x" * 128,
]
REFUSED_IDS = [
    ("$ne", "id_operator"),
    ("a/b", "id_slash"),
    (".", "id_dot_segment"),
    ("..", "id_dot_segment"),
    ("rep\x001", "id_control_character"),
    ("rep\t1", "id_control_character"),
    ("rep\u00851", "id_control_character"),
    (" rep", "id_edge_space"),
    ("rep\u00a0", "id_edge_space"),
    ("", "string_too_short"),
    ("x" * 129, "string_too_long"),
]


@pytest.mark.parametrize("value", ACCEPTED_IDS)
def test_any_printable_id_up_to_128_characters_is_taken_as_it_is(value: str) -> None:
    assert IDS.validate_python(value) == value
    assert IDS.validate_json(json.dumps(value)) == value


@pytest.mark.parametrize(("value", "kind"), REFUSED_IDS)
def test_ids_that_are_operators_paths_control_characters_or_padded_are_refused(value: str, kind: str) -> None:
    assert refusal(IDS, value)["type"] == kind


@pytest.mark.parametrize("value", ACCEPTED_IDS + [value for value, _ in REFUSED_IDS])
def test_the_id_schema_pattern_agrees_with_the_validator(value: str) -> None:
    schema = IDS.json_schema()
    accepted_by_schema = not list(jsonschema.Draft202012Validator(schema).iter_errors(value))
    try:
        IDS.validate_python(value)
        accepted = True
    except ValidationError:
        accepted = False
    assert accepted_by_schema == accepted
    assert schema["pattern"] == ID_PATTERN and "128 characters" in schema["description"]


@given(st.from_regex(ID_PATTERN, fullmatch=True).filter(lambda text: len(text) <= 128))
def test_every_id_the_schema_allows_is_accepted(value: str) -> None:
    assert IDS.validate_python(value) == value


def test_a_payload_strips_the_spaces_around_an_id_as_around_any_text() -> None:
    captured = LeadCaptured.model_validate(lead_captured_example() | {"owner_id": "  Rita Rep "})
    assert captured.owner_id == "Rita Rep"
