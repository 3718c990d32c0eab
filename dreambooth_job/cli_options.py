"""Click options generated from `TrainConfig`, shared by `train`, `submit` and any command that
takes the job's configuration. Light on purpose: no torch, so the Kubernetes commands can use it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

from dreambooth_job.config import choices as const
from dreambooth_job.config import field_types, introspection
from dreambooth_job.config import sources as config_sources
from dreambooth_job.config import train_config as cfg
from dreambooth_job.config.option_fields import accepted_choices


def train_options(command: Callable) -> Callable:
    """Decorate a click command with one option per TrainConfig field plus `--config FILE`.

    Every option defaults to None so that `resolve_train_config` can tell a flag that was given
    from one that was not (flag > env > file > default).
    """
    for f in reversed(introspection.fields()):
        command = _option_for(f)(command)
    return click.option(
        "--config", "config_file", type=click.Path(dir_okay=False),
        help="YAML or JSON file of options (keys as in `config --print-defaults`).")(command)


def _option_for(f) -> Callable:
    help_text = f.metadata["help"]
    default = field_types.default_of(f)
    kind = introspection.base_type(f)
    if kind is bool:
        decls = f.metadata["flag"] or f"{field_types.flag_name(f.name)}/--no-{f.name.replace('_', '-')}"
        shown = "auto" if default is None else decls.split("/")[0 if default else 1]
        return click.option(decls, f.name, default=None,
                             help=f"{help_text} [default: {shown}; env {field_types.env_name(f.name)}]")
    click_type: Any = click.Choice(accepted_choices(f)) if f.metadata["choices"] else kind
    metavar = choice_metavar(f)
    shown = "required" if f.metadata["required"] else f"default: {default}"
    if introspection.accepts_auto(f):
        click_type, shown = AutoOr(kind), "default: auto"
    if introspection.is_list(f):
        shown = "default: " + "; ".join(default)
    return click.option(f.metadata["flag"] or field_types.flag_name(f.name), f.name, type=click_type,
                        default=None, multiple=introspection.is_list(f), metavar=metavar,
                        help=f"{help_text} [{shown}; env {field_types.env_name(f.name)}]")


def choice_metavar(f) -> str | None:
    """The choices shown in --help for an option with aliases (accepted, not listed); else click's."""
    return "[" + "|".join(f.metadata["choices"]) + "]" if f.metadata.get("aliases") else None


class AutoOr(click.ParamType):
    """A number, or `auto` (the default, resolved by the run): kept as the text "auto", which
    TrainConfig reads as unset, so that an explicit `--x auto` still wins over env and files."""

    def __init__(self, kind: type):
        self.kind, self.name = kind, f"{kind.__name__}|auto"

    def convert(self, value, param, ctx):
        if isinstance(value, str) and value.strip().lower() == const.AUTO:
            return const.AUTO
        try:
            return self.kind(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a {self.kind.__name__} or auto", param, ctx)


def resolve_train_config(params: dict[str, Any], env=None) -> cfg.TrainConfig:
    """Build the TrainConfig from a command's parsed parameters, env vars and `--config`."""
    names = {f.name for f in introspection.fields()}
    # Click gives an empty tuple for a repeatable option that was not used: that is "unset".
    flags = {k: (list(v) if isinstance(v, tuple) else v) for k, v in params.items()
             if k in names and v not in (None, ())}
    return config_sources.resolve_config(flags, env=env, config_file=params.get("config_file"))
