"""Building and reading CloudEvents for the catalogue's event types."""

from __future__ import annotations

from datetime import datetime
from typing import Any, TypeVar

import orjson
from crm_contracts.catalog import EventSpec
from crm_contracts.envelope import CloudEvent, new_event_id, utcnow
from pydantic import BaseModel

M = TypeVar("M", bound=BaseModel)


def make_event(
    spec: EventSpec[M],
    data: M,
    *,
    source: str,
    subject: str,
    version: int | None = None,
    time: datetime | None = None,
    event_id: str | None = None,
) -> CloudEvent[M]:
    """A CloudEvent of ``spec`` about aggregate ``subject`` at aggregate ``version``."""
    return CloudEvent[spec.data_model](  # type: ignore[name-defined]
        id=event_id or new_event_id(),
        source=source,
        type=spec.type,
        subject=subject,
        time=time or utcnow(),
        dataschema=spec.dataschema,
        sequence=str(version) if version is not None else None,
        sequencetype="Integer" if version is not None else None,
        data=data,
    )


def encode(event: CloudEvent[Any]) -> bytes:
    return event.model_dump_json(exclude_none=True).encode()


def decode(spec: EventSpec[M], raw: bytes) -> CloudEvent[M]:
    """Parse and validate raw bytes as an event of ``spec``. Raises ValueError for bad JSON or
    the wrong ``type`` and pydantic.ValidationError naming each offending field."""
    try:
        document = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"not JSON: {exc}") from exc
    if not isinstance(document, dict):
        raise ValueError("not a CloudEvent: the message is not a JSON object")
    version = spec.readable_versions().get(str(document.get("type")))
    if version is None:
        found = document.get("type")
        raise ValueError(f"type: expected {spec.type!r} on topic {spec.topic!r}, got {found!r}")
    if version != spec.version and isinstance(document.get("data"), dict):
        # An older schema version: upcast its data, so handlers only ever see the current model.
        document = document | {
            "type": spec.type,
            "dataschema": spec.dataschema,
            "data": spec.upcast(document["data"], version),
        }
    event: CloudEvent[M] = CloudEvent[spec.data_model].model_validate(document)  # type: ignore[name-defined]
    return event
