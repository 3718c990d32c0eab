"""result.json: what a finished job leaves beside its model, and the completion marker.

`RunResult` is the record, one typed dataclass (nested ones for its parts), filled in by the
phases as they run and written by `RunResult.write` only: every string redacted there
(redaction.py), shaped as the JSON Schema in schemas/result.schema.json says. The schema is
checked by the tests (jsonschema is a dev dependency, not one of the image).

A reader (the batch tooling, `status`, a person) trusts an output prefix only when the marker
exists: it is written after result.json and everything it points to, so a prefix without it is a
run still in progress or one that died half-way.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from dreambooth_job import __version__
from dreambooth_job.config.pod_env import IMAGE_ENV
from dreambooth_job.exit_codes import ExitCode
from dreambooth_job.redaction import redact_value
from dreambooth_job.storage import places as storage

RESULT_FILE = "result.json"
COMPLETION_MARKER = "_SUCCESS"
SCHEMA_VERSION = 2
"""2: `outputs.model` optional, `outputs.lora`, `outputs.single_file`, `outputs.files` (LoRA runs).
Schema 1 files (schemas/result.v1.schema.json) are still read: `output_locations` reads both."""
# The image reference the pod runs (the chart and build_job set it); None outside Kubernetes.

# Field metadata: the JSON name when it differs from the Python one, and fields left out of the
# JSON while unknown (the schema has no null for them).
_JSON_NAME, _OMIT_NONE = "json_name", "omit_none"


def _optional(default: Any = None) -> Any:
    return field(default=default, metadata={_OMIT_NONE: True})


def now_iso() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


@dataclass
class Identifier:
    token: str
    chosen: str  # "auto" or "user"
    token_ids: list[int] | None = _optional()


@dataclass
class Prompts:
    instance: str
    class_prompt: str = field(metadata={_JSON_NAME: "class"})
    validation: list[str] = field(default_factory=list)


@dataclass
class BaseModelInfo:
    source: str
    fingerprint: str = ""
    prediction_type: str = "epsilon"


@dataclass
class Rejection:
    file: str
    reason: str


@dataclass
class Photos:
    used: list[str] = field(default_factory=list)
    rejected: list[Rejection] = field(default_factory=list)


@dataclass
class ClassImagesInfo:
    requested: int = 0
    generated: int = 0
    reused: int = 0
    cache_uri: str | None = None
    cache_key: str | None = None


@dataclass
class Training:
    max_train_steps: int
    steps_done: int = 0
    final_loss: float | None = None
    final_instance_loss: float | None = _optional()
    final_prior_loss: float | None = _optional()
    resumed_from_step: int | None = _optional()
    device: str | None = _optional()
    mixed_precision: str | None = _optional()
    gradient_checkpointing: bool | None = _optional()
    train_mode: str | None = _optional()  # "full" or "lora"
    learning_rate: float | None = _optional()  # the peak rate used: --learning-rate auto resolved
    trainable_parameters: int | None = _optional()  # what the optimizer updated (LoRA: adapters)
    resolution: int | None = _optional()  # the training resolution: --resolution auto resolved


@dataclass
class OutputFile:
    path: str  # relative to the output prefix
    size: int
    sha256: str


@dataclass
class Outputs:
    """Where the run's files are. Schema 1 (before LoRA) always had `model`; schema 2 has it only
    when a full pipeline was published (full fine-tuning, or LoRA with --lora-merge)."""

    result: str
    model: str | None = _optional()  # the diffusers pipeline directory
    lora: list[str] | None = _optional()  # the adapter files (LoRA runs only)
    single_file: str | None = _optional()  # <subject-id>.safetensors (--export-single-file)
    samples: list[str] = field(default_factory=list)
    files: list[OutputFile] = field(default_factory=list)  # every weight file: size, sha256


@dataclass(kw_only=True)
class RunResult:
    """result.json. A new run starts as "failed" with INTERNAL_ERROR: a crash leaves no false success."""

    schema_version: int = SCHEMA_VERSION
    status: str = "failed"  # "succeeded" or "failed"
    exit_code: int = int(ExitCode.INTERNAL_ERROR)
    error: str | None = None  # the one-line reason of a failure
    job_id: str
    subject_id: str
    batch_id: str | None = None
    package_version: str = __version__
    image: str | None = field(default_factory=lambda: os.environ.get(IMAGE_ENV) or None)
    started_at: str = field(default_factory=now_iso)
    finished_at: str | None = _optional()
    config: dict[str, Any]  # redacted, every field
    config_fingerprint: str
    identifier: Identifier
    prompts: Prompts
    base_model: BaseModelInfo
    photos: Photos = field(default_factory=Photos)
    class_images: ClassImagesInfo = field(default_factory=ClassImagesInfo)
    training: Training
    durations_seconds: dict[str, float] = field(default_factory=dict)
    outputs: Outputs
    metrics: dict[str, Any] | None = None  # evaluation.metrics_block when --evaluate ran

    def succeeded(self) -> None:
        self.status, self.exit_code, self.error, self.finished_at = "succeeded", 0, None, now_iso()

    def failed(self, code: ExitCode, message: str) -> None:
        self.status, self.exit_code, self.error, self.finished_at = (
            "failed", int(code), message, now_iso())

    def to_json(self) -> dict[str, Any]:
        """The record as result.json holds it, every string redacted."""
        return redact_value(_json_value(self))

    def write(self, output_uri: str) -> None:
        """Write result.json under `output_uri`: the one place it is written."""
        storage.write_bytes(storage.join(output_uri, RESULT_FILE),
                            json.dumps(self.to_json(), indent=2).encode())


def _json_value(value: Any) -> Any:
    if dataclasses.is_dataclass(value):
        return {f.metadata.get(_JSON_NAME, f.name): _json_value(getattr(value, f.name))
                for f in dataclasses.fields(value)
                if not (f.metadata.get(_OMIT_NONE) and getattr(value, f.name) is None)}
    if isinstance(value, dict):
        return {k: _json_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_value(v) for v in value]
    return value


def schema() -> dict[str, Any]:
    """The JSON Schema of result.json (dreambooth_job/schemas/result.schema.json)."""
    return json.loads(resources.files("dreambooth_job").joinpath("schemas/result.schema.json").read_text())


def schema_v1() -> dict[str, Any]:
    """The JSON Schema of result.json files written before schema version 2."""
    return json.loads(resources.files("dreambooth_job").joinpath("schemas/result.v1.schema.json").read_text())


def output_locations(result: dict[str, Any] | None) -> dict[str, Any]:
    """What a result.json (schema 1 or 2, complete or not; anything a tenant may have written
    there) says the run published: `model` (a URI or None), `lora` (a list of URIs) and
    `single_file` (a URI or None). Values of the wrong type read as absent."""
    outputs = (result or {}).get("outputs") if isinstance(result, dict) else None
    outputs = outputs if isinstance(outputs, dict) else {}

    def text(key: str) -> str | None:
        value = outputs.get(key)
        return value if isinstance(value, str) else None

    lora = outputs.get("lora")
    return {"model": text("model"), "single_file": text("single_file"),
            "lora": [u for u in lora if isinstance(u, str)] if isinstance(lora, list) else []}


def mark_complete(output_uri: str) -> None:
    """Publish the run: written last, after result.json and every file it names."""
    storage.write_bytes(storage.join(output_uri, COMPLETION_MARKER), b"")


def read_result(output_uri: str) -> dict[str, Any] | None:
    """result.json of a prefix, complete or not; None when there is none."""
    try:
        return json.loads(storage.read_bytes(storage.join(output_uri, RESULT_FILE)))
    except FileNotFoundError:
        return None


def is_complete(output_uri: str) -> bool:
    """Whether `output_uri` holds a completed run (its marker), whatever its result.json holds."""
    return storage.exists(storage.join(output_uri, COMPLETION_MARKER))
