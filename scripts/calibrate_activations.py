"""Calibrate the memory estimate's activation bytes for a flow-matching transformer: what one
double-stream and one single-stream block save for the backward pass, per (token x width), with
and without gradient checkpointing.

    PYTHONPATH=$PWD .venv/bin/python scripts/calibrate_activations.py --model flux2-klein-4b
    PYTHONPATH=$PWD .venv/bin/python scripts/calibrate_activations.py --model flux1-dev
    PYTHONPATH=$PWD python scripts/calibrate_activations.py --model flux2-klein-4b --device cuda

Builds the transformer at the published width with one block of each kind (random weights) and
runs one forward pass under bf16 autocast with fp32 weights, as full fine-tuning trains (`--weights
bf16`: LoRA's frozen bf16 base), at two sequence lengths (`--tokens`: image and text tokens, the
second pair about twice the first). `torch.autograd.graph.saved_tensors_hooks` sees every tensor
autograd saves; each distinct storage is counted once (parameters excluded) and attributed to the
block running when it was saved. The difference between the two lengths, divided by the tokens x
width added, is the bytes per unit (weight-sized saves, e.g. autocast's bf16 weight copies, are the
same at both lengths and drop out). Exact and device-independent except for the attention kernel:
CPU and CUDA both save the output and log-sum-exp of a fused attention, never the probabilities.

With checkpointing the blocks save nothing (torch.utils.checkpoint recomputes them); what the
step keeps per block is the block's tensor arguments, recorded by the checkpointing function.

On CUDA it also prints the device memory the forward pass left allocated (torch.cuda's
allocator: saved activations plus the output) at each length and its per-unit slope, which should
match the hooks' total; and the peak of forward plus backward (torch.cuda.max_memory_allocated).
The figures go into the family's constants (families/transformer_activations.py).
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from contextlib import nullcontext

import torch

from dreambooth_job.bench import architectures

BLOCKS = {"transformer_blocks": "double", "single_transformer_blocks": "single"}


class SavedBytes:
    """Distinct storages autograd saves (or a checkpointed block keeps), by what was running."""

    def __init__(self, model: torch.nn.Module):
        self.model = model
        self.params = {p.untyped_storage().data_ptr() for p in model.parameters()}
        self.seen: dict[int, tuple[str, int]] = {}
        self.label = "outside"

    def add(self, tensor: torch.Tensor, label: str) -> None:
        storage = tensor.untyped_storage()
        ptr = storage.data_ptr()
        if ptr and ptr not in self.params and ptr not in self.seen:
            self.seen[ptr] = (label, storage.nbytes())

    def pack(self, tensor):
        self.add(tensor, self.label)
        return tensor  # keeps it alive: a saved storage's address is never reused during the count

    def by_label(self) -> dict[str, int]:
        totals: dict[str, int] = defaultdict(int)
        for label, size in self.seen.values():
            totals[label] += size
        return dict(totals)

    def watch(self, model: torch.nn.Module) -> None:
        for attribute, kind in BLOCKS.items():
            for block in getattr(model, attribute):
                block.register_forward_pre_hook(lambda *_, kind=kind: setattr(self, "label", kind))
                block.register_forward_hook(lambda *_: setattr(self, "label", "outside"))

    def checkpointing_function(self):
        """torch.utils.checkpoint as diffusers calls it, recording the block's tensor arguments."""
        def checkpointed(module, *args):
            kind = next(k for a, k in BLOCKS.items() if module in list(getattr(self.model, a)))
            for arg in args:
                for tensor in arg if isinstance(arg, tuple) else (arg,):
                    if isinstance(tensor, torch.Tensor):
                        self.add(tensor, f"kept {kind}")
            return torch.utils.checkpoint.checkpoint(module.__call__, *args, use_reentrant=False)
        return checkpointed


def build(model_name: str, device: str):
    """The transformer at the published width with one block of each kind, and a function running
    it on (image tokens, text tokens)."""
    import diffusers  # heavy: only once the arguments parsed

    if model_name.startswith("flux2-klein"):
        config = dict(architectures.FLUX2_KLEIN_TRANSFORMER_CONFIGS[model_name], num_layers=1,
                      num_single_layers=1)
        model = diffusers.Flux2Transformer2DModel(**config).to(device)
        from dreambooth_job.families.base import PromptEmbeddings
        from dreambooth_job.families.flux2 import Flux2Klein
        family = Flux2Klein()

        def run(image_tokens: int, text_tokens: int, dtype):
            side = int(image_tokens ** 0.5)
            noisy = torch.randn(1, config["in_channels"], side, image_tokens // side, device=device)
            text = torch.randn(1, text_tokens, config["joint_attention_dim"], device=device)
            conditioning = family.denoiser_conditioning(PromptEmbeddings(text), dtype)
            return family.predict(model, noisy.to(dtype), torch.tensor([500.0], device=device),
                                  conditioning)
    elif model_name == "flux1-dev":
        config = dict(architectures.FLUX1_DEV_TRANSFORMER_CONFIG, num_layers=1, num_single_layers=1)
        model = diffusers.FluxTransformer2DModel(**config).to(device)

        def run(image_tokens: int, text_tokens: int, dtype):
            img_ids = torch.zeros(image_tokens, 3, device=device)
            img_ids[:, 1] = torch.arange(image_tokens, device=device)
            def noise(*shape):
                return torch.randn(*shape, device=device, dtype=dtype)

            return model(hidden_states=noise(1, image_tokens, config["in_channels"]),
                         encoder_hidden_states=noise(1, text_tokens, config["joint_attention_dim"]),
                         pooled_projections=noise(1, config["pooled_projection_dim"]),
                         timestep=torch.tensor([0.5], device=device), img_ids=img_ids,
                         txt_ids=torch.zeros(text_tokens, 3, device=device),
                         guidance=torch.tensor([3.5], device=device), return_dict=False)[0]
    else:
        raise SystemExit(f"unknown --model {model_name}")
    return model, config, run


def measure(model_name: str, device: str, weights: str, tokens: tuple[int, int], checkpointing: bool) -> dict:
    torch.manual_seed(0)
    model, config, run = build(model_name, device)
    dtype = torch.bfloat16
    if weights == "bf16":
        model.to(dtype)
    model.requires_grad_(True).train()
    counter = SavedBytes(model)
    counter.watch(model)
    if checkpointing:
        model.enable_gradient_checkpointing(counter.checkpointing_function())
    cuda = device == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    autocast = torch.autocast(device, dtype=dtype) if weights == "fp32" else nullcontext()
    with autocast, torch.autograd.graph.saved_tensors_hooks(counter.pack, lambda t: t):
        output = run(*tokens, dtype)
    width = config["num_attention_heads"] * config["attention_head_dim"]
    result = {"hooks": counter.by_label(), "width": width}
    if cuda:
        torch.cuda.synchronize()
        result["allocated_after_forward"] = torch.cuda.memory_allocated() - before
        output.float().pow(2).mean().backward()
        torch.cuda.synchronize()
        result["peak_forward_backward"] = torch.cuda.max_memory_allocated() - before
    del output, model
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="flux2-klein-4b",
                        choices=(*architectures.FLUX2_KLEIN_TRANSFORMER_CONFIGS, "flux1-dev"))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--weights", default="fp32", choices=("fp32", "bf16"),
                        help="fp32 weights under bf16 autocast (full fine-tuning) or a bf16 base (LoRA)")
    parser.add_argument("--tokens", default="256,64,512,128",
                        help="image and text tokens of the two lengths")
    args = parser.parse_args()
    image_1, text_1, image_2, text_2 = (int(n) for n in args.tokens.split(","))
    print(f"{args.model} on {args.device}, {args.weights} weights, bf16 compute, one double- and one "
          f"single-stream block; lengths {image_1}+{text_1} and {image_2}+{text_2} tokens")
    for checkpointing in (False, True):
        small, large = (measure(args.model, args.device, args.weights, tokens, checkpointing)
                        for tokens in ((image_1, text_1), (image_2, text_2)))
        units = (image_2 + text_2 - image_1 - text_1) * small["width"]
        print(f"gradient checkpointing {'on' if checkpointing else 'off'}:")
        for label in sorted(set(small["hooks"]) | set(large["hooks"])):
            a, b = small["hooks"].get(label, 0), large["hooks"].get(label, 0)
            print(f"  {label:12s} {a / 2**20:9.1f} MiB -> {b / 2**20:9.1f} MiB: "
                  f"{(b - a) / units:7.2f} bytes per token x width")
        if "allocated_after_forward" in small:
            for key in ("allocated_after_forward", "peak_forward_backward"):
                a, b = small[key], large[key]
                print(f"  cuda {key}: {a / 2**20:.1f} -> {b / 2**20:.1f} MiB: {(b - a) / units:.2f} "
                      "bytes per token x width (both blocks and outside)")


if __name__ == "__main__":
    main()
