"""The checks of `TrainConfig.validate` that are more than a field's declared bounds: the words
that go into labels, paths and prompts, and the storage locations."""

from __future__ import annotations

import dataclasses
import math
import re
import unicodedata
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from dreambooth_job.config import locations, outbound
from dreambooth_job.config.choices import BUILTIN_PROMPT_SETS, QUANTIZED_BASE_PRECISIONS
from dreambooth_job.config.field_types import flag_name
from dreambooth_job.config.operator_policy import ENV_PREFIX as OPERATOR_ENV_PREFIX
from dreambooth_job.config.operator_policy import OperatorPolicy
from dreambooth_job.config.option_fields import Place, accepted_choices, check_bounds, place_of
from dreambooth_job.config.subject_identifier import format_prompt
from dreambooth_job.exit_codes import InvalidInputError
from dreambooth_job.redaction import SECRET_ENV, has_url_credentials

if TYPE_CHECKING:
    from dreambooth_job.config.train_config import TrainConfig


def _field(config: TrainConfig, name: str) -> dataclasses.Field:
    return next(f for f in dataclasses.fields(config) if f.name == name)


def check_words(config: TrainConfig) -> None:
    """The identifier is one token; ids and the class noun go into labels, log lines, paths and
    prompts, so one line each. Then every template is filled as the job fills it, so that a
    noun or template that would fail in the pod fails here (e.g. at `batch` validation)."""
    if config.identifier != "auto" and not (config.identifier and all(map(_in_word, config.identifier))):
        raise InvalidInputError("--identifier must be one word without whitespace or control "
                                f"characters, got {config.identifier!r}")
    for name in ("subject_id", "job_id", "batch_id", "class_noun"):
        value = getattr(config, name)
        if value and not all(c == " " or _in_word(c) for c in value):
            raise InvalidInputError(f"{flag_name(name)} must be one line without control "
                                    f"characters, got {value!r}")
    noun = config.class_noun
    if noun is not None and (not noun.strip() or "{" in noun or "}" in noun):
        raise InvalidInputError(f"--class-noun must be words without braces, got {noun!r}")
    identifier = "x" if config.identifier == "auto" else config.identifier
    for f in (_field(config, n) for n in ("instance_prompt", "class_prompt", "validation_prompts")):
        value = getattr(config, f.name)
        for template in value if isinstance(value, list) else [value]:
            try:
                format_prompt(template, identifier, noun or "x")
            except InvalidInputError as exc:
                flag = f.metadata["flag"] or flag_name(f.name)
                raise InvalidInputError(f"{flag}: {exc.message}") from None


def check_locations(config: TrainConfig) -> None:
    """Every option declared to name a place carries no credentials; every storage location
    (Place.LOCATION) is an s3://bucket/prefix URI or a local path, and a model (Place.MODEL) may
    also be a hub id (org/name). Any other scheme fails here, not later in the pod."""
    for f in dataclasses.fields(config):
        place, value = place_of(f), getattr(config, f.name)
        if place is None or not value:
            continue
        if has_url_credentials(value):  # the value itself is never echoed
            raise InvalidInputError(
                f"{flag_name(f.name)} must not carry credentials (user:password@ in its URL): "
                "credentials come from a Secret through the environment")
        if place is not Place.URL and not (f.name == "prompt_set" and value in BUILTIN_PROMPT_SETS):
            locations.check(flag_name(f.name), value, hub_id_ok=place is Place.MODEL)
    if locations.is_s3(config.cache_dir):  # base models are unpacked there for from_pretrained
        raise InvalidInputError(
            f"--cache-dir {config.cache_dir!r} is not a local directory: expected a local path")
    locations.check("--cache-dir", config.cache_dir)


def _in_word(char: str) -> bool:
    """Not whitespace, a line break, or a control, format (zero-width, bidi) or unassigned code."""
    return not char.isspace() and unicodedata.category(char)[0] not in "CZ"


def validate_config(config: TrainConfig, *, require_inputs: bool = False) -> None:
    """Raise InvalidInputError naming the first bad field: declared bounds and choices first, then
    the rules that involve several options, locations, words and prompt templates."""
    if require_inputs:
        missing = [f.name for f in dataclasses.fields(config)
                   if f.metadata["required"] and not getattr(config, f.name)]
        if missing:
            raise InvalidInputError(
                "missing required option(s): " + ", ".join(flag_name(n) for n in missing))
    _validate_present(config)  # first: a null (from a file or a row) would fail with a TypeError
    _validate_finite(config)  # inf and nan slip through comparisons with bounds
    for f in dataclasses.fields(config):
        check_bounds(f, getattr(config, f.name))
    for f in dataclasses.fields(config):
        choices = accepted_choices(f)
        if choices and getattr(config, f.name) not in choices:
            raise InvalidInputError(
                f"{flag_name(f.name)} must be one of {', '.join(f.metadata['choices'])}, "
                f"got {getattr(config, f.name)!r}")
    if config.caption_dropout_prompt != "instance" and not config.caption_dropout:
        raise InvalidInputError(f"--caption-dropout-prompt {config.caption_dropout_prompt} has no "
                                "effect without --caption-dropout: add it or drop this option")
    if config.compile_mode != "default" and not config.compile_unet:
        raise InvalidInputError(f"--compile-mode {config.compile_mode} has no effect without "
                                "--compile-unet: add --compile-unet or drop --compile-mode")
    for target in config.lora_target_modules:
        if not re.fullmatch(r"[A-Za-z0-9_]+(\.[A-Za-z0-9_]+)*", target):
            raise InvalidInputError(f"--lora-target-modules must name layers (e.g. to_q or "
                                    f"to_out.0), got {target[:80]!r}")
    if not config.lora_target_modules:
        raise InvalidInputError("--lora-target-modules must name at least one layer")
    check_base_precision(config)
    if config.use_8bit_adam and config.optimizer not in ("adamw", "adamw-8bit"):
        raise InvalidInputError(f"--use-8bit-adam means --optimizer adamw-8bit, not --optimizer "
                                f"{config.optimizer}: drop one of them")
    if config.train_mode == "lora" and config.lora_variant == "dora" and config.train_text_encoder:
        # transformers' load_adapter (under diffusers' load_lora_weights) leaves a text encoder's
        # DoRA magnitudes at their initial values (transformers 5.x, peft 0.21): the published
        # diffusers file would load as another model than the one trained.
        raise InvalidInputError("--lora-variant dora with --train-text-encoder: diffusers' loader "
                                "does not restore a text encoder's DoRA magnitudes; drop one of them")
    if config.train_mode == "lora" and config.lora_variant == "lokr" and config.lora_dropout:
        raise InvalidInputError("--lora-dropout applies to --lora-variant lora and dora, not lokr")
    if config.prior_preservation and config.num_class_images < 1:
        raise InvalidInputError("--num-class-images must be at least 1 with prior preservation")
    check_locations(config)
    check_words(config)
    check_notify(config)


def check_base_precision(config: TrainConfig) -> None:
    """A quantized base is a frozen one: LoRA trains on top of it; full fine-tuning would train
    the quantized weights themselves, and a merge would fold the adapters into them."""
    precision = config.base_precision
    if precision not in QUANTIZED_BASE_PRECISIONS:
        return
    if config.train_mode != "lora":
        raise InvalidInputError(f"--base-precision {precision} quantizes a frozen base and needs "
                                f"--train-mode lora (got {config.train_mode}): drop it or train LoRA")
    for name in ("lora_merge", "export_single_file"):
        if getattr(config, name):
            raise InvalidInputError(f"{flag_name(name)} merges the adapters into the base, which "
                                    f"--base-precision {precision} quantizes: drop one of them")
    if config.lora_variant != "lora":
        # DoRA renormalises, and LoKr rebuilds, each adapted weight from the base's: not verified
        # on torchao's float8 or bitsandbytes' 4-bit layers (CUDA only), so not offered.
        raise InvalidInputError(f"--lora-variant {config.lora_variant} needs the base's own weights; "
                                f"--base-precision {precision} quantizes them: drop one of them")


def check_notify(config: TrainConfig) -> None:
    """The completion call goes to an http(s) host, not an internal address the operator has not
    allowed (the operator's env: submit, batch and the pod alike); its key comes from a variable
    of its own, not one the job reads as a credential or an operator setting."""
    if config.notify_url is not None:
        try:
            parts = urlsplit(config.notify_url)
            host = parts.hostname
        except ValueError:
            parts, host = None, None
        if parts is None or parts.scheme not in ("http", "https") or not host:
            raise InvalidInputError("--notify-url must be an http:// or https:// URL with a host")
        internal = outbound.check_literal(config.notify_url)  # names are resolved in the pod
        if internal and not outbound.internal_allowed(OperatorPolicy.from_env()):
            raise InvalidInputError(f"--notify-url names an internal address: {internal}; "
                                    f"{outbound.ALLOWANCE}")
    name = config.notify_secret_env
    if name is None:
        return
    if not config.notify_url:
        raise InvalidInputError("--notify-secret-env has no effect without --notify-url: "
                                "add --notify-url or drop --notify-secret-env")
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
        raise InvalidInputError("--notify-secret-env must be an environment variable name "
                                f"(letters, digits, '_'), got {name[:80]!r}")
    if name in SECRET_ENV or name.startswith(OPERATOR_ENV_PREFIX):
        raise InvalidInputError(f"--notify-secret-env {name} names a variable the job reads for "
                                "itself: give the signing key a variable of its own")


def _validate_present(config: TrainConfig) -> None:
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if value is None and "None" not in str(f.type):
            raise InvalidInputError(f"{flag_name(f.name)} needs a value, got null")
        if isinstance(value, list) and not all(isinstance(item, str) for item in value):
            raise InvalidInputError(f"{flag_name(f.name)} takes text values only")


def _validate_finite(config: TrainConfig) -> None:
    # inf and nan pass the bounds (nan compares false to everything) and train a NaN model.
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if isinstance(value, float) and not math.isfinite(value):
            raise InvalidInputError(f"{flag_name(f.name)} must be a finite number, got {value}")
