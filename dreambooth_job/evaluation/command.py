"""`dreambooth-job evaluate`: score a saved model on the paper's protocol and write the JSON.

    dreambooth-job evaluate --model s3://runs/dog/model --instance-data s3://photos/dog/ \\
        --class-noun dog --identifier sks --output s3://runs/dog/          # -> evaluation.json
    dreambooth-job evaluate ... --baseline --base-model <the base>      # adds the "base" row

Exit 0 even when an evaluator model is unavailable (its metrics are null, with the reason);
2 for bad input (options, photos, a --model without a diffusers pipeline).
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable
from pathlib import Path

import click

from dreambooth_job import log
from dreambooth_job.cli_options import resolve_train_config
from dreambooth_job.config import field_types, introspection, subject_identifier
from dreambooth_job.config import train_config as cfg
from dreambooth_job.evaluation import metrics_block
from dreambooth_job.evaluation.evaluator import Evaluator, validate_config
from dreambooth_job.exit_codes import InvalidInputError
from dreambooth_job.redaction import redact_value
from dreambooth_job.storage import places as storage
from dreambooth_job.training import base_models, devices

OUTPUT_FILE = "evaluation.json"
# The TrainConfig options this command takes: those declared with `evaluation=True`.
CONFIG_FIELDS = tuple(f.name for f in introspection.fields() if f.metadata["evaluation"])


def config_options(names: tuple[str, ...]) -> Callable[[Callable], Callable]:
    """Flags for some TrainConfig fields, resolved like `train`'s (flag > env > file > default)."""
    by_name = {f.name: f for f in introspection.fields()}

    def decorate(command: Callable) -> Callable:
        for name in reversed(names):
            f = by_name[name]
            choices = f.metadata["choices"]
            kind = click.Choice(choices) if choices else introspection.base_type(f)
            shown = f"[default: {field_types.default_of(f)}; env {field_types.env_name(name)}]"
            command = click.option(field_types.flag_name(name), name, type=kind, default=None,
                                   help=f"{f.metadata['help']} {shown}")(command)
        return click.option("--config", "config_file", type=click.Path(dir_okay=False),
                            help="YAML or JSON file of options.")(command)

    return decorate


@click.command("evaluate")
@click.option("--model", "model_source", required=True,
              help="The model to score: a diffusers pipeline directory or s3:// prefix "
                   "(a run's model/).")
@click.option("--output", help=f"JSON file, or a directory / s3:// prefix that receives "
                               f"{OUTPUT_FILE} (default: print to stdout).")
@click.option("--baseline", is_flag=True,
              help="Also score --base-model, the model before fine-tuning.")
@config_options(CONFIG_FIELDS)
def evaluate(model_source: str, output: str | None, baseline: bool, **params) -> None:
    """Score a model like the DreamBooth paper: DINO, CLIP-I, CLIP-T, PRES and DIV."""
    report = run_evaluation(model_source, resolve_train_config(params), baseline=baseline)
    text = json.dumps(redact_value(report), indent=2)  # redacted like result.json
    if output:
        target = output if output.endswith(".json") else storage.join(output, OUTPUT_FILE)
        storage.write_bytes(target, text.encode())
        click.echo(f"wrote {target}", err=True)
    else:
        click.echo(text)


def run_evaluation(model_source: str, config: cfg.TrainConfig, *, baseline: bool = False) -> dict:
    """The report of `evaluate`: rows "finetuned" (and "base"), "real", and the protocol."""
    from dreambooth_job.training import subject_photos  # deferred: subject_photos imports PIL

    log.configure(config.log_format)
    for name in ("instance_data", "class_noun"):
        if not getattr(config, name):
            raise InvalidInputError(f"missing required option {field_types.flag_name(name)}")
    validate_config(config)  # bad options fail before any download
    with tempfile.TemporaryDirectory(prefix="dreambooth-eval-") as work:
        skipped = subject_photos.download_photos(config, Path(work)).skipped
        photos = subject_photos.load_subject_photos(Path(work), config, skipped).images
    to_score = {"finetuned": base_models.resolve_base_model(model_source, config.cache_dir)}
    if baseline:
        to_score = {"base": base_models.resolve_base_model(config.base_model, config.cache_dir),
                    **to_score}
    evaluator = Evaluator.load(config)

    rows = []
    for label, model in to_score.items():
        pipeline = base_models.load_pipeline(model, config.cache_dir).to(devices.pick_device())
        token = config.identifier
        if token == "auto":
            token = subject_identifier.choose_identifier(pipeline.tokenizer).token
        rows.append(evaluator.evaluate(pipeline, photos, token, config.class_noun, label))
        del pipeline  # one pipeline in memory at a time
    return {"model": model_source, "base_model": config.base_model if baseline else None,
            "instance_data": config.instance_data, "class_noun": config.class_noun,
            "identifier": token,
            "metrics": metrics_block(*rows, real=evaluator.real_reference(photos))}
