"""GPU check of --base-precision fp8 / nf4 (dreambooth_job/training/quantized_base.py): LoRA on a
random FLUX.2 [klein]-shaped pipeline with the frozen transformer in the compute dtype (auto), in
torchao's float8 weights (fp8) and in bitsandbytes' NF4 (nf4). Needs CUDA, torchao and bitsandbytes.

    PYTHONPATH=$PWD .venv/bin/python scripts/gpu_check_quantized.py                # tiny, mid
    PYTHONPATH=$PWD .venv/bin/python scripts/gpu_check_quantized.py --models tiny,mid,klein-4b \\
        --steps 5 --json $OUT/quantized.json

For each model and precision: the transformer's bytes on the device once placed (quantized or
not), the peak device memory of the training steps after setup (the real Trainer, prior
preservation on, prompt embeddings and latents cached), seconds a step, whether the adapters
moved, and a 2-step sample from the trained pipeline. Models: tiny (the test pipeline, 64 px),
mid (klein 4B's transformer blocks, 2 double- and 5 single-stream, about 1.1 B parameters, 512 px)
and klein-4b (the published shapes, 1024 px; about 64 GB of host memory). Exits 1 when, for a
model other than tiny, a quantized base is not smaller than auto's or its training peak not lower,
or when any run's adapters did not move or its loss is not finite.
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import math
import sys
import tempfile
import time

import torch

from dreambooth_job.bench import architectures
from dreambooth_job.bench.command import Settings, Variant, _images, bench_config
from dreambooth_job.devtools import tiny_models
from dreambooth_job.generation import sampling
from dreambooth_job.training import lora_adapters, quantized_base
from dreambooth_job.training.trainer import Trainer

PRECISIONS = ("auto", "fp8", "nf4")
RESOLUTIONS = {"tiny": 64, "mid": 512, "klein-4b": 1024}
MIB = 2**20


def build(model: str):
    """The model's pipeline on the CPU in fp32, random weights (seed 0)."""
    if model == "tiny":
        return tiny_models.build_tiny_flux2_klein_pipeline(tempfile.mkdtemp(prefix="klein-"))
    if model == "klein-4b":
        return architectures.build_pipeline("flux2-klein-4b", seed=0)
    return _mid_klein()


def _mid_klein():
    """klein 4B's transformer blocks, fewer of them, and a Qwen3 of 2560 wide and 28 layers (the
    pipeline stacks layers 9, 18, 27) with a narrow MLP and the tiny tokenizer's vocabulary."""
    from diffusers import (
        AutoencoderKLFlux2,
        FlowMatchEulerDiscreteScheduler,
        Flux2KleinPipeline,
        Flux2Transformer2DModel,
    )
    from transformers import Qwen3Config, Qwen3ForCausalLM

    torch.manual_seed(0)
    tokenizer = tiny_models.qwen_tokenizer()
    transformer = Flux2Transformer2DModel(**{**architectures.FLUX2_KLEIN_4B_TRANSFORMER_CONFIG,
                                             "num_layers": 2, "num_single_layers": 5})
    text_encoder = Qwen3ForCausalLM(Qwen3Config(**{
        **architectures.QWEN3_4B_CONFIG, "vocab_size": len(tokenizer), "num_hidden_layers": 28,
        "intermediate_size": 1024}))
    scheduler = FlowMatchEulerDiscreteScheduler(
        num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=True, base_shift=0.5,
        max_shift=1.15, base_image_seq_len=256, max_image_seq_len=4096, time_shift_type="exponential")
    return Flux2KleinPipeline(scheduler=scheduler, vae=AutoencoderKLFlux2(), text_encoder=text_encoder,
                              tokenizer=tokenizer, transformer=transformer)


def placed_bytes(transformer, precision: str) -> int:
    """Device bytes of a copy of `transformer` placed as setup_models places it."""
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    module = copy.deepcopy(transformer)
    if quantized_base.is_quantized(precision):
        quantized_base.quantize(module, precision, dtype=torch.bfloat16, device=torch.device("cuda"))
    else:
        module.to("cuda", torch.bfloat16)
    torch.cuda.synchronize()
    used = torch.cuda.memory_allocated() - before
    del module
    gc.collect()
    torch.cuda.empty_cache()
    return used


def train(pipeline, model: str, precision: str, steps: int) -> dict:
    settings = Settings(model=model, base_model=None, resolution=RESOLUTIONS[model], batch_size=1,
                        steps=steps, warmup=0, prior_preservation=True, seed=0)
    config = bench_config(settings, Variant(precision, {
        "train_mode": "lora", "lora_rank": 16, "learning_rate": 1e-3, "base_precision": precision,
        "gradient_checkpointing": True}))
    trainer = Trainer(config, copy.deepcopy(pipeline), instance_images=_images(settings, 0),
                      instance_prompt="a sks dog", class_images=_images(settings, 1000),
                      class_prompt="a dog")
    trainer.setup()
    adapters = lora_adapters.lora_parameters(trainer.models.denoiser)
    before = [p.detach().clone() for p in adapters]
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    result = trainer.train()
    torch.cuda.synchronize()
    seconds = (time.perf_counter() - started) / steps
    peak = torch.cuda.max_memory_allocated()
    moved = any(not torch.equal(b, p.detach()) for b, p in zip(before, adapters))
    image = sampling.generate_images(trainer.inference_pipeline(), ["a sks dog"], [0],
                                     resolution=settings.resolution, num_inference_steps=2,
                                     guidance_scale=4.0, batch_size=1)[0]
    row = {"train_peak_mib": round(peak / MIB), "seconds_per_step": round(seconds, 3),
           "final_loss": result.final_loss, "adapters_moved": moved, "sample_size": list(image.size)}
    del trainer
    gc.collect()
    torch.cuda.empty_cache()
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="tiny,mid")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--json", help="also write the rows to this file")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA device: this check runs on a GPU", file=sys.stderr)
        return 2
    for precision in ("fp8", "nf4"):
        problem = quantized_base.missing_capability(precision, "cuda")
        if problem:
            print(problem, file=sys.stderr)
            return 2
    rows, failures = [], []
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}")
    for model in args.models.split(","):
        pipeline = build(model)
        params = sum(p.numel() for p in pipeline.transformer.parameters())
        for precision in PRECISIONS:
            row = {"model": model, "precision": precision, "transformer_parameters": params,
                   "transformer_mib": round(placed_bytes(pipeline.transformer, precision) / MIB),
                   **train(pipeline, model, precision, args.steps)}
            rows.append(row)
            print(json.dumps(row), flush=True)
            if not row["adapters_moved"] or not math.isfinite(row["final_loss"]):
                failures.append(f"{model} {precision}: adapters moved {row['adapters_moved']}, "
                                f"loss {row['final_loss']}")
        if model != "tiny":
            auto = next(r for r in rows if r["model"] == model and r["precision"] == "auto")
            for r in rows:
                if r["model"] == model and r["precision"] != "auto" and not (
                        r["transformer_mib"] < auto["transformer_mib"]
                        and r["train_peak_mib"] < auto["train_peak_mib"]):
                    failures.append(f"{model} {r['precision']}: {r['transformer_mib']} MiB placed, "
                                    f"{r['train_peak_mib']} MiB peak against auto's "
                                    f"{auto['transformer_mib']} and {auto['train_peak_mib']}")
        del pipeline
    if args.json:
        with open(args.json, "w", encoding="utf-8") as out:
            json.dump(rows, out, indent=2)
    for failure in failures:
        print("FAILED", failure)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
