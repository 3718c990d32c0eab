"""The job's configuration: one typed dataclass, the single source of truth for option names,
types, defaults and help.

The CLI flags, the `DREAMBOOTH_<OPTION>` environment variables, YAML/JSON config files, the Helm
chart's values and the Kubernetes manifest builder are all derived from `TrainConfig`'s fields.
Precedence when resolving: flag > environment > config file > default.

This module is a leaf: it imports nothing heavy, so `dreambooth_job.k8s` can use it without torch.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import types
import typing
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from dreambooth_job import locations
from dreambooth_job.config_files import load_yaml, read_text_file, yaml_reason
from dreambooth_job.exit_codes import InvalidInputError
from dreambooth_job.identifiers import format_prompt
from dreambooth_job.redaction import has_url_credentials

ENV_PREFIX = "DREAMBOOTH_"
DEFAULT_BASE_MODEL = "stable-diffusion-v1-5/stable-diffusion-v1-5"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")
MIXED_PRECISION_CHOICES = ("auto", "no", "fp16", "bf16")
LR_SCHEDULER_CHOICES = (
    "constant",
    "constant_with_warmup",
    "linear",
    "cosine",
    "cosine_with_restarts",
    "polynomial",
)
LOG_FORMAT_CHOICES = ("auto", "json", "text")
MAX_LEASE_WAIT_SECONDS = 86400
ADAM_IMPL_CHOICES = ("auto", "fused", "foreach", "loop")
ATTENTION_BACKEND_CHOICES = ("auto", "math", "efficient", "flash", "cudnn", "eager")
COMPILE_MODE_CHOICES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
# Options naming a place (s3://, a hub id, a directory, an http URL). A URL among them never
# carries credentials: they would travel in Job args, batch files and result.json.
URI_OPTIONS = ("instance_data", "output", "base_model", "cache_dir", "class_data", "prompt_set",
               "dino_model", "clip_model", "lpips_model", "pushgateway")
DEFAULT_VALIDATION_PROMPTS = (
    "a {identifier} {class_noun} in the jungle",
    "a {identifier} {class_noun} on the beach",
    "a {identifier} {class_noun} in the snow",
    "a red {identifier} {class_noun}",
)


def _default_cache_dir() -> str:
    return str(Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "dreambooth-job")


def option(default: Any = None, *, help: str, flag: str | None = None,
           choices: tuple[str, ...] | None = None, required: bool = False,
           default_factory: Any = None) -> Any:
    """A config field with its help text; `flag` overrides the generated `--name/--no-name` form."""
    metadata = {"help": help, "flag": flag, "choices": choices, "required": required}
    if default_factory is not None:
        return field(default_factory=default_factory, metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass(kw_only=True)
class TrainConfig:
    """Everything one DreamBooth job needs to know. Field docs double as `--help` text."""

    # --- inputs and outputs -------------------------------------------------------------------
    instance_data: str | None = option(
        required=True,
        help="s3://bucket/prefix/ or local directory with the subject photos (jpg, jpeg, png, webp).")
    class_noun: str | None = option(
        required=True, help="The subject's class, e.g. 'dog' or 'backpack'.")
    output: str | None = option(
        required=True,
        help="s3://bucket/prefix/ or local directory that receives model/, samples/, result.json.")
    base_model: str = option(
        DEFAULT_BASE_MODEL,
        help="Diffusers pipeline to fine-tune: a hub id, a local directory or an s3:// prefix.")
    cache_dir: str = option(
        default_factory=_default_cache_dir,
        help="Local directory for downloaded base models and other caches.")
    job_id: str | None = option(
        help="Id of this run in logs, metrics and result.json (default: derived from subject id).")
    subject_id: str | None = option(
        help="Id of the subject (default: last path component of --instance-data).")

    # --- prompts --------------------------------------------------------------------------------
    identifier: str = option(
        "auto",
        help="Rare token naming the subject, or 'auto' to pick a rare single token of the "
             "model's tokenizer deterministically.")
    instance_prompt: str = option(
        "a {identifier} {class_noun}", help="Prompt of the subject photos.")
    class_prompt: str = option("a {class_noun}", help="Prompt of the prior-preservation images.")

    # --- prior preservation ---------------------------------------------------------------------
    prior_preservation: bool = option(
        True, help="Add the class-specific prior-preservation loss (the paper's default).")
    prior_loss_weight: float = option(1.0, help="Weight (lambda) of the prior-preservation loss.")
    num_class_images: int = option(200, help="Number of class images for prior preservation.")
    class_data: str | None = option(
        help="s3:// prefix or directory caching class images across jobs "
             "(default: <cache-dir>/class-images).")

    # --- data -----------------------------------------------------------------------------------
    resolution: int = option(512, help="Training resolution in pixels (square).")
    center_crop: bool = option(
        True, flag="--center-crop/--random-crop", help="Crop photos at the centre or at random.")
    random_flip: bool = option(False, help="Flip photos horizontally at random.")
    min_images: int = option(1, help="Fail when fewer valid subject photos remain.")
    min_image_side: int = option(256, help="Reject photos whose shorter side is below this.")
    max_image_pixels: int = option(
        80_000_000, help="Reject photos with more pixels than this (decompression-bomb guard).")
    max_photos: int = option(
        100, help="Fail (exit 2) before downloading when --instance-data holds more photos than this.")
    max_photos_bytes: int = option(
        1 << 30, help="Fail (exit 2) before downloading when the photos under --instance-data add up "
                      "to more bytes than this.")

    # --- training -------------------------------------------------------------------------------
    max_train_steps: int = option(800, help="Optimizer steps to train.")
    learning_rate: float = option(5e-6, help="Peak learning rate (full fine-tuning).")
    lr_scheduler: str = option(
        "constant", choices=LR_SCHEDULER_CHOICES, help="Learning-rate schedule.")
    lr_warmup_steps: int = option(0, help="Learning-rate warm-up steps.")
    train_batch_size: int = option(1, help="Subject photos per step (class images: the same).")
    gradient_accumulation_steps: int = option(1, help="Micro-batches per optimizer step.")
    train_text_encoder: bool = option(False, help="Fine-tune the text encoder as well as the UNet.")
    mixed_precision: str = option(
        "auto", choices=MIXED_PRECISION_CHOICES,
        help="auto: bf16 on CUDA that supports it, fp16 on other CUDA, no on CPU.")
    gradient_checkpointing: bool | None = option(
        help="Recompute activations to save memory (default auto: on CUDA only when training "
             "would not fit in free device memory without it; off on CPU).")
    use_8bit_adam: bool = option(False, help="Use bitsandbytes' 8-bit AdamW (CUDA, extra 'bnb').")
    cache_latents: bool = option(
        True, help="VAE-encode each image and text-encode each prompt once, not every step.")
    adam_impl: str = option(
        "auto", choices=ADAM_IMPL_CHOICES,
        help="AdamW kernel: fused (one kernel for all parameters), foreach, or loop (one parameter "
             "at a time); auto: fused.")
    attention_backend: str = option(
        "auto", choices=ATTENTION_BACKEND_CHOICES,
        help="UNet attention: auto (PyTorch's SDPA picks a kernel); math, efficient, flash or cudnn "
             "(pin that SDPA kernel); eager (matmul and softmax, no SDPA).")
    channels_last: bool | None = option(
        help="Lay out UNet weights and activations channels-last (default: on for CUDA, off on CPU).")
    compile_unet: bool = option(
        False, help="torch.compile the UNet: a slow first step, then faster steps.")
    compile_mode: str = option(
        "default", choices=COMPILE_MODE_CHOICES,
        help="torch.compile mode of --compile-unet; reduce-overhead replays the UNet's kernels as "
             "CUDA graphs, for steps bound by the host's kernel launches (docs/benchmarks.md).")
    tf32: bool = option(True, help="Allow TF32 matmuls and convolutions on CUDA (Ampere and newer).")
    adam_weight_decay: float = option(1e-2, help="AdamW weight decay.")
    max_grad_norm: float = option(1.0, help="Gradient clipping norm (0 disables).")
    seed: int = option(0, help="Seed of everything random; CPU runs are deterministic given it.")
    log_every: int = option(
        10, help="Report progress (metrics, progress bar or line) every N steps: the loss is read "
                 "from the device only then.")
    progress_interval_seconds: float = option(
        30.0, help="Off a terminal, write a progress log line at most this often (0: at every report).")

    # --- sampling -------------------------------------------------------------------------------
    validation_prompts: list[str] = option(
        default_factory=lambda: list(DEFAULT_VALIDATION_PROMPTS), flag="--validation-prompt",
        help="Prompt of the sample grids (repeatable; {identifier} and {class_noun} filled in).")
    num_validation_images: int = option(4, help="Images per validation prompt (grid columns).")
    sample_every: int = option(0, help="Sample grids every N steps; 0 = only at the end.")
    sample_steps: int = option(25, help="Sampler steps for class and validation images.")
    guidance_scale: float = option(7.5, help="Classifier-free guidance scale when sampling.")
    sample_batch_size: int = option(4, help="Images generated per sampler call.")

    # --- evaluation -----------------------------------------------------------------------------
    evaluate: bool = option(
        False, help="Evaluate the model like the paper (DINO, CLIP-I, CLIP-T, PRES, DIV) at the end.")
    prompt_set: str = option(
        "auto",
        help="Evaluation prompts: object, live (the paper's 25 each), auto (live for dogs and cats, "
             "else object) or a file / s3:// URI with one {identifier} {class_noun} template a line.")
    images_per_prompt: int = option(4, help="Evaluation images per prompt (the paper: 4).")
    eval_max_prompts: int = option(
        0, help="Evaluate on at most this many prompts, spread over the set (0: all 25).")
    eval_class_images: int = option(
        16, help="Images of the class prompt generated for PRES (0: skip PRES).")
    dino_model: str | None = option(
        "facebook/dino-vits16",
        help="DINO ViT-S/16 for DINO, PRES and the DIV fallback: hub id, directory or s3:// prefix.")
    clip_model: str | None = option(
        "openai/clip-vit-base-patch32",
        help="CLIP model for CLIP-I and CLIP-T: hub id, directory or s3:// prefix.")
    lpips_model: str | None = option(
        help="Directory or s3:// prefix with LPIPS weights (alexnet.pth, lpips_alex.pth) for DIV; "
             "without it DIV is reported unavailable and div_dino is given instead.")

    # --- checkpoints and lifecycle -------------------------------------------------------------
    checkpoint_every: int = option(200, help="Write a resumable checkpoint every N steps (0: never).")
    checkpoint_interval_minutes: float = option(
        15.0, help="Also checkpoint when this many minutes passed since the last one (0: never).")
    checkpoints_keep: int = option(2, help="Complete checkpoints kept; older ones are pruned.")
    termination_grace_seconds: float = option(
        25.0, help="On SIGTERM/SIGINT, time allowed to finish the step and save a checkpoint.")
    restart: bool = option(
        False, help="Ignore existing checkpoints whose config conflicts and start from step 0.")
    force: bool = option(False, help="Retrain even if --output holds a completed run.")
    lease_wait_seconds: float = option(
        600.0, help="While another Job holds the output's lease, wait this long for it before "
                    "exiting 75 (the lease's TTL: a dead holder's lease expires within it).")

    # --- operations -----------------------------------------------------------------------------
    batch_id: str | None = option(help="Id of the overnight batch this job belongs to, if any.")
    metrics_port: int = option(9090, help="Port of the /metrics and /healthz server (0 disables).")
    pushgateway: str | None = option(
        help="Prometheus Pushgateway URL to push the job's metrics to at phase changes and exit.")
    log_format: str = option(
        "auto", choices=LOG_FORMAT_CHOICES,
        help="json: one object per line; text: human lines; auto: json unless on a terminal.")
    storage_credentials_wait_seconds: float = option(
        60.0, help="At start-up, wait up to this long for usable S3 credentials (IRSA or pod "
                   "identity not ready: none found, expired or invalid token), retrying with "
                   "backoff, before exiting with code 75 (0: do not wait).")

    def __post_init__(self) -> None:
        self.validate()

    # ------------------------------------------------------------------------------------------
    def validate(self, *, require_inputs: bool = False) -> None:
        """Raise InvalidInputError naming the first bad field."""
        if require_inputs:
            missing = [f.name for f in fields() if f.metadata["required"] and not getattr(self, f.name)]
            if missing:
                raise InvalidInputError(
                    "missing required option(s): " + ", ".join(flag_name(n) for n in missing))
        self._validate_finite()  # first: inf and nan slip through comparisons with bounds
        for name in ("resolution", "max_train_steps", "train_batch_size",
                     "gradient_accumulation_steps", "num_validation_images", "sample_steps",
                     "sample_batch_size", "min_images", "min_image_side", "max_image_pixels",
                     "max_photos", "max_photos_bytes", "log_every", "images_per_prompt"):
            if getattr(self, name) < 1:
                raise InvalidInputError(f"{flag_name(name)} must be at least 1, got {getattr(self, name)}")
        for name in ("num_class_images", "lr_warmup_steps", "sample_every", "seed",
                     "prior_loss_weight", "adam_weight_decay", "max_grad_norm", "checkpoint_every",
                     "checkpoint_interval_minutes", "checkpoints_keep", "termination_grace_seconds",
                     "metrics_port", "eval_max_prompts", "eval_class_images",
                     "progress_interval_seconds", "storage_credentials_wait_seconds"):
            if getattr(self, name) < 0:
                raise InvalidInputError(f"{flag_name(name)} must not be negative, got {getattr(self, name)}")
        if not 0 <= self.lease_wait_seconds <= MAX_LEASE_WAIT_SECONDS:
            raise InvalidInputError(f"--lease-wait-seconds must be between 0 and {MAX_LEASE_WAIT_SECONDS}, "
                                    f"got {self.lease_wait_seconds}")
        if not self.learning_rate > 0:
            raise InvalidInputError(f"--learning-rate must be positive, got {self.learning_rate}")
        if self.metrics_port > 65535:
            raise InvalidInputError(f"--metrics-port must be at most 65535, got {self.metrics_port}")
        if self.resolution % 8:
            raise InvalidInputError(f"--resolution must be a multiple of 8, got {self.resolution}")
        for f in fields():
            choices = f.metadata["choices"]
            if choices and getattr(self, f.name) not in choices:
                raise InvalidInputError(
                    f"{flag_name(f.name)} must be one of {', '.join(choices)}, "
                    f"got {getattr(self, f.name)!r}")
        if self.compile_mode != "default" and not self.compile_unet:
            raise InvalidInputError(f"--compile-mode {self.compile_mode} has no effect without "
                                    "--compile-unet: add --compile-unet or drop --compile-mode")
        if "{identifier}" not in self.instance_prompt:
            raise InvalidInputError("--instance-prompt must contain {identifier}")
        if self.prior_preservation and self.num_class_images < 1:
            raise InvalidInputError("--num-class-images must be at least 1 with prior preservation")
        for name in URI_OPTIONS:
            if has_url_credentials(getattr(self, name) or ""):  # the value itself is never echoed
                raise InvalidInputError(
                    f"{flag_name(name)} must not carry credentials (user:password@ in its URL): "
                    "credentials come from a Secret through the environment")
        self._validate_locations()
        self._validate_words()

    def _validate_finite(self) -> None:
        # inf and nan pass the bounds (nan compares false to everything) and train a NaN model.
        for f in fields():
            value = getattr(self, f.name)
            if isinstance(value, float) and not math.isfinite(value):
                raise InvalidInputError(f"{flag_name(f.name)} must be a finite number, got {value}")

    def _validate_words(self) -> None:
        """The identifier is one token; ids and the class noun go into labels, log lines, paths and
        prompts, so one line each. Then every template is filled as the job fills it, so that a
        noun or template that would fail in the pod fails here (e.g. at `batch` validation)."""
        if self.identifier != "auto" and not (self.identifier and all(map(_in_word, self.identifier))):
            raise InvalidInputError("--identifier must be one word without whitespace or control "
                                    f"characters, got {self.identifier!r}")
        for name in ("subject_id", "job_id", "batch_id", "class_noun"):
            value = getattr(self, name)
            if value and not all(c == " " or _in_word(c) for c in value):
                raise InvalidInputError(f"{flag_name(name)} must be one line without control "
                                        f"characters, got {value!r}")
        noun = self.class_noun
        if noun is not None and (not noun.strip() or "{" in noun or "}" in noun):
            raise InvalidInputError(f"--class-noun must be words without braces, got {noun!r}")
        identifier = "x" if self.identifier == "auto" else self.identifier
        for f in (_FIELDS_BY_NAME[n] for n in ("instance_prompt", "class_prompt", "validation_prompts")):
            value = getattr(self, f.name)
            for template in value if isinstance(value, list) else [value]:
                try:
                    format_prompt(template, identifier, noun or "x")
                except InvalidInputError as exc:
                    flag = f.metadata["flag"] or flag_name(f.name)
                    raise InvalidInputError(f"{flag}: {exc.message}") from None

    def _validate_locations(self) -> None:
        """Every storage location is an s3://bucket/prefix URI or a local path; models may also be
        hub ids (org/name). Any other scheme fails here, not later in the pod."""
        for name in ("instance_data", "output", "class_data", "lpips_model", "base_model",
                     "dino_model", "clip_model"):
            locations.check(flag_name(name), getattr(self, name),
                            hub_id_ok=name in ("base_model", "dino_model", "clip_model"))
        if self.prompt_set not in ("auto", "object", "live"):
            locations.check("--prompt-set", self.prompt_set)
        if locations.is_s3(self.cache_dir):  # base models are unpacked there for from_pretrained
            raise InvalidInputError(
                f"--cache-dir {self.cache_dir!r} is not a local directory: expected a local path")
        locations.check("--cache-dir", self.cache_dir)

    # ------------------------------------------------------------------------------------------
    @property
    def resolved_subject_id(self) -> str:
        """--subject-id, else the last path component of --instance-data, made label-safe."""
        if self.subject_id:
            return self.subject_id
        name = (self.instance_data or "").rstrip("/").rsplit("/", 1)[-1]
        return re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-") or "subject"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def resolve(cls, flags: Mapping[str, Any] | None = None, env: Mapping[str, str] | None = None,
                config_file: str | os.PathLike | None = None) -> TrainConfig:
        """Merge the sources, flag > env > file > default; `None` flag values count as unset."""
        values: dict[str, Any] = {}
        if config_file:
            values.update(load_config_file(config_file))
        values.update(values_from_env(os.environ if env is None else env))
        values.update({k: v for k, v in (flags or {}).items() if v is not None})
        return cls(**values)


# ----------------------------------------------------------------------------------------------
# Field introspection shared by the CLI, env and file loaders and the manifest builder.

def fields() -> tuple[dataclasses.Field, ...]:
    return dataclasses.fields(TrainConfig)


_FIELDS_BY_NAME = {f.name: f for f in dataclasses.fields(TrainConfig)}


def flag_name(name: str) -> str:
    return "--" + name.replace("_", "-")


def env_name(name: str) -> str:
    return ENV_PREFIX + name.upper()


def base_type(f: dataclasses.Field) -> type:
    """The field's scalar type: `int` for `int`, `str` for `str | None`, `str` for `list[str]`."""
    hint = typing.get_type_hints(TrainConfig)[f.name]
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
    if typing.get_origin(hint) is list:
        return typing.get_args(hint)[0]
    return hint


def is_list(f: dataclasses.Field) -> bool:
    return typing.get_origin(typing.get_type_hints(TrainConfig)[f.name]) is list


def default_of(f: dataclasses.Field) -> Any:
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return f.default


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def _in_word(char: str) -> bool:
    """Not whitespace, a line break, or a control, format (zero-width, bidi) or unassigned code."""
    return not char.isspace() and unicodedata.category(char)[0] not in "CZ"


def _short(raw: Any) -> str:
    text = repr(raw)
    return text if len(text) <= 80 else text[:77] + "..."


def parse_value(name: str, raw: Any, source: str) -> Any:
    """Convert a value from an env var or config file to the field's type, naming the source on error."""
    f = _FIELDS_BY_NAME[name]
    kind = base_type(f)
    if raw is None:
        return None
    if is_list(f):
        if isinstance(raw, str):
            raw = _env_list(name, raw, source)
        if not isinstance(raw, (list, tuple)):
            raise InvalidInputError(f"{source}: {name} must be a list, got {_short(raw)}")
        for item in raw:
            if not isinstance(item, (str, int, float)):
                raise InvalidInputError(f"{source}: every item of {name} must be a single "
                                        f"{kind.__name__}, got {_short(item)}")
        return [str(item) for item in raw]
    if not isinstance(raw, (str, int, float)):
        # A list or mapping (or a YAML date) would otherwise be stringified into the option.
        raise InvalidInputError(f"{source}: {name} must be a single {kind.__name__}, got "
                                f"{type(raw).__name__} {_short(raw)}")
    try:
        if kind is bool:
            if isinstance(raw, bool):
                return raw
            text = str(raw).strip().lower()
            if text == "auto" and f.default is None:
                return None
            if text in _TRUE | _FALSE:
                return text in _TRUE
            raise ValueError(raw)
        if kind is int and isinstance(raw, float) and not raw.is_integer():
            raise ValueError(raw)
        if kind in (int, float) and isinstance(raw, bool):
            raise ValueError(raw)
        return kind(raw)
    except (TypeError, ValueError, OverflowError):
        raise InvalidInputError(
            f"{source}: {name} must be {kind.__name__}, got {_short(raw)}") from None


def _env_list(name: str, raw: str, source: str) -> Any:
    """An env var's list: a JSON list, or one item per line."""
    if not raw.strip().startswith("["):
        return [s for s in raw.splitlines() if s]
    try:
        return json.loads(raw)
    except (ValueError, RecursionError) as exc:
        reason = exc.msg if isinstance(exc, json.JSONDecodeError) else "nested too deeply"
        raise InvalidInputError(f"{source}: {name} is not a valid JSON list ({reason})") from None


def values_from_env(env: Mapping[str, str]) -> dict[str, Any]:
    values = {}
    for f in fields():
        key = env_name(f.name)
        if key in env and env[key] != "":
            values[f.name] = parse_value(f.name, env[key], f"environment variable {key}")
    return values


def load_config_file(path: str | os.PathLike) -> dict[str, Any]:
    """Read a YAML or JSON config file; keys may be snake_case or kebab-case."""
    text = read_text_file(path, "config file")
    try:
        data = load_yaml(text) or {}
    except yaml.YAMLError as exc:
        raise InvalidInputError(f"config file {path} is not valid YAML/JSON: {yaml_reason(exc)}") from None
    if not isinstance(data, dict):
        raise InvalidInputError(f"config file {path} must hold a mapping of option names to values")
    return normalize_keys(data, source=f"config file {path}")


def normalize_keys(data: Mapping[str, Any], source: str) -> dict[str, Any]:
    """Map kebab/snake keys to field names and parse values, rejecting unknown keys by name."""
    values = {}
    for key, raw in data.items():
        name = str(key).replace("-", "_")
        if name not in _FIELDS_BY_NAME:
            raise InvalidInputError(f"{source}: unknown option {key!r}")
        values[name] = parse_value(name, raw, source)
    return values


def to_cli_args(config: TrainConfig) -> list[str]:
    """The `train` arguments that reproduce `config`: only values that differ from the defaults."""
    args: list[str] = []
    for f in fields():
        value = getattr(config, f.name)
        if value == default_of(f) or f.name == "cache_dir":
            continue
        if base_type(f) is bool:
            pair = f.metadata["flag"] or f"{flag_name(f.name)}/--no-{f.name.replace('_', '-')}"
            on, _, off = pair.partition("/")
            if value is not None:
                args.append(on if value else off)
        elif is_list(f):
            for item in value:
                args += [f.metadata["flag"] or flag_name(f.name), item]
        elif value is not None:
            args += [flag_name(f.name), str(value)]
    return args


def defaults_yaml() -> str:
    """A commented YAML file of every option with its default (`config --print-defaults`)."""
    lines = ["# dreambooth-job train configuration: every option with its default.",
             f"# Each key can also be set as a flag (--kebab-case) or env var ({ENV_PREFIX}UPPER_CASE)."]
    for f in fields():
        lines.append(f"# {f.metadata['help']}" + (" (required)" if f.metadata["required"] else ""))
        dumped = yaml.safe_dump({f.name: default_of(f)}, default_flow_style=False, sort_keys=False)
        lines.append(dumped.rstrip())
    return "\n".join(lines) + "\n"
