"""result.json: what a finished job leaves beside its model, and the completion marker.

A reader (the batch tooling, `status`, a person) trusts an output prefix only when the marker
exists: it is written after result.json and everything it points to, so a prefix without it is a
run still in progress or one that died half-way.
"""

from __future__ import annotations

import json
from importlib import resources
from typing import Any

from dreambooth_job import storage
from dreambooth_job.redaction import redact_value

RESULT_FILE = "result.json"
COMPLETION_MARKER = "_SUCCESS"
SCHEMA_VERSION = 1


def schema() -> dict[str, Any]:
    """The JSON Schema of result.json (dreambooth_job/schemas/result.schema.json)."""
    return json.loads(resources.files("dreambooth_job").joinpath("schemas/result.schema.json").read_text())


def write_result(output_uri: str, result: dict[str, Any]) -> None:
    """Write result.json, every string redacted (no presigned signature, no URL credentials)."""
    storage.write_bytes(storage.join(output_uri, RESULT_FILE),
                        json.dumps(redact_value(result), indent=2, sort_keys=False).encode())


def mark_complete(output_uri: str) -> None:
    """Publish the run: written last, after result.json and every file it names."""
    storage.write_bytes(storage.join(output_uri, COMPLETION_MARKER), b"")


def read_result(output_uri: str) -> dict[str, Any] | None:
    """result.json of a prefix, complete or not; None when there is none."""
    try:
        return json.loads(storage.read_bytes(storage.join(output_uri, RESULT_FILE)))
    except FileNotFoundError:
        return None


def read_completed_result(output_uri: str) -> dict[str, Any] | None:
    """result.json of a completed run under `output_uri`, or None when the run is not complete."""
    if not storage.exists(storage.join(output_uri, COMPLETION_MARKER)):
        return None
    return read_result(output_uri)
