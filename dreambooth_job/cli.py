"""`dreambooth-job`: the command line. It parses, calls one entry point, and maps errors to exit codes.

    dreambooth-job train --instance-data s3://photos/dog/ --class-noun dog --output s3://runs/dog/
    dreambooth-job demo                      # the whole job offline: a subject learned, before/after
    dreambooth-job generate --model s3://runs/dog/ --output s3://gen/dog/ --num-images 8  # from a run
    dreambooth-job config --print-defaults   # every option with its default, as YAML

Heavy modules (torch, diffusers) are imported inside the commands that need them, so that the
Kubernetes commands stay light.

From the moment `main` starts, SIGTERM exits with 143 (termination.py); every error of every
command, parsing included, ends in cli_boundary.py: one line on stderr and, in a pod, in the
termination log that `kubectl describe` and `dreambooth-job status` show
(DREAMBOOTH_TERMINATION_LOG overrides /dev/termination-log), and its ExitCode.
"""

from __future__ import annotations

import importlib
import sys

import click
import yaml

from dreambooth_job import __version__, termination
from dreambooth_job.cli_boundary import error_boundary
from dreambooth_job.cli_options import resolve_train_config, train_options
from dreambooth_job.config import choices as const
from dreambooth_job.config import sources as config_sources
from dreambooth_job.devtools import demo as demo_module
from dreambooth_job.exit_codes import ExitCode
from dreambooth_job.toyworld.bases import DEFAULT_TOY_BASE, TOY_BASES

# Commands defined in other modules, imported only when invoked or listed: `train` should not pay
# for the Kubernetes client's import (about 1 s, most of this module's import time).
LAZY_COMMANDS = {
    "bench": "dreambooth_job.bench.command:bench",
    "evaluate": "dreambooth_job.evaluation.command:evaluate",
    "generate": "dreambooth_job.generation.command:generate",
    "toy-world": "dreambooth_job.toyworld.command:toy_world",
    "submit": "dreambooth_job.k8s.commands:submit",
    "submit-generate": "dreambooth_job.k8s.commands:submit_generate",
    "batch": "dreambooth_job.k8s.commands:batch",
    "status": "dreambooth_job.k8s.commands:status",
    "report": "dreambooth_job.k8s.commands:report",
    "cancel": "dreambooth_job.k8s.commands:cancel",
}


class LazyGroup(click.Group):
    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        # First thing, before parsing and the commands' imports: the job is PID 1 in its
        # container, where a SIGTERM without a handler is ignored until the kubelet's SIGKILL.
        restore = termination.exit_on_sigterm()
        try:
            # Click's own error printing is off (standalone_mode=False): parse errors and every
            # command's errors end in the one boundary instead.
            with error_boundary():
                outcome = super().main(args, prog_name, complete_var, standalone_mode=False,
                                       **extra)
        finally:
            restore()
        if standalone_mode:
            sys.exit(outcome if isinstance(outcome, int) else 0)
        return outcome

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *LAZY_COMMANDS})

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name in LAZY_COMMANDS and name not in self.commands:
            module, attribute = LAZY_COMMANDS[name].split(":")
            self.add_command(getattr(importlib.import_module(module), attribute), name)
        return super().get_command(ctx, name)


@click.group(cls=LazyGroup,
             context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="dreambooth-job")
def main() -> None:
    """Personalize Stable Diffusion with DreamBooth: one subject per run."""


main.help = (main.help or "") + "\n\nExit codes: " + "; ".join(
    f"{int(c)} {c.description}" for c in ExitCode) + "."


@main.command()
@train_options
def train(**params) -> None:
    """Fine-tune a base model on one subject's photos and write the model, sample grids and
    result.json to --output."""
    config = resolve_train_config(params)
    config.validate(require_inputs=True)
    from dreambooth_job import job  # deferred: job imports PIL

    sys.exit(int(job.run(config)))


@main.command()
@click.option("--output", type=click.Path(file_okay=False), default="demo-output",
              show_default=True, help="Local directory for the demo's object store and results.")
@click.option("--max-train-steps", type=click.IntRange(min=1), default=None,
              help="Training steps (default: 500 on the toy world, 20 with --photos).")
@click.option("--train-mode", type=click.Choice(const.TRAIN_MODE_CHOICES), default="full", show_default=True,
              help="full fine-tuning or LoRA adapters, as `train --train-mode`.")
@click.option("--photos", type=click.Path(), default=None,
              help="A directory of your own photos of one subject (with --class-noun); trained on "
                   "a tiny random model, so its pictures are noise.")
@click.option("--class-noun", default=None, help="The class of the subject in --photos (dog, mug, ...).")
@click.option("--base", type=click.Choice(list(TOY_BASES)), default=DEFAULT_TOY_BASE, show_default=True,
              help="The toy world's base: ddpm (Stable Diffusion-shaped UNet) or flow (FLUX.2 "
                   "[klein]-shaped flow-matching transformer); docs/toy-world.md.")
def demo(output: str, max_train_steps: int | None, train_mode: str, photos: str | None,
         class_noun: str | None, base: str) -> None:
    """Run the real job end to end offline (a local S3 server, the production code path): the toy
    world's base model learns a subject it has never seen, with prior preservation (about a
    minute on 2 CPU cores); prints the subject fidelity before and after and writes a
    before/after picture. With --photos and --class-noun: your photos on a tiny random model."""
    sys.exit(int(demo_module.run_demo(output, max_train_steps=max_train_steps, train_mode=train_mode,
                                      photos=photos, class_noun=class_noun, base=base)))


@main.command("config")
@click.option("--print-defaults", is_flag=True, help="Print every option with its default as YAML.")
@train_options
def config_command(print_defaults: bool, **params) -> None:
    """Print the defaults, or the resolved configuration (flags > env > --config file > defaults)."""
    if print_defaults:
        click.echo(config_sources.defaults_yaml(), nl=False)
        return
    click.echo(yaml.safe_dump(resolve_train_config(params).to_dict(), sort_keys=False), nl=False)


if __name__ == "__main__":
    main()
