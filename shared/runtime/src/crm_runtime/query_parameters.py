"""Query parameters an operation does not declare are refused, not ignored: a BI filter with a
typo (``?lead_sorce=web``) would otherwise answer the unfiltered figures as if they were the
filtered ones. A parameter that takes one value is refused when given twice, for the same
reason (FastAPI would silently use the last one); list parameters may repeat."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Sequence
from types import UnionType
from typing import Annotated, Any, Union, get_args, get_origin

from fastapi import Request
from fastapi.dependencies.models import Dependant
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from pydantic import BaseModel

_SEQUENCES = (list, set, frozenset, tuple, Sequence)


async def reject_unknown_query_parameters(request: Request) -> None:
    """An app-wide dependency: 422 naming every unknown or wrongly repeated parameter."""
    route = request.scope.get("route")
    if not isinstance(route, APIRoute):
        return
    declared = dict(_query_parameters(route.dependant))  # a few fields: cheaper than caching
    given = Counter(name for name, _ in request.query_params.multi_items())
    errors: list[dict[str, Any]] = []
    for name, times in given.items():
        if name not in declared:
            takes = ", ".join(sorted(declared)) or "none"
            errors.append(
                _error(name, "extra_forbidden", f"unknown query parameter (this operation takes: {takes})")
            )
        elif times > 1 and not declared[name]:
            errors.append(_error(name, "too_many_values", f"given {times} times; it takes one value"))
    if errors:
        raise RequestValidationError(errors)


def _error(name: str, kind: str, message: str) -> dict[str, Any]:
    return {"type": kind, "loc": ("query", name), "msg": message, "input": None}


def _query_parameters(dependant: Dependant) -> Iterator[tuple[str, bool]]:
    """The query parameters of an operation and its dependencies, with whether each is a list;
    a pydantic model declared as query parameters contributes its fields."""
    for field in dependant.query_params:
        annotation = field.field_info.annotation
        model = _model(annotation)
        if model is None:
            yield field.alias, _is_sequence(annotation)
        else:
            for name, info in model.model_fields.items():
                yield info.alias or name, _is_sequence(info.annotation)
    for dependency in dependant.dependencies:
        yield from _query_parameters(dependency)


def _arguments(annotation: Any) -> Sequence[Any]:
    origin = get_origin(annotation)
    if origin is Annotated:
        return _arguments(get_args(annotation)[0])
    if origin is Union or origin is UnionType:
        return [arg for arg in get_args(annotation) if arg is not type(None)]
    return [annotation]


def _model(annotation: Any) -> type[BaseModel] | None:
    options = _arguments(annotation)
    if len(options) == 1 and isinstance(options[0], type) and issubclass(options[0], BaseModel):
        return options[0]
    return None


def _is_sequence(annotation: Any) -> bool:
    for option in _arguments(annotation):
        kind = get_origin(option) or option
        if isinstance(kind, type) and not issubclass(kind, str | bytes) and issubclass(kind, _SEQUENCES):
            return True
    return False
