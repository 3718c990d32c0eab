"""`GenerateConfig`: the options of `dreambooth-job generate`, one typed dataclass, as TrainConfig is
for `train`. Its flags, the generate Job's args (`to_cli_args`), the chart's `generate:` values and
their schema (helm/sync_chart.py) all derive from its fields, declared with config_fields.option
(role, help, bounds, choices), so they are checked by the same `check_bounds` and stated by the
same `schema_bounds`.

Unlike `train`, `generate` reads no option from env vars or a config file: its few options are
flags (and, in a pod, the Job's args), so that the DREAMBOOTH_* variables meant for training never
change what a generate Job draws. The operator's policy (DREAMBOOTH_OPERATOR_*, config/operator_policy.py)
is not an option: `location_problems` checks --model and --output against it, at submit-generate
and again in the pod. A leaf like config.py: no torch, so the Kubernetes commands use it.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import click

from dreambooth_job.cli_options import AutoOr
from dreambooth_job.config import choices as const
from dreambooth_job.config import locations
from dreambooth_job.config.field_types import default_of, flag_name
from dreambooth_job.config.input_options import default_cache_dir
from dreambooth_job.config.introspection import accepts_auto, base_type, is_list
from dreambooth_job.config.operator_policy import OperatorPolicy
from dreambooth_job.config.option_fields import MODEL, OPERATIONAL, Place, check_bounds, option
from dreambooth_job.config.sources import ALWAYS, WHEN_SET, is_stated
from dreambooth_job.config.subject_identifier import format_prompt
from dreambooth_job.exit_codes import InvalidInputError
from dreambooth_job.families import FAMILIES
from dreambooth_job.redaction import has_url_credentials

SAMPLERS = tuple(dict.fromkeys(name for family in FAMILIES for name in family.samplers))
"""Every family's `generate --sampler` names (`ModelFamily.samplers`), deterministic samplers only:
an image is a function of its seed (ancestral samplers draw fresh noise at every step from a
generator the pipeline does not get)."""
AUTO_SAMPLER = "auto"
MAX_PROMPTS = 32
MAX_IMAGES_PER_PROMPT = 64
MAX_PROMPT_CHARS = 1000
DEFAULT_PROMPTS = ("a {identifier} {class_noun}",)
# Set by the pod (the cache volume), as for training (k8s/pod.py OPTIONS_SET_BY_THE_POD).
SET_BY_THE_POD = frozenset({"cache_dir"})


@dataclass(kw_only=True)
class GenerateConfig:
    """What `dreambooth-job generate` draws, from which run, and where it writes it."""

    model: str | None = option(
        MODEL, required=True, place=Place.LOCATION,
        help="A finished run: its output prefix (s3:// or a local directory), or the run's model/ "
             "or lora/ under it. A run prefix uses model/ when the run published one, else lora/ "
             "(the adapters applied to the base model the run recorded).")
    output: str | None = option(
        OPERATIONAL, required=True, place=Place.LOCATION,
        help="s3://bucket/prefix/ or local directory that receives one PNG per image, grid.png "
             "and generation.json (what was generated; written last).")
    prompts: list[str] = option(
        MODEL, default_factory=lambda: list(DEFAULT_PROMPTS), flag="--prompt",
        help=f"Prompt (repeatable, at most {MAX_PROMPTS}); {{identifier}} and {{class_noun}} are "
             "filled in from the run's result.json.")
    num_images: int = option(
        MODEL, 4, minimum=1, maximum=MAX_IMAGES_PER_PROMPT,
        help="Images per prompt (the grid's columns), with seeds --seed, --seed + 1, ...")
    seed: int = option(
        MODEL, 0, minimum=0, maximum=2**32 - 1,
        help="Seed of the first image of each prompt: the same seed draws the same image.")
    sampler: str = option(
        MODEL, AUTO_SAMPLER, choices=(AUTO_SAMPLER, *SAMPLERS),
        help="Scheduler, one of the model family's (auto: the family's first, what the run's sample "
             f"grids use); all deterministic given the seed: {', '.join(SAMPLERS)}.")
    steps: int = option(MODEL, 25, minimum=1, maximum=1000, help="Sampler steps.")
    guidance_scale: float | None = option(
        MODEL, minimum=0, maximum=100,
        help="Guidance scale (default auto: the model family's, 7.5 for SD 1.x/2.x and SDXL, its "
             "pipeline's default for FLUX.2 [klein]).")
    resolution: int | None = option(
        MODEL, minimum=8, maximum=4096, multiple_of=8,
        help="Image side in pixels (default auto: the run's training resolution).")
    batch_size: int = option(OPERATIONAL, 4, minimum=1, help="Images per sampler call.")
    cache_dir: str = option(
        OPERATIONAL, default_factory=default_cache_dir, place=Place.LOCATION, set_by_pod=True,
        help="Local directory for downloaded models (the run's, its base model).")
    log_format: str = option(
        OPERATIONAL, "auto", choices=const.LOG_FORMAT_CHOICES,
        help="json: one object per line; text: human lines; auto: json unless on a terminal.")

    def __post_init__(self) -> None:
        for f in fields():
            if accepts_auto(f, GenerateConfig) and getattr(self, f.name) == const.AUTO:
                setattr(self, f.name, None)
        self.validate()

    def validate(self, *, require_inputs: bool = False) -> None:
        """Raise InvalidInputError naming the first bad option."""
        validate(self, require_inputs=require_inputs)

    @property
    def images(self) -> int:
        return len(self.prompts) * self.num_images


def fields() -> tuple[dataclasses.Field, ...]:
    return dataclasses.fields(GenerateConfig)


def validate(config: GenerateConfig, *, require_inputs: bool = False) -> None:
    if require_inputs:
        missing = [f.name for f in fields() if f.metadata["required"] and not getattr(config, f.name)]
        if missing:
            raise InvalidInputError(
                "missing required option(s): " + ", ".join(flag_name(n) for n in missing))
    for f in fields():
        value = getattr(config, f.name)
        if isinstance(value, float) and not math.isfinite(value):
            raise InvalidInputError(f"{flag_name(f.name)} must be a finite number, got {value}")
        check_bounds(f, value)
        if f.metadata["choices"] and value not in f.metadata["choices"]:
            raise InvalidInputError(f"{flag_name(f.name)} must be one of "
                                    f"{', '.join(f.metadata['choices'])}, got {value!r}")
    if not 1 <= len(config.prompts) <= MAX_PROMPTS:
        raise InvalidInputError(f"--prompt: give 1 to {MAX_PROMPTS} prompts, got {len(config.prompts)}")
    for prompt in config.prompts:
        if not prompt.strip() or len(prompt) > MAX_PROMPT_CHARS:
            raise InvalidInputError(f"--prompt must be 1 to {MAX_PROMPT_CHARS} characters, "
                                    f"got {prompt[:80]!r}{'...' if len(prompt) > 80 else ''}")
        format_prompt(prompt, "x", "x")  # an unknown placeholder fails here, not after loading
    for name in ("model", "output"):
        value = getattr(config, name)
        if has_url_credentials(value or ""):
            raise InvalidInputError(f"{flag_name(name)} must not carry credentials (user:password@ "
                                    "in its URL): credentials come from the environment")
        locations.check(flag_name(name), value)
    if locations.is_s3(config.cache_dir):
        raise InvalidInputError(f"--cache-dir {config.cache_dir!r} is not a local directory")


# ----------------------------------------------------------------------------------------------
# Flags in, args out

def generate_options(command: Callable) -> Callable:
    """Decorate a click command with one option per GenerateConfig field (all default None, so
    that `resolve` tells a given flag from an absent one)."""
    for f in reversed(fields()):
        kind = base_type(f, GenerateConfig)
        click_type: Any = click.Choice(f.metadata["choices"]) if f.metadata["choices"] else kind
        shown = "required" if f.metadata["required"] else f"default: {_shown_default(f)}"
        if accepts_auto(f, GenerateConfig):
            click_type, shown = AutoOr(kind), "default: auto"
        command = click.option(f.metadata["flag"] or flag_name(f.name), f.name, type=click_type,
                               default=None, multiple=is_list(f, GenerateConfig),
                               help=f"{f.metadata['help']} [{shown}]")(command)
    return command


def _shown_default(f: dataclasses.Field) -> str:
    default = default_of(f)
    return "; ".join(default) if isinstance(default, list) else str(default)


def resolve(params: Mapping[str, Any]) -> GenerateConfig:
    """The GenerateConfig of a command's parsed flags (unset ones keep their defaults)."""
    names = {f.name for f in fields()}
    given = {k: (list(v) if isinstance(v, tuple) else v) for k, v in params.items()
             if k in names and v not in (None, ())}
    return GenerateConfig(**given)


def stated_when(f: dataclasses.Field) -> str:
    """When a generate Job states an option (config_sources' vocabulary): at its value even when it
    is the default, so that an image with other defaults draws what the submitter asked for; an
    `auto` one always, unset as `auto`."""
    return ALWAYS if accepts_auto(f, GenerateConfig) else WHEN_SET


def to_cli_args(config: GenerateConfig) -> list[str]:
    """`generate` and its arguments: every option but those the pod sets, as stated_when says.
    The chart's generate mode renders the same list (files/package.yaml's `generateOptions`)."""
    args = ["generate"]
    for f in fields():
        value = getattr(config, f.name)
        if f.name in SET_BY_THE_POD or not is_stated(stated_when(f), value, default_of(f)):
            continue
        flag = f.metadata["flag"] or flag_name(f.name)
        for item in value if isinstance(value, list) else [const.AUTO if value is None else value]:
            args += [flag, str(item)]
    return args


def location_problems(config: GenerateConfig, policy=None) -> list[str]:
    """--model and --output outside the prefixes the operator allows (DREAMBOOTH_OPERATOR_
    ALLOWED_PREFIXES), as `submit` checks a training Job's locations."""
    policy = policy or OperatorPolicy.from_env()
    return [f"{flag_name(name)} {getattr(config, name)} is outside the prefixes the operator allows "
            "(DREAMBOOTH_OPERATOR_ALLOWED_PREFIXES)"
            for name in ("model", "output")
            if getattr(config, name) and not policy.allows_uri(getattr(config, name))]
