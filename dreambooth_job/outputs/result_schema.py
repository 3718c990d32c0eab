"""The JSON Schema of result.json, generated from `RunResult` (outputs/result.py), the one definition of
the record: every object closed (`additionalProperties: false`), a field required unless it is
left out while unknown, None allowed where the field may be None, and each field's description
and bounds from its metadata. The generated file, dreambooth_job/schemas/result.schema.json, is
checked in for readers outside Python; a test fails when it differs from what this writes:

    .venv/bin/python -m dreambooth_job.outputs.result_schema          # rewrite the file
    .venv/bin/python -m dreambooth_job.outputs.result_schema --check  # exit 1 if it is out of date
"""

from __future__ import annotations

import dataclasses
import json
import sys
import types
import typing
from pathlib import Path
from typing import Any, Literal

from dreambooth_job.outputs.result import JSON_NAME, OMIT_NONE, SCHEMA, SCHEMA_VERSION, RunResult

SCHEMA_FILE = Path(__file__).parents[1] / "schemas" / "result.schema.json"
_SCALARS = {str: "string", int: "integer", float: "number", bool: "boolean"}
# A field's metadata keys that bound each item of a list or each value of a dict.
_EACH = "each"


def result_schema() -> dict[str, Any]:
    """The JSON Schema of result.json as `RunResult.write` writes it."""
    return {"$schema": "https://json-schema.org/draft/2020-12/schema",
            "$id": f"https://dreambooth-job/result.v{SCHEMA_VERSION}.schema.json",
            "title": "dreambooth-job result.json", **_object(RunResult)}


def _object(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    properties, required = {}, []
    for f in dataclasses.fields(cls):
        name = f.metadata.get(JSON_NAME, f.name)
        properties[name] = _field_schema(hints[f.name], f)
        if not f.metadata.get(OMIT_NONE):
            required.append(name)
    return {"type": "object", "required": required, "additionalProperties": False,
            "properties": properties}


def _field_schema(hint: Any, f: dataclasses.Field) -> dict[str, Any]:
    extras = dict(f.metadata.get(SCHEMA, {}))
    each = extras.pop(_EACH, {})
    union = typing.get_origin(hint) in (typing.Union, types.UnionType)
    options = [a for a in typing.get_args(hint) if a is not type(None)] if union else [hint]
    if len(options) != 1:
        raise TypeError(f"{f.name}: one type (or it and None) per field, not {hint}")
    schema = {**_type_schema(options[0], each), **extras}
    # A field left out while None never holds null; any other optional field writes it.
    if union and type(None) in typing.get_args(hint) and not f.metadata.get(OMIT_NONE):
        schema = _nullable(schema)
    return schema


def _type_schema(hint: Any, each: dict[str, Any] | None = None) -> dict[str, Any]:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return {}
    if dataclasses.is_dataclass(hint):
        return _object(hint)
    if origin is Literal:
        return {"enum": list(args)}
    if origin is list:
        return {"type": "array", "items": {**_type_schema(args[0]), **(each or {})}}
    if origin is dict:
        values = {**_type_schema(args[1]), **(each or {})}
        return {"type": "object", **({"additionalProperties": values} if values else {})}
    if hint in _SCALARS:
        return {"type": _SCALARS[hint]}
    raise TypeError(f"no JSON Schema for {hint!r}")


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    if "enum" in schema:
        return {**schema, "enum": [*schema["enum"], None]}
    if isinstance(schema.get("type"), str):
        return {**schema, "type": [schema["type"], "null"]}
    return {"anyOf": [schema, {"type": "null"}]}


def rendered() -> str:
    """The schema file's text."""
    return json.dumps(result_schema(), indent=2) + "\n"


def main(argv: list[str]) -> int:
    if argv == ["--check"]:
        if SCHEMA_FILE.read_text() != rendered():
            print(f"{SCHEMA_FILE} is out of date: run python -m dreambooth_job.outputs.result_schema",
                  file=sys.stderr)
            return 1
        return 0
    SCHEMA_FILE.write_text(rendered())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
