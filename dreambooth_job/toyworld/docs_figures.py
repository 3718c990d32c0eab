"""Pictures and numbers for docs/toy-world.md: the base model's world fidelity, a grid of what it
draws for every caption of the world, and its loss curve.

    python -m dreambooth_job.toyworld.docs_figures --output docs/images
    python -m dreambooth_job.toyworld.docs_figures --output docs/images --base flow  # toy-world-flow-base-*
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

from PIL import Image, ImageDraw

from dreambooth_job.toyworld import base, flow_base, measure, world
from dreambooth_job.toyworld.bases import DEFAULT_TOY_BASE, TOY_BASES
from dreambooth_job.toyworld.experiment import load

# loss.csv's stage of the denoiser's training, per base builder: what that stage trained.
DENOISER_STAGES = {base.DENOISER_STAGE: "UNet + text encoder", flow_base.DENOISER_STAGE: "transformer"}


def base_report(base_model: Path, output: Path, per_combination: int = 2,
                name: str = "toy-world-base") -> dict:
    """Writes <name>-captions.png, <name>-loss.png and <name>.json into `output`."""
    output.mkdir(parents=True, exist_ok=True)
    metrics, shown = measure.world_fidelity(load(base_model), per_combination)
    rows, labels = [], []
    for shape in world.SHAPES:
        for background in world.BACKGROUNDS:
            row = [im for (s, _, b), im in shown if s == shape and b == background]
            rows.append([im.resize((64, 64), Image.NEAREST) for im in row])
            labels.append(f"a <colour> {shape} on a {background} background\n"
                          f"(columns: {', '.join(c for c in world.COLOURS for _ in range(per_combination))})")
    from dreambooth_job.generation.sampling import image_grid  # deferred: sampling imports PIL

    image_grid(rows, labels).save(output / f"{name}-captions.png")
    loss_curve(base_model / "loss.csv").save(output / f"{name}-loss.png")
    (output / f"{name}.json").write_text(json.dumps(metrics, indent=2) + "\n")
    return metrics


def loss_curve(path: Path, width: int = 480, height: int = 200, window: int = 25) -> Image.Image:
    """The training loss (moving average over `window` steps) on a log-free linear axis."""
    with open(path) as handle:
        rows = [r for r in csv.DictReader(handle) if r["stage"] in DENOISER_STAGES]
    losses = [float(r["loss"]) for r in rows]
    smooth = [sum(losses[max(0, i - window + 1):i + 1]) / len(losses[max(0, i - window + 1):i + 1])
              for i in range(len(losses))]
    image = Image.new("RGB", (width, height), "white")
    pen = ImageDraw.Draw(image)
    top, margin = max(smooth), 30
    points = [(margin + i * (width - 2 * margin) / max(1, len(smooth) - 1),
               height - margin - v / top * (height - 2 * margin)) for i, v in enumerate(smooth)]
    pen.line(points, fill=(40, 70, 215), width=2)
    pen.line([(margin, margin), (margin, height - margin), (width - margin, height - margin)], fill="black")
    trained = DENOISER_STAGES[rows[0]["stage"]]
    pen.text((margin + 4, 4), f"{trained} loss ({window}-step mean), max {top:.3f}", fill="black")
    pen.text((width - margin - 60, height - margin + 6), f"step {len(smooth)}", fill="black")
    pen.text((margin + 4, height - margin - 14), f"final {smooth[-1]:.3f}", fill="black")
    return image


def main(argv: list[str] | None = None) -> None:
    import torch  # deferred: torch is heavy

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", choices=list(TOY_BASES), default=DEFAULT_TOY_BASE)
    parser.add_argument("--base-model", type=Path, default=None, help="default: the one --base ships")
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument("--per-combination", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    name = "toy-world-base" if args.base == DEFAULT_TOY_BASE else f"toy-world-{args.base}-base"
    print(json.dumps(base_report(args.base_model or TOY_BASES[args.base].path, args.output,
                                 args.per_combination, name), indent=2))


if __name__ == "__main__":
    main()
