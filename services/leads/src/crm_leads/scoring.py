"""Qualification scoring: rules an administrator edits as data (never code), evaluated against
a lead's facts into a score from 0 to 100, a hot/warm/cold rating and an explanation of which
rules contributed how many points. No I/O here.

A rule is one condition (a field from a fixed list, an operator from a fixed list, a value)
and the points it adds (or, negative, removes) when it holds. Rules are evaluated in Python
only; nothing an administrator writes ever reaches a database query.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any

from crm_contracts.events.common import ShortText, SingleLine
from crm_contracts.events.leads import LeadRating
from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)


class FieldKind(StrEnum):
    NUMBER = "number"
    TEXT = "text"
    BOOLEAN = "boolean"
    ANY = "any"


# The facts a rule may look at. ``custom.<key>`` (kind ``any``) reaches free custom attributes.
SCORING_FIELDS: dict[str, FieldKind] = {
    "company.size": FieldKind.NUMBER,
    "company.industry": FieldKind.TEXT,
    "company.country": FieldKind.TEXT,
    "company.city": FieldKind.TEXT,
    "company.domain": FieldKind.TEXT,
    "person.job_title": FieldKind.TEXT,
    "person.email_domain": FieldKind.TEXT,
    "person.free_mail": FieldKind.BOOLEAN,
    "person.email": FieldKind.TEXT,
    "person.phone": FieldKind.TEXT,
    "lead_source": FieldKind.TEXT,
    "origin": FieldKind.TEXT,
    "campaign_id": FieldKind.TEXT,
    "consent.do_not_email": FieldKind.BOOLEAN,
    "consent.do_not_call": FieldKind.BOOLEAN,
    "engagement.visits": FieldKind.NUMBER,
    "engagement.page_views": FieldKind.NUMBER,
    "engagement.time_on_site_seconds": FieldKind.NUMBER,
    "engagement.days_since_last_activity": FieldKind.NUMBER,
}
CUSTOM_FIELD_PREFIX = "custom."
_WORD = re.compile(r"\w+")
_CUSTOM_KEY_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_")


def field_kind(name: str) -> FieldKind | None:
    if name in SCORING_FIELDS:
        return SCORING_FIELDS[name]
    key = name.removeprefix(CUSTOM_FIELD_PREFIX)
    if name.startswith(CUSTOM_FIELD_PREFIX) and 0 < len(key) <= 64 and key[0].isalpha():
        if set(key) <= _CUSTOM_KEY_CHARS:
            return FieldKind.ANY
    return None


class ScoringOperator(StrEnum):
    EQ = "eq"
    NE = "ne"
    IN = "in"
    NOT_IN = "not_in"
    GT = "gt"
    GTE = "gte"
    LT = "lt"
    LTE = "lte"
    BETWEEN = "between"
    CONTAINS_ANY = "contains_any"
    PRESENT = "present"


_NUMERIC_OPERATORS = frozenset(
    {
        ScoringOperator.GT,
        ScoringOperator.GTE,
        ScoringOperator.LT,
        ScoringOperator.LTE,
        ScoringOperator.BETWEEN,
    }
)


class ScoringCategory(StrEnum):
    FIT = "fit"
    ENGAGEMENT = "engagement"


Scalar = Annotated[bool | int | float | str, Field(union_mode="smart"), SingleLine().in_union()]
RuleValue = Scalar | Annotated[list[Scalar], Field(min_length=1, max_length=100)]


class ScoringRule(BaseModel):
    """One weighted condition: when ``field`` ``operator`` ``value`` holds, add ``points``."""

    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=True)

    id: str = Field(pattern=r"^[a-z][a-z0-9_]{0,63}$", examples=["title_senior"])
    description: ShortText = Field(examples=["Senior decision maker"])
    category: ScoringCategory
    field: str = Field(
        description="One of the scoring fields, or custom.<key> for a custom attribute",
        examples=["person.job_title"],
    )
    operator: ScoringOperator
    value: RuleValue = Field(examples=[["chief", "head", "director"]])
    points: int = Field(ge=-100, le=100, examples=[20])

    @field_validator("field")
    @classmethod
    def _known_field(cls, name: str) -> str:
        if field_kind(name) is None:
            known = ", ".join(sorted(SCORING_FIELDS))
            raise ValueError(f"unknown field {name!r}; use one of {known} or custom.<key>")
        return name

    @field_validator("value")
    @classmethod
    def _bounded_text(cls, value: Any) -> Any:
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, str) and not 0 < len(item) <= 200:
                raise ValueError("text values must have 1 to 200 characters")
        return value

    @model_validator(mode="after")
    def _operator_fits_value_and_field(self) -> ScoringRule:
        kind = field_kind(self.field)
        op, value = self.operator, self.value
        if op in _NUMERIC_OPERATORS and kind not in (FieldKind.NUMBER, FieldKind.ANY):
            raise ValueError(f"operator {op.value} needs a numeric field, {self.field} is {kind}")
        if op is ScoringOperator.CONTAINS_ANY and kind not in (FieldKind.TEXT, FieldKind.ANY):
            raise ValueError(f"operator contains_any needs a text field, {self.field} is {kind}")
        if op is ScoringOperator.BETWEEN:
            if not (isinstance(value, list) and len(value) == 2 and all(_is_number(v) for v in value)):
                raise ValueError("between takes [low, high], two numbers")
            if value[0] > value[1]:  # type: ignore[operator]
                raise ValueError("between takes [low, high] with low <= high")
        elif op in _NUMERIC_OPERATORS and not _is_number(value):
            raise ValueError(f"operator {op.value} takes a number")
        elif op in (ScoringOperator.IN, ScoringOperator.NOT_IN) and not isinstance(value, list):
            raise ValueError(f"operator {op.value} takes a list of values")
        elif op in (ScoringOperator.EQ, ScoringOperator.NE) and isinstance(value, list):
            raise ValueError(f"operator {op.value} takes one value; use in/not_in for a list")
        elif op is ScoringOperator.PRESENT and not isinstance(value, bool):
            raise ValueError("operator present takes true or false")
        elif op is ScoringOperator.CONTAINS_ANY and not all(
            isinstance(v, str) for v in (value if isinstance(value, list) else [value])
        ):
            raise ValueError("contains_any takes a keyword or a list of keywords")
        return self


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


class RatingThresholds(BaseModel):
    """A score at or above ``hot`` is hot, at or above ``warm`` warm, below it cold."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    hot: int = Field(ge=1, le=100, examples=[60])
    warm: int = Field(ge=0, le=99, examples=[30])

    @model_validator(mode="after")
    def _hot_above_warm(self) -> RatingThresholds:
        if self.hot <= self.warm:
            raise ValueError("hot must be greater than warm")
        return self

    def rating_for(self, score: int) -> LeadRating:
        if score >= self.hot:
            return LeadRating.HOT
        if score >= self.warm:
            return LeadRating.WARM
        return LeadRating.COLD


class ScoringRuleSet(BaseModel):
    """What an administrator writes."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    rules: list[ScoringRule] = Field(max_length=100)
    thresholds: RatingThresholds

    @field_validator("rules")
    @classmethod
    def _unique_ids(cls, rules: list[ScoringRule]) -> list[ScoringRule]:
        seen: set[str] = set()
        for rule in rules:
            if rule.id in seen:
                raise ValueError(f"rule id {rule.id!r} is used twice")
            seen.add(rule.id)
        return rules


class ScoringRules(ScoringRuleSet):
    """The rule set in force; ``version`` 0 is the built-in default, never stored."""

    version: int = Field(ge=0)
    updated_at: AwareDatetime | None = None
    updated_by: str | None = None


class ScoreContribution(BaseModel):
    model_config = ConfigDict(frozen=True)

    rule_id: str
    description: str
    category: ScoringCategory
    points: int


class LeadScore(BaseModel):
    """A lead's score and why."""

    model_config = ConfigDict(frozen=True)

    score: int = Field(ge=0, le=100)
    rating: LeadRating
    fit: int = Field(description="Points from fit rules (before clamping to 0..100)")
    engagement: int = Field(description="Points from engagement rules (before clamping)")
    contributions: list[ScoreContribution]
    rules_version: int
    scored_at: AwareDatetime


def score(facts: Mapping[str, Any], rules: ScoringRules, *, now: datetime) -> LeadScore:
    """The lead's score under ``rules``: the points of every rule that holds, clamped to 0..100."""
    contributions = [
        ScoreContribution(
            rule_id=rule.id, description=rule.description, category=rule.category, points=rule.points
        )
        for rule in rules.rules
        if rule.points != 0 and holds(rule, facts)
    ]
    fit = sum(c.points for c in contributions if c.category is ScoringCategory.FIT)
    engagement = sum(c.points for c in contributions if c.category is ScoringCategory.ENGAGEMENT)
    total = max(0, min(100, fit + engagement))
    return LeadScore(
        score=total,
        rating=rules.thresholds.rating_for(total),
        fit=fit,
        engagement=engagement,
        contributions=contributions,
        rules_version=rules.version,
        scored_at=now,
    )


def holds(rule: ScoringRule, facts: Mapping[str, Any]) -> bool:
    """Whether the rule's condition holds. A missing fact satisfies only ``present: false``;
    text compares case-insensitively and ``contains_any`` looks for whole words or phrases."""
    actual = facts.get(rule.field)
    if rule.operator is ScoringOperator.PRESENT:
        return (actual is not None and actual != "") is rule.value
    if actual is None or actual == "":
        return False
    op, expected = rule.operator, rule.value
    if op is ScoringOperator.EQ:
        return _same(actual, expected)
    if op is ScoringOperator.NE:
        return not _same(actual, expected)
    if op is ScoringOperator.IN:
        return any(_same(actual, item) for item in _as_list(expected))
    if op is ScoringOperator.NOT_IN:
        return not any(_same(actual, item) for item in _as_list(expected))
    if op is ScoringOperator.CONTAINS_ANY:
        words = _words(str(actual))
        return any(_has_phrase(words, _words(str(keyword))) for keyword in _as_list(expected))
    if not _is_number(actual):
        return False
    number = float(actual)
    if op is ScoringOperator.BETWEEN:
        low, high = (float(bound) for bound in _as_list(expected))
        return low <= number <= high
    limit = float(expected)  # type: ignore[arg-type]  # the rule's validator made it a number
    if op is ScoringOperator.GT:
        return number > limit
    if op is ScoringOperator.GTE:
        return number >= limit
    if op is ScoringOperator.LT:
        return number < limit
    return number <= limit


def _as_list(value: Any) -> Sequence[Any]:
    return value if isinstance(value, list) else [value]


def _words(text: str) -> list[str]:
    return _WORD.findall(text.casefold())


def _has_phrase(words: list[str], phrase: list[str]) -> bool:
    """Whole words, so the keyword "coo" finds "COO" but not "Coordinator"."""
    size = len(phrase)
    return size > 0 and any(words[i : i + size] == phrase for i in range(len(words) - size + 1))


def _same(actual: Any, expected: Any) -> bool:
    if isinstance(actual, bool) or isinstance(expected, bool):
        return isinstance(actual, bool) and isinstance(expected, bool) and actual is expected
    if isinstance(actual, str) and isinstance(expected, str):
        return actual.casefold() == expected.casefold()
    if _is_number(actual) and _is_number(expected):
        return bool(actual == expected)
    return False


_SENIOR_TITLES = [
    "chief",
    "ceo",
    "cto",
    "cfo",
    "coo",
    "cio",
    "vp",
    "vice president",
    "head of",
    "director",
    "founder",
    "owner",
    "president",
    "managing partner",
]


def default_rules() -> ScoringRules:
    """The rule set a fresh installation starts with (version 0, replaced by the first PUT)."""
    fit, engagement = ScoringCategory.FIT, ScoringCategory.ENGAGEMENT
    op = ScoringOperator
    raw: list[tuple[str, str, ScoringCategory, str, ScoringOperator, Any, int]] = [
        ("size_small", "10 to 49 employees", fit, "company.size", op.BETWEEN, [10, 49], 5),
        ("size_mid", "50 to 999 employees", fit, "company.size", op.BETWEEN, [50, 999], 15),
        ("size_large", "1000 employees or more", fit, "company.size", op.GTE, 1000, 20),
        (
            "title_senior",
            "Senior decision maker",
            fit,
            "person.job_title",
            op.CONTAINS_ANY,
            _SENIOR_TITLES,
            20,
        ),
        (
            "title_manager",
            "Manager or team lead",
            fit,
            "person.job_title",
            op.CONTAINS_ANY,
            ["manager", "lead"],
            10,
        ),
        (
            "industry_target",
            "Target industry",
            fit,
            "company.industry",
            op.IN,
            ["software", "it services", "financial services", "manufacturing", "healthcare", "retail"],
            10,
        ),
        (
            "country_core",
            "Core market",
            fit,
            "company.country",
            op.IN,
            ["AT", "CH", "DE", "FR", "GB", "HU", "NL", "RS", "US"],
            5,
        ),
        ("business_email", "Business email address", fit, "person.free_mail", op.EQ, False, 10),
        ("has_phone", "Phone number given", fit, "person.phone", op.PRESENT, True, 5),
        ("visits_3", "3 or more visits", engagement, "engagement.visits", op.GTE, 3, 10),
        ("visits_10", "10 or more visits", engagement, "engagement.visits", op.GTE, 10, 5),
        ("page_views_10", "10 or more page views", engagement, "engagement.page_views", op.GTE, 10, 5),
        (
            "time_on_site_5m",
            "5 minutes or more on the site",
            engagement,
            "engagement.time_on_site_seconds",
            op.GTE,
            300,
            10,
        ),
        (
            "active_last_7d",
            "Active in the last 7 days",
            engagement,
            "engagement.days_since_last_activity",
            op.LTE,
            7,
            10,
        ),
        (
            "inactive_90d",
            "No activity for over 90 days",
            engagement,
            "engagement.days_since_last_activity",
            op.GT,
            90,
            -10,
        ),
    ]
    return ScoringRules(
        version=0,
        rules=[
            ScoringRule(
                id=rule_id,
                description=description,
                category=category,
                field=field,
                operator=operator,
                value=value,
                points=points,
            )
            for rule_id, description, category, field, operator, value, points in raw
        ],
        thresholds=RatingThresholds(hot=60, warm=30),
    )
