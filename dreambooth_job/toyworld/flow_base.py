"""Train the toy world's flow-matching base model and save it as a diffusers FLUX.2 [klein] pipeline.

    python -m dreambooth_job.toyworld.flow_base --output dreambooth_job/assets/toyworld/flow-base --steps 1322

(the shipped fixture's command, also in its train.json: it was trained with `--time-budget-s 720`,
which stopped it after 1,322 steps; thread counts change the floating-point rounding, so
regenerate with the recorded one)

The same world and captions as the Stable Diffusion-shaped base (base.py), in FLUX.2 [klein]'s
shape, assembled by devtools/tiny_models.py's klein builders: klein's transformer, its VAE, a
Qwen3 text encoder and a byte-level BPE tokenizer with Qwen's chat template, and klein's
flow-matching Euler scheduler. What differs from base.py, and why:

- the VAE is the same hand-set lossless 2x average/nearest pair (latent.py) inside klein's VAE
  class; its batch-norm statistics, which klein's latents are normalised by, are the training
  set's, as base.py sets SD's `scaling_factor` from the latents' spread;
- the text encoder is frozen, as klein's Qwen3 is: random weights with unit-variance token
  embeddings, so that every token's hidden state is mostly its own embedding (a random 28-layer
  stack of width 16 would blur them). The world has 32 distinct captions, so their embeddings are
  computed once and the transformer alone trains;
- the transformer is trained with the job's own objective and prediction path (the FLUX.2
  [klein] family's `training_objective` and `predict`: rectified flow, timesteps uniform), so
  the base and the DreamBooth runs see the same inputs.

The output directory receives the pipeline, `loss.csv` (stage, step, loss) and `train.json`
(recipe, steps, timings, command).
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from dreambooth_job import families
from dreambooth_job.devtools.tiny_models import (
    QWEN_CORPUS,
    klein_pipeline,
    klein_text_encoder,
    klein_transformer,
    klein_vae,
    qwen_tokenizer,
)
from dreambooth_job.families import PromptEmbeddings
from dreambooth_job.toyworld import world
from dreambooth_job.toyworld.latent import ARCHITECTURE, set_lossless_weights
from dreambooth_job.toyworld.pretraining import LossLog, Schedule, pretrain

# loss.csv's stage of the denoiser's training (docs_figures.loss_curve reads it).
DENOISER_STAGE = "transformer"


@dataclass
class FlowRecipe:
    seed: int = 0
    images: int = 4096
    """Size of the pre-rendered training set (the world has 18 attribute combinations)."""
    steps: int = 3000
    lr: float = 1e-3
    warmup: int = 100
    ema_decay: float = 0.995
    """The saved weights are an exponential moving average: good samples at a constant rate."""
    batch: int = 16
    heads: int = 2
    head_dim: int = 16
    double_layers: int = 1
    single_layers: int = 1
    text_width: int = 16
    threads: int = 1
    """One thread: on a shared 2-core machine, two OpenMP threads spin-wait for each other."""
    time_budget_s: float = 0.0
    """Stop early after this many seconds (0: never); train.json records the steps done."""


def world_captions() -> list[str]:
    """Every caption world.sample can write (the empty one included)."""
    colours, backgrounds = [None, *world.COLOURS], [None, *world.BACKGROUNDS]
    return [""] + sorted({world.caption(s, c, b) for s in world.SHAPES for c in colours
                          for b in backgrounds})


def build_pipeline(recipe: FlowRecipe):
    """The untrained pipeline: lossless VAE, random frozen text encoder, random transformer."""
    torch.manual_seed(recipe.seed)
    # The world's words are whole tokens; the tiny test corpus adds rare words for --identifier auto.
    tokenizer = qwen_tokenizer([c for c in world_captions() if c] + QWEN_CORPUS)
    vae = klein_vae(**ARCHITECTURE, sample_size=world.SIZE, patch_size=(2, 2))
    set_lossless_weights(vae)
    text_encoder = klein_text_encoder(len(tokenizer), recipe.text_width)
    with torch.no_grad():
        text_encoder.get_input_embeddings().weight.normal_(0.0, 1.0)
    transformer = klein_transformer(
        in_channels=4 * ARCHITECTURE["latent_channels"], text_width=recipe.text_width,
        double_layers=recipe.double_layers, single_layers=recipe.single_layers,
        heads=recipe.heads, head_dim=recipe.head_dim)
    return klein_pipeline(vae=vae.eval().requires_grad_(False),
                          text_encoder=text_encoder.eval().requires_grad_(False),
                          tokenizer=tokenizer, transformer=transformer)


@torch.no_grad()
def encode_world(pipeline, family, pixels: torch.Tensor) -> torch.Tensor:
    """Set the VAE's batch-norm statistics to the world's, then return the normalised latents."""
    vae = pipeline.vae
    means = torch.cat([vae.encode(pixels[i:i + 256]).latent_dist.mean for i in range(0, len(pixels), 256)])
    packed = family.pack_latents(means)
    mean, var = packed.mean(dim=(0, 2, 3)), packed.var(dim=(0, 2, 3))
    # The empty fourth latent channel (latent.py) stays as it is: mean 0, variance 1.
    empty = var < 1e-8
    vae.bn.running_mean.copy_(torch.where(empty, 0.0, mean))
    vae.bn.running_var.copy_(torch.where(empty, 1.0, var))
    return family.encode_latents(vae, means)


@torch.no_grad()
def encode_captions(pipeline, family, captions: list[str]) -> torch.Tensor:
    """The frozen text encoder's conditioning of each caption, as the job and the pipeline compute it."""
    encoders = family.text_encoders(pipeline)
    return torch.cat([family.encode_prompt(encoders, family.tokenize(pipeline, c), "cpu").hidden_states
                      for c in captions])


def train_transformer(pipeline, family, latents: torch.Tensor, embeddings: torch.Tensor,
                      caption_index: torch.Tensor, recipe: FlowRecipe, log) -> int:
    """Train the transformer with the family's objective; leave its EMA weights; return steps done."""
    transformer = family.denoiser(pipeline)
    objective = family.training_objective(pipeline)
    gen = torch.Generator().manual_seed(recipe.seed + 1)

    def batch_loss(index: torch.Tensor) -> torch.Tensor:
        batch = objective.draw(latents[index], gen, "cpu")
        conditioning = family.denoiser_conditioning(
            PromptEmbeddings(embeddings[caption_index[index]]), torch.float32)
        prediction = family.predict(transformer, batch.noisy, batch.timesteps, conditioning)
        return objective.per_sample_loss(prediction, batch).mean()

    transformer.train()
    schedule = Schedule(steps=recipe.steps, lr=recipe.lr, warmup=recipe.warmup,
                        ema_decay=recipe.ema_decay, batch=recipe.batch,
                        time_budget_s=recipe.time_budget_s)
    steps = pretrain(list(transformer.parameters()), batch_loss, len(latents), schedule, gen,
                     lambda step, loss: log(DENOISER_STAGE, step, loss))
    transformer.eval()
    return steps


def train_flow_base(output: str | Path, recipe: FlowRecipe) -> Path:
    torch.set_num_threads(recipe.threads)
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    log = LossLog()

    pipeline = build_pipeline(recipe)
    family = families.for_pipeline(pipeline)
    images, captions = world.dataset(recipe.images, recipe.seed)
    pixels = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    latents = encode_world(pipeline, family, pixels)
    known = world_captions()
    embeddings = encode_captions(pipeline, family, known)
    caption_index = torch.tensor([known.index(c) for c in captions])
    steps = train_transformer(pipeline, family, latents, embeddings, caption_index, recipe, log)

    pipeline.save_pretrained(output, safe_serialization=True)
    log.write_csv(output / "loss.csv")
    meta = {"recipe": asdict(recipe), "steps_done": steps,
            "total_seconds": round(time.perf_counter() - started), "torch": torch.__version__,
            "command": "python -m dreambooth_job.toyworld.flow_base --output <dir> "
                       f"--seed {recipe.seed} --steps {steps} --threads {recipe.threads}"}
    (output / "train.json").write_text(json.dumps(meta, indent=2) + "\n")
    return output


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", required=True)
    defaults = FlowRecipe()
    for name in ("seed", "images", "steps", "batch", "threads", "heads", "head_dim", "double_layers",
                 "single_layers", "text_width"):
        parser.add_argument("--" + name.replace("_", "-"), type=int, default=getattr(defaults, name))
    for name in ("lr", "time_budget_s"):
        parser.add_argument("--" + name.replace("_", "-"), type=float, default=getattr(defaults, name))
    args = vars(parser.parse_args(argv))
    output = args.pop("output")
    train_flow_base(output, FlowRecipe(**args))


if __name__ == "__main__":
    main()
