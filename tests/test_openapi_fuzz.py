"""schemathesis over each service's OpenAPI document, against the service as a real process on
the real broker and database: no request it generates, valid or not, gets a server error (5xx),
a status its operation does not document, or a body, media type or header other than documented.

Each operation gets, in this order: the document's own examples; schemathesis's coverage cases
(boundary values, each property missing, null or of the wrong type, undeclared methods); and
``CRM_FUZZ_EXAMPLES`` (default 10) cases that fit its schema and as many that do not
(schemathesis's positive and negative generation). Generated cases go out with the admin token
mostly, so that they reach the routes' own logic, and otherwise with a read token, none, or one
with a non-ASCII byte, so that 401 and 403 are provoked too. Generation is derandomized: every
run sends the same requests. Every finding is collected before the test fails, each with a
curl command that replays it."""

from __future__ import annotations

import asyncio
import os
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests
import schemathesis
from crm_localinfra.testing import isolation_key, running_services
from crm_runtime.uploads import UPLOAD_TYPES
from hypothesis import HealthCheck, Phase, Verbosity, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.errors import FailureGroup
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

pytestmark = [pytest.mark.integration, pytest.mark.e2e]

# Uploads are documented as text in these media types; send them as text.
schemathesis.serializer.alias(list(UPLOAD_TYPES), "text/plain")

SERVICES = ("leads", "opportunities", "campaigns", "reporting")
TOKENS = {"fuzz-admin": "admin", "fuzz-writer": "write", "fuzz-reader": "read"}
AUTHORIZATION: dict[str, str | None] = {
    "admin token": "Bearer fuzz-admin",
    "read token": "Bearer fuzz-reader",
    "no token": None,
    "non-ASCII token": "Bearer fuzz-\u00e4dmin",
}
CREDENTIALS = ("admin token",) * 5 + ("read token", "no token", "non-ASCII token")
EXAMPLES_PER_MODE = int(os.environ.get("CRM_FUZZ_EXAMPLES", "10"))
MIN_CALLS_PER_OPERATION = 10
# No server error, no undocumented status, and the documented body, media type and headers.
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    response_schema_conformance,
    content_type_conformance,
    response_headers_conformance,
]


@dataclass(frozen=True)
class Finding:
    operation: str
    status: int
    problems: tuple[str, ...]
    credential: str
    replay: str

    def __str__(self) -> str:
        return (
            f"{self.operation} -> {self.status} ({'; '.join(self.problems)}) with {self.credential}:\n"
            f"    {self.replay}"
        )


@dataclass
class Ledger:
    """What the fuzzing sent and what it found, per operation."""

    calls: Counter[str] = field(default_factory=Counter)
    statuses: Counter[tuple[str, int]] = field(default_factory=Counter)
    findings: dict[tuple[str, int, tuple[str, ...], str], Finding] = field(default_factory=dict)

    def record(self, case: Any, status: int, credential: str, failure: FailureGroup | None) -> None:
        label = case.operation.label
        self.calls[label] += 1
        self.statuses[label, status] += 1
        if failure is not None:
            problems = tuple(sorted({problem.title for problem in failure.exceptions}))
            key = (label, status, problems, credential)
            if key not in self.findings:
                replay = case.as_curl_command(headers=headers_for(credential))
                self.findings[key] = Finding(label, status, problems, credential, replay)

    def summary(self, service: str, operations: list[str]) -> str:
        lines = [f"{service}: {sum(self.calls.values())} calls over {len(operations)} operations"]
        for label in operations:
            answers = sorted((status, n) for (called, status), n in self.statuses.items() if called == label)
            lines.append(f"  {label}: " + ", ".join(f"{status} x{n}" for status, n in answers))
        return "\n".join(lines)


def headers_for(credential: str) -> dict[str, str]:
    value = AUTHORIZATION[credential]
    return {} if value is None else {"Authorization": value}


def exercise(schema: Any, base_url: str, ledger: Ledger) -> None:
    """Send every operation its examples, its coverage cases and its generated cases."""
    session = requests.Session()

    def send(case: Any, credential: str) -> None:
        response = case.call(base_url=base_url, session=session, headers=headers_for(credential), timeout=60)
        failure = None
        try:
            case.validate_response(response, checks=CHECKS)
        except FailureGroup as exc:
            failure = exc
        ledger.record(case, response.status_code, credential, failure)

    budget = settings(
        max_examples=EXAMPLES_PER_MODE,
        derandomize=True,
        database=None,
        deadline=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
        verbosity=Verbosity.quiet,
    )
    for result in schema.get_all_operations():
        operation = result.ok()
        examples = operation.get_strategies_from_examples()
        if examples:
            draw(
                settings(budget, max_examples=2 * len(examples)), st.one_of(examples), ("admin token",), send
            )
        for case in schema.iter_coverage_cases(
            operation,
            generation_modes=list(GenerationMode),
            generation_config=schema.config.generation_for(operation=operation, phase="coverage"),
        ):
            send(case, "admin token")
        draw(budget, operation.as_strategy(generation_mode=GenerationMode.POSITIVE), CREDENTIALS, send)
        try:
            draw(budget, operation.as_strategy(generation_mode=GenerationMode.NEGATIVE), CREDENTIALS, send)
        except Unsatisfiable:
            pass  # nothing in the operation can be invalid (no parameters, no body)
    session.close()


def draw(
    budget: settings,
    cases: st.SearchStrategy[Any],
    credentials: tuple[str, ...],
    send: Callable[[Any, str], None],
) -> None:
    @budget
    @given(case=cases, credential=st.sampled_from(credentials))
    def each(case: Any, credential: str) -> None:
        send(case, credential)

    each()


def documented_operations(schema: Any) -> Iterator[str]:
    for result in schema.get_all_operations():
        yield result.ok().label


@pytest.mark.parametrize("service", SERVICES)
async def test_no_generated_request_gets_a_server_error_or_an_undocumented_status(
    service: str, infra: Any, tmp_path: Path
) -> None:
    async with running_services(
        infra,
        [service],
        log_dir=tmp_path,
        isolation=isolation_key(),
        extra_env={"CRM_API_TOKENS": ",".join(f"{token}:{scope}" for token, scope in TOKENS.items())},
    ) as services:
        base_url = services[service].base_url
        schema = schemathesis.openapi.from_url(f"{base_url}/openapi.json", timeout=30)
        ledger = Ledger()
        await asyncio.to_thread(exercise, schema, base_url, ledger)

    operations = list(documented_operations(schema))
    print(ledger.summary(service, operations))
    # Not vacuous: every documented operation was called many times, and the answers show that
    # requests got through to the routes (2xx) as well as being refused (401, 422).
    assert len(operations) >= 10, operations
    too_few = {
        label: ledger.calls[label] for label in operations if ledger.calls[label] < MIN_CALLS_PER_OPERATION
    }
    assert too_few == {}
    statuses = {status for _, status in ledger.statuses}
    assert any(200 <= status < 300 for status in statuses) and {401, 422} <= statuses, sorted(statuses)

    found = sorted(ledger.findings.values(), key=lambda finding: (finding.operation, finding.status))
    assert not found, f"{len(found)} findings on {service}:\n" + "\n".join(map(str, found))
