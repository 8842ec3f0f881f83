"""Import jobs through HTTP, as a migration would run them: ``./crm import`` of a generated
file into the service run as a real process (``python -m crm_<service>``).

    ./crm bench imports [--rows 10000] [--kind leads|accounts]

Prints the time to the 202 (the upload and its chunks stored), the job's rows/s, the time from
upload to the end, and the service's peak RSS (VmHWM from /proc) during the import.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import subprocess
import sys
import time
import uuid
from pathlib import Path

import orjson
from crm_localinfra.testing import running_services
from harness import BenchInfra, peak_rss_mb, run_bounded

DEADLINE_SECONDS = 1800
SERVICE_OF = {"leads": "leads", "accounts": "opportunities"}


def leads_file(path: Path, rows: int) -> None:
    """Deterministic leads of a CRM export: a person, a company, a source and a date each."""
    sources = ["web", "event", "referral", "partner", "email", "paid_search"]
    with path.open("wb") as out:
        for n in range(1, rows + 1):
            record = {
                "external_id": f"EXP-{n:07d}",
                "captured_at": f"2023-{1 + n % 12:02d}-{1 + n % 28:02d}T09:00:00Z",
                "lead_source": sources[n % len(sources)],
                "person": {
                    "first_name": f"First{n}",
                    "last_name": f"Last{n}",
                    "email": f"person{n}@company{n % 997}.example",
                },
                "company": {"name": f"Company {n % 997}", "size": 10 + n % 5000},
            }
            out.write(orjson.dumps(record) + b"\n")


def accounts_file(path: Path, rows: int) -> None:
    """Deterministic accounts of a CRM export, with domains, countries (names and codes) and
    revenue: the last tenth are parent companies and every other account is a subsidiary of one
    of them listed before it, so that nine rows in ten wait for the end of the file."""
    countries = ["Germany", "FR", "United Kingdom", "US", "Netherlands", "ES"]
    parents = max(1, rows // 10)
    first_parent = rows - parents + 1
    with path.open("wb") as out:
        for n in range(1, rows + 1):
            record: dict[str, object] = {
                "external_id": f"ACC-{n:07d}",
                "name": f"Company {n}",
                "domain": f"company{n}.example",
                "country": countries[n % len(countries)],
                "year_established": 1950 + n % 70,
                "annual_revenue": f"{1000 * (n % 5000)}.00",
                "annual_revenue_currency": "EUR",
                "created_at": f"2021-{1 + n % 12:02d}-{1 + n % 28:02d}T09:00:00Z",
            }
            if n < first_parent:
                record["parent_external_id"] = f"ACC-{first_parent + n % parents:07d}"
            out.write(orjson.dumps(record) + b"\n")


FILES = {"leads": leads_file, "accounts": accounts_file}


async def run(infra: BenchInfra, root: Path, kind: str, rows: int) -> None:
    upload = root / f"{kind}.ndjson"
    FILES[kind](upload, rows)
    isolation = f"b{uuid.uuid4().hex[:8]}."
    service = SERVICE_OF[kind]
    async with running_services(infra, [service], log_dir=root / "logs", isolation=isolation) as services:
        running = services[service]
        before = peak_rss_mb(running.pid)
        command = [
            str(Path(sys.executable).parent / "crm-import"),
            str(upload),
            "--kind",
            kind,
            "--url",
            running.base_url,
            "--source-system",
            "bench",
        ]
        started = time.monotonic()
        done = await asyncio.to_thread(subprocess.run, command, capture_output=True, text=True)
        wall = time.monotonic() - started
        peak = peak_rss_mb(running.pid)
    uploaded = re.search(r"uploaded \S+ in ([\d.]+)s", done.stderr)
    print(f"{kind}: {rows:,} rows, {upload.stat().st_size / 1e6:.1f} MB NDJSON, service as a real process")
    print(f"  ./crm import exit {done.returncode}")
    print("  " + done.stdout.strip().replace("\n", "\n  "))
    print(f"  time to 202 (upload + chunks stored): {uploaded.group(1) if uploaded else '?'}s")
    print(f"  upload to end: {wall:.1f}s = {rows / wall:,.0f} rows/s end to end")
    print(f"  service peak RSS: {before:.0f} MB at start, {peak:.0f} MB after" if peak and before else "")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=10_000, help="rows in the file (at most 200000)")
    parser.add_argument("--kind", choices=sorted(SERVICE_OF), default="leads")
    args = parser.parse_args()
    rows = max(1, min(args.rows, 200_000))

    async def work(infra: BenchInfra, root: Path) -> None:
        await run(infra, root, args.kind, rows)

    run_bounded("imports", work, deadline_seconds=DEADLINE_SECONDS)


if __name__ == "__main__":
    main()
