"""The CloudEvents 1.0 envelope (structured JSON mode) every event of the suite travels in.

The per-aggregate version rides in the ``sequence`` extension attribute as a decimal string
(``sequencetype`` = ``Integer``), so consumers can refuse to let an older version overwrite a
newer one. The data schema version is part of ``type`` (``...v1``) and of ``dataschema``.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Annotated, Any, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, field_validator

from .events.common import IsoDateTime, SingleLine

DataT = TypeVar("DataT", bound=BaseModel)

SPEC_VERSION: Literal["1.0"] = "1.0"


def utcnow() -> datetime:
    """Now, in UTC, at the millisecond precision BSON stores: a time the API answers, the
    record stores and the event carries is then one and the same instant."""
    now = datetime.now(UTC)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


class CloudEvent(BaseModel, Generic[DataT]):
    """A CloudEvent whose ``data`` is a validated pydantic model. Its string attributes refuse
    the control characters the CloudEvents type system disallows (U+0000-U+001F, U+007F-U+009F)."""

    # Extension attributes are allowed by the CloudEvents spec; keep them rather than reject.
    model_config = ConfigDict(extra="allow", frozen=True)

    specversion: Literal["1.0"] = SPEC_VERSION
    id: Annotated[str, SingleLine(min_length=1, max_length=200)] = Field(
        description="Unique within its source (CloudEvents): consumers de-duplicate on "
        "(source, id), so two publishers may number their events alike."
    )
    source: Annotated[str, SingleLine(min_length=1, max_length=500)] = Field(
        description="URI-reference of the producing system; with id, the event's identity."
    )
    type: Annotated[str, SingleLine(min_length=1, max_length=200)] = Field(
        description="Event type including schema version."
    )
    subject: Annotated[str, SingleLine(max_length=200)] | None = Field(
        default=None, description="The aggregate id."
    )
    time: IsoDateTime = Field(description="When the occurrence happened (RFC 3339).")
    datacontenttype: Literal["application/json"] = "application/json"
    dataschema: Annotated[str, SingleLine(max_length=500)] | None = None
    sequence: str | None = Field(
        default=None,
        pattern=r"^[0-9]{1,18}$",
        description="Per-aggregate version (Integer as decimal string): newer versions win.",
    )
    sequencetype: Literal["Integer"] | None = None
    data: DataT

    @field_validator("time")
    @classmethod
    def _normalise_time(cls, value: datetime) -> datetime:
        return value.astimezone(UTC)

    @property
    def version(self) -> int | None:
        """The aggregate version carried in ``sequence``."""
        return int(self.sequence) if self.sequence is not None else None


def new_event_id() -> str:
    return str(uuid.uuid4())


def envelope_dict(event: CloudEvent[Any]) -> dict[str, Any]:
    """JSON-ready dict of the event, without unset optional attributes."""
    return event.model_dump(mode="json", exclude_none=True)
