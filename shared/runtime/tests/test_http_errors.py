"""Every answer that is not a success comes in the shared error body, whatever raised it: a bad
bearer token (401, never a crash), an oversized body however it is sent (413), Starlette's own
404/405, a database that is not reachable (503 with Retry-After) and anything unexpected (500,
logged once, nothing internal in the body)."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest
import uvicorn
from crm_localinfra._proc import free_port
from crm_runtime.http import TokenAuth
from crm_runtime.logs import JsonFormatter
from fastapi import FastAPI
from http_probe import LIMIT, SECRET, client, probe
from starlette.requests import Request

WRITER = {"authorization": "Bearer writer"}


@pytest.fixture(scope="module")
def service() -> tuple[FastAPI, list[Any]]:
    # Built once, before the tests' log capture starts (the runtime installs its log handler).
    return probe()


@pytest.fixture
def app(service: tuple[FastAPI, list[Any]]) -> FastAPI:
    return service[0]


@pytest.fixture
def written(service: tuple[FastAPI, list[Any]]) -> list[Any]:
    service[1].clear()
    return service[1]


@pytest.fixture
def logged() -> Iterator[Callable[[], list[dict[str, Any]]]]:
    """The JSON log lines written so far, formatted as they were emitted (inside the request,
    so they carry its trace id)."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter("probe"))
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield lambda: [json.loads(line) for line in stream.getvalue().splitlines()]
    finally:
        root.removeHandler(handler)


def chunked(*parts: bytes, filler: int = 0, counter: list[int] | None = None) -> AsyncIterator[bytes]:
    """A body sent in chunks (no Content-Length): ``parts[0]``, ``filler`` chunks of 256 bytes,
    then the other parts; ``counter`` counts the filler chunks the server pulled."""

    async def body() -> AsyncIterator[bytes]:
        yield parts[0]
        for _ in range(filler):
            if counter is not None:
                counter[0] += 1
            yield b"x" * 256
        for part in parts[1:]:
            yield part

    return body()


# -- bearer tokens ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "header",
    [
        "Bearer s\u00e9same".encode("latin-1"),  # the right token's characters, but as latin-1 bytes
        b"Bearer \xc3\xa9t\xc3\xa9",  # UTF-8 of a token nobody has
        b"Bearer \xff\xfe\x00\x01",
        b"Bearer",
        b"Bearer ",
        b"Bearer  writer",
        b"Basic d3JpdGVy",
        b"writer",
    ],
)
async def test_a_malformed_or_non_ascii_bearer_token_gets_401_and_no_traceback(
    app: FastAPI, written: list[Any], header: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    async with client(app) as http:
        answer = await http.post("/notes", json={"text": "hi"}, headers={"authorization": header})
    assert answer.status_code == 401, answer.text
    assert answer.json() == {
        "error": "unauthorized",
        "message": "A valid bearer token is required.",
        "fields": [],
    }
    assert answer.headers["www-authenticate"] == "Bearer"
    assert written == []
    assert [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info] == []


async def test_a_non_ascii_token_is_accepted_as_its_utf8_bytes(app: FastAPI, written: list[Any]) -> None:
    async with client(app) as http:
        answer = await http.post(
            "/notes", json={"text": "hi"}, headers={"authorization": "Bearer s\u00e9same".encode()}
        )
    assert answer.status_code == 201, answer.text
    assert written == ["hi"]


def test_tokens_from_an_undecodable_environment_still_match_their_bytes() -> None:
    # os.environ hands undecodable bytes over as surrogate escapes.
    raw = b"t\xffk"
    auth = TokenAuth(raw.decode("utf-8", "surrogateescape") + ":read")
    request = Request({"type": "http", "headers": [(b"authorization", b"Bearer " + raw)]})
    assert auth.scope_of(request) == "read"


def test_an_empty_token_cannot_be_configured() -> None:
    with pytest.raises(ValueError, match="token:read"):
        TokenAuth(":admin")


# -- body size -------------------------------------------------------------------------------------
PAYLOAD_TOO_LARGE = {
    "error": "payload_too_large",
    "message": f"The request body exceeds {LIMIT} bytes.",
    "fields": [],
}


async def test_an_oversized_chunked_json_body_gets_413_and_is_not_read_to_the_end(
    app: FastAPI, written: list[Any]
) -> None:
    pulled = [0]
    body = chunked(b'{"text": "', b'"}', filler=4000, counter=pulled)
    async with client(app) as http:
        answer = await http.post(
            "/notes", content=body, headers={"content-type": "application/json", **WRITER}
        )
    assert answer.request.headers.get("transfer-encoding") == "chunked"
    assert "content-length" not in answer.request.headers
    assert answer.status_code == 413, answer.text
    assert answer.json() == PAYLOAD_TOO_LARGE
    assert pulled[0] <= LIMIT // 256 + 1  # reading stopped at the limit, not after 1 MB
    assert written == []


async def test_an_oversized_chunked_upload_gets_413_and_imports_nothing(
    app: FastAPI, written: list[Any]
) -> None:
    body = chunked(b"external_id,name\n", filler=40)
    async with client(app) as http:
        answer = await http.post("/imports", content=body, headers={"content-type": "text/csv", **WRITER})
    assert answer.status_code == 413, answer.text
    assert answer.json() == PAYLOAD_TOO_LARGE
    assert written == []


async def test_a_chunked_body_within_the_limit_is_read_whole(app: FastAPI, written: list[Any]) -> None:
    body = chunked(b'{"text": "', b'"}', filler=3)
    async with client(app) as http:
        answer = await http.post(
            "/notes", content=body, headers={"content-type": "application/json", **WRITER}
        )
    assert answer.status_code == 201, answer.text
    assert written == ["x" * 768]


async def test_a_declared_length_over_the_limit_gets_413_before_anything_is_read(
    app: FastAPI, written: list[Any]
) -> None:
    async with client(app) as http:
        answer = await http.post(
            "/notes",
            content=b'{"text": "' + b"x" * LIMIT + b'"}',
            headers={"content-type": "application/json"},
        )
    assert answer.status_code == 413 and answer.json() == PAYLOAD_TOO_LARGE
    assert answer.headers["connection"] == "close"
    assert written == []


async def test_a_real_server_answers_413_to_an_oversized_chunked_body(
    app: FastAPI, written: list[Any]
) -> None:
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, lifespan="off", log_config=None))
    serving = asyncio.create_task(server.serve())
    try:
        while not server.started:
            assert not serving.done(), "uvicorn stopped"
            await asyncio.sleep(0.05)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        chunks = b"".join(b"100\r\n" + b"x" * 256 + b"\r\n" for _ in range(8))  # 2 KB in 256-byte chunks
        writer.write(
            b"POST /notes HTTP/1.1\r\nHost: probe\r\nAuthorization: Bearer writer\r\n"
            b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
            b'b\r\n{"text": "x\r\n' + chunks + b'2\r\n"}\r\n0\r\n\r\n'
        )
        await writer.drain()
        raw = await reader.read()  # the server closes the connection after the 413
        writer.close()
    finally:
        server.should_exit = True
        await serving
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413 "), raw[:300]
    assert b"connection: close" in head.lower()
    assert json.loads(body) == PAYLOAD_TOO_LARGE
    assert written == []


# -- Starlette's and FastAPI's own errors ----------------------------------------------------------
async def test_an_unknown_route_gets_404_in_the_shared_format(app: FastAPI) -> None:
    async with client(app) as http:
        answer = await http.get("/nowhere")
    assert answer.status_code == 404
    assert answer.json() == {
        "error": "not_found",
        "message": "There is no operation at /nowhere; /docs lists them.",
        "fields": [],
    }


async def test_a_wrong_method_gets_405_in_the_shared_format_with_allow(app: FastAPI) -> None:
    async with client(app) as http:
        answer = await http.delete("/imports")
    assert answer.status_code == 405
    assert answer.headers["allow"] == "POST"
    assert answer.json() == {
        "error": "method_not_allowed",
        "message": "DELETE is not allowed here; use POST.",
        "fields": [],
    }


async def test_allow_names_the_methods_of_every_route_at_the_path(app: FastAPI) -> None:
    async with client(app) as http:
        answer = await http.delete("/notes")  # GET /notes and POST /notes are two routes
    assert answer.status_code == 405
    assert answer.headers["allow"] == "GET, POST"
    assert answer.json()["message"] == "DELETE is not allowed here; use GET, POST."


async def test_an_http_exception_raised_by_a_route_gets_the_shared_format(app: FastAPI) -> None:
    async with client(app) as http:
        answer = await http.get("/gone")
    assert answer.status_code == 410
    assert answer.json() == {"error": "gone", "message": "This note was archived.", "fields": []}


async def test_a_body_fastapi_cannot_parse_gets_400_in_the_shared_format(
    app: FastAPI, written: list[Any]
) -> None:
    async with client(app) as http:
        answer = await http.post(
            "/notes", content=b'{"text": "\xff"}', headers={"content-type": "application/json", **WRITER}
        )
    assert answer.status_code == 400
    assert answer.json() == {
        "error": "bad_request",
        "message": "There was an error parsing the body.",
        "fields": [],
    }
    assert written == []


# -- failures --------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kind",
    [
        "ConnectionFailure",
        "AutoReconnect",
        "NetworkTimeout",
        "NotPrimaryError",
        "ServerSelectionTimeoutError",
        "WaitQueueTimeoutError",
    ],
)
async def test_a_database_connection_error_gets_503_with_retry_after(app: FastAPI, kind: str) -> None:
    async with client(app) as http:
        answer = await http.get(f"/outage/{kind}")
    assert answer.status_code == 503, answer.text
    assert answer.headers["retry-after"] == "5"
    assert answer.json() == {
        "error": "unavailable",
        "message": "The database is not reachable; try again in 5 seconds.",
        "fields": [],
    }


async def test_reads_and_writes_against_an_unreachable_database_get_503_promptly(app: FastAPI) -> None:
    async with client(app) as http:
        read = await http.get("/notes/count")
        started = time.monotonic()
        write = await http.post("/notes/stored", json={"text": "hi"})
        took = time.monotonic() - started
    assert (read.status_code, write.status_code) == (503, 503), (read.text, write.text)
    assert write.json()["error"] == "unavailable" and write.headers["retry-after"] == "5"
    # PyMongo retries a transaction for 120 s on its own; one server selection (0.2 s) is enough.
    assert took < 60


async def test_an_unexpected_error_gets_500_without_internals_and_is_logged_once(
    app: FastAPI, logged: Callable[[], list[dict[str, Any]]]
) -> None:
    async with client(app) as http:  # the app must not re-raise (the server would log it again)
        answer = await http.get("/boom")
    assert answer.status_code == 500
    problem = answer.json()
    assert problem["error"] == "internal_error" and problem["fields"] == []
    assert "hunter2" not in answer.text and "db.internal" not in answer.text
    errors = [line for line in logged() if line["level"] == "error"]
    assert len(errors) == 1, errors
    [logged] = errors
    assert "RuntimeError" in logged["exception"] and SECRET in logged["exception"]
    assert logged["path"] == "/boom"
    assert problem["message"] == (
        f"The request failed unexpectedly; it has been logged (trace id {logged['trace_id']})."
    )
