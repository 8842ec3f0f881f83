"""Finding a record by the id another system gave it: ``?external_system=…&external_id=…`` on a
list operation. The pair is the key (systems reuse each other's ids), so one without the other
is refused rather than read as a filter on the id alone."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from crm_contracts.events.common import SOURCE_SYSTEM_PATTERN, ExternalId
from fastapi import Depends, Query

from .http import ApiError


@dataclass(frozen=True)
class ExternalReference:
    """A record's key in the system it came from."""

    system: str
    external_id: str


def external_reference(
    external_system: Annotated[
        str | None,
        Query(
            pattern=SOURCE_SYSTEM_PATTERN,
            max_length=64,
            description="The system a record came from (a lead's source_system, an import's "
            "source_system); with external_id it finds the record. Give both or neither.",
            examples=["webforms"],
        ),
    ] = None,
    external_id: Annotated[
        ExternalId | None,
        Query(
            description="The record's id in external_system (at most 128 characters, one line). "
            "Give both or neither.",
            examples=["form-981"],
        ),
    ] = None,
) -> ExternalReference | None:
    if external_system is None and external_id is None:
        return None
    if external_system is None or external_id is None:
        missing, given = (
            ("external_system", "external_id")
            if external_system is None
            else ("external_id", "external_system")
        )
        raise ApiError(422, "validation_failed", f"{missing}: required together with {given}", field=missing)
    return ExternalReference(external_system, external_id)


ByExternalReference = Annotated[ExternalReference | None, Depends(external_reference)]
"""The route parameter: ``reference: ByExternalReference``."""
