"""What `generate` takes from a run's result.json, read as what it is: a file the tenant who ran
the job can rewrite.

    record = read_record("s3://runs/dog-42", "s3://runs/dog-42/")   # None: no completed run
    record.status, record.published, record.identifier, record.base_model, record.vae

The file is read only up to MAX_RESULT_BYTES, and each field generate uses must have its type
(a string of bounded length, a positive integer, an object); anything else is bad input naming
the file and the field, never a traceback, never a silent fallback.

The weights come from the run's own layout (`<run>/model/`, `<run>/lora/`); the base model and
the VAE a LoRA run recorded (`base_model.source`, else `config.base_model`; `config.vae`) are the
only places result.json can send generate to, and `location_problem` decides each before anything
is downloaded:

- it must be a location (locations.check: s3://bucket/prefix, a local path or a hub id; no other
  scheme, no credentials, one printable line of at most MAX_LOCATION_CHARS);
- with DREAMBOOTH_OPERATOR_ALLOWED_PREFIXES set (read in the process that runs generate: the
  generate pod carries it as the training pod does), it must be an s3:// URI or an absolute local
  path under one of those prefixes. A hub id or a relative path is refused there: the pod would
  fetch from the hub, or read a path of the image, because a tenant's file says so. A run trained
  on a hub model is drawn from by an operator who copies that model into an allowed prefix (the
  shared models bucket) and trains on that copy;
- without the list (one tenant), any location is read, as `train --base-model` would read it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from dreambooth_job.config import locations
from dreambooth_job.config.operator_policy import ENV_PREFIX, OperatorPolicy
from dreambooth_job.config.option_fields import Place
from dreambooth_job.config.policy_checks import place_problem
from dreambooth_job.exit_codes import InvalidInputError
from dreambooth_job.outputs.result import COMPLETION_MARKER, RESULT_FILE, output_locations
from dreambooth_job.redaction import has_url_credentials
from dreambooth_job.storage import places as storage

MAX_RESULT_BYTES = 4 * 2**20
"""A run's result.json is a few KiB; a larger one is not a run this package wrote."""
MAX_TEXT_CHARS = 200
"""identifier.token and config.class_noun go into every prompt and into generation.json."""
MAX_LOCATION_CHARS = 2048
"""An S3 URI is at most 5 + 63 + 1024 characters; a local path fits in PATH_MAX's half."""
ALLOWED_PREFIXES_ENV = ENV_PREFIX + "ALLOWED_PREFIXES"


@dataclass(frozen=True)
class RunRecord:
    """The fields of a completed run's result.json that generate uses, typed."""

    status: str | None
    published: dict[str, bool]
    """{"model": ..., "lora": ...}: whether the run lists model/ and lora/ among its outputs."""
    identifier: str | None
    class_noun: str | None
    base_model: tuple[str, str] | None
    """(field, value): `base_model.source`, else `config.base_model`, when recorded."""
    vae: tuple[str, str] | None
    """("config.vae", value) when the run had a --vae."""
    resolution: int | None
    """`training.resolution`, else `config.resolution`."""


def read_record(run: str, model: str) -> RunRecord | None:
    """The record of the completed run at `run` (None when there is none); InvalidInputError
    naming `model` and result.json when the file is too large, not JSON or of the wrong shape."""
    try:
        if not storage.exists(storage.join(run, COMPLETION_MARKER)):
            return None
        data = storage.read_bytes(storage.join(run, RESULT_FILE), max_bytes=MAX_RESULT_BYTES)
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        return None
    if len(data) > MAX_RESULT_BYTES:
        raise _malformed(model, f"is over {MAX_RESULT_BYTES} bytes")
    try:
        result = json.loads(data)
    except (ValueError, UnicodeDecodeError, RecursionError):  # RecursionError: nested too deeply
        raise _malformed(model, "is not valid JSON") from None
    if not isinstance(result, dict):
        raise _malformed(model, "is not a JSON object")
    return _typed(result, model)


def _typed(result: dict[str, Any], model: str) -> RunRecord:
    config, base, training = (_object(result, key, model) for key in ("config", "base_model", "training"))
    identifier = _object(result, "identifier", model)
    published = output_locations(result)
    base_model = (("base_model.source", _text(base, "base_model.source", model, MAX_LOCATION_CHARS))
                  if base.get("source") is not None else
                  ("config.base_model", _text(config, "config.base_model", model, MAX_LOCATION_CHARS)))
    vae = _text(config, "config.vae", model, MAX_LOCATION_CHARS)
    return RunRecord(
        status=_text(result, "status", model, MAX_TEXT_CHARS),
        published={"model": bool(published["model"]), "lora": bool(published["lora"])},
        identifier=_text(identifier, "identifier.token", model, MAX_TEXT_CHARS),
        class_noun=_text(config, "config.class_noun", model, MAX_TEXT_CHARS),
        base_model=base_model if base_model[1] else None,
        vae=("config.vae", vae) if vae else None,
        resolution=(_number(training, "training.resolution", model)
                    or _number(config, "config.resolution", model)))


def location_problem(key: str, value: str, policy: OperatorPolicy) -> str | None:
    """Why generate must not read `value`, recorded at `key` of result.json (the module's rule),
    or None. The one place that rule lives: the command line's policy check, applied to a
    value the tenant wrote into a file instead of a flag, and stricter for hub ids."""
    shown = value if len(value) <= 120 else value[:120] + "..."
    if len(value) > MAX_LOCATION_CHARS or not value.isprintable():
        return (f"{RESULT_FILE}'s {key} {shown!r} is not one printable line of at most "
                f"{MAX_LOCATION_CHARS} characters")
    if has_url_credentials(value):
        return f"{RESULT_FILE}'s {key} {shown!r} must not carry credentials (user:password@)"
    try:
        locations.check(f"{RESULT_FILE}'s {key}", value, hub_id_ok=True)
    except InvalidInputError as exc:
        return str(exc)
    if policy.allowed_prefixes is None:
        return None
    if not (locations.is_s3(value) or value.startswith("/")):
        return (f"{RESULT_FILE}'s {key} {shown!r} is a hub id or a relative path: with "
                f"{ALLOWED_PREFIXES_ENV} set, generate reads a run's base model and VAE only "
                "under the prefixes it lists")
    # From here on the command line's rule for a location (config/policy_checks.py), so the two cannot drift.
    return place_problem(f"{RESULT_FILE}'s {key}", value, Place.LOCATION, policy)


def check_locations(record: RunRecord, model: str, policy: OperatorPolicy | None = None) -> None:
    """InvalidInputError naming `model` and the field for the first recorded location that
    `location_problem` refuses; `policy` defaults to this process's (OperatorPolicy.from_env)."""
    policy = policy or OperatorPolicy.from_env()
    for key, value in filter(None, (record.base_model, record.vae)):
        problem = location_problem(key, value, policy)
        if problem:
            raise InvalidInputError(f"--model {model}: {problem}")


def _malformed(model: str, why: str) -> InvalidInputError:
    return InvalidInputError(f"--model {model}: the run's {RESULT_FILE} {why}")


def _object(parent: dict[str, Any], key: str, model: str) -> dict[str, Any]:
    value = parent.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _malformed(model, f"is malformed: {key} is not an object")
    return value


def _text(parent: dict[str, Any], key: str, model: str, limit: int) -> str | None:
    value = parent.get(key.rpartition(".")[2])
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > limit:
        raise _malformed(model, f"is malformed: {key} is not a string of at most {limit} characters")
    return value


def _number(parent: dict[str, Any], key: str, model: str) -> int | None:
    value = parent.get(key.rpartition(".")[2])
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise _malformed(model, f"is malformed: {key} is not a positive integer")
    return value
