"""The constants `TrainConfig`'s fields are declared with: choices, defaults and name groups. A leaf
module (no imports): train_config.py and the option declarations import it."""

ENV_PREFIX = "DREAMBOOTH_"
DEFAULT_BASE_MODEL = "stable-diffusion-v1-5/stable-diffusion-v1-5"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")
MIXED_PRECISION_CHOICES = ("auto", "no", "fp16", "bf16")
# --lr-scheduler's names; diffusers' own spellings (get_scheduler's) are accepted as aliases and
# are the same run: resolve_auto turns either into diffusers' name, the one older records hold.
LR_SCHEDULER_CHOICES = ("constant", "constant-with-warmup", "linear", "cosine", "cosine-with-restarts",
                        "polynomial")
LR_SCHEDULER_ALIASES = {"constant_with_warmup": "constant-with-warmup",
                        "cosine_with_restarts": "cosine-with-restarts"}
# What --caption-dropout trains a dropped photo on: the instance prompt, or the empty prompt.
CAPTION_DROPOUT_PROMPTS = ("instance", "empty")
LOG_FORMAT_CHOICES = ("auto", "json", "text")
MAX_LEASE_WAIT_SECONDS = 86400
ADAM_IMPL_CHOICES = ("auto", "fused", "foreach", "loop")
# --optimizer; --use-8bit-adam is the alias of adamw-8bit (resolve_auto).
OPTIMIZER_CHOICES = ("adamw", "adamw-8bit", "prodigy", "adafactor")
# Prodigy estimates the step size itself (its d) and scales it by the learning rate: 1.0 by its
# authors' convention, whatever the train mode.
PRODIGY_LEARNING_RATE = 1.0
ATTENTION_BACKEND_CHOICES = ("auto", "math", "efficient", "flash", "cudnn", "eager")
SAVE_PRECISION_CHOICES = ("auto", "fp16", "bf16", "fp32")
# The frozen base under --train-mode lora: the compute dtype (auto), or quantized weights.
BASE_PRECISION_CHOICES = ("auto", "fp8", "nf4")
QUANTIZED_BASE_PRECISIONS = ("fp8", "nf4")
COMPILE_MODE_CHOICES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
TRAIN_MODE_CHOICES = ("full", "lora")
# families/objective.py maps each to diffusers' `weighting_scheme` name.
TIMESTEP_SAMPLING_CHOICES = ("uniform", "logit-normal", "mode")
FLOW_WEIGHTING_CHOICES = ("none", "sigma-sqrt", "cosmap")
# The usual peak rates: the paper's full fine-tuning, and diffusers' and kohya's LoRA trainers.
DEFAULT_LEARNING_RATES = {"full": 5e-6, "lora": 1e-4}
# LoRA's default targets: the UNet's attention projections (training/lora_adapters.py; kept here
# so that this module stays a leaf without the training dependencies).
DEFAULT_LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")
# --lora-targets: which of the denoiser's modules LoRA adapts, as each family names them
# (families/lora_formats.py, LoraFormat.target_presets); the first is the default.
LORA_TARGET_PRESETS = ("attention", "attention-mlp", "all")
# --lora-variant: the adapter kind (training/lora_adapters.py); the first is the default.
LORA_VARIANTS = ("lora", "dora", "lokr")
AUTO = "auto"
# Ids become label values (subject, batch), S3 path parts, metric labels and page text: what a
# Kubernetes label value accepts (at most 63, alphanumeric at both ends). A job id is the subject
# id plus "-" and 8 hex digits by default, so it may be longer.
ID_PATTERN = r"[A-Za-z0-9]([A-Za-z0-9_.-]{0,61}[A-Za-z0-9])?"
JOB_ID_PATTERN = r"[A-Za-z0-9]([A-Za-z0-9_.-]{0,126}[A-Za-z0-9])?"
_ID_WORDS = ("letters, digits, '-', '_' or '.' (no whitespace or control characters), "
             "a letter or digit at both ends")
ID = (ID_PATTERN, "1 to 63 " + _ID_WORDS)
JOB_ID = (JOB_ID_PATTERN, "1 to 128 " + _ID_WORDS)
MAX_WORD_LENGTH = 64  # --identifier, --class-noun
MAX_PROMPT_LENGTH = 1000  # each prompt template
MAX_VALIDATION_PROMPTS = 32
# Values of --prompt-set that name no place: the built-in sets.
BUILTIN_PROMPT_SETS = ("auto", "object", "live")
# LoRA's rank: 1024 is past any published adapter (kohya's largest presets use 256) and keeps
# the adapters of SDXL's UNet under a few GB; the operator's ceiling (max_lora_rank) is lower.
MAX_LORA_RANK = 1024
# Updates are scaled by alpha/rank. Published adapters use alpha between 1 and twice the rank;
# 4096 is four times the largest rank. Far above it (1e30) the scaled update overflows fp16/bf16
# to inf, the weights turn NaN, and the run would publish a broken adapter as a success.
MAX_LORA_ALPHA = 4096.0
# The largest training resolution (SDXL's native is 1024).
MAX_RESOLUTION = 4096
DEFAULT_VALIDATION_PROMPTS = (
    "a {identifier} {class_noun} in the jungle",
    "a {identifier} {class_noun} on the beach",
    "a {identifier} {class_noun} in the snow",
    "a red {identifier} {class_noun}",
)

