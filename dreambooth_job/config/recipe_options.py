"""TrainConfig's training recipe: steps, train mode and LoRA, the objective's options, the
optimizer, precision and memory switches, logging. A base of `TrainConfig` (train_config.py), split
out only to keep modules small: the field order, and so every generated file, is TrainConfig's.
"""

from __future__ import annotations

from dataclasses import dataclass

from dreambooth_job.config import choices as const
from dreambooth_job.config.input_options import InputOptions
from dreambooth_job.config.option_fields import MODEL, OPERATIONAL, option


@dataclass(kw_only=True)
class RecipeOptions(InputOptions):
    """The training options of `TrainConfig`."""

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
        MODEL, "constant", choices=const.LR_SCHEDULER_CHOICES, aliases=const.LR_SCHEDULER_ALIASES,
        help="Learning-rate schedule (diffusers' get_scheduler; its underscore names, e.g. "
             "constant_with_warmup, are accepted and the same run), after --lr-warmup-steps.")
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
             "kohya/LyCORIS file only (diffusers' SD/SDXL loaders do not read LoKr; generate "
             "reads it back).")
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
