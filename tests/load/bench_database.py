"""SecantusDB's two servers side by side: the Rust one (``secantusd-rs``, the default) and the
Python one (``secantusd-py``), each started here on a free loopback port with the same cache,
then the same operations the services do, with the same documents, through PyMongo.

    ./crm bench database [--docs 20000]

Prints per operation the rate on each server and the ratio. Both servers run in the same run
on the same machine, so the ratio is the figure to read; the rates move with the machine's load.
Stops both servers by pid whatever happens.
"""

from __future__ import annotations

import argparse
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from crm_localinfra import secantus_rs
from crm_localinfra._proc import free_ports
from crm_localinfra.mongo import MongoConfig, SecantusServer
from pymongo import MongoClient, UpdateOne

Doc = dict[str, Any]


def lead(i: int) -> Doc:
    return {
        "_id": f"lead-{i:07d}",
        "email": f"person{i}@example{i % 97}.com",
        "company": f"Company {i % 1000}",
        "source": ("web", "event", "partner", "ads")[i % 4],
        "score": i % 100,
        "version": 1,
        "outbox": [],
    }


def measure(client: MongoClient[Doc], docs: int, deadline: float) -> list[tuple[str, float, str]]:
    """(operation, rate, unit) for each kind of work, on a fresh database."""
    db = client["bench_database"]
    client.drop_database("bench_database")
    results: list[tuple[str, float, str]] = []

    def timed(name: str, count: int, unit: str, work: Callable[[], None]) -> None:
        if time.monotonic() > deadline:
            raise TimeoutError("benchmark deadline reached")
        started = time.perf_counter()
        work()
        results.append((name, count / (time.perf_counter() - started), unit))

    batch = [lead(i) for i in range(docs)]

    def inserts() -> None:
        for i in range(0, docs, 1000):
            db.leads.insert_many(batch[i : i + 1000])

    timed("insert_many, 1,000 per call", docs, "docs/s", inserts)
    db.leads.create_index("email")

    def upserts() -> None:
        for i in range(0, docs, 1000):
            db.counters.bulk_write(
                [
                    UpdateOne({"_id": f"c{j % 5000}"}, {"$inc": {"n": 1, "amount": j}}, upsert=True)
                    for j in range(i, min(i + 1000, docs))
                ],
                ordered=False,
            )

    timed("bulk upserts ($inc), 1,000 per call", docs, "ops/s", upserts)

    small = min(docs, 2000)

    def transactions() -> None:
        for i in range(small):
            with client.start_session() as session, session.start_transaction():
                db.leads.find_one({"email": f"person{i}@example{i % 97}.com"}, session=session)
                db.inbox.insert_one({"_id": f"event-{i}"}, session=session)

    timed("small transactions (find_one + insert_one)", small, "txn/s", transactions)

    def updates() -> None:
        for i in range(small):
            db.leads.update_one({"_id": f"lead-{i:07d}"}, {"$inc": {"version": 1}})

    timed("update_one by _id, one at a time", small, "ops/s", updates)
    ids = [f"lead-{i:07d}" for i in range(docs)]

    def reads() -> None:
        for i in range(0, docs, 500):
            db.leads.find({"_id": {"$in": ids[i : i + 500]}}).to_list()

    timed("$in reads, 500 ids per query", docs, "docs/s", reads)

    def groups() -> None:
        for _ in range(10):
            db.leads.aggregate([{"$group": {"_id": "$source", "n": {"$sum": 1}}}]).to_list()

    timed("$group by source (whole collection), 10 times", 10, "queries/s", groups)
    client.drop_database("bench_database")
    return results


def run(
    kind: secantus_rs.ServerKind, root: Path, docs: int, cache: str, deadline: float
) -> list[tuple[str, float, str]]:
    (port,) = free_ports(1)
    server = SecantusServer(MongoConfig(data_dir=root / kind, port=port, cache_size=cache, server=kind))
    print(f"starting SecantusDB's {kind} server on 127.0.0.1:{port} ...", file=sys.stderr)
    server.start()
    try:
        client: MongoClient[Doc] = MongoClient(server.url)
        try:
            return measure(client, docs, deadline)
        finally:
            client.close()
    finally:
        server.stop()  # by pid


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--docs", type=int, default=20_000)
    parser.add_argument("--cache", default="512M", help="WiredTiger cache of each server")
    parser.add_argument("--deadline", type=float, default=900.0, help="seconds before it gives up")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    secantus_rs.resolve("rust")
    root = Path(tempfile.mkdtemp(prefix="crm-bench-database-"))
    deadline = time.monotonic() + args.deadline
    try:
        rust = run("rust", root, args.docs, args.cache, deadline)
        python = run("python", root, args.docs, args.cache, deadline)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(f"SecantusDB {secantus_rs.VERSION} (Rust) vs the Python server, {args.docs:,} documents, same run")
    print(f"  {'operation':<46} {'rust':>12} {'python':>12} {'ratio':>7}")
    for (name, fast, unit), (_, slow, _) in zip(rust, python, strict=True):
        print(f"  {name:<46} {fast:>12,.0f} {slow:>12,.0f} {fast / slow:>6.1f}x  {unit}")


if __name__ == "__main__":
    main()
