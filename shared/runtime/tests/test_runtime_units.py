"""Unit tests of the runtime pieces that need no broker or database."""

from __future__ import annotations

import json
from decimal import Decimal

import pytest
from crm_contracts import catalog
from crm_contracts.events.leads import LeadCaptured, lead_captured_example
from crm_runtime.consumer import describe_validation_error
from crm_runtime.events import decode, encode, make_event
from crm_runtime.http import TokenAuth
from crm_runtime.mongo import from_bson, to_bson
from crm_runtime.projection import is_newer
from pydantic import ValidationError


def test_envelope_round_trips_with_sequence_and_schema() -> None:
    data = LeadCaptured.model_validate(lead_captured_example())
    event = make_event(catalog.LEAD_CAPTURED, data, source="/webforms", subject="x", version=7)
    raw = encode(event)
    doc = json.loads(raw)
    assert doc["specversion"] == "1.0" and doc["type"] == "com.crmsuite.lead.captured.v1"
    assert doc["sequence"] == "7" and doc["dataschema"] == "urn:crmsuite:schema:lead.captured:v1"
    assert doc["datacontenttype"] == "application/json"
    back = decode(catalog.LEAD_CAPTURED, raw)
    assert back == event and back.version == 7


def test_decode_refuses_an_event_of_another_type_on_the_topic() -> None:
    data = LeadCaptured.model_validate(lead_captured_example())
    event = make_event(catalog.LEAD_CAPTURED, data, source="/x", subject="x")
    with pytest.raises(ValueError, match=r"type: expected 'com\.crmsuite\.lead\.created\.v1'"):
        decode(catalog.LEAD_CREATED, encode(event))


def test_validation_errors_name_the_field() -> None:
    raw = json.dumps(
        {
            "specversion": "1.0",
            "id": "1",
            "source": "/x",
            "type": catalog.LEAD_CAPTURED.type,
            "time": "2026-01-01T00:00:00Z",
            "data": {"source_system": "s", "person": {"email": "nope"}},  # captured_at is optional
        }
    )
    with pytest.raises(ValidationError) as caught:
        decode(catalog.LEAD_CAPTURED, raw.encode())
    message = describe_validation_error(caught.value)
    assert "data.person.email" in message and "data.external_id: Field required" in message


def test_mongo_operators_cannot_hide_in_ids_or_custom_keys() -> None:
    data = lead_captured_example() | {"campaign_id": "$where"}
    with pytest.raises(ValidationError, match="campaign_id"):
        LeadCaptured.model_validate(data)
    with pytest.raises(ValidationError, match="custom"):
        LeadCaptured.model_validate(lead_captured_example() | {"custom": {"$gt": 1}})


@pytest.mark.parametrize(
    ("stored", "incoming", "expected"),
    [(None, 1, True), (None, None, True), (1, 2, True), (2, 2, False), (3, 2, False), (2, None, False)],
)
def test_version_guard_only_lets_newer_versions_through(
    stored: int | None, incoming: int | None, expected: bool
) -> None:
    assert is_newer(stored, incoming) is expected


def test_money_is_stored_exactly() -> None:
    stored = to_bson({"amount": Decimal("1234.10"), "nested": [{"x": Decimal("0.01")}]})
    assert from_bson(stored) == {"amount": Decimal("1234.10"), "nested": [{"x": Decimal("0.01")}]}


def test_tokens_carry_scopes() -> None:
    auth = TokenAuth("r1:read, w1:write,a1:admin")
    assert auth.tokens == {"r1": "read", "w1": "write", "a1": "admin"} and auth.enabled
    assert not TokenAuth(None).enabled
    with pytest.raises(ValueError, match="token:read"):
        TokenAuth("x:root")


@pytest.mark.parametrize(
    ("token", "needed", "status"),
    [
        ("r1", "read", None),
        ("r1", "write", 403),
        ("w1", "write", None),
        ("w1", "admin", 403),
        ("a1", "admin", None),
        ("a1", "read", None),
        ("nobody", "read", 401),
    ],
)
async def test_each_scope_includes_the_ones_below_it(token: str, needed: str, status: int | None) -> None:
    from crm_runtime.http import ApiError
    from starlette.requests import Request

    check = TokenAuth("r1:read,w1:write,a1:admin").require(needed)  # type: ignore[arg-type]
    request = Request({"type": "http", "headers": [(b"authorization", f"Bearer {token}".encode())]})
    if status is None:
        await check(request)
    else:
        with pytest.raises(ApiError) as refused:
            await check(request)
        assert refused.value.status_code == status


def test_the_suite_clock_ticks_in_milliseconds_as_bson_stores_them() -> None:
    from crm_contracts.envelope import utcnow

    assert utcnow().microsecond % 1000 == 0
    assert utcnow().tzinfo is not None


def test_older_event_versions_are_upcast_to_the_current_model() -> None:
    from dataclasses import replace

    from crm_contracts.catalog import LEAD_CAPTURED
    from crm_contracts.events.leads import LeadCaptured as Current

    def v1_to_v2(data: dict[str, object]) -> dict[str, object]:
        # Imagine v1 called the capture key "form_id"; v2 calls it "external_id".
        data = dict(data)
        data["external_id"] = data.pop("form_id")
        return data

    spec_v2 = replace(LEAD_CAPTURED, version=2, upcasters={1: v1_to_v2})
    v1_data = lead_captured_example()
    v1_data["form_id"] = v1_data.pop("external_id")
    raw = json.dumps(
        {
            "specversion": "1.0",
            "id": "e1",
            "source": "/legacy-forms",
            "type": "com.crmsuite.lead.captured.v1",
            "time": "2026-01-01T00:00:00Z",
            "data": v1_data,
        }
    ).encode()
    event = decode(spec_v2, raw)
    assert event.type == "com.crmsuite.lead.captured.v2"
    assert isinstance(event.data, Current) and event.data.external_id == "form-981"
    without_upcaster = replace(LEAD_CAPTURED, version=2)
    with pytest.raises(ValueError, match=r"expected 'com\.crmsuite\.lead\.captured\.v2'"):
        decode(without_upcaster, raw)


def test_the_company_currency_is_an_iso_code_refused_at_start_up_when_malformed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from crm_runtime import ServiceSettings

    assert ServiceSettings(service_name="leads").company_currency == "EUR"
    monkeypatch.setenv("CRM_COMPANY_CURRENCY", "USD")
    assert ServiceSettings(service_name="leads").company_currency == "USD"
    for wrong in ("usd", "US", "US$", ""):
        monkeypatch.setenv("CRM_COMPANY_CURRENCY", wrong)
        with pytest.raises(ValidationError, match="CRM_COMPANY_CURRENCY must be an ISO 4217 code"):
            ServiceSettings(service_name="leads")


def test_compound_keys_stay_unambiguous_whatever_the_ids_hold() -> None:
    from crm_runtime.mongo import compound_key

    assert compound_key("spring-fair", "lead:42") == "spring-fair|lead:42"  # as keys stored before
    pairs = [("a|b", "c"), ("a", "b|c"), ("a\\", "|c"), ("a\\|", "c"), ("a", "\\|c")]
    assert len({compound_key(*pair) for pair in pairs}) == len(pairs)
