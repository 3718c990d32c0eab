"""What `generate --model` names: a finished run, and which of its weights to draw with.

    source = find_run("s3://runs/dog-42/")          # or s3://runs/dog-42/lora/, .../model/
    source.weights, source.identifier, source.class_noun, source.base_model

The run is trusted only once it is complete (its _SUCCESS marker, result.py) and its result.json
says it succeeded; the weights are read from the run's own layout (`<run>/model/`, `<run>/lora/`,
outputs.py), never from URIs inside result.json, which whoever wrote the run could point anywhere.
Everything else read from result.json is checked for type before use: it is a tenant's file.
A light module (no torch); `load_pipeline` imports the model stack when called.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dreambooth_job import storage
from dreambooth_job.exit_codes import InvalidInputError
from dreambooth_job.outputs import LORA_DIR, MODEL_DIR
from dreambooth_job.result import COMPLETION_MARKER, RESULT_FILE, output_locations, read_completed_result

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


def find_run(model: str) -> RunSource:
    """The run `model` names: a run's output prefix, or its model/ or lora/. InvalidInputError
    (one line naming `model`) when it holds no finished run or not the weights asked for."""
    run, wanted = model.rstrip("/") or model, None
    result = _completed_result(run, model)
    parent, _, last = run.rpartition("/")
    if result is None and parent and last in WEIGHTS:  # a run's model/ or lora/ (a run itself
        result = _completed_result(parent, model)      # may be named "lora": tried first)
        run, wanted = (parent, last) if result is not None else (run, None)
    if not isinstance(result, dict):
        raise InvalidInputError(
            f"--model {model} holds no finished run (no {RESULT_FILE} with its {COMPLETION_MARKER} "
            f"marker): give a run's output prefix, or its {MODEL_DIR}/ or {LORA_DIR}/")
    if result.get("status") != "succeeded":
        raise InvalidInputError(f"--model {model}: the run did not succeed (status "
                                f"{str(result.get('status'))[:40]!r} in {RESULT_FILE})")
    published = output_locations(result)
    has = {MODEL_DIR: bool(published["model"]), LORA_DIR: bool(published["lora"])}
    if wanted and not has[wanted]:
        other = next(w for w in WEIGHTS if w != wanted)
        hint = f"; it published {other}/" if has[other] else ""
        raise InvalidInputError(f"--model {model}: the run published no {wanted}/{hint}")
    weights = wanted or next((w for w in WEIGHTS if has[w]), None)
    if weights is None:
        raise InvalidInputError(f"--model {model}: the run's {RESULT_FILE} lists no "
                                f"{MODEL_DIR}/ or {LORA_DIR}/")
    config = _mapping(result.get("config"))
    return RunSource(
        run=run, weights=weights,
        identifier=_text(_mapping(result.get("identifier")).get("token"), "identifier.token", model),
        class_noun=_text(config.get("class_noun"), "config.class_noun", model),
        base_model=_optional_text(_mapping(result.get("base_model")).get("source"))
        or _optional_text(config.get("base_model")),
        vae=_optional_text(config.get("vae")),
        resolution=_optional_int(_mapping(result.get("training")).get("resolution"))
        or _optional_int(config.get("resolution")))


def load_pipeline(source: RunSource, cache_dir: str):
    """The pipeline to draw with, on the CPU in fp32: the run's model/, or its base model (with
    the run's --vae) and lora/'s adapters loaded as a user would (`load_lora_weights`)."""
    from dreambooth_job import models
    from dreambooth_job.lora_files import DIFFUSERS_WEIGHT_NAME

    if source.weights == MODEL_DIR:
        return models.load_pipeline(models.resolve_base_model(source.weights_uri, cache_dir), cache_dir)
    if not source.base_model:
        raise InvalidInputError(f"--model {source.run}: the LoRA run recorded no base model")
    base = models.resolve_base_model(source.base_model, cache_dir)
    pipeline = models.load_pipeline(base, cache_dir)
    pipeline, _ = models.with_vae(pipeline, base, source.vae, cache_dir)
    with tempfile.TemporaryDirectory(prefix="dreambooth-lora-") as local:
        adapter = storage.join(source.weights_uri, DIFFUSERS_WEIGHT_NAME)
        try:
            storage.download_file(adapter, Path(local, DIFFUSERS_WEIGHT_NAME))
        except FileNotFoundError:
            raise InvalidInputError(f"--model {source.run}: {LORA_DIR}/ holds no "
                                    f"{DIFFUSERS_WEIGHT_NAME}") from None
        try:
            pipeline.load_lora_weights(local, weight_name=DIFFUSERS_WEIGHT_NAME)
        except (ValueError, OSError, KeyError, RuntimeError) as exc:
            raise InvalidInputError(f"--model {source.run}: cannot apply {LORA_DIR}/"
                                    f"{DIFFUSERS_WEIGHT_NAME} to {source.base_model}: "
                                    f"{str(exc).splitlines()[0][:200]}") from None
    logger.info("LoRA adapters of %s applied to %s", source.run, source.base_model)
    return pipeline


def _completed_result(run: str, model: str) -> Any:
    """result.json of the completed run at `run`, or None."""
    try:
        return read_completed_result(run)
    except (ValueError, UnicodeDecodeError):  # JSON that does not parse
        raise InvalidInputError(f"--model {model}: the run's {RESULT_FILE} is not valid JSON") from None
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        return None


def _mapping(value: Any) -> dict:
    return value if isinstance(value, dict) else {}


def _text(value: Any, key: str, model: str) -> str:
    if not isinstance(value, str) or not value:
        raise InvalidInputError(f"--model {model}: the run's {RESULT_FILE} has no {key}")
    return value


def _optional_text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _optional_int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None
