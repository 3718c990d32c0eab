"""Train the toy world's base model and save it as a diffusers Stable Diffusion pipeline.

    nice -n 10 python -m dreambooth_job.toyworld.base --output dreambooth_job/assets/toyworld/base

Two stages, one seed: (1) a small VAE (2x downsampling, 4 latent channels) learns to reconstruct
the world's pictures, then is frozen; (2) the UNet and a tiny CLIP text encoder (real CLIP
tokenizer) learn the captioned world on cached latents. The output directory receives the
pipeline, `loss.csv` (stage, step, loss) and `train.json` (seed, sizes, steps, timings), so anyone
can regenerate the fixture and compare curves.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from dreambooth_job.toyworld import world


@dataclass
class BaseRecipe:
    seed: int = 0
    images: int = 8192
    """Size of the pre-rendered training set (the world has 18 attribute combinations)."""
    vae_steps: int = 600
    vae_lr: float = 1e-3
    kl_weight: float = 1e-6
    unet_steps: int = 5000
    unet_lr: float = 6e-4
    warmup: int = 200
    batch: int = 32
    unet_channels: tuple[int, ...] = (32, 64)
    vae_channels: tuple[int, ...] = (32, 64)
    text_width: int = 32
    text_layers: int = 2
    threads: int = 2


def build_models(recipe: BaseRecipe):
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from dreambooth_job.models import CLIP_MAX_LENGTH

    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=recipe.vae_channels,
        down_block_types=("DownEncoderBlock2D",) * len(recipe.vae_channels),
        up_block_types=("UpDecoderBlock2D",) * len(recipe.vae_channels), layers_per_block=1,
        norm_num_groups=8, sample_size=world.SIZE, mid_block_add_attention=False)
    unet = UNet2DConditionModel(
        sample_size=world.SIZE // 2, in_channels=4, out_channels=4, layers_per_block=1,
        block_out_channels=recipe.unet_channels, cross_attention_dim=recipe.text_width,
        attention_head_dim=8, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), norm_num_groups=8)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=49408, hidden_size=recipe.text_width, intermediate_size=recipe.text_width * 4,
        num_hidden_layers=recipe.text_layers, num_attention_heads=4,
        max_position_embeddings=CLIP_MAX_LENGTH, bos_token_id=49406, eos_token_id=49407,
        pad_token_id=49407))
    scheduler = DDPMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
        prediction_type="epsilon", clip_sample=False, steps_offset=1)
    return vae, unet, text_encoder, scheduler


def _lr_lambda(warmup: int, total: int):
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))
    return factor


def train_vae(vae, pixels: torch.Tensor, recipe: BaseRecipe, log) -> None:
    gen = torch.Generator().manual_seed(recipe.seed)
    opt = torch.optim.AdamW(vae.parameters(), lr=recipe.vae_lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(50, recipe.vae_steps))
    vae.train()
    for step in range(recipe.vae_steps):
        batch = pixels[torch.randint(0, len(pixels), (recipe.batch,), generator=gen)]
        posterior = vae.encode(batch).latent_dist
        recon = vae.decode(posterior.sample(generator=gen)).sample
        loss = F.mse_loss(recon, batch) + recipe.kl_weight * posterior.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        log("vae", step, loss.item())
    vae.eval().requires_grad_(False)


@torch.no_grad()
def encode(vae, pixels: torch.Tensor) -> torch.Tensor:
    return torch.cat([vae.encode(pixels[i:i + 256]).latent_dist.mean for i in range(0, len(pixels), 256)])


def train_unet(unet, text_encoder, scheduler, latents: torch.Tensor, ids: torch.Tensor,
               recipe: BaseRecipe, log) -> None:
    gen = torch.Generator().manual_seed(recipe.seed + 1)
    params = list(unet.parameters()) + list(text_encoder.parameters())
    opt = torch.optim.AdamW(params, lr=recipe.unet_lr, weight_decay=1e-2)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(recipe.warmup, recipe.unet_steps))
    unet.train()
    text_encoder.train()
    for step in range(recipe.unet_steps):
        index = torch.randint(0, len(latents), (recipe.batch,), generator=gen)
        clean = latents[index]
        noise = torch.randn(clean.shape, generator=gen)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (recipe.batch,), generator=gen)
        states = text_encoder(ids[index])[0]
        prediction = unet(scheduler.add_noise(clean, noise, t), t, states).sample
        loss = F.mse_loss(prediction, noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        log("unet", step, loss.item())
    unet.eval()
    text_encoder.eval()


def train_base(output: str | Path, recipe: BaseRecipe) -> Path:
    from diffusers import StableDiffusionPipeline

    from dreambooth_job.models import clip_tokenizer

    torch.set_num_threads(recipe.threads)
    torch.manual_seed(recipe.seed)
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    rows: list[tuple[str, int, float]] = []

    def log(stage: str, step: int, loss: float) -> None:
        rows.append((stage, step, loss))
        if step % 100 == 0:
            recent = [r[2] for r in rows[-100:] if r[0] == stage]
            print(f"{stage} step {step} loss {sum(recent) / len(recent):.4f} "
                  f"({time.perf_counter() - started:.0f}s)", flush=True)

    images, captions = world.dataset(recipe.images, recipe.seed)
    pixels = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    vae, unet, text_encoder, scheduler = build_models(recipe)
    train_vae(vae, pixels, recipe, log)
    vae_seconds = time.perf_counter() - started
    latents = encode(vae, pixels)
    # SD's convention: latents scaled to unit variance before diffusion.
    scaling = float(1.0 / latents.std())
    vae.register_to_config(scaling_factor=scaling)
    latents = latents * scaling
    with torch.no_grad():
        recon = vae.decode(latents[:256] / scaling).sample
        vae_error = float((recon - pixels[:256]).abs().mean() * 127.5)
    print(f"vae reconstruction error {vae_error:.1f}/255, scaling factor {scaling:.4f}", flush=True)

    tokenizer = clip_tokenizer()
    ids = tokenizer(captions, padding="max_length", max_length=tokenizer.model_max_length,
                    truncation=True, return_tensors="pt").input_ids
    train_unet(unet, text_encoder, scheduler, latents, ids, recipe, log)

    pipeline = StableDiffusionPipeline(
        unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipeline.save_pretrained(output, safe_serialization=True)
    with open(output / "loss.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["stage", "step", "loss"])
        writer.writerows((s, i, f"{v:.5f}") for s, i, v in rows)
    meta = {"recipe": asdict(recipe), "vae_reconstruction_error": round(vae_error, 2),
            "vae_seconds": round(vae_seconds), "total_seconds": round(time.perf_counter() - started),
            "torch": torch.__version__, "command": "python -m dreambooth_job.toyworld.base "
            f"--output {output} --seed {recipe.seed} --vae-steps {recipe.vae_steps} "
            f"--unet-steps {recipe.unet_steps}"}
    (output / "train.json").write_text(json.dumps(meta, indent=2) + "\n")
    return output


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", required=True)
    defaults = BaseRecipe()
    for name in ("seed", "images", "vae_steps", "unet_steps", "batch", "threads"):
        parser.add_argument("--" + name.replace("_", "-"), type=int, default=getattr(defaults, name))
    parser.add_argument("--unet-lr", type=float, default=defaults.unet_lr)
    args = vars(parser.parse_args(argv))
    output = args.pop("output")
    train_base(output, BaseRecipe(**args))


if __name__ == "__main__":
    main()
