"""Reproduce the Rust server's stall once the data outgrows the WiredTiger cache.

Starts ``secantusd-rs`` on a loopback port with the given cache, then writes leads the way the
leads import does: one transaction per 500-row chunk (read the job, insert 500 leads under the
leads service's indexes and 500 outbox events, update the job, delete the chunk), beside an
outbox relay deleting sent events and a poller doing ``findAndModify`` on the jobs. Prints
every chunk, relay or poller call slower than 5 s and a result line; stops the server by pid.

    flock /tmp/crm-heavy.lock timeout 600 uv run --frozen python \\
        deploy/local/repro/rust_cache_stall.py --rows 100000 --cache 128M

Seen with secantusd-rs 0.5.3-beta.196 on 2 cores: ``--cache 128M`` stalls at ~62,000-70,000 rows
(every operation waits ~60 s, then the open transactions fail with
``Internal("transaction already closed")``, again and again), also with
``--oplog-max-entries 20000`` or ``--checkpoint-seconds 10``; 256M and 1G get through 200,000
of these (smaller than real) leads.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import tempfile
import threading
import time
import uuid
from datetime import UTC, datetime
from typing import Any

from pymongo import ASCENDING, DESCENDING, MongoClient
from pymongo.errors import PyMongoError

CHUNK = 500
Doc = dict[str, Any]


def lead(n: int) -> Doc:
    now = datetime.now(UTC)
    email = f"person{n}@company{n % 997}.example"
    return {
        "_id": str(uuid.uuid4()),
        "source_system": "repro",
        "external_id": f"EXP-{n:07d}",
        "person": {"first_name": f"First{n}", "last_name": f"Last{n}", "email": email},
        "company": {"name": f"Company {n % 997}", "size": 10 + n % 5000},
        "email_normalised": email,
        "company_domain": f"company{n % 997}.example",
        "name_key": f"first{n} last{n}",
        "search_terms": [f"first{n}", f"last{n}", f"person{n}", f"company{n % 997}", "example"],
        "status": "new",
        "captured_at": now,
        "score": n % 100,
        "updated_at": now,
        "scoring_rules_version": 1,
    }


def leads_indexes(client: MongoClient[Doc]) -> None:
    leads = client.repro.leads
    leads.create_index([("source_system", ASCENDING), ("external_id", ASCENDING)], unique=True)
    leads.create_index([("email_normalised", ASCENDING)], sparse=True)
    leads.create_index([("phone_key", ASCENDING)], sparse=True)
    leads.create_index([("company_domain", ASCENDING), ("name_key", ASCENDING)], sparse=True)
    leads.create_index([("search_terms", ASCENDING)])
    leads.create_index([("status", ASCENDING), ("captured_at", DESCENDING)])
    for field in ("captured_at", "score", "updated_at"):
        leads.create_index([(field, ASCENDING), ("_id", ASCENDING)])
    leads.create_index([("scoring_rules_version", ASCENDING), ("status", ASCENDING)])
    client.repro.outbox.create_index([("created_at", ASCENDING)])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--cache", default="128M", help="--cache-size of secantusd-rs")
    parser.add_argument("--port", type=int, default=27991)
    parser.add_argument("--seconds", type=float, default=300, help="stop after this long")
    args, server_flags = parser.parse_known_args()
    started = time.monotonic()

    def say(message: str) -> None:
        print(f"[{time.monotonic() - started:6.1f}s] {message}", flush=True)

    data = tempfile.mkdtemp(prefix="rust-cache-stall-")
    binary = os.path.expanduser("~/.cargo/bin/secantusd-rs")
    command = [binary, "--port", str(args.port), "--storage-path", f"{data}/data", "--log-file-max", "16MB"]
    with open(f"{data}/server.log", "w") as log:
        server = subprocess.Popen(
            [*command, "--cache-size", args.cache, *server_flags], stdout=log, stderr=log
        )
    stop = threading.Event()
    try:
        client: MongoClient[Doc] = MongoClient(f"mongodb://127.0.0.1:{args.port}/?directConnection=true")
        client.admin.command("ping")
        db = client.repro
        leads_indexes(client)
        db.jobs.insert_one({"_id": "job", "owner": "me", "processed": 0})
        chunks = (args.rows + CHUNK - 1) // CHUNK
        for i in range(chunks):
            rows = [
                {"external_id": f"EXP-{n:07d}", "raw": "y" * 150} for n in range(i * CHUNK, (i + 1) * CHUNK)
            ]
            db.import_chunks.insert_one({"_id": i, "rows": rows})

        def relay() -> None:
            while not stop.is_set():
                begun = time.monotonic()
                try:
                    sent = [e["_id"] for e in db.outbox.find({}, {"_id": 1}).sort("created_at", 1).limit(200)]
                    if sent:
                        db.outbox.delete_many({"_id": {"$in": sent}})
                    else:
                        stop.wait(0.05)
                except PyMongoError as exc:
                    say(f"relay: {type(exc).__name__}")
                if time.monotonic() - begun > 5:
                    say(f"relay call took {time.monotonic() - begun:.1f}s")

        def poller() -> None:
            while not stop.is_set():
                begun = time.monotonic()
                try:
                    db.jobs.find_one_and_update({"owner": None}, {"$set": {"owner": "other"}})
                except PyMongoError as exc:
                    say(f"poller: {type(exc).__name__}")
                if time.monotonic() - begun > 5:
                    say(f"poller findAndModify took {time.monotonic() - begun:.1f}s")
                stop.wait(1.0)

        for target in (relay, poller):
            threading.Thread(target=target, daemon=True).start()

        done, failures, i = 0, 0, 0
        while i < chunks and time.monotonic() - started < args.seconds:
            begun = time.monotonic()
            try:
                with client.start_session() as session, session.start_transaction():
                    db.jobs.find_one({"_id": "job", "owner": "me"}, session=session)
                    chunk = db.import_chunks.find_one({"_id": i}, session=session) or {"rows": []}
                    docs = [lead(i * CHUNK + k) for k in range(len(chunk["rows"]))]
                    db.leads.insert_many(docs, session=session)
                    events = [
                        {"_id": str(uuid.uuid4()), "created_at": datetime.now(UTC), "payload": d}
                        for d in docs
                    ]
                    db.outbox.insert_many(events, session=session)
                    db.jobs.update_one({"_id": "job"}, {"$inc": {"processed": len(docs)}}, session=session)
                    db.import_chunks.delete_one({"_id": i}, session=session)
            except PyMongoError as exc:
                failures += 1
                say(f"chunk {i} failed after {time.monotonic() - begun:.1f}s: {str(exc)[:90]}")
                continue
            done, i = done + len(docs), i + 1
            if time.monotonic() - begun > 5:
                say(f"chunk {i} (to {done:,} rows) took {time.monotonic() - begun:.1f}s")
        say(f"RESULT cache={args.cache} rows={done:,} failed_chunk_transactions={failures}")
    finally:
        stop.set()
        server.terminate()
        try:
            server.wait(15)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(5)


if __name__ == "__main__":
    main()
