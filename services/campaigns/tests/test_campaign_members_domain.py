"""Unit tests of the member rules: which statuses a campaign offers and which count as a
response, legal status changes, response counting, touches and first/last-touch attribution."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from crm_campaigns.domain import (
    DEFAULT_MEMBER_STATUSES,
    ENGAGEMENT_ORDER,
    Campaign,
    CampaignDetails,
    CampaignMember,
    IllegalTransition,
    InvalidCampaign,
    LeadTouch,
    MemberCounts,
    check_member_status_change,
    first_touch,
    last_touch,
    removed_statuses,
    response_rate,
    summarize,
)
from crm_contracts.events.campaigns import (
    CampaignMemberStatusChanged,
    MemberStatus,
    MemberType,
    default_member_statuses,
)
from crm_contracts.events.common import Actor
from pydantic import ValidationError

NOW = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)
REP = Actor(id="rep-1")
S = MemberStatus
ALL = tuple(MemberStatus)
DEFAULT_RESPONSES = frozenset({S.RESPONDED, S.REGISTERED, S.ATTENDED})


def options(
    *statuses: MemberStatus, responses: tuple[MemberStatus, ...] = (S.RESPONDED,)
) -> list[dict[str, Any]]:
    return [{"status": s.value, "counts_as_response": s in responses} for s in statuses]


def plan(**overrides: Any) -> Campaign:
    details = CampaignDetails.model_validate(
        {"name": "Webinar", "type": "webinar", "currency": "EUR", **overrides}
    )
    return Campaign.plan("c-1", details, now=NOW, by="rep-1")


def member(status: MemberStatus = S.SENT, at: datetime = NOW, by: str = "rep-1") -> CampaignMember:
    return CampaignMember.join("c-1", MemberType.CONTACT, "con-1", status=status, at=at, via="api", by=by)


def lead_member(at: datetime, via: str = "lead.created") -> CampaignMember:
    return CampaignMember.join(
        "c-1",
        MemberType.LEAD,
        "lead-1",
        status=S.RESPONDED,
        at=at,
        via=via,
        by="lead-capture",
        lead_source="web",
    )


# -- which statuses a campaign offers ---------------------------------------------------------
def test_by_default_a_campaign_offers_every_status_and_counts_responded_registered_attended() -> None:
    c = plan()
    assert c.offered_statuses == ALL
    assert c.response_statuses == DEFAULT_RESPONSES
    assert c.first_member_status is S.SENT
    assert tuple(DEFAULT_MEMBER_STATUSES) == tuple(default_member_statuses())
    assert c.snapshot().member_statuses == list(DEFAULT_MEMBER_STATUSES)


def test_a_campaign_may_offer_fewer_statuses_count_others_as_responses_and_they_are_kept_in_order() -> None:
    c = plan(
        member_statuses=options(
            S.UNSUBSCRIBED, S.CLICKED, S.RESPONDED, S.SENT, responses=(S.CLICKED, S.RESPONDED)
        )
    )
    assert c.offered_statuses == (S.SENT, S.CLICKED, S.RESPONDED, S.UNSUBSCRIBED)
    assert c.response_statuses == frozenset({S.CLICKED, S.RESPONDED})
    assert c.first_member_status is S.SENT


@pytest.mark.parametrize(
    ("statuses", "reason"),
    [
        (options(S.SENT, S.SENT, S.RESPONDED), "sent is listed twice"),
        (options(S.SENT, S.CLICKED), "responded must be offered"),
        (options(S.SENT, S.RESPONDED, responses=()), "responded must be offered and count"),
        (
            options(S.RESPONDED, S.UNSUBSCRIBED, responses=(S.RESPONDED, S.UNSUBSCRIBED)),
            "unsubscribed cannot",
        ),
    ],
)
def test_inconsistent_member_statuses_are_refused_naming_the_field(
    statuses: list[dict[str, Any]], reason: str
) -> None:
    with pytest.raises(ValidationError) as refused:
        plan(member_statuses=statuses)
    [error] = refused.value.errors()
    assert error["loc"] == ("member_statuses",) and reason in error["msg"]
    with pytest.raises(InvalidCampaign) as revised:
        plan().revise({"member_statuses": statuses}, now=NOW, by=REP)
    assert revised.value.field == "member_statuses"


def test_changing_the_member_statuses_is_a_revision_that_names_them() -> None:
    c = plan()
    updated = c.revise({"member_statuses": options(S.SENT, S.CLICKED, S.RESPONDED)}, now=NOW, by=REP)
    assert updated is not None and updated.changed_fields == ["member_statuses"]
    assert updated.campaign.member_statuses is not None
    assert [o.status for o in updated.campaign.member_statuses] == [S.SENT, S.CLICKED, S.RESPONDED]
    assert removed_statuses(DEFAULT_MEMBER_STATUSES, c.member_statuses) == {
        S.OPENED,
        S.REGISTERED,
        S.ATTENDED,
        S.UNSUBSCRIBED,
    }
    same = c.revise({"member_statuses": options(S.SENT, S.CLICKED, S.RESPONDED)}, now=NOW, by=REP)
    assert same is None


def test_a_campaign_refuses_a_status_it_does_not_offer() -> None:
    c = plan(member_statuses=options(S.SENT, S.RESPONDED))
    c.check_offers(S.SENT)
    with pytest.raises(InvalidCampaign) as refused:
        c.check_offers(S.ATTENDED)
    assert refused.value.field == "status" and "offers: sent, responded" in refused.value.reason


# -- legal status changes ---------------------------------------------------------------------
@pytest.mark.parametrize(("current", "new"), list(itertools.combinations(ENGAGEMENT_ORDER, 2)))
def test_a_member_moves_forward_along_the_engagement_order_skipping_steps_as_needed(
    current: MemberStatus, new: MemberStatus
) -> None:
    assert check_member_status_change(current, new, ALL) is True
    with pytest.raises(IllegalTransition) as backwards:
        check_member_status_change(new, current, ALL)
    assert backwards.value.field == "status" and "only move forward" in backwards.value.reason


@pytest.mark.parametrize("current", ENGAGEMENT_ORDER)
def test_a_member_may_unsubscribe_from_any_step_and_then_stays_unsubscribed(current: MemberStatus) -> None:
    assert check_member_status_change(current, S.UNSUBSCRIBED, ALL) is True
    with pytest.raises(IllegalTransition, match="stays unsubscribed"):
        check_member_status_change(S.UNSUBSCRIBED, current, ALL)


def test_the_same_status_again_changes_nothing_and_unoffered_statuses_are_refused() -> None:
    assert check_member_status_change(S.CLICKED, S.CLICKED, ALL) is False
    assert check_member_status_change(S.UNSUBSCRIBED, S.UNSUBSCRIBED, ALL) is False
    with pytest.raises(InvalidCampaign) as refused:
        check_member_status_change(S.SENT, S.OPENED, (S.SENT, S.RESPONDED))
    assert refused.value.field == "status"


def test_a_status_change_records_history_and_an_event_saying_whether_the_member_responded() -> None:
    m = member(S.SENT)
    later = NOW + timedelta(hours=2)
    assert m.change_status(S.CLICKED, offered=ALL, now=later, by="rep-2") is S.SENT
    assert m.change_status(S.CLICKED, offered=ALL, now=later, by="rep-2") is None
    assert m.status is S.CLICKED
    assert [(e.status, e.at, e.by) for e in m.status_history] == [
        (S.SENT, NOW, "rep-1"),
        (S.CLICKED, later, "rep-2"),
    ]
    m.version = 2
    event = m.status_changed_event(S.SENT, responses=DEFAULT_RESPONSES, at=later, by=REP)
    assert isinstance(event, CampaignMemberStatusChanged)
    assert (event.previous_status, event.status, event.responded, event.member_version) == (
        S.SENT,
        S.CLICKED,
        False,
        2,
    )
    assert event.contact_id == "con-1" and event.lead_id is None
    assert (
        m.status_changed_event(S.SENT, responses=frozenset({S.CLICKED}), at=later, by=REP).responded is True
    )


def test_a_refused_change_leaves_the_member_as_it_was() -> None:
    m = member(S.ATTENDED)
    before = m.model_dump()
    with pytest.raises(IllegalTransition):
        m.change_status(S.OPENED, offered=ALL, now=NOW, by="rep-1")
    assert m.model_dump() == before


# -- response counting ------------------------------------------------------------------------
def test_a_member_who_responded_stays_a_response_after_unsubscribing() -> None:
    m = member(S.SENT)
    assert not m.has_responded(DEFAULT_RESPONSES)
    m.change_status(S.REGISTERED, offered=ALL, now=NOW, by="rep-1")
    m.change_status(S.UNSUBSCRIBED, offered=ALL, now=NOW, by="rep-1")
    assert m.reached == [S.SENT, S.REGISTERED, S.UNSUBSCRIBED]
    assert m.has_responded(DEFAULT_RESPONSES)


def test_what_counts_as_a_response_is_the_campaigns_choice() -> None:
    clicked = member(S.CLICKED)
    assert not clicked.has_responded(DEFAULT_RESPONSES)
    assert clicked.has_responded(frozenset({S.CLICKED, S.RESPONDED}))
    unsubscribed_at_once = member(S.UNSUBSCRIBED)
    assert not unsubscribed_at_once.has_responded(DEFAULT_RESPONSES)


def test_the_response_rate_is_responses_per_member_in_percent() -> None:
    assert response_rate(1, 3) == Decimal("33.33")
    assert response_rate(2, 3) == Decimal("66.67")
    assert response_rate(0, 5) == Decimal("0.00")
    assert response_rate(0, 0) is None
    summary = summarize(plan(), MemberCounts(members=8, responses=2, leads=1, converted_leads=0), [])
    assert (summary.members, summary.responses, summary.response_rate) == (8, 2, Decimal("25.00"))


# -- captures and touches ---------------------------------------------------------------------
def test_a_capture_moves_an_earlier_step_up_to_responded_but_never_down_nor_out_of_unsubscribed() -> None:
    sent = member(S.SENT)
    assert sent.respond_through_capture(NOW, by="lead-capture") is S.SENT
    assert sent.status is S.RESPONDED and sent.has_responded(DEFAULT_RESPONSES)
    for status in (S.RESPONDED, S.ATTENDED, S.UNSUBSCRIBED):
        m = member(status)
        assert m.respond_through_capture(NOW, by="lead-capture") is None
        assert m.status is status


def test_touches_in_any_order_and_repeated_give_the_same_membership() -> None:
    t0 = datetime(2026, 11, 2, 9, 30, tzinfo=UTC)
    touches = [
        (t0 + timedelta(days=3), "lead.updated", "partner"),
        (t0, "lead.created", "web"),
        (t0 + timedelta(days=3), "lead.converted", "partner"),
        (t0, "lead.created", "web"),
    ]
    results = []
    for order in itertools.permutations(touches):
        first_at, first_via, first_source = order[0]
        m = CampaignMember.join(
            "c-1",
            MemberType.LEAD,
            "lead-1",
            status=S.RESPONDED,
            at=first_at,
            via=first_via,
            by="lead-capture",
            lead_source=first_source,
        )
        for at, via, source in order[1:]:
            m.touch(at, via=via, lead_source=source)
            m.respond_through_capture(at, by="lead-capture")
        results.append(m.model_dump())
    assert all(r == results[0] for r in results)
    m = CampaignMember.model_validate(results[0])
    assert (m.joined_at, m.last_touched_at, m.lead_source) == (t0, t0 + timedelta(days=3), "web")
    assert m.touched_via == ["lead.converted", "lead.created", "lead.updated"]
    assert [(e.status, e.at) for e in m.status_history] == [(S.RESPONDED, t0)]


def test_a_repeated_touch_changes_nothing() -> None:
    m = lead_member(NOW)
    assert m.touch(NOW, via="lead.created", lead_source="web") is False
    assert m.touch(NOW + timedelta(days=1), via="lead.created", lead_source="web") is True


def touch(campaign_id: str, first: datetime, last: datetime | None = None) -> LeadTouch:
    return LeadTouch(
        campaign_id=campaign_id, first_touched_at=first, last_touched_at=last or first, touched_via=["x"]
    )


def test_first_touch_is_the_earliest_campaign_and_last_touch_the_latest() -> None:
    day = timedelta(days=1)
    touches = [touch("webinar", NOW + day, NOW + 5 * day), touch("fair", NOW), touch("ads", NOW + 2 * day)]
    assert first_touch(touches) == touches[1]
    assert last_touch(touches) == touches[0]
    assert first_touch([]) is None and last_touch([]) is None


def test_ties_are_broken_by_campaign_id_so_every_reader_agrees() -> None:
    touches = [touch("b", NOW), touch("a", NOW), touch("c", NOW)]
    for order in itertools.permutations(touches):
        first, last = first_touch(order), last_touch(order)
        assert first is not None and first.campaign_id == "a"
        assert last is not None and last.campaign_id == "c"


def test_a_member_added_event_carries_the_touch_time_and_status() -> None:
    m = lead_member(NOW)
    event = m.added_event("lead.created")
    assert (event.member_id, event.lead_id, event.added_at, event.status) == (
        "lead:lead-1",
        "lead-1",
        NOW,
        S.RESPONDED,
    )
    assert event.contact_id is None
