"""The committed JSON Schemas match the models, and valid/invalid events validate as expected."""

from __future__ import annotations

import json

import jsonschema
from crm_contracts import catalog
from crm_contracts.events.leads import LeadCaptured, lead_captured_example, lead_captured_key
from crm_contracts.schemas import SCHEMA_DIR, event_schema, render
from crm_runtime.events import encode, make_event


def test_committed_schemas_are_up_to_date() -> None:
    for spec in catalog.ALL_EVENTS:
        path = SCHEMA_DIR / f"{spec.topic}.v{spec.version}.json"
        assert path.exists(), f"run python -m crm_contracts.schemas to export {path.name}"
        assert path.read_text() == render(event_schema(spec)), f"{path.name} is stale"


def test_topics_follow_the_entity_verb_convention_and_are_unique() -> None:
    topics = [spec.topic for spec in catalog.ALL_EVENTS]
    assert len(topics) == len(set(topics))
    for topic in topics:
        entity, _, verb = topic.partition(".")
        assert entity and verb and verb.endswith("ed"), topic


def test_an_event_from_the_models_validates_against_its_exported_schema() -> None:
    event = make_event(
        catalog.LEAD_CAPTURED,
        LeadCaptured.model_validate(lead_captured_example()),
        source="/webforms",
        subject="x",
        version=1,
    )
    schema = event_schema(catalog.LEAD_CAPTURED)
    jsonschema.validate(json.loads(encode(event)), schema)
    broken = json.loads(encode(event))
    del broken["data"]["external_id"]  # captured_at is optional since issue 18; the capture key is not
    errors = list(jsonschema.Draft202012Validator(schema).iter_errors(broken))
    assert any("external_id" in e.message for e in errors)
    timeless = json.loads(encode(event))
    del timeless["data"]["captured_at"]
    assert list(jsonschema.Draft202012Validator(schema).iter_errors(timeless)) == []


def test_committed_asyncapi_document_is_up_to_date() -> None:
    from crm_contracts.asyncapi import ASYNCAPI_PATH, build, render

    assert ASYNCAPI_PATH.read_text() == render(), "run python -m crm_contracts.asyncapi"
    document = build()
    assert set(document["channels"]) == {spec.topic.replace(".", "_") for spec in catalog.ALL_EVENTS}
    receivers = [op for op in document["operations"].values() if op["action"] == "receive"]
    assert any(op["channel"]["$ref"] == "#/channels/lead_converted" for op in receivers)


def test_the_asyncapi_documents_the_kafka_key_publishers_give_lead_captured() -> None:
    from crm_contracts.asyncapi import build

    document = build()
    key = document["components"]["messages"]["lead_captured"]["bindings"]["kafka"]["key"]["description"]
    assert "`<source_system>:<external_id>`" in key
    assert "ordering per lead" in key and "null key" in key and "accepted" in key
    assert lead_captured_key("webforms", "form 981") == b"webforms:form 981"
    # The suite's own events keep the aggregate id as their key.
    created = document["components"]["messages"]["lead_created"]["bindings"]["kafka"]["key"]["description"]
    assert created.startswith("The aggregate id")


def test_the_asyncapi_says_captured_at_is_optional_and_where_the_time_then_comes_from() -> None:
    from crm_contracts.asyncapi import build

    payload = build()["components"]["messages"]["lead_captured"]["payload"]
    data = payload["properties"]["data"]
    data = payload.get("$defs", {}).get(data["$ref"].rsplit("/", 1)[-1], data) if "$ref" in data else data
    assert "captured_at" not in data.get("required", [])
    assert "CloudEvents `time`" in data["properties"]["captured_at"]["description"]
