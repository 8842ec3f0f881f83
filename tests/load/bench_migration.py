"""A migration from another CRM through the public HTTP interfaces, timed per phase and end
to end, beside the bare database and broker baselines measured in the same run.

    ./crm bench migration [--leads 10000] [--opportunities 10000] [--phases setup,leads,...]
                          [--no-line-items] [--accountless-share 0.05] [--seed 11]

The export (``migration_data``: leads, accounts with parents in any order, contacts with
roles, opportunities with line items and whole stage histories, the catalogue) is generated
deterministically from the seed and streamed to NDJSON files first. Then the leads,
opportunities and reporting services run as real processes on Kafka and SecantusDB started
here (loopback, free ports), and the phases run in order:

- setup: products (``POST /products``), sales teams (``POST /sales-teams``) and a renewals
  pipeline (``POST /pipelines``) beside the default one;
- leads, accounts, contacts, opportunities: each file uploaded to ``POST /imports/<object>``
  (an import job: 202, then ``GET /imports/{id}`` until it ends; a service still answering
  200 with a per-row report is timed the same way), and the phase ends when the service's
  outbox is empty, i.e. every event of the phase is on Kafka;
- reporting: until reporting has applied everything: its views show the imported figures
  (funnel: leads captured; win/loss: opportunities created, won and lost; pipeline: open
  ones), and a /metrics read taken after the last event reached Kafka shows consumer lag 0
  and ``crm_reporting_pending_events`` 0.

Printed per phase and end to end (first upload to reporting done): records/s, events/s (records
on the run's topics), CPU seconds per 1,000 records of each process (/proc/<pid>/stat), peak
RSS of each (sampled VmRSS; VmHWM for the whole run), the longest HTTP request and the time to
the first visible progress of each import. Then the baselines: the stored documents copied with
``insert_many`` (1,000 per call) into the same database server, and as many events as the run
produced (sampled from its topics) produced and consumed on the same broker, and the figures
the issue sets. Bounded in rows (at most 200,000 per kind) and time (``--deadline``); every
process it started is stopped by pid.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import functools
import io
import itertools
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import httpx
from aiokafka import AIOKafkaConsumer
from crm_leads.repository import LEADS
from crm_localinfra.import_cli import ACTIVE, file_pieces, progress_line
from crm_localinfra.testing import RunningService, running_services, service_env
from crm_opportunities.repository import ACCOUNTS, CONTACTS, OPPORTUNITIES
from crm_runtime.outbox import OUTBOX
from harness import BenchInfra, peak_rss_mb, produce_and_consume, run_bounded
from migration_data import (
    RENEWALS_PIPELINE,
    SOURCE_SYSTEM,
    MigrationShape,
    Row,
    account_rows,
    contact_rows,
    lead_rows,
    opportunity_rows,
    outcome_of,
    products,
    sales_teams,
    write_ndjson,
)
from migration_probe import ProcessWatch, TimedHttp, TopicCounter, metrics
from migration_report import IMPORTS, Baselines, Phase, report
from pymongo import AsyncMongoClient

MAX_ROWS = 200_000
POLL_SECONDS = 0.2
POLL_TIMEOUT = 30.0  # a status request unanswered this long is noted and sent again
PROGRESS_SECONDS = 5.0  # how often an import's progress is shown on stderr
SETTLE_SECONDS = 3.0  # two lag measurements (every second) after the last event reached Kafka
KAFKA_SAMPLE = 2_000
INSERT_BATCH = 1_000
PHASES = ("setup", *IMPORTS, "reporting")
SERVICE_OF = {"setup": "opportunities", "leads": "leads", **{kind: "opportunities" for kind in IMPORTS[1:]}}
COLLECTION_OF = {"leads": LEADS, "accounts": ACCOUNTS, "contacts": CONTACTS, "opportunities": OPPORTUNITIES}
ROWS_OF: dict[str, Callable[[MigrationShape], Iterator[Row]]] = {
    "leads": lead_rows,
    "accounts": account_rows,
    "contacts": contact_rows,
    "opportunities": opportunity_rows,
}


class Stack:
    """The running services, one HTTP client to all, and what watches them."""

    def __init__(
        self,
        infra: BenchInfra,
        services: dict[str, RunningService],
        isolation: str,
        http: TimedHttp,
        topics: TopicCounter,
        watch: ProcessWatch,
        mongo: AsyncMongoClient[dict[str, Any]],
    ) -> None:
        self.infra, self.services, self.isolation = infra, services, isolation
        self.http, self.topics, self.watch, self.mongo = http, topics, watch, mongo

    def url(self, service: str, path: str) -> str:
        return self.services[service].base_url + path

    def database(self, service: str) -> str:
        return str(service_env(self.infra, service, isolation=self.isolation)["mongo_database"])

    async def outbox_drained(self, service: str, deadline: float) -> None:
        """Every event the service committed is on Kafka: the relay deletes an outbox entry only
        once Kafka acknowledged it."""
        outbox = self.mongo[self.database(service)][OUTBOX]
        while await outbox.count_documents({}, limit=1):
            _check(deadline, f"{service}'s outbox to drain")
            await asyncio.sleep(POLL_SECONDS)


def _check(deadline: float, what: str) -> None:
    if time.monotonic() > deadline:
        raise TimeoutError(f"gave up waiting for {what}")


async def measured(stack: Stack, name: str, work: Callable[[Phase], Awaitable[None]]) -> Phase:
    """Run one phase: its duration, the events it put on the topics, each process's CPU and
    peak RSS, and its longest HTTP request."""
    phase = Phase(name)
    stack.http.reset()
    events_before = await stack.topics.total()
    started = time.perf_counter()
    with stack.watch.phase(phase.usage):
        await work(phase)
        phase.seconds = time.perf_counter() - started
    phase.events = await stack.topics.total() - events_before
    phase.longest = stack.http.reset()
    return phase


async def set_up_catalogue(stack: Stack, shape: MigrationShape, phase: Phase, deadline: float) -> None:
    """Products, sales teams and the renewals pipeline, one POST each, as an admin would."""
    bodies = [
        *(("/products", body) for body in products(shape)),
        *(("/sales-teams", body) for body in sales_teams(shape)),
        ("/pipelines", RENEWALS_PIPELINE),
    ]
    for path, body in bodies:
        response = await stack.http.request("POST", stack.url("opportunities", path), json=body)
        if response.status_code != 201:
            raise SystemExit(f"setup: POST {path} answered {response.status_code}: {response.text[:500]}")
    phase.records, phase.mode = len(bodies), "POST per record"
    await stack.outbox_drained("opportunities", deadline)


async def _pieces(path: Path) -> AsyncIterator[bytes]:
    for piece in file_pieces(path):  # the upload is streamed, never read whole
        yield piece


async def import_file(stack: Stack, kind: str, path: Path, phase: Phase, deadline: float) -> None:
    """Upload the file as an import job and follow it until it ends (a synchronous 200 with a
    per-row report is taken as it is), then wait until the phase's events are on Kafka."""
    service = SERVICE_OF[kind]
    started = time.perf_counter()
    response = await stack.http.request(
        "POST",
        stack.url(service, f"/imports/{kind}"),
        params={"source_system": SOURCE_SYSTEM},
        content=_pieces(path),
        headers={"content-type": "application/x-ndjson"},
        timeout=httpx.Timeout(60.0, read=None, write=None),  # the run's deadline bounds it
    )
    if response.status_code == 200:
        phase.mode = "synchronous: 200 + per-row report"
        rows = response.json()["rows"]
        failed = [row for row in rows if row["status"] == "failed"]
        phase.records, phase.rejected = len(rows), len(failed)
        phase.rejected_ids = {row["external_id"] for row in failed if row.get("external_id")}
        phase.reasons = [
            f"{problem['field']}: {problem['reason']}" for row in failed for problem in row["problems"][:1]
        ]
    elif response.status_code == 202:
        phase.mode = "import job: 202, then GET /imports/{id}"
        await follow_job(stack, service, kind, response, started, phase, deadline)
    else:
        raise SystemExit(f"POST /imports/{kind} answered {response.status_code}: {response.text[:500]}")
    await stack.outbox_drained(service, deadline)


async def follow_job(
    stack: Stack,
    service: str,
    kind: str,
    accepted: httpx.Response,
    started: float,
    phase: Phase,
    deadline: float,
) -> None:
    """Poll the job until it ends, noting when its progress first shows; a status request the
    service leaves unanswered counts as held that long, and polling goes on."""
    job = accepted.json()
    location = accepted.headers.get("location", f"/imports/{job['id']}")
    shown = time.perf_counter()
    while True:
        if phase.first_progress is None and job["processed"] > 0:
            phase.first_progress = time.perf_counter() - started
        if job["state"] not in ACTIVE:
            break
        if time.perf_counter() - shown >= PROGRESS_SECONDS:
            print(f"  {kind}: {progress_line(job)}", file=sys.stderr, flush=True)
            shown = time.perf_counter()
        _check(deadline, f"the {kind} import")
        await asyncio.sleep(POLL_SECONDS)
        try:
            job = (await stack.http.request("GET", stack.url(service, location))).json()
        except httpx.TimeoutException:
            print(f"  {kind}: GET {location} unanswered for {POLL_TIMEOUT} s", file=sys.stderr, flush=True)
    if job["state"] != "done":
        raise SystemExit(f"the {kind} import ended {job['state']}: {job.get('error')}")
    phase.records, phase.rejected = job["file_rows"], job["rejected"]
    if job["rejected"]:
        await rejections(stack, service, job["rejections"], phase)


async def rejections(stack: Stack, service: str, path: str, phase: Phase) -> None:
    response = await stack.http.request("GET", stack.url(service, path))
    for line in csv.DictReader(io.StringIO(response.text)):
        phase.rejected_ids.add(line["external_id"])
        phase.reasons.append(f"{line['column']}: {line['reason']}")


def expected_figures(shape: MigrationShape, done: dict[str, Phase]) -> dict[str, int]:
    """What reporting's views must show once they applied the imported rows (the rejected ones
    left out: the generator gives the same rows again)."""
    figures: dict[str, int] = {}
    if "leads" in done:
        figures["funnel: leads captured"] = done["leads"].records - done["leads"].rejected
    if "opportunities" in done:
        rejected = done["opportunities"].rejected_ids
        outcomes = [outcome_of(row) for row in opportunity_rows(shape) if row["external_id"] not in rejected]
        figures["win/loss: opportunities created"] = len(outcomes)
        figures["win/loss: won"] = outcomes.count("won")
        figures["win/loss: lost"] = outcomes.count("lost")
        figures["pipeline: open opportunities"] = outcomes.count("open")
    return figures


async def report_figures(stack: Stack) -> dict[str, int]:
    async def rows(path: str, **params: str) -> list[dict[str, Any]]:
        response = await stack.http.request("GET", stack.url("reporting", path), params=params)
        response.raise_for_status()
        found: list[dict[str, Any]] = response.json()["rows"]
        return found

    funnel, win_loss = await rows("/reports/funnel"), await rows("/reports/win-loss")
    pipeline = await rows("/reports/pipeline", group_by="pipeline")
    return {
        "funnel: leads captured": sum(row["captured"] for row in funnel),
        "win/loss: opportunities created": sum(row["opportunities_created"] for row in win_loss),
        "win/loss: won": sum(row["won"] for row in win_loss),
        "win/loss: lost": sum(row["lost"] for row in win_loss),
        "pipeline: open opportunities": sum(row["count"] for row in pipeline),
    }


async def reporting_applied(stack: Stack, expected: dict[str, int], phase: Phase, deadline: float) -> None:
    """Every import phase waited for its events to reach Kafka; reporting has applied them all
    when its views show the expected figures and a lag measurement taken since shows nothing
    left to consume or to merge."""
    drained_at = time.monotonic()
    matched_after: float | None = None
    seen: dict[str, int] = {}
    while True:
        try:
            seen = await report_figures(stack)
        except httpx.TimeoutException:  # noted as the phase's longest request; asked again below
            seen = dict.fromkeys(expected, -1) | seen
        if all(seen[name] == value for name, value in expected.items()):
            if matched_after is None:
                matched_after = time.monotonic() - drained_at
            if time.monotonic() - drained_at >= SETTLE_SECONDS:
                figures = await metrics(stack.http, stack.url("reporting", ""))
                lag = figures.get("crm_consumer_lag")
                if lag == 0 and figures.get("crm_reporting_pending_events") == 0:
                    phase.mode = (
                        f"views showed the imported figures after {matched_after:.1f} s; lag 0, pending 0"
                    )
                    return
        if time.monotonic() > deadline:
            differences = {
                name: (seen[name], value) for name, value in expected.items() if seen[name] != value
            }
            raise TimeoutError(f"reporting did not apply everything in time; (seen, expected): {differences}")
        await asyncio.sleep(POLL_SECONDS)


async def database_baseline(stack: Stack, kinds: Iterable[str]) -> tuple[int, float]:
    """The documents the services stored, copied with insert_many into a fresh database of
    the same server: (documents, seconds spent in insert_many)."""
    scratch = f"bench_baseline_{uuid.uuid4().hex[:8]}"
    copied, seconds = 0, 0.0
    try:
        for kind in kinds:
            source = stack.mongo[stack.database(SERVICE_OF[kind])][COLLECTION_OF[kind]]
            target = stack.mongo[scratch][COLLECTION_OF[kind]]
            cursor = source.find(batch_size=INSERT_BATCH)
            while batch := await cursor.to_list(INSERT_BATCH):
                started = time.perf_counter()
                await target.insert_many(batch, ordered=False)
                seconds += time.perf_counter() - started
                copied += len(batch)
    finally:
        await stack.mongo.drop_database(scratch)
    return copied, seconds


async def kafka_baseline(stack: Stack, events: int) -> tuple[int, float, float]:
    """As many events as the run produced, sampled from its topics, produced to a bare topic
    and consumed back: (events, average bytes, seconds)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=stack.infra.kafka_bootstrap, enable_auto_commit=False)
    await consumer.start()
    sample: list[tuple[bytes, bytes]] = []
    try:
        partitions = await stack.topics.partitions()
        consumer.assign(partitions)
        await consumer.seek_to_beginning()
        ends = await consumer.end_offsets(partitions)
        while len(sample) < KAFKA_SAMPLE and [p for p in partitions if await consumer.position(p) < ends[p]]:
            for records in (await consumer.getmany(timeout_ms=500, max_records=500)).values():
                sample += [(record.key or b"", record.value or b"") for record in records]
    finally:
        await consumer.stop()
    if not sample or not events:
        return 0, 0.0, 0.0
    messages = list(itertools.islice(itertools.cycle(sample), events))
    size = sum(len(value) for _, value in sample) / len(sample)
    return events, size, await produce_and_consume(stack.infra.kafka_bootstrap, messages)


def generate(root: Path, shape: MigrationShape, kinds: Iterable[str]) -> dict[str, Path]:
    """The export's files, written before anything is timed."""
    paths = {}
    for kind in kinds:
        paths[kind] = root / f"{kind}.ndjson"
        write_ndjson(paths[kind], ROWS_OF[kind](shape))
    return paths


async def run_phases(
    stack: Stack, shape: MigrationShape, chosen: list[str], files: dict[str, Path], deadline: float
) -> AsyncIterator[Phase]:
    """The chosen phases in migration order, each as it ends."""
    if "setup" in chosen:
        yield await measured(
            stack, "setup", functools.partial(set_up_catalogue, stack, shape, deadline=deadline)
        )
    done: dict[str, Phase] = {}
    for kind, path in files.items():
        print(f"importing {kind} ...", flush=True)
        done[kind] = await measured(
            stack, kind, functools.partial(import_file, stack, kind, path, deadline=deadline)
        )
        yield done[kind]
    if "reporting" in chosen:
        print("waiting for reporting ...", flush=True)
        expected = expected_figures(shape, done)
        yield await measured(
            stack, "reporting", functools.partial(reporting_applied, stack, expected, deadline=deadline)
        )


async def run(
    infra: BenchInfra, root: Path, shape: MigrationShape, chosen: list[str], deadline_seconds: float
) -> None:
    deadline = time.monotonic() + deadline_seconds
    imports = [kind for kind in IMPORTS if kind in chosen]
    files = generate(root, shape, imports)
    names = [
        service
        for service in ("leads", "opportunities", "reporting")
        if (service == "reporting" and "reporting" in chosen)
        or any(SERVICE_OF[phase] == service for phase in chosen if phase in SERVICE_OF)
    ]
    isolation = f"m{uuid.uuid4().hex[:8]}."
    mongo: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(infra.mongo_url, tz_aware=True)
    phases: list[Phase] = []
    stopped: str | None = None
    baselines = Baselines(0, 0.0, 0, 0.0, 0.0)
    try:
        async with (
            running_services(infra, names, log_dir=root / "logs", isolation=isolation) as services,
            httpx.AsyncClient(timeout=POLL_TIMEOUT) as client,
            TopicCounter(infra.kafka_bootstrap, infra.topic_prefix + isolation) as topics,
        ):
            pids = {name: service.pid for name, service in services.items()}
            servers = (("secantusdb", infra.mongo_pid), ("kafka", infra.kafka_pid))
            pids |= {name: pid for name, pid in servers if pid}
            watch = ProcessWatch(pids)
            stack = Stack(infra, services, isolation, TimedHttp(client), topics, watch, mongo)
            async with watch.running():
                try:
                    async for phase in run_phases(stack, shape, chosen, files, deadline):
                        phases.append(phase)
                except TimeoutError as exc:  # the figures so far are still worth printing
                    stopped = str(exc)
            whole_run_peaks = {name: peak_rss_mb(pid) for name, pid in pids.items()}
            if stopped is None:
                print("baselines ...", flush=True)
                stored, insert_seconds = await database_baseline(stack, imports)
                events = sum(phase.events for phase in phases)
                baselines = Baselines(stored, insert_seconds, *await kafka_baseline(stack, events))
    finally:
        if infra.mongo_pid is None:  # a server given from outside keeps nothing of the run
            for service in names:
                await mongo.drop_database(
                    str(service_env(infra, service, isolation=isolation)["mongo_database"])
                )
        await mongo.close()
    report(shape, phases, whole_run_peaks, baselines)
    if stopped is not None:
        raise SystemExit(f"\nstopped before the end: {stopped}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--leads", type=int, default=10_000, help=f"lead rows (at most {MAX_ROWS:,})")
    parser.add_argument(
        "--opportunities", type=int, default=10_000, help=f"opportunity rows (at most {MAX_ROWS:,})"
    )
    parser.add_argument("--accounts", type=int, help="account rows (default: a quarter of the opportunities)")
    parser.add_argument("--contacts", type=int, help="contact rows (default: two per account)")
    parser.add_argument("--phases", default=",".join(PHASES), help=f"comma-separated, of {','.join(PHASES)}")
    parser.add_argument(
        "--no-line-items", action="store_true", help="opportunity rows without line items or sales team"
    )
    parser.add_argument(
        "--accountless-share", type=float, default=0.05, help="share of deals with no account"
    )
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--deadline", type=float, default=3600.0, help="seconds before the run gives up")
    args = parser.parse_args()
    chosen = [name.strip() for name in args.phases.split(",") if name.strip()]
    unknown = sorted(set(chosen) - set(PHASES))
    if unknown:
        parser.error(f"--phases: unknown phase(s) {', '.join(unknown)}; choose from {', '.join(PHASES)}")
    if not 0 <= args.accountless_share <= 1:
        parser.error("--accountless-share: give a share between 0 and 1")
    bounded = {name: max(1, min(getattr(args, name), MAX_ROWS)) for name in ("leads", "opportunities")}
    shape = MigrationShape.of(
        **bounded,
        accounts=min(args.accounts, MAX_ROWS) if args.accounts else None,
        contacts=min(args.contacts, MAX_ROWS) if args.contacts else None,
        seed=args.seed,
        line_items=not args.no_line_items,
        accountless_share=args.accountless_share,
    )
    chosen = [name for name in PHASES if name in chosen]  # always in migration order

    async def work(infra: BenchInfra, root: Path) -> None:
        await run(infra, root, shape, chosen, args.deadline)

    run_bounded("migration", work, deadline_seconds=args.deadline + 300)  # room for the baselines


if __name__ == "__main__":
    main()
