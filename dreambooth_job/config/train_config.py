"""The job's configuration: `TrainConfig`, one typed dataclass, the single source of option names,
types, defaults, roles, bounds and help. CLI flags, `DREAMBOOTH_<OPTION>` env vars, config files,
the Helm chart's values and the Job builder all derive from its fields (flag > env > file >
default). A leaf: nothing heavy, so `dreambooth_job.k8s` uses it without torch.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from dreambooth_job.config import choices as const
from dreambooth_job.config.checks import validate_config
from dreambooth_job.config.field_types import default_of, takes_auto
from dreambooth_job.config.option_fields import MODEL, OPERATIONAL, Place, option
from dreambooth_job.config.recipe_options import RecipeOptions

# The subject id --subject-id defaults to, and any text made a Kubernetes label value, as data
# that the chart's helpers apply as well (files/package.yaml's `labels`): the last path component
# (group 1; empty or only slashes: none), characters outside a label's as "-", at most 63, no
# "-", "_" or "." at the ends; nothing left: the fallback.
LAST_PATH_COMPONENT = r"(?s)^(?:.*/)?([^/]+)/*$"
LABEL_UNSAFE = r"[^A-Za-z0-9_.-]+"
LABEL_MAX_LENGTH = 63
LABEL_TRIMMED = "-_."
SUBJECT_ID_FALLBACK = "subject"


def label_value(text: str) -> str:
    """`text` made a valid label value: allowed characters, at most 63, alphanumeric at both ends."""
    return re.sub(LABEL_UNSAFE, "-", text)[:LABEL_MAX_LENGTH].strip(LABEL_TRIMMED)


@dataclass(kw_only=True)
class TrainConfig(RecipeOptions):
    """Everything one DreamBooth job needs to know. Field docs double as `--help` text. Its
    fields start with InputOptions' (input_options.py) and RecipeOptions' (recipe_options.py), in
    that order, then the outputs, sampling, evaluation, checkpoint and operational options below."""

    # --- saved outputs ---------------------------------------------------------------------------
    # Model options: they decide the weight files a completed run publishes (docs/options.md).
    save_precision: str = option(
        MODEL, "auto", choices=const.SAVE_PRECISION_CHOICES,
        help="Precision of every saved weight file (model/, the single file, the LoRA files); "
             "training keeps fp32 master weights whatever this says. auto: the model family's "
             "(fp16 for SD 1.x/2.x and SDXL; bf16 for FLUX.2 [klein], the dtype FLUX "
             "checkpoints are published and sampled in).")
    export_single_file: bool = option(
        MODEL, False,
        help="Full fine-tuning: also write <output>/<subject-id>.safetensors, one checkpoint in "
             "the original Stable Diffusion or SDXL layout (AUTOMATIC1111, ComfyUI, "
             "from_single_file).")
    lora_merge: bool = option(
        MODEL, False,
        help="LoRA training: also write the base model with the adapters merged in to "
             "<output>/model/ (a full pipeline, for tools that take no LoRA files).")

    # --- sampling -------------------------------------------------------------------------------
    validation_prompts: list[str] = option(
        OPERATIONAL, default_factory=lambda: list(const.DEFAULT_VALIDATION_PROMPTS),
        flag="--validation-prompt", max_items=const.MAX_VALIDATION_PROMPTS,
        max_length=const.MAX_PROMPT_LENGTH,
        help="Prompt of the sample grids (repeatable; {identifier} and {class_noun} filled in).")
    num_validation_images: int = option(
        OPERATIONAL, 4, minimum=1, help="Images per validation prompt (grid columns).")
    sample_every: int = option(
        OPERATIONAL, 0, minimum=0, help="Sample grids every N steps; 0 = only at the end.")
    sample_steps: int = option(
        MODEL, 25, minimum=1, evaluation=True, help="Sampler steps for class and validation images.")
    guidance_scale: float | None = option(
        MODEL, evaluation=True,
        help="Guidance scale when sampling class images, grids and evaluation images (default "
             "auto: the model family's, 7.5 for SD 1.x/2.x and SDXL, its pipeline's default for "
             "FLUX.2 [klein]).")
    sample_batch_size: int = option(
        OPERATIONAL, 4, minimum=1, evaluation=True, help="Images generated per sampler call.")

    # --- evaluation -----------------------------------------------------------------------------
    evaluate: bool = option(
        OPERATIONAL, False,
        help="Evaluate the model like the paper (DINO, CLIP-I, CLIP-T, PRES, DIV) at the end.")
    prompt_set: str = option(
        OPERATIONAL, "auto", evaluation=True, place=Place.LOCATION,
        help="Evaluation prompts: object, live (the paper's 25 each), auto (live for dogs and cats, "
             "else object) or a file / s3:// URI with one {identifier} {class_noun} template a line.")
    images_per_prompt: int = option(
        OPERATIONAL, 4, minimum=1, evaluation=True, help="Evaluation images per prompt (the paper: 4).")
    eval_max_prompts: int = option(
        OPERATIONAL, 0, minimum=0, evaluation=True,
        help="Evaluate on at most this many prompts, spread over the set (0: all 25).")
    eval_class_images: int = option(
        OPERATIONAL, 16, minimum=0, evaluation=True,
        help="Images of the class prompt generated for PRES (0: skip PRES).")
    dino_model: str | None = option(
        OPERATIONAL, "facebook/dino-vits16", evaluation=True, place=Place.MODEL,
        help="DINO ViT-S/16 for DINO, PRES and the DIV fallback: hub id, directory or s3:// prefix.")
    clip_model: str | None = option(
        OPERATIONAL, "openai/clip-vit-base-patch32", evaluation=True, place=Place.MODEL,
        help="CLIP model for CLIP-I and CLIP-T: hub id, directory or s3:// prefix.")
    lpips_model: str | None = option(
        OPERATIONAL, evaluation=True, place=Place.LOCATION,
        help="Directory or s3:// prefix with LPIPS weights (alexnet.pth, lpips_alex.pth) for DIV; "
             "without it DIV is reported unavailable and div_dino is given instead.")

    # --- checkpoints and lifecycle -------------------------------------------------------------
    checkpoint_every: int = option(
        OPERATIONAL, 200, minimum=0, help="Write a resumable checkpoint every N steps (0: never).")
    checkpoint_interval_minutes: float = option(
        OPERATIONAL, 15.0, minimum=0,
        help="Also checkpoint when this many minutes passed since the last one (0: never).")
    checkpoints_keep: int = option(
        OPERATIONAL, 2, minimum=0, help="Complete checkpoints kept; older ones are pruned.")
    termination_grace_seconds: float | None = option(
        OPERATIONAL, minimum=0, ceiling="max_termination_grace_seconds",
        help="On SIGTERM/SIGINT, time allowed to finish the step and save a checkpoint (default "
             "auto: the sizing profile's of the loaded model's family and train mode; Jobs pass "
             "their profile's, docs/operator-guide.md, \"Sizing\").")
    restart: bool = option(
        OPERATIONAL, False,
        help="Ignore existing checkpoints whose config conflicts and start from step 0.")
    force: bool = option(OPERATIONAL, False, help="Retrain even if --output holds a completed run.")
    lease_wait_seconds: float = option(
        OPERATIONAL, 600.0, minimum=0, maximum=const.MAX_LEASE_WAIT_SECONDS,
        help="While another Job holds the output's lease, wait this long for it before "
             "exiting 75 (the lease's TTL: a dead holder's lease expires within it).")

    # --- operations -----------------------------------------------------------------------------
    batch_id: str | None = option(
        OPERATIONAL, pattern=const.ID, max_length=63,
        help="Id of the overnight batch this job belongs to, if any.")
    metrics_port: int = option(
        OPERATIONAL, 9090, minimum=0, maximum=65535,
        help="Port of the /metrics and /healthz server (0 disables).")
    pushgateway: str | None = option(
        OPERATIONAL, place=Place.URL,
        help="Prometheus Pushgateway URL to push the job's metrics to at phase changes and exit.")
    notify_url: str | None = option(
        OPERATIONAL, place=Place.URL,
        help="http(s) URL that gets one POST of the run's outcome (status, exit code, ids, "
             "output and result.json URIs, error line) once it is final: success, or exit 2.")
    notify_secret_env: str | None = option(
        OPERATIONAL, max_length=128,
        help="Environment variable holding the key that signs --notify-url's body (HMAC-SHA256, "
             "header X-DreamBooth-Signature); the key itself never is an option.")
    log_format: str = option(
        OPERATIONAL, "auto", choices=const.LOG_FORMAT_CHOICES, evaluation=True,
        help="json: one object per line; text: human lines; auto: json unless on a terminal.")
    storage_credentials_wait_seconds: float = option(
        OPERATIONAL, 60.0, minimum=0,
        help="At start-up, wait up to this long for usable S3 credentials (IRSA or pod "
             "identity not ready: none found, expired or invalid token), retrying with "
             "backoff, before exiting with code 75 (0: do not wait).")

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):  # `auto` from Python, a batch row or a bench variant: unset
            if takes_auto(f, type(self)) and getattr(self, f.name) == const.AUTO:
                setattr(self, f.name, None)
        self.validate()

    # ------------------------------------------------------------------------------------------
    def validate(self, *, require_inputs: bool = False) -> None:
        """Raise InvalidInputError naming the first bad field (checks.validate_config)."""
        validate_config(self, require_inputs=require_inputs)

    # ------------------------------------------------------------------------------------------
    @property
    def resolved_learning_rate(self) -> float:
        """--learning-rate, or its `auto` default for --train-mode (resolve_auto)."""
        return resolve_auto(self.to_dict())["learning_rate"]

    @property
    def resolved_optimizer(self) -> str:
        """--optimizer, adamw-8bit with --use-8bit-adam (resolve_auto)."""
        return resolve_auto(self.to_dict())["optimizer"]

    @property
    def resolved_lr_scheduler(self) -> str:
        """--lr-scheduler as diffusers' get_scheduler names it (resolve_auto)."""
        return resolve_auto(self.to_dict())["lr_scheduler"]

    @property
    def resolved_lora_alpha(self) -> float:
        """--lora-alpha, or its `auto` default, the rank (resolve_auto)."""
        return resolve_auto(self.to_dict())["lora_alpha"]

    @property
    def resolved_subject_id(self) -> str:
        """--subject-id, else the last path component of --instance-data, made label-safe."""
        if self.subject_id:
            return self.subject_id
        name = re.sub(LAST_PATH_COMPONENT, r"\1", self.instance_data or "")
        return label_value(name) or SUBJECT_ID_FALLBACK

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def resolve_auto(values: Mapping[str, Any]) -> dict[str, Any]:
    """The one place `auto` options that depend on other options are resolved: `values` (a
    config's fields, or a recorded config's) with those set to what the run uses. The trainer
    reads the result (`resolved_learning_rate`), and so does "the same run" (config/run_identity.py):
    `--learning-rate auto` and `--learning-rate 1e-4` train the same LoRA."""
    resolved = dict(values)
    mode = resolved.get("train_mode")
    # --use-8bit-adam is --optimizer adamw-8bit: either spelling is the same run.
    if resolved.get("use_8bit_adam") or resolved.get("optimizer") == "adamw-8bit":
        resolved["optimizer"], resolved["use_8bit_adam"] = "adamw-8bit", True
    # --lr-scheduler constant-with-warmup is diffusers' constant_with_warmup: resolved to diffusers'
    # spelling, which older records hold, so their runs keep their identity and fingerprint.
    diffusers_names = {name: alias for alias, name in const.LR_SCHEDULER_ALIASES.items()}
    if resolved.get("lr_scheduler") in diffusers_names:
        resolved["lr_scheduler"] = diffusers_names[resolved["lr_scheduler"]]
    if resolved.get("learning_rate") is None:  # a record's mode may be anything: full's unless lora
        resolved["learning_rate"] = (
            const.PRODIGY_LEARNING_RATE if resolved.get("optimizer") == "prodigy"
            else const.DEFAULT_LEARNING_RATES["lora" if mode == "lora" else "full"])
    if resolved.get("lora_alpha") is None:
        rank_default = default_of(TrainConfig.__dataclass_fields__["lora_rank"])
        resolved["lora_alpha"] = resolved.get("lora_rank", rank_default)
    return resolved
