"""The constants `TrainConfig`'s fields are declared with: choices, defaults and name groups. A leaf
module (no imports); config.py re-exports every name, so `config.X` keeps working."""

ENV_PREFIX = "DREAMBOOTH_"
DEFAULT_BASE_MODEL = "stable-diffusion-v1-5/stable-diffusion-v1-5"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")
MIXED_PRECISION_CHOICES = ("auto", "no", "fp16", "bf16")
LR_SCHEDULER_CHOICES = ("constant", "constant_with_warmup", "linear", "cosine", "cosine_with_restarts",
                        "polynomial")
LOG_FORMAT_CHOICES = ("auto", "json", "text")
MAX_LEASE_WAIT_SECONDS = 86400
ADAM_IMPL_CHOICES = ("auto", "fused", "foreach", "loop")
ATTENTION_BACKEND_CHOICES = ("auto", "math", "efficient", "flash", "cudnn", "eager")
SAVE_PRECISION_CHOICES = ("fp16", "bf16", "fp32")
COMPILE_MODE_CHOICES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
TRAIN_MODE_CHOICES = ("full", "lora")
# The usual peak rates: the paper's full fine-tuning, and diffusers' and kohya's LoRA trainers.
DEFAULT_LEARNING_RATES = {"full": 5e-6, "lora": 1e-4}
# LoRA's default targets: the UNet's attention projections (lora.py; kept here so that this module
# stays a leaf without the training dependencies).
DEFAULT_LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")
AUTO = "auto"
# Options naming a place (s3://, a hub id, a directory, an http URL). A URL among them never
# carries credentials: they would travel in Job args, batch files and result.json.
URI_OPTIONS = ("instance_data", "output", "base_model", "cache_dir", "class_data", "prompt_set",
               "dino_model", "clip_model", "lpips_model", "pushgateway", "notify_url")
DEFAULT_VALIDATION_PROMPTS = (
    "a {identifier} {class_noun} in the jungle",
    "a {identifier} {class_noun} on the beach",
    "a {identifier} {class_noun} in the snow",
    "a red {identifier} {class_noun}",
)

