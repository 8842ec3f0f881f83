"""Reporting's lead-sources view and the organisation's picklists: rows group by the canonical
value, an organisation-defined source is its own row under the label ``picklist.revised`` gave
it (the newest revision's, in whatever order they arrive), and a source no revision named keeps
its default label."""

from __future__ import annotations

from datetime import datetime

from crm_contracts import catalog
from crm_contracts.envelope import CloudEvent
from crm_contracts.events.common import Actor
from crm_contracts.events.leads import default_picklist_values
from crm_contracts.events.picklists import PicklistName, PicklistRevised, PicklistValue, UnknownValues
from crm_reporting import views
from crm_reporting.memory import MemoryFactStore, MemoryViews, run_now
from crm_runtime.events import make_event
from reporting_events import Lead, at


def revised(version: int, when: datetime, label: str) -> CloudEvent[PicklistRevised]:
    values = [
        *default_picklist_values(PicklistName.LEAD_SOURCE),
        PicklistValue(value="trade_fair", label=label),
    ]
    data = PicklistRevised(
        picklist=PicklistName.LEAD_SOURCE,
        version=version,
        values=values,
        blank_value="unknown",
        unknown_values=UnknownValues.REJECT,
        revised_at=when,
        revised_by=Actor(id="admin-1"),
    )
    return make_event(
        catalog.PICKLIST_REVISED, data, source="/crm/leads", subject="lead_source", version=version, time=when
    )


def test_an_organisation_defined_source_is_its_own_row_under_its_newest_label() -> None:
    events = [
        revised(2, at(60), "Trade show"),  # the newer revision arrives first
        Lead("a", source="trade_fair").created(),
        Lead("b", source="trade_fair").created(),
        Lead("c", source="unknown").created(),
        Lead("d").created(),
        revised(1, at(0), "Trade fair"),
    ]
    source = MemoryViews(MemoryFactStore().fold(events))
    rows = run_now(views.lead_source_rows(source, views.LeadSourceQuery(currency="EUR")))
    assert [(r.lead_source, r.label, r.leads) for r in rows] == [
        ("trade_fair", "Trade show", 2),
        ("unknown", "Unknown", 1),
        ("web", "Web", 1),
    ]
