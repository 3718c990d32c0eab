"""Train the toy world's base model and save it as a diffusers Stable Diffusion pipeline.

    python -m dreambooth_job.toyworld.base --output dreambooth_job/assets/toyworld/base --threads 2

(the shipped fixture's command, also in its train.json; thread counts change the floating-point
rounding, so regenerate with the recorded one)

The VAE is fixed and lossless on the world (latent.py); the UNet and a tiny CLIP text encoder
(real CLIP tokenizer) learn the captioned world jointly on cached latents, one seed for
everything. The output directory receives the pipeline (`save_compact`), `loss.csv` (stage, step,
loss) and `train.json` (recipe, steps, timings, command), so anyone can regenerate the fixture and
compare curves.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from dreambooth_job.devtools.tiny_models import CLIP_MAX_LENGTH, clip_tokenizer, sd_pipeline
from dreambooth_job.toyworld import world
from dreambooth_job.toyworld.latent import build_vae
from dreambooth_job.toyworld.pretraining import LossLog, Schedule, pretrain

# loss.csv's stage of the denoiser's training (the shipped fixture's file says so; report.py reads it).
DENOISER_STAGE = "unet"


@dataclass
class BaseRecipe:
    seed: int = 0
    images: int = 8192
    """Size of the pre-rendered training set (the world has 18 attribute combinations)."""
    unet_steps: int = 6000
    unet_lr: float = 1e-3
    warmup: int = 100
    ema_decay: float = 0.995
    """The saved weights are an exponential moving average: good samples at a constant rate."""
    batch: int = 32
    unet_channels: tuple[int, ...] = (32, 64)
    attention_levels: int = 1
    """UNet levels with cross-attention, from the lowest resolution up (2: also at 16x16)."""
    text_width: int = 32
    text_layers: int = 2
    threads: int = 1
    """One thread: on a shared 2-core machine, two OpenMP threads spin-wait for each other and
    ran 2-10x slower than one (measured)."""
    time_budget_s: float = 0.0
    """Stop early after this many seconds (0: never); train.json records the steps done."""


def build_models(recipe: BaseRecipe):
    from diffusers import DDPMScheduler, UNet2DConditionModel  # deferred: diffusers is heavy
    from transformers import CLIPTextConfig, CLIPTextModel  # deferred: transformers is heavy

    vae = build_vae(world.SIZE)
    levels = len(recipe.unet_channels)
    unet = UNet2DConditionModel(
        sample_size=world.SIZE // 2, in_channels=4, out_channels=4, layers_per_block=1,
        block_out_channels=recipe.unet_channels, cross_attention_dim=recipe.text_width,
        attention_head_dim=8, norm_num_groups=8,
        down_block_types=tuple("CrossAttnDownBlock2D" if level >= levels - recipe.attention_levels
                               else "DownBlock2D" for level in range(levels)),
        up_block_types=tuple("CrossAttnUpBlock2D" if level < recipe.attention_levels else "UpBlock2D"
                             for level in range(levels)))
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=49408, hidden_size=recipe.text_width, intermediate_size=recipe.text_width * 4,
        num_hidden_layers=recipe.text_layers, num_attention_heads=4,
        max_position_embeddings=CLIP_MAX_LENGTH, bos_token_id=49406, eos_token_id=49407,
        pad_token_id=49407))
    scheduler = DDPMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
        prediction_type="epsilon", clip_sample=False, steps_offset=1)
    return vae, unet, text_encoder, scheduler


@torch.no_grad()
def encode(vae, pixels: torch.Tensor) -> torch.Tensor:
    return torch.cat([vae.encode(pixels[i:i + 256]).latent_dist.mean for i in range(0, len(pixels), 256)])


def train_unet(unet, text_encoder, scheduler, latents: torch.Tensor, ids: torch.Tensor,
               recipe: BaseRecipe, log) -> int:
    """Train both models jointly; leave their EMA weights in place; return the steps done."""
    gen = torch.Generator().manual_seed(recipe.seed + 1)

    def batch_loss(index: torch.Tensor) -> torch.Tensor:
        clean = latents[index]
        noise = torch.randn(clean.shape, generator=gen)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (recipe.batch,), generator=gen)
        states = text_encoder(ids[index])[0]
        prediction = unet(scheduler.add_noise(clean, noise, t), t, states).sample
        return F.mse_loss(prediction, noise)

    unet.train()
    text_encoder.train()
    schedule = Schedule(steps=recipe.unet_steps, lr=recipe.unet_lr, warmup=recipe.warmup,
                        ema_decay=recipe.ema_decay, batch=recipe.batch,
                        time_budget_s=recipe.time_budget_s)
    steps = pretrain([*unet.parameters(), *text_encoder.parameters()], batch_loss, len(latents),
                     schedule, gen, lambda step, loss: log(DENOISER_STAGE, step, loss))
    unet.eval()
    text_encoder.eval()
    return steps


def train_base(output: str | Path, recipe: BaseRecipe) -> Path:
    torch.set_num_threads(recipe.threads)
    torch.manual_seed(recipe.seed)
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    log = LossLog()

    images, captions = world.dataset(recipe.images, recipe.seed)
    pixels = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    vae, unet, text_encoder, scheduler = build_models(recipe)
    latents = encode(vae, pixels)
    # SD's convention: latents scaled to unit variance before diffusion.
    scaling = round(float(1.0 / latents.std()), 4)
    vae.register_to_config(scaling_factor=scaling)
    latents = latents * scaling

    tokenizer = clip_tokenizer()
    ids = tokenizer(captions, padding="max_length", max_length=tokenizer.model_max_length,
                    truncation=True, return_tensors="pt").input_ids
    steps = train_unet(unet, text_encoder, scheduler, latents, ids, recipe, log)

    pipeline = sd_pipeline(unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
                           scheduler=scheduler)
    save_compact(pipeline, output)
    log.write_csv(output / "loss.csv")
    meta = {"recipe": asdict(recipe), "steps_done": steps, "scaling_factor": scaling,
            "total_seconds": round(time.perf_counter() - started), "torch": torch.__version__,
            "command": "python -m dreambooth_job.toyworld.base --output <dir> "
                       f"--seed {recipe.seed} --unet-steps {steps} --threads {recipe.threads}"}
    (output / "train.json").write_text(json.dumps(meta, indent=2) + "\n")
    return output


def save_compact(pipeline, output: Path) -> None:
    """save_pretrained, at a test fixture's size: the UNet and text encoder stored in fp16 (the
    loader upcasts to fp32), the tokenizer as CLIP's vocab.json + merges.txt (1.4 MB) instead of
    tokenizer.json (3.6 MB). The hand-set VAE stays fp32: its exactness depends on it."""
    from safetensors.torch import load_file, save_file  # deferred: safetensors is heavy

    pipeline.save_pretrained(output, safe_serialization=True)
    for weights in (output / "unet" / "diffusion_pytorch_model.safetensors",
                    output / "text_encoder" / "model.safetensors"):
        tensors = load_file(weights)
        save_file({name: t.half() if t.is_floating_point() else t for name, t in tensors.items()},
                  weights, metadata={"format": "pt"})
    tokenizer_dir = output / "tokenizer"
    bpe = json.loads((tokenizer_dir / "tokenizer.json").read_text())["model"]
    (tokenizer_dir / "vocab.json").write_text(json.dumps(bpe["vocab"], separators=(",", ":")))
    merges = [m if isinstance(m, str) else " ".join(m) for m in bpe["merges"]]
    (tokenizer_dir / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    (tokenizer_dir / "tokenizer.json").unlink()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", required=True)
    defaults = BaseRecipe()
    for name in ("seed", "images", "unet_steps", "batch", "threads", "attention_levels", "text_width"):
        parser.add_argument("--" + name.replace("_", "-"), type=int, default=getattr(defaults, name))
    for name in ("unet_lr", "time_budget_s"):
        parser.add_argument("--" + name.replace("_", "-"), type=float, default=getattr(defaults, name))
    args = vars(parser.parse_args(argv))
    output = args.pop("output")
    train_base(output, BaseRecipe(**args))


if __name__ == "__main__":
    main()
