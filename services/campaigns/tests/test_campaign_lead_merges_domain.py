"""Folding a merged duplicate's membership into the survivor's, without I/O: the rules that
make lead.merged order-independent with the other lead events."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta

from crm_campaigns.domain import (
    CampaignMember,
    LeadConversion,
    furthest_status,
    merge_chain,
    surviving_lead,
)
from crm_contracts.events.campaigns import MemberStatus, MemberType

S = MemberStatus
T0 = datetime(2026, 11, 2, 9, 30, tzinfo=UTC)


def membership(
    lead_id: str, at: datetime, status: S = S.RESPONDED, via: str = "lead.created"
) -> CampaignMember:
    return CampaignMember.join(
        "fair",
        MemberType.LEAD,
        lead_id,
        status=status,
        at=at,
        via=via,
        by="lead-capture",
        lead_source=lead_id,
    )


def test_the_survivor_keeps_the_earliest_join_the_latest_touch_and_every_way_it_came() -> None:
    survivor = membership("keep", T0 + timedelta(days=2), via="api")
    duplicate = membership("dup", T0)
    duplicate.touch(T0 + timedelta(days=5), via="lead.updated")
    survivor.absorb(duplicate)
    assert (survivor.joined_at, survivor.last_touched_at) == (T0, T0 + timedelta(days=5))
    assert survivor.touched_via == ["api", "lead.created", "lead.updated"]
    assert survivor.lead_source == "dup"  # the source of the earliest touch
    assert (survivor.lead_id, survivor.member_id, survivor.merged_from) == ("keep", "lead:keep", ["dup"])


def test_the_survivor_stands_at_the_furthest_status_and_an_unsubscribe_stays() -> None:
    survivor = membership("keep", T0, status=S.SENT)
    duplicate = membership("dup", T0 + timedelta(hours=1), status=S.REGISTERED)
    assert survivor.absorb(duplicate) is S.SENT  # the previous status
    assert survivor.status is S.REGISTERED and survivor.reached == [S.SENT, S.REGISTERED]
    gone = membership("other", T0 + timedelta(hours=2), status=S.UNSUBSCRIBED)
    survivor.absorb(gone)
    assert survivor.status is S.UNSUBSCRIBED  # consent only tightens
    assert furthest_status([S.OPENED, S.ATTENDED, S.CLICKED]) is S.ATTENDED


def test_folding_is_order_independent_and_idempotent() -> None:
    """The same duplicates folded in any order, or twice, give the same membership; and a
    status reached by both keeps its earliest time."""
    duplicates = [
        membership("dup-1", T0 + timedelta(days=1)),
        membership("dup-2", T0 + timedelta(days=3), status=S.CLICKED, via="api"),
        membership("dup-3", T0 - timedelta(days=1), via="lead.updated"),
    ]
    results = []
    for order in itertools.permutations(duplicates):
        survivor = membership("keep", T0, status=S.SENT, via="api")
        for duplicate in [*order, order[0]]:
            survivor.absorb(duplicate.model_copy(deep=True))
        results.append(survivor.model_dump())
    assert all(result == results[0] for result in results)
    folded = CampaignMember.model_validate(results[0])
    assert [(e.status, e.at) for e in folded.status_history] == [
        (S.RESPONDED, T0 - timedelta(days=1)),
        (S.SENT, T0),
        (S.CLICKED, T0 + timedelta(days=3)),
    ]
    assert folded.status is S.RESPONDED and folded.merged_from == ["dup-1", "dup-2", "dup-3"]


def test_a_membership_moved_to_the_survivor_takes_the_survivors_conversion() -> None:
    duplicate = membership("dup", T0)
    conversion = LeadConversion(converted_at=T0 + timedelta(days=9), account_id="acc-1", contact_id="con-1")
    moved = duplicate.for_survivor("keep", conversion)
    assert (moved.member_id, moved.lead_id, moved.version, moved.merged_from) == (
        "lead:keep",
        "keep",
        1,
        ["dup"],
    )
    assert (moved.converted, moved.account_id, moved.joined_at) == (True, "acc-1", T0)
    assert duplicate.for_survivor("keep", None).converted is False


def test_a_merged_lead_lives_on_as_the_last_survivor_of_its_chain() -> None:
    merges = {"a": "b", "b": "c", "x": "y"}
    assert merge_chain("a", merges) == ["a", "b", "c"]
    assert (surviving_lead("a", merges), surviving_lead("c", merges), surviving_lead("q", merges)) == (
        "c",
        "c",
        "q",
    )
    assert merge_chain("p", {"p": "q", "q": "p"}) == ["p", "q"]  # a cycle stops
