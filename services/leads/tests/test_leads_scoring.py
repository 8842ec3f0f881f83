"""Unit tests of qualification scoring: rules as validated data, their evaluation, the
explanation, the thresholds, and a rep's rating surviving a rescore."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from crm_contracts.events.leads import LeadCaptured, LeadRating
from crm_leads.domain import Lead
from crm_leads.scoring import (
    RatingThresholds,
    ScoringCategory,
    ScoringOperator,
    ScoringRule,
    ScoringRules,
    ScoringRuleSet,
    default_rules,
    holds,
    score,
)
from pydantic import ValidationError

NOW = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)


def rule(field: str, operator: str, value: Any, points: int = 10, category: str = "fit") -> ScoringRule:
    return ScoringRule.model_validate(
        {
            "id": "r",
            "description": "test rule",
            "category": category,
            "field": field,
            "operator": operator,
            "value": value,
            "points": points,
        }
    )


def lead(**overrides: Any) -> Lead:
    data: dict[str, Any] = {
        "source_system": "webforms",
        "external_id": "f-1",
        "captured_at": "2026-11-01T10:00:00Z",
        "person": {"last_name": "Lovelace"},  # a capture names someone; no rule scores a name
    }
    data.update(overrides)
    return Lead.capture(LeadCaptured.model_validate(data), default_rules(), now=NOW, by="t")


@pytest.mark.parametrize(
    ("field", "operator", "value", "facts", "expected"),
    [
        ("company.size", "gte", 50, {"company.size": 50}, True),
        ("company.size", "gt", 50, {"company.size": 50}, False),
        ("company.size", "between", [10, 49], {"company.size": 49}, True),
        ("company.size", "lt", 10, {}, False),  # a missing fact never satisfies a comparison
        ("company.country", "in", ["DE", "AT"], {"company.country": "de"}, True),
        ("company.country", "not_in", ["DE", "AT"], {"company.country": "HU"}, True),
        ("company.industry", "eq", "Software", {"company.industry": "software"}, True),
        ("company.industry", "ne", "Software", {"company.industry": "retail"}, True),
        ("person.job_title", "contains_any", ["head of", "cto"], {"person.job_title": "Head of IT"}, True),
        ("person.job_title", "contains_any", ["coo"], {"person.job_title": "Coordinator"}, False),
        ("person.free_mail", "eq", False, {"person.free_mail": False}, True),
        ("person.free_mail", "eq", False, {}, False),
        ("person.phone", "present", True, {"person.phone": "+44 1"}, True),
        ("person.phone", "present", False, {}, True),
        ("custom.budget", "gte", 1000, {"custom.budget": 5000}, True),
        ("custom.budget", "gte", 1000, {"custom.budget": "lots"}, False),
    ],
)
def test_each_operator_holds_only_when_its_condition_does(
    field: str, operator: str, value: Any, facts: dict[str, Any], expected: bool
) -> None:
    assert holds(rule(field, operator, value), facts) is expected


@pytest.mark.parametrize(
    ("field", "operator", "value", "message"),
    [
        ("company.revenue", "gte", 1, "unknown field"),
        ("custom.$where", "eq", 1, "unknown field"),
        ("person.job_title", "gte", 3, "needs a numeric field"),
        ("company.size", "contains_any", ["x"], "needs a text field"),
        ("company.size", "between", [50, 10], "low <= high"),
        ("company.size", "gte", "ten", "takes a number"),
        ("company.country", "in", "DE", "takes a list"),
        ("company.country", "eq", ["DE"], "takes one value"),
        ("person.phone", "present", "yes", "true or false"),
    ],
)
def test_rules_are_validated_so_an_administrator_cannot_save_a_broken_one(
    field: str, operator: str, value: Any, message: str
) -> None:
    with pytest.raises(ValidationError, match=message):
        rule(field, operator, value)


def test_operators_come_from_a_fixed_list() -> None:
    with pytest.raises(ValidationError, match="operator"):
        rule("company.size", "$where", 1)
    assert {op.value for op in ScoringOperator} == {
        "eq",
        "ne",
        "in",
        "not_in",
        "gt",
        "gte",
        "lt",
        "lte",
        "between",
        "contains_any",
        "present",
    }


def test_rule_sets_need_unique_ids_and_hot_above_warm() -> None:
    with pytest.raises(ValidationError, match="used twice"):
        ScoringRuleSet(
            rules=[rule("company.size", "gte", 1)] * 2, thresholds=RatingThresholds(hot=60, warm=30)
        )
    with pytest.raises(ValidationError, match="hot must be greater than warm"):
        RatingThresholds(hot=30, warm=30)


def test_the_score_sums_the_points_of_the_rules_that_hold_and_explains_them() -> None:
    rules = ScoringRules(
        version=3,
        rules=[
            rule("company.size", "gte", 100, 30).model_copy(update={"id": "big"}),
            rule("engagement.visits", "gte", 3, 25, "engagement").model_copy(update={"id": "visits"}),
            rule("person.free_mail", "eq", True, -20).model_copy(update={"id": "free_mail"}),
        ],
        thresholds=RatingThresholds(hot=50, warm=20),
    )
    result = score({"company.size": 500, "engagement.visits": 4, "person.free_mail": False}, rules, now=NOW)
    assert (result.score, result.rating, result.fit, result.engagement) == (55, LeadRating.HOT, 30, 25)
    assert [(c.rule_id, c.points, c.category) for c in result.contributions] == [
        ("big", 30, ScoringCategory.FIT),
        ("visits", 25, ScoringCategory.ENGAGEMENT),
    ]
    assert result.rules_version == 3
    cold = score({"person.free_mail": True}, rules, now=NOW)
    assert (cold.score, cold.rating) == (0, LeadRating.COLD)  # clamped at 0


def test_the_default_rules_rate_a_senior_engaged_buyer_hot_and_an_anonymous_one_cold() -> None:
    buyer = lead(
        person={
            "first_name": "Ada",
            "email": "ada@engines.example",
            "job_title": "CTO",
            "phone": "+44 20 7946 0000",
        },
        company={"name": "Engines", "size": 400, "industry": "Software", "country": "GB"},
        engagement={
            "visits": 4,
            "time_on_site_seconds": 900,
            "last_activity_at": (NOW - timedelta(days=2)).isoformat(),
        },
    )
    assert buyer.rating is LeadRating.HOT and buyer.score >= 60
    explained = {c.rule_id for c in buyer.score_explanation}
    assert {
        "title_senior",
        "size_mid",
        "industry_target",
        "country_core",
        "business_email",
        "has_phone",
    } <= explained
    assert {"visits_3", "time_on_site_5m", "active_last_7d"} <= explained
    anonymous = lead(person={"email": "someone@gmail.com"})
    assert (anonymous.score, anonymous.rating) == (0, LeadRating.COLD)


def test_recency_is_measured_at_scoring_time() -> None:
    lapsed = lead(engagement={"visits": 3, "last_activity_at": (NOW - timedelta(days=120)).isoformat()})
    assert {c.rule_id for c in lapsed.score_explanation} == {"visits_3", "inactive_90d"}
    assert lapsed.score == 0


def test_rescoring_applies_new_rules_but_keeps_the_reps_rating() -> None:
    subject = lead(company={"size": 20})
    subject.set_manual_rating(LeadRating.HOT, now=NOW, by="rep-1")
    generous = ScoringRules(
        version=1,
        rules=[rule("company.size", "gte", 10, 40)],
        thresholds=RatingThresholds(hot=90, warm=30),
    )
    changed = subject.rescore(generous, now=NOW, by="system:scoring")
    assert changed == ["score", "score_explanation"]
    assert (subject.score, subject.score_rating, subject.rating) == (40, LeadRating.WARM, LeadRating.HOT)
    assert subject.scoring_rules_version == 1
    assert subject.history[-1].action == "rescored"
    assert subject.rescore(generous, now=NOW, by="system:scoring") == []


def test_the_default_rules_round_trip_as_json() -> None:
    rules = default_rules()
    again = ScoringRules.model_validate_json(rules.model_dump_json())
    assert again == rules and rules.version == 0


class RecordingRepository:
    """Counts the storage calls a rescoring batch makes."""

    def __init__(self, leads: list[Lead]) -> None:
        self.leads = {lead.id: lead.model_copy(deep=True) for lead in leads}
        self.calls: list[str] = []
        self.saved: tuple[list[tuple[Lead, int]], list[str], int] | None = None

    async def get_many(self, lead_ids: list[str], session: Any = None) -> list[Lead]:
        self.calls.append("get_many")
        return [self.leads[lead_id].model_copy(deep=True) for lead_id in lead_ids]

    async def save_rescored(
        self, changed: list[tuple[Lead, int]], unchanged: list[str], version: int, session: Any
    ) -> None:
        self.calls.append("save_rescored")
        self.saved = (changed, unchanged, version)


class RecordingOutbox:
    def __init__(self) -> None:
        self.writes: list[list[tuple[str, Any]]] = []

    async def add_many(self, session: Any, entries: list[tuple[str, Any]]) -> None:
        self.writes.append(entries)


async def test_a_rescoring_batch_is_one_read_one_bulk_write_and_one_outbox_write() -> None:
    from crm_leads.use_cases import rescore_leads
    from crm_runtime import UnitOfWork

    big = [lead(external_id=f"big-{n}", company={"size": 5000}) for n in range(30)]
    small = [lead(external_id=f"small-{n}", company={"size": 5}) for n in range(20)]
    generous = ScoringRules(
        version=3,
        rules=[rule("company.size", "gte", 1000, points=70)],
        thresholds=RatingThresholds(hot=60, warm=30),
    )
    repo = RecordingRepository(big + small)
    outbox = RecordingOutbox()
    uow = UnitOfWork(session=None, outbox=outbox)  # type: ignore[arg-type]
    changed = await rescore_leads(repo, uow, [x.id for x in big + small], generous)  # type: ignore[arg-type]

    assert changed == 30
    assert repo.calls == ["get_many", "save_rescored"]  # for 50 leads, not per lead
    assert repo.saved is not None
    saved, unchanged, version = repo.saved
    assert [(x.id, expected) for x, expected in saved] == [(x.id, x.version) for x in big]
    assert all(x.score == 70 and x.rating is LeadRating.HOT for x, _ in saved)
    assert unchanged == [x.id for x in small] and version == 3  # 0 points before and after
    [write] = outbox.writes
    assert [topic for topic, _ in write] == ["lead.updated"] * 30
    assert [event.subject for _, event in write] == [x.id for x in big]
