"""result.json: what a finished job leaves beside its model, and the completion marker.

`RunResult` is the record, one typed dataclass (nested ones for its parts), filled in by the
phases as they run and written by `RunResult.write` only: every string redacted there
(redaction.py). The record's one definition is here: `Trainer.train` returns its `Training`
block, and the JSON Schema in schemas/result.schema.json is generated from these dataclasses
(result_schema.py; a test fails when the file is out of date). Tests validate what the job
writes against it (jsonschema is a dev dependency, not one of the image).

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
from typing import Any, Literal

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

# Field metadata: the JSON name when it differs from the Python one, fields left out of the JSON
# while unknown (the schema has no null for them), and what the generated schema adds to the
# field's type (a description, bounds; result_schema.py).
JSON_NAME, OMIT_NONE, SCHEMA = "json_name", "omit_none", "schema"


def _field(default: Any = dataclasses.MISSING, *, default_factory: Any = dataclasses.MISSING,
           json_name: str | None = None, omit_none: bool = False, **schema: Any) -> Any:
    metadata: dict[str, Any] = {SCHEMA: schema}
    if json_name:
        metadata[JSON_NAME] = json_name
    if omit_none:
        metadata[OMIT_NONE] = True
    return field(default=default, default_factory=default_factory, metadata=metadata)


def _optional(**schema: Any) -> Any:
    """A field that is None until known, and absent from the JSON until then."""
    return _field(None, omit_none=True, **schema)


def now_iso() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


@dataclass
class Identifier:
    token: str
    chosen: Literal["auto", "user"]
    token_ids: list[int] | None = _optional()


@dataclass
class Prompts:
    instance: str
    class_prompt: str = _field(json_name="class")
    validation: list[str] = field(default_factory=list)
    captions: dict[str, str] | None = _optional(description=(
        "Each captioned photo's prompt (its caption, placeholders filled, the identifier prefixed "
        "where it lacked it), by the photo's name under `photos.used`; absent when no photo has "
        "a caption. Photos not named train on `instance`."))


@dataclass
class BaseModelInfo:
    source: str
    fingerprint: str = ""
    prediction_type: Literal["epsilon", "v_prediction", "flow"] = _field("epsilon", description=(
        "What the denoiser predicts: noise (epsilon), v, or a rectified flow's velocity (flow)."))
    family: str | None = _field(None, description=(
        "The model family detected from model_index.json (families/: sd, sdxl, flux2-klein, ...); "
        "null until the model has loaded."))
    license: str | None = _field(None, description=(
        "The licence the base model's card (README.md front matter) declares: `license_name` "
        "where `license` is `other`, else `license`; null when it declares none."))


@dataclass
class Rejection:
    file: str
    reason: str


@dataclass
class Photos:
    used: list[str] = field(default_factory=list)
    rejected: list[Rejection] = _field(
        default_factory=list, description=(
            "Files not trained on, with the reason; keys that cannot be safe local paths (`..`, "
            "`//`, a symlink out of a local directory) are listed here and never downloaded."))
    buckets: dict[str, list[int]] | None = _optional(description=(
        "With --aspect-buckets: the [width, height] each photo trained at (the aspect-ratio "
        "bucket nearest its own, centre- or randomly cropped to it), by its name under `used`; "
        "absent without buckets (every photo trains square at the resolution)."))


@dataclass
class ClassImagesInfo:
    requested: int = _field(0, minimum=0)
    generated: int = _field(0, minimum=0)
    reused: int = _field(0, minimum=0)
    cache_uri: str | None = None
    cache_key: str | None = None


@dataclass
class Training:
    """result.json's training block, and what `Trainer.train` returns: the phase adds
    `resumed_from_step`."""

    max_train_steps: int = _field(minimum=1)
    steps_done: int = _field(0, minimum=0)
    final_loss: float | None = None
    final_instance_loss: float | None = _optional()
    final_prior_loss: float | None = _optional()
    resumed_from_step: int | None = _optional()
    device: str | None = _optional()
    mixed_precision: str | None = _optional()
    gradient_checkpointing: bool | None = _optional()
    train_mode: Literal["full", "lora"] | None = _optional()
    # The peak rate used: --learning-rate auto resolved.
    learning_rate: float | None = _optional(exclusiveMinimum=0)
    # What the optimizer updated (LoRA: the adapters).
    trainable_parameters: int | None = _optional(minimum=0)
    # The training resolution: --resolution auto resolved.
    resolution: int | None = _optional(minimum=8)


@dataclass
class OutputFile:
    path: str = _field(minLength=1)  # relative to the output prefix
    size: int = _field(minimum=0)
    sha256: str = _field(pattern="^[0-9a-f]{64}$")


@dataclass
class Outputs:
    """Where the run's files are. Schema 1 (before LoRA) always had `model`; schema 2 has it only
    when a full pipeline was published (full fine-tuning, or LoRA with --lora-merge)."""

    result: str
    model: str | None = _optional(description=(
        "The diffusers pipeline directory (from_pretrained); absent in LoRA runs without "
        "--lora-merge, and until the model is written."))
    lora: list[str] | None = _optional(description=(
        "LoRA runs: the adapter files, diffusers' format (load_lora_weights) then kohya's "
        "(A1111, ComfyUI)."))
    single_file: str | None = _optional(description=(
        "--export-single-file: one checkpoint in the original Stable Diffusion layout "
        "(from_single_file, A1111, ComfyUI)."))
    samples: list[str] = field(default_factory=list)
    files: list[OutputFile] = _field(default_factory=list, description=(
        "Every weight file published (model/, lora/, the single file): path relative to the "
        "output, size in bytes, sha256."))


@dataclass(kw_only=True)
class RunResult:
    """result.json. A new run starts as "failed" with INTERNAL_ERROR: a crash leaves no false success."""

    schema_version: int = _field(SCHEMA_VERSION, const=SCHEMA_VERSION, description=(
        "2: outputs.model optional, outputs.lora, outputs.single_file, outputs.files. Version 1 "
        "files: result.v1.schema.json."))
    status: Literal["succeeded", "failed"] = _field("failed", description="Outcome of the run.")
    exit_code: int = _field(int(ExitCode.INTERNAL_ERROR),
                            description="The process exit code (see README).")
    error: str | None = _field(None, description="One-line reason when status is failed.")
    job_id: str
    subject_id: str
    batch_id: str | None = None
    package_version: str = __version__
    image: str | None = _field(
        default_factory=lambda: os.environ.get(IMAGE_ENV) or None, description=(
            "The container image that ran (env DREAMBOOTH_IMAGE, set by the chart and "
            "build_job); null outside Kubernetes."))
    started_at: str = _field(default_factory=now_iso, format="date-time")
    finished_at: str | None = _optional(format="date-time")
    config: dict[str, Any] = _field(description="The resolved TrainConfig, every field, redacted.")
    config_fingerprint: str = _field(
        description="sha256 of the fields that change the trained model.")
    identifier: Identifier
    prompts: Prompts
    base_model: BaseModelInfo
    photos: Photos = field(default_factory=Photos)
    class_images: ClassImagesInfo = field(default_factory=ClassImagesInfo)
    training: Training
    durations_seconds: dict[str, float] = _field(
        default_factory=dict, description="Wall time of each phase that ran.", each={"minimum": 0})
    outputs: Outputs
    metrics: dict[str, Any] | None = _field(
        None, description="Evaluation metrics (evaluation.metrics_block) when --evaluate ran.")

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
        return {f.metadata.get(JSON_NAME, f.name): _json_value(getattr(value, f.name))
                for f in dataclasses.fields(value)
                if not (f.metadata.get(OMIT_NONE) and getattr(value, f.name) is None)}
    if isinstance(value, dict):
        return {k: _json_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_value(v) for v in value]
    return value


def schema() -> dict[str, Any]:
    """The JSON Schema of result.json (dreambooth_job/schemas/result.schema.json, generated from
    `RunResult` by result_schema.py)."""
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
