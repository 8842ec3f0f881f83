"""Deltas the merger set aside: ``python -m crm_reporting.set_aside list | retry [ID ...]``.

``list`` prints one JSON line per delta set aside in the live generation (id, when, error,
reason, events it holds); ``retry`` puts them (all, or the ids given) back into the delta log
after a fix, where the running service's merger applies them, or sets them aside again if they
still fail. Settings come from the environment like the service's (``CRM_*``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
from typing import Any

from bson import ObjectId
from crm_runtime.mongo import create_client

from .bootstrap import ReportingSettings
from .repository import ReportingRepository


def _delta_id(text: str) -> Any:
    return ObjectId(text) if ObjectId.is_valid(text) else text


async def run(settings: ReportingSettings, command: str, ids: list[str]) -> list[dict[str, Any]]:
    client = create_client(settings)
    try:
        generation = await ReportingRepository(client, client[settings.database_name]).live()
        if command == "list":
            return [
                {
                    "id": str(doc["_id"]),
                    "generation": generation.number,
                    "set_aside_at": doc["set_aside_at"].isoformat(),
                    "error": doc["error"],
                    "reason": doc["reason"],
                    "events": doc["events"],
                }
                for doc in await generation.set_aside_list()
            ]
        wanted = [_delta_id(text) for text in ids] or None
        return [
            {"retried": await generation.retry_set_aside(client, wanted), "generation": generation.number}
        ]
    finally:
        await client.close()


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m crm_reporting.set_aside",
        description="List the view deltas the merger set aside, or put them back to be merged.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("list", help="one JSON line per delta set aside")
    retry = commands.add_parser("retry", help="put deltas set aside back into the delta log")
    retry.add_argument("ids", nargs="*", help="the deltas to retry (default: all)")
    args = parser.parse_args()
    for line in asyncio.run(run(ReportingSettings(), args.command, getattr(args, "ids", []))):
        print(json.dumps(line))


if __name__ == "__main__":
    main()
