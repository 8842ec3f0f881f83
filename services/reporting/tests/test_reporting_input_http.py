"""Filters the reporting API refuses before it reads anything, with a 422 naming the parameter:
days given as numbers (pydantic would read 0 or 86400 as days of 1970, silently answering for
the wrong period) and control characters in text filters. No I/O: the app is built, not
started, so a request that got past validation would fail here for want of a database."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from crm_reporting.bootstrap import ReportingSettings, create_app

ISO_DATE = "must be an ISO 8601 date, e.g. 2026-03-05"
DATED_VIEWS = [
    "/reports/funnel",
    "/reports/forecast",
    "/reports/win-loss",
    "/reports/stage-velocity",
    "/reports/stage-conversion",
    "/reports/lead-sources",
]


@pytest.fixture(scope="module")
async def http() -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(ReportingSettings(log_level="WARNING"))
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://reporting"
    ) as client:
        yield client


def fields(response: httpx.Response) -> dict[str, str]:
    assert response.status_code == 422, response.text
    return {problem["field"]: problem["reason"] for problem in response.json()["fields"]}


@pytest.mark.parametrize("path", DATED_VIEWS)
@pytest.mark.parametrize("number", ["1700000000", "0", "86400", "20260305"])
async def test_a_period_given_as_a_number_is_refused(http: httpx.AsyncClient, path: str, number: str) -> None:
    assert fields(await http.get(path, params={"from": number})) == {"from": ISO_DATE}
    assert fields(await http.get(path, params={"to": number})) == {"to": ISO_DATE}


async def test_the_pipeline_history_refuses_number_days_too(http: httpx.AsyncClient) -> None:
    history = "/reports/pipeline-history"
    assert fields(await http.get(history, params={"from": "0"})) == {"from": ISO_DATE}
    assert fields(await http.get(history, params={"from": "2026-03-01", "to": "86400"})) == {"to": ISO_DATE}


@pytest.mark.parametrize(
    ("path", "parameter"),
    [
        ("/reports/pipeline", "sales_region"),
        ("/reports/forecast", "account_industry"),
        ("/reports/win-loss", "loss_reason"),
    ],
)
async def test_a_control_character_in_a_text_filter_is_refused(
    http: httpx.AsyncClient, path: str, parameter: str
) -> None:
    reasons = fields(await http.get(path, params={parameter: "DACH\x00"}))
    assert list(reasons) == [parameter] and "U+0000" in reasons[parameter]
