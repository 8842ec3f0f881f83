"""Value types shared by several event contracts."""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

# Ids are opaque strings; the pattern keeps Mongo operators and path tricks out of them.
ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:\-]{0,127}$"
Id = Annotated[str, Field(pattern=ID_PATTERN, examples=["7c9e6679-7425-40de-944b-e07fc1f90ae7"])]

_CURRENCY = re.compile(r"^[A-Z]{3}$")


def _currency(value: str) -> str:
    if not _CURRENCY.match(value):
        raise ValueError("must be an ISO 4217 code of three capital letters, e.g. EUR")
    return value


Currency = Annotated[str, AfterValidator(_currency), Field(examples=["EUR"])]
# The one bound on money everywhere (events, HTTP bodies, imports, reporting's counters): at
# most 16 integer digits and 2 decimals, so below 10^16 in the currency. Anything beyond it is
# refused at the edge with the field named; reporting's counters hold any sum of such amounts.
MONEY_MAX = Decimal("9999999999999999.99")
Money = Annotated[
    Decimal,
    Field(
        ge=0,
        max_digits=18,
        decimal_places=2,
        examples=["12500.00"],
        description="An amount of money: at most 16 integer digits and 2 decimals (below 10^16).",
    ),
]
Percent = Annotated[int, Field(ge=0, le=100, examples=[20])]
ShortText = Annotated[str, Field(min_length=1, max_length=200)]
LongText = Annotated[str, Field(max_length=5000)]


class Contract(BaseModel):
    """Base of every event payload: unknown fields are refused so typos surface early."""

    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=True)


class Actor(Contract):
    """Who did something: a user id or a system name."""

    id: ShortText = Field(examples=["rep-42"])
    name: str | None = Field(default=None, max_length=200)
