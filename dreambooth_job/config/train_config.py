"""The job's configuration: `TrainConfig`, one typed dataclass, the single source of option names,
types, defaults, roles, bounds and help. CLI flags, `DREAMBOOTH_<OPTION>` env vars, config files,
the Helm chart's values and the Job builder all derive from its fields (flag > env > file >
default). A leaf: nothing heavy, so `dreambooth_job.k8s` uses it without torch.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dreambooth_job.config import choices as const
from dreambooth_job.config.checks import validate_config
from dreambooth_job.config.field_types import default_of, takes_auto
from dreambooth_job.config.option_fields import MODEL, OPERATIONAL, Place, option


def _default_cache_dir() -> str:
    return str(Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "dreambooth-job")


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
class TrainConfig:
    """Everything one DreamBooth job needs to know. Field docs double as `--help` text."""

    # --- inputs and outputs -------------------------------------------------------------------
    instance_data: str | None = option(
        MODEL, required=True, evaluation=True, place=Place.LOCATION,
        help="s3://bucket/prefix/ or local directory with the subject photos (jpg, jpeg, png, webp).")
    class_noun: str | None = option(
        MODEL, required=True, evaluation=True, max_length=const.MAX_WORD_LENGTH,
        help="The subject's class, e.g. 'dog' or 'backpack'.")
    output: str | None = option(
        OPERATIONAL, required=True, place=Place.LOCATION,
        help="s3://bucket/prefix/ or local directory that receives model/, samples/, result.json.")
    base_model: str = option(
        MODEL, const.DEFAULT_BASE_MODEL, evaluation=True, place=Place.MODEL,
        help="Diffusers pipeline to fine-tune: a hub id, a local directory or an s3:// prefix.")
    vae: str | None = option(
        MODEL, place=Place.MODEL,
        help="A diffusers AutoencoderKL (hub id, directory or s3:// prefix holding its "
             "config.json) replacing the base model's VAE, e.g. SDXL's fp16-fix VAE. Without it "
             "the VAE never runs in fp16 (fp32, or bf16 under bf16 mixed precision).")
    cache_dir: str = option(
        OPERATIONAL, default_factory=_default_cache_dir, evaluation=True, place=Place.LOCATION,
        set_by_pod=True, help="Local directory for downloaded base models and other caches.")
    job_id: str | None = option(
        OPERATIONAL, pattern=const.JOB_ID, max_length=128,
        help="Id of this run in logs, metrics and result.json (default: derived from subject id).")
    subject_id: str | None = option(
        OPERATIONAL, pattern=const.ID, max_length=63,
        help="Id of the subject (default: last path component of --instance-data).")

    # --- prompts --------------------------------------------------------------------------------
    identifier: str = option(
        MODEL, "auto", evaluation=True, max_length=const.MAX_WORD_LENGTH,
        help="Rare token naming the subject, or 'auto' to pick a rare single token of the "
             "model's tokenizer deterministically.")
    instance_prompt: str = option(
        MODEL, "a {identifier} {class_noun}", must_contain="{identifier}",
        max_length=const.MAX_PROMPT_LENGTH,
        help="Prompt of the subject photos.")
    class_prompt: str = option(
        MODEL, "a {class_noun}", evaluation=True, max_length=const.MAX_PROMPT_LENGTH,
        help="Prompt of the prior-preservation images.")
    caption_dropout: float = option(
        MODEL, 0.0, minimum=0, maximum=1,
        help="Probability that a captioned photo trains on the plain instance prompt instead of "
             "its caption at a step (drawn from --seed and the step). Captions: a dog1.txt beside "
             "dog1.jpg, or captions.jsonl under --instance-data.")

    # --- prior preservation ---------------------------------------------------------------------
    prior_preservation: bool = option(
        MODEL, True, help="Add the class-specific prior-preservation loss (the paper's default).")
    prior_loss_weight: float = option(
        MODEL, 1.0, minimum=0, help="Weight (lambda) of the prior-preservation loss.")
    num_class_images: int = option(
        MODEL, 200, minimum=0, help="Number of class images for prior preservation.")
    class_data: str | None = option(
        OPERATIONAL, place=Place.LOCATION, help="s3:// prefix or directory caching class images across jobs "
                          "(default: <cache-dir>/class-images).")

    # --- data -----------------------------------------------------------------------------------
    resolution: int | None = option(
        MODEL, minimum=8, maximum=const.MAX_RESOLUTION, multiple_of=8, evaluation=True,
        ceiling="max_resolution",
        help="Training resolution in pixels (square; default auto: the base model's native "
             "resolution, its UNet's sample size times the VAE's scale: 512 for SD 1.x, 768 for "
             "SD 2.x at 768 px, 1024 for SDXL).")
    center_crop: bool = option(
        MODEL, True, flag="--center-crop/--random-crop", help="Crop photos at the centre or at random.")
    random_flip: bool = option(MODEL, False, help="Flip photos horizontally at random.")
    min_images: int = option(
        OPERATIONAL, 1, minimum=1, evaluation=True, help="Fail when fewer valid subject photos remain.")
    min_image_side: int = option(
        MODEL, 256, minimum=1, evaluation=True, help="Reject photos whose shorter side is below this.")
    max_image_pixels: int = option(
        MODEL, 80_000_000, minimum=1, evaluation=True,
        help="Reject photos with more pixels than this (decompression-bomb guard).")
    max_photos: int = option(
        OPERATIONAL, 100, minimum=1, evaluation=True,
        help="Fail (exit 2) before downloading when --instance-data holds more photos than this.")
    max_photos_bytes: int = option(
        OPERATIONAL, 1 << 30, minimum=1, evaluation=True,
        help="Fail (exit 2) before downloading when the photos under --instance-data add up "
             "to more bytes than this.")

    # --- training -------------------------------------------------------------------------------
    max_train_steps: int = option(
        MODEL, 800, minimum=1, ceiling="max_train_steps", help="Optimizer steps to train.")
    train_mode: str = option(
        MODEL, "full", choices=const.TRAIN_MODE_CHOICES,
        help="full: fine-tune the UNet's (and with --train-text-encoder the text encoder's) weights, "
             "the paper's method; lora: train low-rank adapters on them (Hu et al. 2021) with the "
             "same objective, the base weights frozen.")
    learning_rate: float | None = option(
        MODEL, exclusive_minimum=0,
        help="Peak learning rate (default auto: 1e-4 with --train-mode lora, 5e-6 with full; 1.0 "
             "with --optimizer prodigy, which scales its own step-size estimate by it).")
    lr_scheduler: str = option(
        MODEL, "constant", choices=const.LR_SCHEDULER_CHOICES, help="Learning-rate schedule.")
    lr_warmup_steps: int = option(MODEL, 0, minimum=0, help="Learning-rate warm-up steps.")
    snr_gamma: float = option(
        MODEL, 0.0, minimum=0, maximum=1000,
        help="Min-SNR loss weighting (Hang et al. 2023) with this gamma, as diffusers' scripts "
             "compute it: each subject photo's loss times min(SNR(t), gamma) / SNR(t) (plus 1 for "
             "v-prediction models); 5 is the paper's value; 0: off. DDPM families (SD, SDXL) "
             "only; flow-matching families refuse it (see --flow-weighting).")
    noise_offset: float = option(
        MODEL, 0.0, minimum=0, maximum=1,
        help="Offset noise: add this times a normal draw per sample and channel, constant over "
             "the image, to the training noise (helps very dark and very bright images); 0.05 to "
             "0.1 is usual; 0: off. Every family (FLUX: on its packed latents' channels).")
    timestep_sampling: str = option(
        MODEL, "uniform", choices=const.TIMESTEP_SAMPLING_CHOICES,
        help="Flow-matching families (FLUX): how training draws noise levels, as diffusers' "
             "--weighting_scheme: uniform; logit-normal (sigmoid of a normal with --logit-mean, "
             "--logit-std, SD3's choice: more mid-range noise); mode (SD3's mode sampling with "
             "--mode-scale). DDPM families refuse all but uniform.")
    logit_mean: float = option(
        MODEL, 0.0, minimum=-10, maximum=10, help="Mean of --timestep-sampling logit-normal.")
    logit_std: float = option(
        MODEL, 1.0, exclusive_minimum=0, maximum=10,
        help="Standard deviation of --timestep-sampling logit-normal.")
    mode_scale: float = option(
        MODEL, 1.29, minimum=-1, maximum=1.75,
        help="Scale of --timestep-sampling mode (SD3: within [-1, 2/(pi-2)], where the sampling "
             "stays monotone).")
    flow_weighting: str = option(
        MODEL, "none", choices=const.FLOW_WEIGHTING_CHOICES,
        help="Flow-matching families (FLUX): each sample's loss weight by its noise level sigma, "
             "as diffusers' --weighting_scheme: none; sigma-sqrt (1/sigma^2); cosmap "
             "(2/(pi(1-2 sigma+2 sigma^2))). DDPM families refuse all but none (see --snr-gamma).")
    train_batch_size: int = option(
        MODEL, 1, minimum=1, help="Subject photos per step (class images: the same).")
    gradient_accumulation_steps: int = option(
        MODEL, 1, minimum=1, ceiling="max_gradient_accumulation_steps",
        help="Micro-batches per optimizer step.")
    train_text_encoder: bool = option(
        MODEL, False, help="Fine-tune the text encoder as well as the UNet (in LoRA mode: adapters "
                           "on its attention projections too, as the family names them: CLIP's "
                           "q_proj, k_proj, v_proj, out_proj).")
    lora_rank: int = option(
        MODEL, 16, minimum=1, maximum=const.MAX_LORA_RANK, ceiling="max_lora_rank",
        help="Rank of the LoRA adapters (--train-mode lora).")
    lora_alpha: float | None = option(
        MODEL, exclusive_minimum=0, maximum=const.MAX_LORA_ALPHA,
        help="LoRA scale numerator: updates are scaled by alpha/rank (default auto: the rank, a "
             "scale of 1).")
    lora_dropout: float = option(
        MODEL, 0.0, minimum=0, exclusive_maximum=1, help="Dropout on the LoRA adapters' inputs.")
    lora_variant: str = option(
        MODEL, const.LORA_VARIANTS[0], choices=const.LORA_VARIANTS,
        help="The adapter kind under --train-mode lora: lora (low-rank B @ A, Hu et al. 2021), "
             "dora (LoRA plus a learned magnitude per output row, Liu et al. 2024; peft's "
             "use_dora), lokr (a Kronecker product of two small factors, LyCORIS's LoKr; peft's "
             "LoKrConfig). SD and SDXL take all three; FLUX.2 [klein] and FLUX.1 lora and dora (their "
             "kohya files fuse q/k/v, which LoKr's factors cannot be). dora is refused with "
             "--train-text-encoder, both with --base-precision fp8/nf4. lokr publishes the "
             "kohya/LyCORIS file only (diffusers' SD/SDXL loaders do not read LoKr).")
    lora_targets: str = option(
        MODEL, const.LORA_TARGET_PRESETS[0], choices=const.LORA_TARGET_PRESETS,
        help="Which of the denoiser's layers get LoRA adapters, as the model's family names them: "
             "attention (SD/SDXL: self- and cross-attention to_q, to_k, to_v, to_out.0; FLUX.2: "
             "the double-stream blocks' image and text attention), attention-mlp (adds the "
             "feed-forward projections), all (adds SD's ResNet convolutions, FLUX.2's single-stream "
             "blocks). Both LoRA files hold every adapted layer. --lora-target-modules names layers "
             "instead.")
    lora_target_modules: list[str] = option(
        MODEL, default_factory=lambda: list(const.DEFAULT_LORA_TARGETS), max_items=64,
        max_length=128,
        help="Denoiser layers that get LoRA adapters (repeatable; a name matches a layer whose "
             "dotted name ends with it); when other than the default they replace --lora-targets' "
             "preset. Default: the attention projections to_q, to_k, to_v, to_out.0 "
             "(--lora-targets attention for SD/SDXL), as in the LoRA paper and diffusers' "
             "DreamBooth LoRA trainer: they carry the prompt's tokens into the image. Add conv1, "
             "conv2, conv_shortcut to adapt the ResNet convolutions too (kohya's LoCon), for UNets "
             "whose attention sees too little of the image.")
    mixed_precision: str = option(
        MODEL, "auto", choices=const.MIXED_PRECISION_CHOICES,
        help="auto: bf16 on CUDA that supports it, fp16 on other CUDA, no on CPU.")
    base_precision: str = option(
        MODEL, "auto", choices=const.BASE_PRECISION_CHOICES,
        help="The frozen base denoiser's weights under --train-mode lora: auto keeps them in the "
             "compute dtype (--mixed-precision's: bf16 on CUDA that supports it); fp8 quantizes its "
             "linear layers to float8 weights (torchao, extra 'quant'), nf4 to 4-bit NormalFloat "
             "(bitsandbytes, extra 'bnb'): about a half and a quarter of bf16's memory. The adapters "
             "train in fp32 on top. CUDA only; not with --lora-merge or --export-single-file (the "
             "merged weights would be the quantized ones).")
    gradient_checkpointing: bool | None = option(
        OPERATIONAL,
        help="Recompute activations to save memory (default auto: on CUDA only when training "
             "would not fit in free device memory without it; off on CPU).")
    optimizer: str = option(
        MODEL, "adamw", choices=const.OPTIMIZER_CHOICES,
        help="adamw: PyTorch's AdamW; adamw-8bit: bitsandbytes' 8-bit AdamW (CUDA, extra 'bnb'); "
             "prodigy: Prodigy (Mishchenko and Defazio 2023), AdamW that estimates its own step "
             "size (use --learning-rate auto, 1.0); adafactor: transformers' Adafactor, factored "
             "second moments (a fraction of AdamW's state), at --learning-rate on "
             "--lr-scheduler's schedule (no relative step of its own).")
    use_8bit_adam: bool = option(
        MODEL, False, help="Use bitsandbytes' 8-bit AdamW: the same as --optimizer adamw-8bit.")
    ema_decay: float = option(
        MODEL, 0.0, minimum=0, exclusive_maximum=1,
        help="Keep an exponential moving average of the trained weights (or LoRA adapters) in "
             "fp32 with this decay, e.g. 0.999, and publish and sample it instead of the last "
             "step's weights; 0: off. The decay ramps up as min(D, (1+t)/(10+t)) at step t "
             "(diffusers' EMAModel), so short runs are not stuck near the base weights.")
    cache_latents: bool = option(
        OPERATIONAL, True,
        help="VAE-encode each image and text-encode each prompt once, not every step.")
    adam_impl: str = option(
        OPERATIONAL, "auto", choices=const.ADAM_IMPL_CHOICES,
        help="AdamW kernel (--optimizer adamw): fused (one kernel for all parameters), foreach, or "
             "loop (one parameter at a time); auto: fused.")
    attention_backend: str = option(
        OPERATIONAL, "auto", choices=const.ATTENTION_BACKEND_CHOICES,
        help="UNet attention: auto (PyTorch's SDPA picks a kernel); math, efficient, flash or cudnn "
             "(pin that SDPA kernel); eager (matmul and softmax, no SDPA).")
    channels_last: bool | None = option(
        OPERATIONAL,
        help="Lay out UNet weights and activations channels-last (default: on for CUDA, off on CPU).")
    compile_unet: bool = option(
        OPERATIONAL, False, help="torch.compile the UNet: a slow first step, then faster steps.")
    compile_mode: str = option(
        OPERATIONAL, "default", choices=const.COMPILE_MODE_CHOICES,
        help="torch.compile mode of --compile-unet; reduce-overhead replays the UNet's kernels as "
             "CUDA graphs, for steps bound by the host's kernel launches (docs/benchmarks.md).")
    tf32: bool = option(
        OPERATIONAL, True, help="Allow TF32 matmuls and convolutions on CUDA (Ampere and newer).")
    adam_weight_decay: float = option(
        MODEL, 1e-2, minimum=0, help="Decoupled weight decay of the optimizer (every --optimizer).")
    max_grad_norm: float = option(
        MODEL, 1.0, minimum=0, help="Gradient clipping norm (0 disables).")
    seed: int = option(
        MODEL, 0, minimum=0, help="Seed of everything random; CPU runs are deterministic given it.")
    log_every: int = option(
        OPERATIONAL, 10, minimum=1,
        help="Report progress (metrics, progress bar or line) every N steps: the loss is read "
             "from the device only then.")
    progress_interval_seconds: float = option(
        OPERATIONAL, 30.0, minimum=0,
        help="Off a terminal, write a progress log line at most this often (0: at every report).")

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
    if resolved.get("learning_rate") is None:  # a record's mode may be anything: full's unless lora
        resolved["learning_rate"] = (
            const.PRODIGY_LEARNING_RATE if resolved.get("optimizer") == "prodigy"
            else const.DEFAULT_LEARNING_RATES["lora" if mode == "lora" else "full"])
    if resolved.get("lora_alpha") is None:
        rank_default = default_of(TrainConfig.__dataclass_fields__["lora_rank"])
        resolved["lora_alpha"] = resolved.get("lora_rank", rank_default)
    return resolved
