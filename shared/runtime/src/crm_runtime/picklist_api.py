"""HTTP routes of the organisation's picklists a service owns: ``GET /picklists``, ``GET/PUT
/picklists/{name}``. Reading needs the read scope, revising the admin scope (the organisation's
configuration, like pipelines in the opportunities service)."""

from __future__ import annotations

from typing import Any

from crm_contracts.events.common import Actor
from crm_contracts.events.picklists import PicklistCode, PicklistName, PicklistValue, UnknownValues
from fastapi import APIRouter, Depends
from pydantic import BaseModel, ConfigDict, Field, model_validator

from .http import ApiError
from .picklist_store import PicklistChanged, PicklistStore
from .picklists import MAX_VALUES, Picklist, ValueRemoved, check_definition
from .service import ServiceRuntime

_EXAMPLE: dict[str, Any] = {
    "values": [
        {"value": "web", "label": "Web", "aliases": ["website"], "active": True},
        {"value": "trade_fair", "label": "Trade fair", "aliases": ["Messe", "expo"], "active": True},
        {"value": "chat", "label": "Chat", "aliases": [], "active": False},
        {"value": "other", "label": "Other"},
        {"value": "unknown", "label": "Unknown"},
    ],
    "blank_value": "unknown",
    "unknown_values": "reject",
    "expected_version": 0,
    "by": {"id": "admin-1"},
}


class PicklistRevision(BaseModel):
    """The whole list as it is to be: every value it had must be in it (set ``active`` to false
    to retire one; records keep it and reports still show it)."""

    model_config = ConfigDict(
        extra="forbid", str_strip_whitespace=True, json_schema_extra={"examples": [_EXAMPLE]}
    )

    values: list[PicklistValue] = Field(min_length=1, max_length=MAX_VALUES)
    blank_value: PicklistCode | None = Field(
        description="The value a record naming none gets (missing, null or blank); null refuses such records"
    )
    unknown_values: UnknownValues = Field(
        default=UnknownValues.REJECT,
        description="reject (the default): a value the list lacks or has deactivated is refused, naming "
        "the closest values; other: stored as the value other, the given spelling kept",
    )
    expected_version: int | None = Field(
        default=None, ge=0, description="The version this revision is based on; 409 if the list moved on"
    )
    by: Actor

    @model_validator(mode="after")
    def _usable(self) -> PicklistRevision:
        check_definition(self.values, self.blank_value, self.unknown_values)
        return self


def picklists_router(
    runtime: ServiceRuntime, store: PicklistStore, *, source: str, lists: str, matched_by: str
) -> APIRouter:
    """The routes of ``store``'s lists; ``lists`` names them for the OpenAPI summary (``lead
    sources, origins``), ``matched_by`` says which inputs are folded with them."""
    router = APIRouter(prefix="/picklists", tags=["picklists"])
    read = [Depends(runtime.auth.require("read"))]
    admin = [Depends(runtime.auth.require("admin"))]
    owned = store.names

    def owned_list(name: PicklistName) -> PicklistName:
        if name not in owned:
            raise ApiError(
                404,
                "not_found",
                f"picklist {name.value} is not kept by this service; its lists: "
                + ", ".join(n.value for n in owned),
                field="name",
            )
        return name

    @router.get("", dependencies=read, summary=f"The organisation's picklists ({lists})")
    async def list_picklists() -> list[Picklist]:
        kept = await store.all()
        return [kept.of(name) for name in owned]

    @router.get("/{name}", dependencies=read, summary="One picklist (version 0: the defaults)")
    async def get_picklist(name: PicklistName) -> Picklist:
        return (await store.all()).of(owned_list(name))

    @router.put(
        "/{name}",
        dependencies=admin,
        summary="Revise a picklist: labels, aliases, new values, deactivated values; announced on "
        "picklist.revised",
        description=f"{matched_by} match a value, its label or an alias "
        "ignoring case, accents, spaces and punctuation, and store the value. Records keep the values "
        "they hold: a value cannot be removed, only deactivated (then it stays readable and in "
        "reports, and new records naming it are treated as naming an unknown value).",
    )
    async def put_picklist(name: PicklistName, body: PicklistRevision) -> Picklist:
        owned_list(name)
        try:
            return await runtime.transaction(
                lambda uow: store.revise(
                    uow,
                    name,
                    body.values,
                    blank_value=body.blank_value,
                    unknown_values=body.unknown_values,
                    expected_version=body.expected_version,
                    by=body.by,
                    source=source,
                )
            )
        except PicklistChanged as exc:
            raise ApiError(409, "stale_version", str(exc), field="expected_version") from exc
        except ValueRemoved as exc:
            raise ApiError(422, "validation_failed", str(exc), field="values") from exc

    return router
