"""What `generate --model` names: a finished run, and which of its weights to draw with.

    source = find_run("s3://runs/dog-42/")          # or s3://runs/dog-42/lora/, .../model/
    source.weights, source.identifier, source.class_noun, source.base_model

The run is trusted only once it is complete (its _SUCCESS marker, outputs/result.py) and its result.json
says it succeeded. The weights are read from the run's own layout (`<run>/model/`, `<run>/lora/`,
outputs/weight_files.py), never from the output URIs inside result.json. A LoRA run's adapters go onto the
base model (and VAE) its result.json records: that file is the tenant's to rewrite, so it is read
by recorded.py (bounded, typed) and each of those locations must pass `recorded.location_problem`
(a location, and under the operator's prefixes when DREAMBOOTH_OPERATOR_ALLOWED_PREFIXES is set)
before anything is downloaded.
A light module (no torch); `load_pipeline` imports the model stack when called.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path

from dreambooth_job.config.operator_policy import OperatorPolicy
from dreambooth_job.exit_codes import InvalidInputError
from dreambooth_job.generation.recorded import check_locations, read_record
from dreambooth_job.outputs.lora_writers import DIFFUSERS_WEIGHT_NAME
from dreambooth_job.outputs.result import COMPLETION_MARKER, RESULT_FILE
from dreambooth_job.outputs.weight_files import LORA_DIR, MODEL_DIR
from dreambooth_job.storage import places as storage
from dreambooth_job.training import base_models

logger = logging.getLogger("dreambooth_job")
WEIGHTS = (MODEL_DIR, LORA_DIR)


@dataclass(frozen=True)
class RunSource:
    """A finished run and the weights `generate` draws with."""

    run: str
    """The run's output prefix (s3:// or a directory)."""
    weights: str
    """"model" (the run's diffusers pipeline) or "lora" (its adapters on `base_model`)."""
    identifier: str
    class_noun: str
    base_model: str | None
    """The base model the run recorded (what LoRA adapters are applied to)."""
    vae: str | None
    """The run's --vae, applied with the base model for LoRA runs."""
    resolution: int | None
    """The run's training resolution."""

    @property
    def weights_uri(self) -> str:
        return storage.join(self.run, self.weights)


def find_run(model: str, policy: OperatorPolicy | None = None) -> RunSource:
    """The run `model` names: a run's output prefix, or its model/ or lora/. InvalidInputError
    (one line naming `model`) when it holds no finished run or not the weights asked for, or
    when its result.json is malformed or records a base model or VAE that `policy` (default:
    this process's, OperatorPolicy.from_env) does not allow."""
    run, wanted = model.rstrip("/") or model, None
    record = read_record(run, model)
    parent, _, last = run.rpartition("/")
    if record is None and parent and last in WEIGHTS:  # a run's model/ or lora/ (a run itself
        record = read_record(parent, model)            # may be named "lora": tried first)
        run, wanted = (parent, last) if record is not None else (run, None)
    if record is None:
        raise InvalidInputError(
            f"--model {model} holds no finished run (no {RESULT_FILE} with its {COMPLETION_MARKER} "
            f"marker): give a run's output prefix, or its {MODEL_DIR}/ or {LORA_DIR}/")
    if record.status != "succeeded":
        raise InvalidInputError(f"--model {model}: the run did not succeed (status "
                                f"{str(record.status)[:40]!r} in {RESULT_FILE})")
    has = record.published
    if wanted and not has[wanted]:
        other = next(w for w in WEIGHTS if w != wanted)
        hint = f"; it published {other}/" if has[other] else ""
        raise InvalidInputError(f"--model {model}: the run published no {wanted}/{hint}")
    weights = wanted or next((w for w in WEIGHTS if has[w]), None)
    if weights is None:
        raise InvalidInputError(f"--model {model}: the run's {RESULT_FILE} lists no "
                                f"{MODEL_DIR}/ or {LORA_DIR}/")
    lora = weights == LORA_DIR
    if lora:  # the only weights read from places result.json names
        check_locations(record, model, policy)
    return RunSource(
        run=run, weights=weights,
        identifier=_required(record.identifier, "identifier.token", model),
        class_noun=_required(record.class_noun, "config.class_noun", model),
        base_model=record.base_model[1] if lora and record.base_model else None,
        vae=record.vae[1] if lora and record.vae else None,
        resolution=record.resolution)


def load_pipeline(source: RunSource, cache_dir: str):
    """The pipeline to draw with, on the CPU in fp32: the run's model/, or its base model (with
    the run's --vae) and lora/'s adapters loaded as a user would (`load_lora_weights`); a LoKr
    run's, which only its LyCORIS file holds, from that file."""

    if source.weights == MODEL_DIR:
        base = base_models.resolve_base_model(source.weights_uri, cache_dir)
        return base_models.load_pipeline(base, cache_dir)
    if not source.base_model:
        raise InvalidInputError(f"--model {source.run}: the LoRA run recorded no base model")
    base = base_models.resolve_base_model(source.base_model, cache_dir)
    pipeline = base_models.load_pipeline(base, cache_dir)
    pipeline, _ = base_models.with_vae(pipeline, base, source.vae, cache_dir)
    with tempfile.TemporaryDirectory(prefix="dreambooth-lora-") as local:
        adapter = storage.join(source.weights_uri, DIFFUSERS_WEIGHT_NAME)
        try:
            storage.download_file(adapter, Path(local, DIFFUSERS_WEIGHT_NAME))
        except FileNotFoundError:
            name = _apply_lycoris_file(pipeline, source, Path(local))
        else:
            name = DIFFUSERS_WEIGHT_NAME
            try:
                pipeline.load_lora_weights(local, weight_name=DIFFUSERS_WEIGHT_NAME)
            except (ValueError, OSError, KeyError, RuntimeError) as exc:
                raise InvalidInputError(f"--model {source.run}: cannot apply {LORA_DIR}/"
                                        f"{DIFFUSERS_WEIGHT_NAME} to {source.base_model}: "
                                        f"{str(exc).splitlines()[0][:200]}") from None
    logger.info("LoRA adapters of %s (%s/%s) applied to %s", source.run, LORA_DIR, name,
                source.base_model)
    return pipeline


def _apply_lycoris_file(pipeline, source: RunSource, local: Path) -> str:
    """A --lora-variant lokr run's adapters, which only its kohya/LyCORIS file holds (diffusers'
    SD/SDXL loaders read no LoKr, outputs/weight_files.py), applied as training had them
    (outputs/lora_readers.py); returns the file's name."""
    from dreambooth_job.outputs import lora_readers  # deferred: torch is heavy

    files = [f for f in storage.list_files(source.weights_uri, suffixes=[".safetensors"])
             if "/" not in f.relative_path]
    path = local / files[0].relative_path if len(files) == 1 else None
    if path is not None:
        storage.download_file(storage.join(source.weights_uri, files[0].relative_path), path, files[0])
    if path is None or not lora_readers.is_lokr_file(path):
        raise InvalidInputError(f"--model {source.run}: {LORA_DIR}/ holds no {DIFFUSERS_WEIGHT_NAME} "
                                "(nor a LoKr run's one LyCORIS file)")
    try:
        lora_readers.apply_lokr_file(pipeline, path)
    except InvalidInputError as exc:
        raise InvalidInputError(f"--model {source.run}: cannot apply {LORA_DIR}/{exc} to "
                                f"{source.base_model}") from None
    return path.name


def _required(value: str | None, key: str, model: str) -> str:
    if not value:
        raise InvalidInputError(f"--model {model}: the run's {RESULT_FILE} has no {key}")
    return value
