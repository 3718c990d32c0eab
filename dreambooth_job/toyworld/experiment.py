"""The toy-world ablation: base model -> DreamBooth with prior preservation -> DreamBooth without,
through the real job (`dreambooth_job.job.run`), measured per seed and summarised in one table.

    dreambooth-job toy-world --output toy-world-output            # 3 seeds, a few minutes each
    dreambooth-job toy-world --seeds 0 --steps 300 --class-images 24   # about the CI size
    dreambooth-job toy-world --train-mode lora --output toy-world-lora  # the same with LoRA adapters

Output: `subject/` (the subject's photos), `seed-N/{ppl,no-ppl}/` (each a job's output directory),
`grids/` (sample grids), `metrics.json` (every measurement) and `table.md` (means and ranges).
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from dreambooth_job.config.field_types import flag_name
from dreambooth_job.config.subject_identifier import choose_identifier
from dreambooth_job.config.train_config import TrainConfig
from dreambooth_job.outputs import lora_readers
from dreambooth_job.outputs.lora_writers import DIFFUSERS_WEIGHT_NAME
from dreambooth_job.toyworld import measure, world
from dreambooth_job.toyworld.bases import DEFAULT_TOY_BASE, TOY_BASES, TRAIN_OPTIONS
from dreambooth_job.training.base_models import load_pipeline, resolve_base_model

log = logging.getLogger(__name__)

VARIANTS = {"ppl": True, "no-ppl": False}

METRICS = ("subject_fidelity", "prompt_fidelity", "context_subject_fidelity", "class_leakage",
           "class_diversity", "class_background_diversity")


@dataclass
class Ablation:
    output: Path
    base: str = DEFAULT_TOY_BASE
    """A key of TOY_BASES: the base model (unless `base_model` is given) and its settings."""
    base_model: Path = None  # type: ignore[assignment]  # set by __post_init__
    """Default: TOY_BASES[base].path."""
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    max_train_steps: int = 500
    train_mode: str = "full"
    learning_rate: float | None = None
    """None: the base's learning rate for train_mode."""
    lora_rank: int = 8
    lora_target_modules: list[str] = None  # type: ignore[assignment]  # set by __post_init__
    """Default: the base's LoRA targets."""
    num_class_images: int = 50
    photos: int = 5
    eval_size: measure.EvalSize = field(default_factory=measure.EvalSize)
    grids: bool = True
    captions: bool = False
    """Give each subject photo its caption (world.subject_captions: the background it shows)."""
    train_options: dict[str, Any] = field(default_factory=dict)
    """Options of TRAIN_OPTIONS given to every run; the others stay at the job's defaults."""

    def __post_init__(self) -> None:
        unknown = set(self.train_options) - set(TRAIN_OPTIONS)
        if unknown:
            raise ValueError(f"toy-world passes only {', '.join(TRAIN_OPTIONS)}, not {sorted(unknown)}")
        toy = TOY_BASES[self.base]
        if self.base_model is None:
            self.base_model = toy.path
        if self.lora_target_modules is None:
            self.lora_target_modules = list(toy.lora_targets)


def write_subject(directory: Path, count: int, captions: bool = False) -> Path:
    """The subject's photos, and with `captions` a `.txt` caption beside each (none otherwise,
    also none left from an earlier run)."""
    directory.mkdir(parents=True, exist_ok=True)
    for stale in directory.glob("subject-*.txt"):
        stale.unlink()
    texts = world.subject_captions(count)
    for i, photo in enumerate(world.subject_photos(count)):
        photo.save(directory / f"subject-{i}.png")
        if captions:
            (directory / f"subject-{i}.txt").write_text(texts[i] + "\n")
    return directory


def train_config(ablation: Ablation, seed: int, prior_preservation: bool, subject: str | Path,
                 output: str | Path):
    """The job's configuration for one run; `subject` and `output` are directories or s3:// URIs."""
    return TrainConfig(
        instance_data=str(subject), class_noun=measure.CLASS_NOUN, output=str(output),
        base_model=str(ablation.base_model), cache_dir=str(ablation.output / "cache"),
        class_data=str(ablation.output / "class-images"), resolution=world.SIZE,
        min_image_side=world.SIZE, max_train_steps=ablation.max_train_steps,
        learning_rate=learning_rate(ablation), num_class_images=ablation.num_class_images,
        train_mode=ablation.train_mode, **_lora_options(ablation),
        prior_preservation=prior_preservation, sample_steps=measure.SAMPLE_STEPS,
        guidance_scale=measure.GUIDANCE_SCALE, num_validation_images=4, sample_batch_size=16,
        validation_prompts=["a {identifier} {class_noun}",
                            "a {identifier} {class_noun} on a green background", "a {class_noun}"],
        metrics_port=0, log_format="text", log_every=50, seed=seed, checkpoint_every=0,
        # The ablation measures the trained weights themselves, not an fp16 copy of them.
        checkpoint_interval_minutes=0, save_precision="fp32", **ablation.train_options)


def _lora_options(ablation: Ablation) -> dict:
    # Full mode leaves the LoRA fields at the job's defaults: its runs are configured as before.
    if ablation.train_mode != "lora":
        return {}
    return {"lora_rank": ablation.lora_rank, "lora_target_modules": list(ablation.lora_target_modules)}


def learning_rate(ablation: Ablation) -> float:
    if ablation.learning_rate is not None:
        return ablation.learning_rate
    return TOY_BASES[ablation.base].learning_rates[ablation.train_mode]


def load(path: Path, lora_dir: Path | None = None):
    """The pipeline saved at `path`; with `lora_dir`, plus the job's published LoRA adapters, read
    the way a user reads them (`load_lora_weights`)."""
    from dreambooth_job.generation import sampling  # deferred: sampling imports PIL

    no_cache = "/nonexistent"  # a local directory needs no model cache
    pipe = load_pipeline(resolve_base_model(str(path), no_cache), no_cache)
    if lora_dir is not None and (lora_dir / DIFFUSERS_WEIGHT_NAME).is_file():
        pipe.load_lora_weights(str(lora_dir))
    elif lora_dir is not None:  # --lora-variant lokr: the LyCORIS file alone, read as generate does
        lora_readers.apply_lokr_file(pipe, adapter_file(lora_dir.parent))
    return sampling.fast_pipeline(pipe)


def load_trained(ablation: Ablation, run_dir: Path):
    if ablation.train_mode == "lora":
        return load(ablation.base_model, run_dir / "lora")
    return load(run_dir / "model")


def adapter_file(run_dir: Path) -> Path:
    """The adapter file a LoRA run published in diffusers' format, or for LoKr its LyCORIS file."""
    diffusers_file = run_dir / "lora" / DIFFUSERS_WEIGHT_NAME
    return diffusers_file if diffusers_file.is_file() else next((run_dir / "lora").glob("*.safetensors"))


def adapter_bytes(run_dir: Path) -> int:
    """Size of that file."""
    return adapter_file(run_dir).stat().st_size


def run(ablation: Ablation) -> dict:
    """Train and measure every (seed, variant); return and write metrics.json and table.md."""
    from dreambooth_job import job  # deferred: job imports PIL

    out = ablation.output
    out.mkdir(parents=True, exist_ok=True)
    subject = write_subject(out / "subject", ablation.photos, ablation.captions)
    base = load(ablation.base_model)
    token = choose_identifier(base.tokenizer).token
    results: dict[str, dict[str, dict[str, float]]] = {}
    pictures: dict[str, dict[str, list]] = {}
    for seed in ablation.seeds:
        size = _eval_size(ablation.eval_size, seed)
        row = results.setdefault(f"seed-{seed}", {})
        row["base"], shown = measure.dreambooth_metrics(base, token, size)
        pictures.setdefault("base", shown)
        for variant, prior_preservation in VARIANTS.items():
            run_dir = out / f"seed-{seed}" / variant
            job.run(train_config(ablation, seed, prior_preservation, subject, run_dir))
            model = load_trained(ablation, run_dir)
            row[variant], shown = measure.dreambooth_metrics(model, token, size)
            if ablation.train_mode == "lora":
                row[variant]["adapter_bytes"] = adapter_bytes(run_dir)
            pictures.setdefault(variant, shown)
            log.info("seed %d %s: %s", seed, variant, row[variant])
    summary = {"identifier": token, "settings": _settings(ablation), "runs": results,
               "summary": summarise(results)}
    (out / "metrics.json").write_text(json.dumps(summary, indent=2) + "\n")
    (out / "table.md").write_text(
        table(summary["summary"], len(ablation.seeds), ablation.train_mode, ablation.base,
              options_text(ablation)) + "\n")
    if ablation.grids:
        write_grids(out / "grids", pictures, token, subject)
    return summary


def _eval_size(size: measure.EvalSize, seed: int) -> measure.EvalSize:
    return measure.EvalSize(size.subject_images, size.context_images, size.class_images,
                            size.seed + 1000 * seed)


def _settings(ablation: Ablation) -> dict:
    settings = asdict(ablation)
    settings.update(output=str(ablation.output), base_model=str(ablation.base_model),
                    learning_rate=learning_rate(ablation))
    return settings


def summarise(results: dict) -> dict:
    """Per model and metric: mean, min and max over seeds."""
    models = next(iter(results.values())).keys()
    summary = {}
    for model in models:
        summary[model] = {}
        for metric in METRICS:
            values = [results[seed][model][metric] for seed in results]
            summary[model][metric] = {"mean": float(np.mean(values)), "min": float(min(values)),
                                      "max": float(max(values))}
    return summary


def options_text(ablation: Ablation) -> str:
    """--captions and the passed options as flags, for the table's line ("" for none)."""
    flags = ["--captions"] if ablation.captions else []
    flags += [f"{flag_name(name)} {value}" for name, value in ablation.train_options.items()]
    return ", ".join(flags)


def table(summary: dict, seeds: int, train_mode: str = "full", base: str = DEFAULT_TOY_BASE,
          extra: str = "") -> str:
    header = "| model | " + " | ".join(m.replace("_", " ") for m in METRICS) + " |"
    lines = [header, "|" + "---|" * (len(METRICS) + 1)]
    for model, metrics in summary.items():
        cells = [f"{v['mean']:.2f} ({v['min']:.2f}-{v['max']:.2f})" for v in metrics.values()]
        lines.append(f"| {model} | " + " | ".join(cells) + " |")
    # The default base's line stays as it was before there were two bases.
    options = f"--train-mode {train_mode}" + ("" if base == DEFAULT_TOY_BASE else f", --base {base}")
    options += f", {extra}" if extra else ""
    return "\n".join(lines) + f"\n\nMean (min-max) over {seeds} seed(s), {options}."


def write_grids(directory: Path, pictures: dict, token: str, subject: Path) -> None:
    """One grid per model (first seed): rows are prompts, pictures shown at 2x."""
    directory.mkdir(parents=True, exist_ok=True)
    prompts = measure.subject_prompts(token)
    photos = [Image.open(p).convert("RGB") for p in sorted(subject.glob("*.png"))]
    _grid([photos], ["subject photos"]).save(directory / "subject.png")
    for model, by_key in pictures.items():
        keys = ["subject", "on green", "on black", "class"]
        rows = [by_key[k][:8] for k in keys]
        _grid(rows, [prompts[k] for k in keys]).save(directory / f"{model}.png")


def _grid(rows: list[list[Image.Image]], labels: list[str]) -> Image.Image:
    from dreambooth_job.generation.sampling import image_grid  # deferred: sampling imports PIL

    scaled = [[im.resize((64, 64), Image.NEAREST) for im in row] for row in rows]
    return image_grid(scaled, labels)
