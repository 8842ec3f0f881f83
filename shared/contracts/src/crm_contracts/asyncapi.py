"""The AsyncAPI 3.0 document of the suite's topics, generated from the event catalogue.

``python -m crm_contracts.asyncapi`` writes ``shared/contracts/asyncapi.json``; a test keeps the
committed copy current. Each topic is a channel whose message is the CloudEvent of its type;
operations say which service sends and which receive it.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from .catalog import ALL_EVENTS, DLQ_SUFFIX
from .schemas import event_schema

ASYNCAPI_PATH = Path(__file__).resolve().parents[2] / "asyncapi.json"


def _ref_safe(topic: str) -> str:
    return topic.replace(".", "_")


def build() -> dict[str, Any]:
    channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    messages: dict[str, Any] = {}
    for spec in ALL_EVENTS:
        name = _ref_safe(spec.topic)
        schema = event_schema(spec)
        messages[name] = {
            "name": spec.type,
            "title": spec.topic,
            "summary": spec.description,
            "contentType": "application/cloudevents+json",
            "correlationId": {"location": "$message.payload#/id"},
            "headers": {
                "type": "object",
                "properties": {
                    "traceparent": {"type": "string", "description": "W3C trace context"},
                },
            },
            "bindings": {"kafka": {"key": {"type": "string", "description": spec.kafka_key}}},
            "payload": schema,
        }
        channels[name] = {
            "address": spec.topic,
            "description": f"{spec.description} Dead letters go to {spec.topic}{DLQ_SUFFIX}.",
            "messages": {spec.type: {"$ref": f"#/components/messages/{name}"}},
        }
        operations[f"{name}_send"] = {
            "action": "send",
            "channel": {"$ref": f"#/channels/{name}"},
            "summary": f"published by {spec.producer}",
            "tags": [{"name": spec.producer}],
        }
        for consumer in spec.consumers:
            operations[f"{name}_receive_{consumer}"] = {
                "action": "receive",
                "channel": {"$ref": f"#/channels/{name}"},
                "summary": f"consumed by the {consumer} service (group crm-{consumer})",
                "tags": [{"name": consumer}],
            }
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "CRM suite events",
            "version": "1.0.0",
            "description": (
                "One topic per event type, named <entity>.<past-tense-verb>. Every message is a "
                "CloudEvents 1.0 structured JSON envelope; `sequence` carries the aggregate version; "
                "the Kafka key is the aggregate id (for lead.captured, which other systems publish: "
                "`<source_system>:<external_id>`, see its message). An event is identified by its "
                "CloudEvents `source` and `id` together: consumers apply each (source, id) once, so "
                "publishers may number their events alike. Topic names may carry a "
                "deployment prefix (CRM_TOPIC_PREFIX)."
            ),
        },
        "defaultContentType": "application/cloudevents+json",
        "servers": {
            "local": {"host": "127.0.0.1:9092", "protocol": "kafka", "description": "./crm up"},
        },
        "channels": channels,
        "operations": operations,
        "components": {"messages": messages},
    }


def render() -> str:
    return json.dumps(build(), indent=2, sort_keys=True) + "\n"


def main() -> None:
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else ASYNCAPI_PATH
    target.write_text(render())
    print(target)


if __name__ == "__main__":
    main()
