"""JSON Schemas of every event, exported from the pydantic models.

``python -m crm_contracts.schemas DIR`` writes one ``<topic>.v<N>.json`` per event, each the
schema of the full CloudEvent envelope with its typed ``data``. The committed copies under
``shared/contracts/schemas/`` are checked against the models by a test, so they never drift.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from .catalog import ALL_EVENTS, EventSpec
from .envelope import CloudEvent

SCHEMA_DIR = Path(__file__).resolve().parents[2] / "schemas"


def event_schema(spec: EventSpec[Any]) -> dict[str, Any]:
    model = CloudEvent[spec.data_model]  # type: ignore[name-defined]
    schema = model.model_json_schema(mode="validation")
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = spec.dataschema
    schema["title"] = f"{spec.topic} v{spec.version}"
    schema["description"] = spec.description
    props = schema["properties"]
    props["type"] = {"const": spec.type, "type": "string"}
    props["dataschema"] = {"const": spec.dataschema, "type": "string"}
    return schema


def render(schema: dict[str, Any]) -> str:
    return json.dumps(schema, indent=2, sort_keys=True) + "\n"


def export(directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for spec in ALL_EVENTS:
        path = directory / f"{spec.topic}.v{spec.version}.json"
        path.write_text(render(event_schema(spec)))
        written.append(path)
    return written


def main() -> None:
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else SCHEMA_DIR
    for path in export(target):
        print(path)


if __name__ == "__main__":
    main()
