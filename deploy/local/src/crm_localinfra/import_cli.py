"""``crm-import`` (``./crm import``): upload a CSV or NDJSON file as an import job and follow it.

    ./crm import leads.csv --kind leads [--source-system old-crm] [--url BASE] [--token T]

The file is streamed (never read whole); the service answers 202 with the job at once, and
the job's progress is shown on stderr (a bar with rows/s and the time left on a terminal,
plain lines otherwise) until it ends. The summary goes to stdout with where the rejected rows
are. Exits 0 when the job is done (rejections or not), 1 when it failed or was cancelled, 2
when the upload was refused.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

import httpx

# kind -> (service's default port under ./crm up, object path)
KINDS: dict[str, tuple[int, str]] = {
    "leads": (8101, "leads"),
    "accounts": (8102, "accounts"),
    "contacts": (8102, "contacts"),
    "opportunities": (8102, "opportunities"),
    "members": (8103, "members"),
}
CONTENT_TYPES = {".csv": "text/csv", ".ndjson": "application/x-ndjson", ".jsonl": "application/x-ndjson"}
PIECE = 1 << 20
ACTIVE = ("queued", "running")


def file_pieces(path: Path) -> Iterator[bytes]:
    with path.open("rb") as file:
        while piece := file.read(PIECE):
            yield piece


def content_type_of(path: Path, given: str | None) -> str:
    if given:
        return CONTENT_TYPES.get(f".{given}", given)
    try:
        return CONTENT_TYPES[path.suffix.lower()]
    except KeyError:
        raise SystemExit(f"cannot tell the format of {path.name}: use --format csv|ndjson") from None


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    seconds = int(seconds)
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


def progress_line(job: dict[str, Any], *, width: int = 30) -> str:
    total = job.get("total") or job.get("file_rows") or 0
    done = job["processed"]
    share = done / total if total else 0.0
    bar = "#" * int(share * width) + "." * (width - int(share * width))
    rate = job.get("rate_per_second")
    return (
        f"[{bar}] {share:4.0%} {done:,}/{total:,} rows · "
        f"{f'{rate:,.0f}' if rate else '?'} rows/s · ETA {_duration(job.get('eta_seconds'))} · "
        f"{job['rejected']:,} rejected · {job['state']}"
    )


class Progress:
    """A bar redrawn in place on a terminal; a plain line per change otherwise."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.tty = stream.isatty()
        self._last = ""

    def show(self, job: dict[str, Any]) -> None:
        line = progress_line(job)
        if line == self._last:
            return
        self._last = line
        self.stream.write(f"\r{line}\x1b[K" if self.tty else f"{line}\n")
        self.stream.flush()

    def close(self) -> None:
        if self.tty and self._last:
            self.stream.write("\n")
            self.stream.flush()


def summary(job: dict[str, Any], base: str, waited: float) -> str:
    lines = [
        f"import {job['id']} ({job['object']} from {job['source_system']}): {job['state']}",
        f"  rows read {job['processed']:,} of {job['file_rows']:,}; applied {job['applied']:,}; "
        f"rejected {job['rejected']:,}",
        f"  {job['rate_per_second'] or 0:,.0f} rows/s; {waited:.1f}s from upload to end",
    ]
    if job.get("error"):
        lines.append(f"  error: {job['error']}")
    if job["rejected"]:
        lines.append(f"  rejections: {base}{job['rejections']}")
    return "\n".join(lines)


def run(args: argparse.Namespace, out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> int:
    port, path = KINDS[args.kind]
    base = (args.url or f"http://127.0.0.1:{port}").rstrip("/")
    path_file = Path(args.file)
    headers = {"content-type": content_type_of(path_file, args.format)}
    if args.token:
        headers["authorization"] = f"Bearer {args.token}"
    params = {"source_system": args.source_system} if args.source_system else {}
    with httpx.Client(
        base_url=base, headers={k: v for k, v in headers.items() if k == "authorization"}
    ) as http:
        started = time.monotonic()
        response = http.post(
            f"/imports/{path}",
            params=params,
            content=file_pieces(path_file),
            headers=headers,
            timeout=httpx.Timeout(60.0, write=None),
        )
        accepted = time.monotonic() - started
        if response.status_code != 202:
            err.write(f"the upload was refused ({response.status_code}): {response.text}\n")
            return 2
        job: dict[str, Any] = response.json()
        location = response.headers.get("location", f"/imports/{job['id']}")
        err.write(f"uploaded {path_file.name} in {accepted:.2f}s: import {job['id']}\n")
        progress = Progress(err)
        try:
            while job["state"] in ACTIVE:
                progress.show(job)
                time.sleep(args.interval)
                job = http.get(location, timeout=30).json()
            progress.show(job)
        finally:
            progress.close()
    out.write(summary(job, base, time.monotonic() - started) + "\n")
    return 0 if job["state"] == "done" else 1


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="crm import", description=__doc__.split("\n\n")[0])
    parser.add_argument("file", help="a .csv, .ndjson or .jsonl file")
    parser.add_argument("--kind", required=True, choices=sorted(KINDS))
    parser.add_argument("--source-system", help="the system the rows come from (their ids' namespace)")
    parser.add_argument(
        "--url", help="the service's base URL (default: the ./crm up port of that kind's service)"
    )
    parser.add_argument(
        "--token", default=os.environ.get("CRM_TOKEN"), help="bearer token (default $CRM_TOKEN)"
    )
    parser.add_argument("--format", choices=["csv", "ndjson"], help="when the file's extension does not say")
    parser.add_argument("--interval", type=float, default=0.5, help="seconds between progress reads")
    args = parser.parse_args(argv)
    try:
        sys.exit(run(args))
    except httpx.HTTPError as exc:
        sys.stderr.write(f"cannot reach the service: {exc}\n")
        sys.exit(2)
