"""A small service built on the runtime, for the HTTP tests that need no broker or database:
its MongoDB and Kafka addresses are loopback ports nothing listens on, so whatever reaches the
database fails fast, and ``written`` records what its routes would have stored."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

import httpx
from crm_localinfra._proc import free_port
from crm_runtime import ServiceRuntime, ServiceSettings
from crm_runtime.uploads import read_upload
from fastapi import APIRouter, Depends, FastAPI, HTTPException, Query, Request
from pydantic import BaseModel, Field
from pymongo import errors

TOKENS = "reader:read,writer:write,boss:admin,s\u00e9same:write"
LIMIT = 1024
SECRET = "mongodb://admin:hunter2@db.internal.example:27017"


class Note(BaseModel):
    text: str = Field(max_length=100_000)


class Page(BaseModel):
    offset: int = 0
    size: int = 10


def probe(*, tokens: str | None = TOKENS) -> tuple[FastAPI, list[Any]]:
    settings = ServiceSettings(
        service_name="probe",
        mongo_url=f"mongodb://127.0.0.1:{free_port()}/?directConnection=true",
        mongo_server_selection_timeout_ms=200,
        kafka_bootstrap_servers=f"127.0.0.1:{free_port()}",
        api_tokens=tokens,
        max_body_bytes=LIMIT,
        log_level="WARNING",
    )
    runtime = ServiceRuntime(settings)
    written: list[Any] = []
    router = APIRouter()
    write = [Depends(runtime.auth.require("write"))]

    @router.post("/notes", dependencies=write, status_code=201)
    async def add_note(note: Note) -> dict[str, str]:
        written.append(note.text)
        return {"text": note.text}

    @router.post("/imports", dependencies=write)
    async def import_rows(request: Request) -> dict[str, int]:
        records = read_upload(await request.body(), request.headers.get("content-type", ""))
        written.extend(records)
        return {"rows": len(records)}

    async def region_filter(region: str | None = None) -> str | None:
        return region

    @router.get("/notes")
    async def list_notes(
        q: str | None = None,
        tag: Annotated[list[str] | None, Query()] = None,
        day: Annotated[str | None, Query(alias="from")] = None,
        region: str | None = Depends(region_filter),
    ) -> dict[str, Any]:
        return {"q": q, "tag": tag, "from": day, "region": region}

    @router.get("/pages")
    async def pages(page: Annotated[Page, Query()]) -> Page:
        return page

    @router.get("/notes/count")
    async def count_notes() -> dict[str, int]:
        return {"count": await runtime.db["notes"].count_documents({})}

    @router.post("/notes/stored", status_code=201)
    async def store_note(note: Note) -> dict[str, str]:
        async def work(uow: Any) -> None:
            await runtime.db["notes"].insert_one({"text": note.text}, session=uow.session)

        await runtime.transaction(work)
        return {"text": note.text}

    @router.get("/outage/{kind}")
    async def outage(kind: str) -> None:
        raise getattr(errors, kind)(f"{SECRET}: connection closed")

    @router.get("/boom")
    async def boom() -> None:
        raise RuntimeError(f"cannot reach {SECRET}")

    @router.get("/gone")
    async def gone() -> None:
        raise HTTPException(410, detail="This note was archived")

    app = runtime.create_app(title="probe", description="HTTP probe", routers=[router])
    return app, written


@asynccontextmanager
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client to ``app`` in-process (no lifespan: nothing connects to Kafka)."""
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://probe") as http:
        yield http
