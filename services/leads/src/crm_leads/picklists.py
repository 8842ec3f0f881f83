"""The leads service's picklists (lead sources, origins) and how a capture is folded with them.
The lists themselves (matching by spelling, blanks, unknown values, revisions) are the shared
implementation in ``crm_runtime.picklists``; this module adds what a capture needs. No I/O."""

from __future__ import annotations

from dataclasses import dataclass

from crm_contracts.events.leads import LeadCaptured
from crm_contracts.events.picklists import PicklistName
from crm_runtime.picklists import (
    OTHER,
    Picklist,
    PicklistSet,
    UnknownPicklistValue,
    ValueRemoved,
    spelling_key,
)

__all__ = [
    "LEAD_PICKLISTS",
    "OTHER",
    "FoldedCapture",
    "Picklist",
    "Picklists",
    "UnknownPicklistValue",
    "ValueRemoved",
    "spelling_key",
]

LEAD_PICKLISTS: tuple[PicklistName, ...] = (PicklistName.LEAD_SOURCE, PicklistName.LEAD_ORIGIN)
"""The lists the leads service owns: the fields a capture names."""


@dataclass(frozen=True)
class Picklists(PicklistSet):
    """The lists a capture is folded with."""

    @classmethod
    def defaults(cls) -> Picklists:
        return cls({name: Picklist.default(name) for name in LEAD_PICKLISTS})

    def fold(self, captured: LeadCaptured) -> FoldedCapture:
        """``captured`` with each picklist field as the list's value; the spelling given is
        kept for the record. Raises ``UnknownPicklistValue`` for the first field refused."""
        values = {}
        for name in LEAD_PICKLISTS:
            picklist = self.of(name)
            values[picklist.field] = picklist.resolve(getattr(captured, picklist.field))
        return FoldedCapture(
            captured.model_copy(update=values),
            lead_source_given=captured.lead_source,
            origin_given=captured.origin,
        )


@dataclass(frozen=True)
class FoldedCapture:
    """A capture whose ``lead_source`` and ``origin`` are canonical, and what it said."""

    captured: LeadCaptured
    lead_source_given: str | None
    origin_given: str | None
