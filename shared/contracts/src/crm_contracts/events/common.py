"""Value types shared by several event contracts."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date
from decimal import Decimal
from typing import Annotated, Any, ClassVar, cast

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    GetCoreSchemaHandler,
    GetJsonSchemaHandler,
)
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema, PydanticCustomError, core_schema

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


# -- dates and times ----------------------------------------------------------------------------
# pydantic's lax mode reads a number, or a string of digits, as seconds since 1970: 1700000000
# would become a date in 2023 and "20260305" one in 1970. Only ISO 8601 text is a date here;
# date and datetime objects (internal code, BSON read back from MongoDB) pass as they are.
_NUMBER = re.compile(r"\s*[+-]?(\d+\.?\d*|\.\d+)\s*")


def _iso_text_only(error_type: str, kind: str, example: str) -> BeforeValidator:
    def check(value: Any) -> Any:
        if isinstance(value, (int, float, Decimal)) or (isinstance(value, str) and _NUMBER.fullmatch(value)):
            raise PydanticCustomError(
                error_type, "must be an ISO 8601 {kind}, e.g. {example}", {"kind": kind, "example": example}
            )
        return value

    return BeforeValidator(check)


IsoDate = Annotated[date, _iso_text_only("iso_date", "date", "2026-03-05")]
"""A calendar day, written YYYY-MM-DD."""
IsoDateTime = Annotated[
    AwareDatetime, _iso_text_only("iso_datetime", "date-time with a time zone", "2026-03-05T09:30:00Z")
]
"""An instant, written in ISO 8601 with a time zone (Z or an offset)."""


# -- text ---------------------------------------------------------------------------------------
# Control characters (C0, DEL, C1) never belong in CRM text: a NUL truncates the value in other
# systems' C strings, and the others are invisible and break CSV exports and terminals.
# Multi-line text (notes, descriptions) keeps tab, line feed and carriage return; single-line
# text (names, titles, reasons) refuses those too. The ranges are written with \u escapes so
# that the same text is a Python and a JSON Schema (ECMA-262) character class.
_MULTI_LINE_REFUSED = r"\u0000-\u0008\u000b\u000c\u000e-\u001f\u007f-\u009f"
_SINGLE_LINE_REFUSED = r"\u0000-\u001f\u007f-\u009f"
_LINE_BREAKS = "\t\n\r"
_SURROGATE = re.compile(r"[\ud800-\udfff]")


@dataclass(frozen=True)
class _PlainText:
    """A string without control characters, of the given length. The lengths belong here rather
    than in ``Field()`` beside it: applied after this check, pydantic would word their errors
    for lists ("at most 100 items")."""

    multiline: ClassVar[bool]
    min_length: int | None = None
    max_length: int | None = None

    def __get_pydantic_core_schema__(self, source: Any, handler: GetCoreSchemaHandler) -> CoreSchema:
        schema = handler(source)
        if schema["type"] != "str":
            raise TypeError(f"SingleLine and MultiLine apply to str, not {source!r}")
        text: dict[str, Any] = dict(schema)  # a copy: the handler's may be shared
        if self.min_length is not None:
            text["min_length"] = self.min_length
        if self.max_length is not None:
            text["max_length"] = self.max_length
        return core_schema.no_info_after_validator_function(self.check, cast(CoreSchema, text))

    def __get_pydantic_json_schema__(
        self, schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        json_schema = handler(schema)
        json_schema.setdefault("pattern", self.pattern)
        return json_schema

    @property
    def pattern(self) -> str:
        return f"^[^{self._refused}]*$"

    @property
    def _refused(self) -> str:
        return _MULTI_LINE_REFUSED if self.multiline else _SINGLE_LINE_REFUSED

    def in_union(self) -> _TextInUnion:
        """``Annotated[str | int | None, MultiLine().in_union()]``: the rule for the strings of a
        union of scalars, checked once the union is resolved so that its error is not lost
        among every member's."""
        return _TextInUnion(self)

    def check(self, value: str) -> str:
        found = re.search(f"[{self._refused}]", value)
        if found is not None:
            code = f"U+{ord(found.group()):04X}"
            if found.group() in _LINE_BREAKS:
                raise PydanticCustomError(
                    "text_line_break",
                    "must be a single line, without line breaks or tabs (found {code})",
                    {"code": code},
                )
            raise PydanticCustomError(
                "text_control_character", "must not contain control characters (found {code})", {"code": code}
            )
        if _SURROGATE.search(value):  # from JSON \ud800 escapes; UTF-8 cannot store it
            raise PydanticCustomError("text_surrogate", "must be valid Unicode text (found a lone surrogate)")
        return value


@dataclass(frozen=True)
class _TextInUnion:
    """The text rule for the strings of a union (custom attribute values, scoring values)."""

    text: _PlainText

    def check(self, value: Any) -> Any:
        return self.text.check(value) if isinstance(value, str) else value

    def __get_pydantic_core_schema__(self, source: Any, handler: GetCoreSchemaHandler) -> CoreSchema:
        return core_schema.no_info_after_validator_function(self.check, handler(source))

    def __get_pydantic_json_schema__(
        self, schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        json_schema = handler(schema)
        for member in json_schema.get("anyOf", [json_schema]):
            if member.get("type") == "string":
                member.setdefault("pattern", self.text.pattern)
        return json_schema


class SingleLine(_PlainText):
    """``Annotated[str, SingleLine(max_length=100)]``: one line of text, without control
    characters, tabs or line breaks (names, titles, labels, reasons)."""

    multiline = False


class MultiLine(_PlainText):
    """``Annotated[str, MultiLine(max_length=2000)]``: text that may span lines (notes,
    descriptions): tab, line feed and carriage return allowed, other control characters not."""

    multiline = True


# -- ids ----------------------------------------------------------------------------------------
# Ids are opaque text another system may choose (an owner's name from another CRM, a product
# code): any printable text up to 128 characters, spaces inside included. Refused: control
# characters, a leading "$" (a Mongo operator or, in an aggregation, a field path), "/" (a URL
# path segment cannot carry one, even encoded), "." and ".." (URLs resolve them away) and spaces
# at either end (bodies strip them, a path would not). Ids are never document keys (compound
# ones go through ``crm_runtime.mongo.compound_key``), so dots are fine.
ID_MAX_LENGTH = 128
ID_RULE = (
    "An id: 1 to 128 characters of printable text, spaces inside allowed (URL-encoded in a path); "
    "not starting with $, without control characters or /, without spaces at either end, and "
    "not . or .. (a URL path would resolve those)."
)
_ID_REFUSED = _SINGLE_LINE_REFUSED + "/"
_EDGE_SPACES = r"\u0020\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000\ufeff"
# For JSON Schema (and the generators that read it); values are checked by ``_IdText.check``.
ID_PATTERN = (
    f"^(?!\\.\\.?$)[^{_ID_REFUSED}{_EDGE_SPACES}$]([^{_ID_REFUSED}]*[^{_ID_REFUSED}{_EDGE_SPACES}])?$"
)
_EDGE_SPACE = re.compile(f"^[{_EDGE_SPACES}]|[{_EDGE_SPACES}]$")


@dataclass(frozen=True)
class _IdText:
    """The id rule (``ID_RULE``), with an error that says which part of it a value breaks."""

    def __get_pydantic_core_schema__(self, source: Any, handler: GetCoreSchemaHandler) -> CoreSchema:
        return core_schema.no_info_after_validator_function(
            self.check, core_schema.str_schema(min_length=1, max_length=ID_MAX_LENGTH)
        )

    def __get_pydantic_json_schema__(
        self, schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        json_schema = handler(schema)
        json_schema.update(pattern=ID_PATTERN)
        json_schema.setdefault("description", ID_RULE)
        return json_schema

    def check(self, value: str) -> str:
        found = re.search(f"[{_SINGLE_LINE_REFUSED}]", value)
        if found is not None:
            code = f"U+{ord(found.group()):04X}"
            raise PydanticCustomError(
                "id_control_character",
                "an id must not contain control characters (found {code})",
                {"code": code},
            )
        if _SURROGATE.search(value):
            raise PydanticCustomError("text_surrogate", "must be valid Unicode text (found a lone surrogate)")
        if value.startswith("$"):
            raise PydanticCustomError("id_operator", "an id must not start with $")
        if "/" in value:
            raise PydanticCustomError("id_slash", "an id must not contain /")
        if _EDGE_SPACE.search(value):
            raise PydanticCustomError("id_edge_space", "an id must not start or end with a space")
        if value in (".", ".."):
            raise PydanticCustomError("id_dot_segment", "an id must not be . or ..")
        return value


Id = Annotated[str, _IdText(), Field(examples=["7c9e6679-7425-40de-944b-e07fc1f90ae7"])]
"""A record's id (``ID_RULE``): generated ones are UUIDs, given ones any printable text."""

ShortText = Annotated[str, SingleLine(min_length=1, max_length=200)]
LongText = Annotated[str, MultiLine(max_length=5000)]

# Another system's name and its own id for a record: together, and only together, they identify
# the record (different systems reuse the same ids). One definition for events, HTTP bodies and
# imports alike: an external id longer than EXTERNAL_ID_MAX_LENGTH is refused with a field error.
SOURCE_SYSTEM_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$"
SourceSystem = Annotated[str, SingleLine(min_length=1, max_length=64), Field(pattern=SOURCE_SYSTEM_PATTERN)]
EXTERNAL_ID_MAX_LENGTH = ID_MAX_LENGTH
ExternalId = Annotated[str, SingleLine(min_length=1, max_length=EXTERNAL_ID_MAX_LENGTH)]


class Contract(BaseModel):
    """Base of every event payload: unknown fields are refused so typos surface early."""

    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=True)


class Actor(Contract):
    """Who did something: a user id or a system name."""

    id: ShortText = Field(examples=["rep-42"])
    name: Annotated[str, SingleLine(max_length=200)] | None = None
