"""Black Forest Labs' original checkpoint layout for FLUX-style transformers, against diffusers'
module names: one key map per family (a `BflLayout`), read by both the single-file export
(`original_state`) and the kohya-style LoRA file (`kohya_lora`), so the two cannot drift apart.
Family-neutral: FLUX.2's table is in flux2_layout.py, FLUX.1's in flux1_layout.py; their blocks
have the same shape (`double_blocks.N.img_attn.qkv`, `single_blocks.N.linear1`,
`query_norm.scale`) with other diffusers names and fusions.

In the original layout several diffusers projections are one module: the attention's q, k and v
(`img_attn.qkv`), and in single-stream blocks whatever `linear1` fuses. A fused weight is the
parts' weights stacked on the output dimension, in the table's order (the inverse of diffusers'
`convert_flux2_transformer_checkpoint_to_diffusers`, which chunks it). A fused LoRA adapter is the
parts' adapters as one adapter of the summed rank: A matrices stacked, B block-diagonal (exactly
the sum of the parts' updates); a part that has no adapter contributes zero rows (its own
output's: the transformer's module says how many).

Keys: `<prefix>.<BFL module>.<param>`; the RMS norms' weights are `.scale` there (`query_norm`,
`key_norm`), and `final_layer.adaLN_modulation.1` holds (shift, scale) where diffusers' `norm_out`
holds (scale, shift).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from dreambooth_job.exit_codes import InvalidInputError

Parts = tuple[str, ...]
"""diffusers module names (within a block, or at the top), fused in this order."""
SCALE_PARAM_MODULES = ("query_norm", "key_norm")
"""BFL modules whose weight is named `scale` (RMSNorm's learned scale)."""


@dataclass(frozen=True)
class BflLayout:
    """One transformer's original names: {BFL module: diffusers parts} for the top level, each
    double-stream block and each single-stream block."""

    top: Mapping[str, Parts]
    double: Mapping[str, Parts]
    single: Mapping[str, Parts]
    double_blocks: tuple[str, str] = ("transformer_blocks", "double_blocks")
    """(diffusers' ModuleList, BFL's) of the double-stream blocks."""
    single_blocks: tuple[str, str] = ("single_transformer_blocks", "single_blocks")
    swapped_halves: frozenset[str] = frozenset({"final_layer.adaLN_modulation.1"})
    """BFL modules whose output halves are in the other order than diffusers'."""

    def modules(self) -> dict[str, tuple[str, ...]]:
        """{diffusers module pattern: (BFL module pattern, position in the fusion, parts)}; `{}`
        in a pattern stands for the block index."""
        table = {}
        for (stack, bfl_stack), rows in (((None, None), self.top), (self.double_blocks, self.double),
                                         (self.single_blocks, self.single)):
            for bfl, parts in rows.items():
                bfl_name = f"{bfl_stack}.{{}}.{bfl}" if bfl_stack else bfl
                for position, part in enumerate(parts):
                    table[f"{stack}.{{}}.{part}" if stack else part] = (bfl_name, position, len(parts))
        return table

    def original(self, module: str) -> tuple[str, int, int] | None:
        """(BFL module, position among its fused parts, number of parts) of the diffusers
        `module` path, e.g. `transformer_blocks.3.attn.to_k` -> (`double_blocks.3.img_attn.qkv`, 1, 3);
        None when the layout has no name for it."""
        table = self.modules()
        if module in table:
            return table[module]
        stack, _, rest = module.partition(".")
        index, _, inner = rest.partition(".")
        entry = table.get(f"{stack}.{{}}.{inner}") if index.isdigit() else None
        if entry is None:
            return None
        bfl, position, count = entry
        return bfl.format(index), position, count


    def fused_parts(self, module: str) -> tuple[str, ...]:
        """The diffusers module paths fused with `module` (itself among them), in the fusion's
        order, e.g. `single_transformer_blocks.2.attn.to_k` -> (`...2.attn.to_q`, `...2.attn.to_k`,
        `...2.attn.to_v`, `...2.proj_mlp`) for FLUX.1's `linear1`; (`module`,) when unfused."""
        for stack, rows in ((self.double_blocks[0], self.double), (self.single_blocks[0], self.single)):
            head, _, rest = module.partition(".")
            index, _, inner = rest.partition(".")
            if head == stack and index.isdigit():
                return next((tuple(f"{stack}.{index}.{p}" for p in parts)
                             for parts in rows.values() if inner in parts), (module,))
        return next((parts for parts in self.top.values() if module in parts), (module,))


def original_state(layout: BflLayout, state: Mapping, what: str) -> dict:
    """A diffusers transformer state dict in the original layout (fused parts stacked, norms'
    `.scale`, swapped halves); InvalidInputError (`what` names the export) for a weight the layout
    has no name for. Every part of a fused module must be present."""
    import torch  # deferred: torch is heavy

    fused: dict[str, list] = {}
    for key, tensor in state.items():
        module, _, param = key.rpartition(".")
        found = layout.original(module)
        if found is None:
            raise InvalidInputError(f"{what} cannot map the transformer weight {key}: not a layout "
                                    "this family knows")
        bfl, position, count = found
        if bfl.rpartition(".")[2] in SCALE_PARAM_MODULES and param == "weight":
            param = "scale"
        fused.setdefault(f"{bfl}.{param}", [None] * count)[position] = tensor
    out = {}
    for key, parts in fused.items():
        if any(part is None for part in parts):
            raise InvalidInputError(f"{what} cannot write {key}: some of its fused parts are missing")
        tensor = torch.cat(parts) if len(parts) > 1 else parts[0]
        if key.rpartition(".")[0] in layout.swapped_halves:
            first, second = tensor.chunk(2, dim=0)
            tensor = torch.cat([second, first])
        out[key] = tensor
    return out


def original_lora(layout: BflLayout, pairs: Mapping[str, tuple], transformer) -> dict[str, tuple]:
    """{BFL module: (down, up)} of peft adapters {diffusers module: (lora_A, lora_B)} on
    `transformer`. A fused module's adapter has the parts' summed rank; its up matrix is multiplied
    by the number of parts (the loaders scale by alpha / rank, and the rank grew by that factor).
    A part without an adapter adds zero rows, as many as that module of `transformer` outputs
    (FLUX.1's `linear1` fuses q, k, v of the width with an MLP input of 4 widths). ValueError for a
    module the layout has no name for."""
    import torch  # deferred: torch is heavy

    grouped: dict[str, list] = {}
    present: dict[str, str] = {}
    for module, pair in pairs.items():
        found = layout.original(module)
        if found is None:
            raise ValueError(f"no original name for the adapted module {module}")
        bfl, position, count = found
        grouped.setdefault(bfl, [None] * count)[position] = pair
        present[bfl] = module
    out = {}
    for bfl, parts in grouped.items():
        if len(parts) == 1:
            down, up = parts[0]
            if bfl in layout.swapped_halves:  # the up matrix's rows are the output's
                first, second = up.chunk(2, dim=0)
                up = torch.cat([second, first])
            out[bfl] = (down, up)
            continue
        down_like, up_like = next(p for p in parts if p is not None)
        rank = down_like.shape[0]
        paths = layout.fused_parts(present[bfl])
        downs = [p[0] if p else torch.zeros_like(down_like) for p in parts]
        ups = [p[1] if p else up_like.new_zeros(transformer.get_submodule(path).out_features, rank)
               for p, path in zip(parts, paths)]
        out[bfl] = (torch.cat(downs), len(parts) * torch.block_diag(*ups))
    return out


def original_magnitudes(layout: BflLayout, magnitudes: Mapping[str, object], transformer) -> dict:
    """{BFL module: DoRA magnitude} of peft's {diffusers module: magnitude} (one per output row).
    A fused module's rows are its parts' rows, so its magnitude is theirs stacked; a part without
    an adapter keeps its base rows: its magnitude is their norms (the weight unchanged)."""
    import torch  # deferred: torch is heavy

    grouped: dict[str, list] = {}
    present: dict[str, str] = {}
    for module, magnitude in magnitudes.items():
        bfl, position, count = layout.original(module)  # original_lora refused unknown modules
        grouped.setdefault(bfl, [None] * count)[position] = magnitude.reshape(-1)
        present[bfl] = module
    out = {}
    for bfl, parts in grouped.items():
        paths = layout.fused_parts(present[bfl])
        stacked = torch.cat([part if part is not None
                             else transformer.get_submodule(path).weight.detach().float().norm(dim=1)
                             for part, path in zip(parts, paths, strict=True)])
        if bfl in layout.swapped_halves:
            first, second = stacked.chunk(2)
            stacked = torch.cat([second, first])
        out[bfl] = stacked
    return out


def kohya_lora(layout: BflLayout, peft_state: Mapping, transformer) -> dict:
    """kohya's single-file LoRA keys of `transformer`'s peft adapter tensors (`<module>.lora_A.weight`):
    `lora_unet_<BFL module, '.' as '_'>.lora_down.weight`, `.lora_up.weight` and `.alpha` (the rank
    here; the writer puts the LoRA alpha in), and DoRA's `.lora_magnitude_vector` (which the
    writer turns into LyCORIS's `.dora_scale`). ValueError for a module the layout has no name for."""
    import torch  # deferred: torch is heavy

    pairs = {key.removesuffix(".lora_A.weight"): (tensor, peft_state[key.replace("lora_A", "lora_B")])
             for key, tensor in peft_state.items() if key.endswith(".lora_A.weight")}
    kohya = {}
    for module, (down, up) in sorted(original_lora(layout, pairs, transformer).items()):
        name = "lora_unet_" + module.replace(".", "_")
        kohya.update({f"{name}.lora_down.weight": down, f"{name}.lora_up.weight": up,
                      f"{name}.alpha": torch.tensor(float(down.shape[0]))})
    magnitudes = {key.removesuffix(".lora_magnitude_vector"): tensor for key, tensor in peft_state.items()
                  if key.endswith(".lora_magnitude_vector")}
    for module, magnitude in original_magnitudes(layout, magnitudes, transformer).items():
        kohya["lora_unet_" + module.replace(".", "_") + ".lora_magnitude_vector"] = magnitude
    return kohya
