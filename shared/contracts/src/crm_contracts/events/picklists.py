"""Picklists: the organisation's value lists for fields such as a lead's source and origin or
an opportunity's loss reason.

Each list has one owner, the service that writes the field it governs: the leads service owns
``lead_source`` and ``lead_origin``, the opportunities service ``loss_reason``. An administrator
revises a list over its owner's HTTP API (``/picklists``), and the owner announces every
revision on ``picklist.revised``, so other services learn the values and their labels. Events
carry a picklist field as the list's canonical ``value`` (a ``PicklistCode``); what a capturing
system or a rep wrote is folded into it by the owner. The defaults are the values the suite
shipped with as closed lists (``LeadSource``, ``LeadOrigin``, the default loss reasons) plus
``unknown``."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

from pydantic import Field

from .common import Actor, Contract, IsoDateTime, SingleLine

PICKLIST_CODE_PATTERN = r"^[a-z0-9][a-z0-9_]{0,63}$"
PicklistCode = Annotated[
    str,
    Field(
        pattern=PICKLIST_CODE_PATTERN,
        examples=["web"],
        description="A value of the organisation's picklist (lower case, digits and _), as the "
        "picklist names it: GET /picklists on the leads service lists them.",
    ),
]
"""A canonical picklist value as events and reports carry it."""

PicklistGiven = Annotated[str, SingleLine(max_length=100)]
"""A picklist field as a capturing system wrote it: a value, a label or an alias of the list,
matched ignoring case, spaces and punctuation ("Paid Search", "paid-search", "PAID_SEARCH")."""

PicklistLabel = Annotated[str, SingleLine(min_length=1, max_length=100)]


class PicklistName(StrEnum):
    """The fields whose values an organisation configures."""

    LEAD_SOURCE = "lead_source"
    LEAD_ORIGIN = "lead_origin"
    LOSS_REASON = "loss_reason"
    """Why an opportunity was lost (owned by the opportunities service)."""


PICKLIST_FIELDS: dict[PicklistName, str] = {
    PicklistName.LEAD_SOURCE: "lead_source",
    PicklistName.LEAD_ORIGIN: "origin",
    PicklistName.LOSS_REASON: "loss_reason",
}
"""The field of a record (a capture, an opportunity) each picklist governs: rejections name it."""


class UnknownValues(StrEnum):
    """What a capture naming a value the picklist does not know (or no longer uses) gets."""

    REJECT = "reject"
    """Refused, naming the field, the value and the closest values (HTTP 422, an import
    rejection, a ``lead.captured`` on the dead-letter topic)."""
    OTHER = "other"
    """Accepted as the list's ``other`` value, the value given kept beside it."""


class PicklistValue(Contract):
    value: PicklistCode
    label: PicklistLabel = Field(examples=["Web"])
    aliases: list[PicklistLabel] = Field(
        default_factory=list,
        max_length=50,
        description="Other spellings that mean this value (matched ignoring case, spaces and punctuation)",
        examples=[["website", "homepage"]],
    )
    active: bool = Field(
        default=True,
        description="An inactive value stays on the leads that have it and in reports, "
        "but new captures naming it are treated as naming an unknown value",
    )


class PicklistRevised(Contract):
    """A picklist's full definition after a revision (published with the picklist's name as
    subject and key, its version as sequence)."""

    picklist: PicklistName
    version: int = Field(ge=1)
    values: list[PicklistValue]
    blank_value: PicklistCode | None = Field(
        default=None,
        description="The value a record that names none (missing, null or blank) gets; absent or "
        "null: such a record is refused",
    )
    unknown_values: UnknownValues
    revised_at: IsoDateTime
    revised_by: Actor
