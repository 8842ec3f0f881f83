"""Unit tests of how an exported membership becomes the statuses a member lived through
(``imported_history``): the joining step, the response and the current status on their own
dates, and the column named when the dates or statuses cannot describe a real member."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from crm_campaigns.domain import (
    Campaign,
    CampaignDetails,
    CampaignRuleViolation,
    imported_history,
)
from crm_contracts.events.campaigns import MemberStatus

S = MemberStatus
JOINED = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)
DAY = timedelta(days=1)


def campaign(**overrides: Any) -> Campaign:
    details = CampaignDetails.model_validate(
        {"name": "Webinar", "type": "webinar", "currency": "EUR", **overrides}
    )
    return Campaign.plan("c-1", details, now=JOINED, by="rep-1")


def steps(**row: Any) -> list[tuple[MemberStatus, datetime, str]]:
    history = imported_history(
        row.pop("campaign", campaign()),
        **{"status": None, "joined_at": JOINED, "responded_at": None, "status_at": None, **row},
    )
    return [(step.status, step.at, step.column) for step in history]


def test_a_member_without_dates_of_later_steps_joined_with_its_status() -> None:
    assert steps(status=S.REGISTERED) == [(S.REGISTERED, JOINED, "status")]
    assert steps() == [(S.SENT, JOINED, "status")]  # the campaign's first status by default
    # A member said to have responded stands at responded.
    assert steps(responded_at=JOINED + DAY) == [
        (S.SENT, JOINED, "joined_at"),
        (S.RESPONDED, JOINED + DAY, "responded_at"),
    ]


def test_later_dates_make_the_member_join_with_the_first_status_and_move_on_in_date_order() -> None:
    assert steps(status=S.ATTENDED, responded_at=JOINED + DAY, status_at=JOINED + 2 * DAY) == [
        (S.SENT, JOINED, "joined_at"),
        (S.RESPONDED, JOINED + DAY, "responded_at"),
        (S.ATTENDED, JOINED + 2 * DAY, "status_at"),
    ]
    # Without status_at the status dates from the latest known date; the response comes first.
    assert steps(status=S.ATTENDED, responded_at=JOINED + DAY) == [
        (S.SENT, JOINED, "joined_at"),
        (S.RESPONDED, JOINED + DAY, "responded_at"),
        (S.ATTENDED, JOINED + DAY, "status"),
    ]


def test_a_member_who_responded_and_unsubscribed_keeps_its_response() -> None:
    assert steps(status=S.UNSUBSCRIBED, responded_at=JOINED, status_at=JOINED + DAY) == [
        (S.RESPONDED, JOINED, "responded_at"),
        (S.UNSUBSCRIBED, JOINED + DAY, "status_at"),
    ]


@pytest.mark.parametrize(
    ("row", "column", "says"),
    [
        ({"status": S.CLICKED, "responded_at": JOINED + DAY}, "responded_at", "not at clicked"),
        ({"status": S.ATTENDED, "responded_at": JOINED - DAY}, "responded_at", "before joined_at"),
        (
            {"status": S.RESPONDED, "responded_at": JOINED, "status_at": JOINED + DAY},
            "responded_at",
            "reached",
        ),
        (
            {"status": S.REGISTERED, "responded_at": JOINED + 2 * DAY, "status_at": JOINED + DAY},
            "responded_at",
            "cannot go back",
        ),
        (
            {
                "status": S.ATTENDED,
                "campaign": campaign(member_statuses=[{"status": "responded", "counts_as_response": True}]),
            },
            "status",
            "offers: responded",
        ),
    ],
)
def test_rows_that_describe_no_real_member_are_refused_naming_the_column(
    row: dict[str, Any], column: str, says: str
) -> None:
    with pytest.raises(CampaignRuleViolation) as refused:
        steps(**row)
    assert refused.value.field == column
    assert says in refused.value.reason
