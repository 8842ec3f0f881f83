"""The organisation's picklists (lead sources, origins, loss reasons) and how a record's
spelling of a value is folded into the list's canonical value: one implementation for every
service that owns a list. No I/O here.

A given value matches an entry when it equals the entry's value, label or one of its aliases,
ignoring case, accents, spaces and punctuation: "Paid Search", "paid-search" and "PAID_SEARCH"
are one value. A record that names none gets the list's ``blank_value``; one naming a value the
list does not have, or has deactivated, is refused or kept as ``other`` (``unknown_values``).
Revisions never take a value away: records keep theirs, so a value is deactivated, not removed.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime

from crm_contracts.events.common import Actor
from crm_contracts.events.leads import DEFAULT_PICKLISTS, default_picklist_values
from crm_contracts.events.opportunities import default_loss_reason_values
from crm_contracts.events.picklists import (
    PICKLIST_FIELDS,
    PicklistCode,
    PicklistName,
    PicklistRevised,
    PicklistValue,
    UnknownValues,
)
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, PrivateAttr, model_validator

from .suggestions import did_you_mean

OTHER = "other"
MAX_VALUES = 500

# The records that hold a list's values (a revision may not take those away).
_HELD_BY: dict[PicklistName, str] = {
    PicklistName.LEAD_SOURCE: "leads",
    PicklistName.LEAD_ORIGIN: "leads",
    PicklistName.LOSS_REASON: "opportunities",
}


def spelling_key(text: str) -> str:
    """What two spellings of one value share: letters and digits only, case and accents
    dropped ("E-Mail " and "email" give "email")."""
    decomposed = unicodedata.normalize("NFKD", text).casefold()
    return "".join(char for char in decomposed if char.isalnum())


def value_code(text: str) -> str:
    """A picklist value for a name given as text ("No budget" gives "no_budget"), for lists
    configured by name (the opportunities service's ``CRM_DEFAULT_LOSS_REASONS``)."""
    decomposed = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode().casefold()
    code = re.sub(r"[^a-z0-9]+", "_", decomposed).strip("_")[:64].rstrip("_")
    if not code:
        raise ValueError(f"{text!r} has no letter or digit to make a picklist value of")
    return code


def default_values(name: PicklistName) -> tuple[list[PicklistValue], str | None]:
    """A list's values and blank value until an administrator revises it: the suite's closed
    lists of before (a lead's source and origin, the loss reasons) and their labels."""
    if name is PicklistName.LOSS_REASON:
        return default_loss_reason_values(), None  # a lost deal names its reason, as before
    _, blank = DEFAULT_PICKLISTS[name]
    return default_picklist_values(name), blank


class UnknownPicklistValue(ValueError):
    """A record names a value its picklist does not accept; ``field`` is the record's field."""

    def __init__(self, field: str, given: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.given = given
        self.reason = message


class ValueRemoved(ValueError):
    """A revision left out values the list had: records may hold them."""


class Picklist(BaseModel):
    """One picklist as an administrator defined it (version 0: the defaults, never revised)."""

    model_config = ConfigDict(extra="forbid")

    name: PicklistName
    version: int = Field(default=0, ge=0)
    values: list[PicklistValue] = Field(min_length=1, max_length=MAX_VALUES)
    blank_value: PicklistCode | None = Field(
        description="The value a capture naming none (missing, null or blank) gets; null: such a "
        "capture is refused"
    )
    unknown_values: UnknownValues = Field(
        default=UnknownValues.REJECT,
        description="reject: a capture naming a value the list lacks (or has deactivated) is refused "
        "with the closest values; other: it is stored as the value other, the given value kept",
    )
    revised_at: AwareDatetime | None = None
    revised_by: str | None = None
    _spellings: dict[str, PicklistValue] = PrivateAttr(default_factory=dict)

    @model_validator(mode="after")
    def _usable(self) -> Picklist:
        check_definition(self.values, self.blank_value, self.unknown_values)
        self._spellings = _index(self.values)  # every capture looks values up by spelling
        return self

    @classmethod
    def default(cls, name: PicklistName) -> Picklist:
        values, blank = default_values(name)
        return cls(name=name, values=values, blank_value=blank)

    @property
    def field(self) -> str:
        """The record field this list governs (rejections name it)."""
        return PICKLIST_FIELDS[self.name]

    def active_values(self) -> list[str]:
        return [value.value for value in self.values if value.active]

    def label_of(self, value: str) -> str:
        return next((entry.label for entry in self.values if entry.value == value), value)

    def resolve(self, given: str | None) -> str:
        """The canonical value ``given`` stands for; raises ``UnknownPicklistValue``."""
        field = self.field
        if given is None or not given.strip():
            if self.blank_value is None:
                raise UnknownPicklistValue(field, "", "a value is required")
            return self.blank_value
        entry = self._spellings.get(spelling_key(given))
        if entry is not None and entry.active:
            return entry.value
        if self.unknown_values is UnknownValues.OTHER:
            return OTHER
        active = [value.value for value in self.values if value.active]
        if entry is not None:
            message = f"{given!r} is no longer in use (deactivated in the {self.name} picklist)"
        else:
            message = f"{given!r} is not a value of the {self.name} picklist"
        suggestion = did_you_mean(given, [*active, *(v.label for v in self.values if v.active)])
        raise UnknownPicklistValue(
            field, given, message + (suggestion or f"; use one of {', '.join(active)}")
        )

    def revised(
        self,
        values: list[PicklistValue],
        *,
        blank_value: str | None,
        unknown_values: UnknownValues,
        now: datetime,
        by: str,
    ) -> Picklist:
        """The next version of the list. Every value the list had must stay (deactivated if no
        longer wanted): records and reports hold it, and it must stay readable."""
        kept = {value.value for value in values}
        dropped = [value.value for value in self.values if value.value not in kept]
        if dropped:
            raise ValueRemoved(
                f"values: {', '.join(dropped)} cannot be removed ({_HELD_BY[self.name]} may hold them); "
                "set active to false instead"
            )
        return Picklist(
            name=self.name,
            version=self.version + 1,
            values=values,
            blank_value=blank_value,
            unknown_values=unknown_values,
            revised_at=now,
            revised_by=by,
        )

    def revised_event(self, by: Actor) -> PicklistRevised:
        assert self.revised_at is not None, "only a revised list is announced"
        return PicklistRevised(
            picklist=self.name,
            version=self.version,
            values=self.values,
            blank_value=self.blank_value,
            unknown_values=self.unknown_values,
            revised_at=self.revised_at,
            revised_by=by,
        )


def _index(values: Iterable[PicklistValue]) -> dict[str, PicklistValue]:
    index: dict[str, PicklistValue] = {}
    for entry in values:
        for spelling in (entry.value, entry.label, *entry.aliases):
            index.setdefault(spelling_key(spelling), entry)
    return index


def check_definition(
    values: list[PicklistValue], blank_value: str | None, unknown_values: UnknownValues
) -> None:
    """Raise ValueError unless the values make a usable list: unique values, and no spelling
    (value, label or alias) that would stand for two of them."""
    owner: dict[str, str] = {}
    seen: set[str] = set()
    for entry in values:
        if entry.value in seen:
            raise ValueError(f"value {entry.value!r} appears more than once")
        seen.add(entry.value)
        for spelling in (entry.value, entry.label, *entry.aliases):
            key = spelling_key(spelling)
            if not key:
                raise ValueError(f"{spelling!r} (of {entry.value!r}) has no letter or digit to match on")
            if owner.setdefault(key, entry.value) != entry.value:
                raise ValueError(f"{spelling!r} would match both {owner[key]!r} and {entry.value!r}")
    active = {entry.value for entry in values if entry.active}
    if blank_value is not None and blank_value not in active:
        raise ValueError(f"blank_value {blank_value!r} must be an active value of the list")
    if unknown_values is UnknownValues.OTHER and OTHER not in active:
        raise ValueError("unknown_values other needs an active value 'other' in the list")


@dataclass(frozen=True)
class PicklistSet:
    """The lists a service owns, as they stand (a list never revised: its defaults)."""

    lists: Mapping[PicklistName, Picklist]

    def of(self, name: PicklistName) -> Picklist:
        return self.lists.get(name) or Picklist.default(name)
