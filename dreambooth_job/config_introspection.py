"""Field introspection of `TrainConfig`, shared by the CLI, env and file loaders, the manifest
builder and the run identity: a field's flag and env names, scalar type, default, and the `auto`
options. Importable from `dreambooth_job.config` too; TrainConfig is looked up at call time, since
config.py imports this module.
"""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from collections.abc import Mapping
from typing import Any

from dreambooth_job import config_choices as const
from dreambooth_job.config_fields import Role, role_of


def _config_class() -> type:
    from dreambooth_job.config import TrainConfig

    return TrainConfig



def fields() -> tuple[dataclasses.Field, ...]:
    return dataclasses.fields(_config_class())


@functools.cache
def fields_by_name() -> dict[str, dataclasses.Field]:
    return {f.name: f for f in fields()}


def flag_name(name: str) -> str:
    return "--" + name.replace("_", "-")


def env_name(name: str) -> str:
    return const.ENV_PREFIX + name.upper()


def _hint(f: dataclasses.Field, owner: type | None) -> Any:
    return typing.get_type_hints(owner or _config_class())[f.name]


def base_type(f: dataclasses.Field, owner: type | None = None) -> type:
    """The field's scalar type: `int` for `int`, `str` for `str | None`, `str` for `list[str]`.
    `owner`: the dataclass declaring `f`, when not TrainConfig (generation/config.py's)."""
    hint = _hint(f, owner)
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
    if typing.get_origin(hint) is list:
        return typing.get_args(hint)[0]
    return hint


def is_list(f: dataclasses.Field, owner: type | None = None) -> bool:
    return typing.get_origin(_hint(f, owner)) is list


def default_of(f: dataclasses.Field) -> Any:
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return f.default


def accepts_auto(f: dataclasses.Field, owner: type | None = None) -> bool:
    """Options whose unset (None) default the run resolves: `auto` on the command line, in the
    environment and in files, and what Jobs pass for them (config_sources.to_cli_args)."""
    return (f.default is None and not f.metadata["required"]
            and base_type(f, owner) in (int, float, bool))


def resolve_auto(values: Mapping[str, Any]) -> dict[str, Any]:
    """The one place `auto` options that depend on other options are resolved: `values` (a
    config's fields, or a recorded config's) with those set to what the run uses. The trainer
    reads the result (`resolved_learning_rate`), and so does "the same run" (run_identity.py):
    `--learning-rate auto` and `--learning-rate 1e-4` train the same LoRA."""
    resolved = dict(values)
    mode = resolved.get("train_mode")
    if resolved.get("learning_rate") is None:  # a record's mode may be anything: full's unless lora
        resolved["learning_rate"] = const.DEFAULT_LEARNING_RATES["lora" if mode == "lora" else "full"]
    if resolved.get("lora_alpha") is None:
        rank_default = default_of(fields_by_name()["lora_rank"])
        resolved["lora_alpha"] = resolved.get("lora_rank", rank_default)
    return resolved


def model_fields() -> tuple[dataclasses.Field, ...]:
    """The fields whose values make a run another run (Role.MODEL)."""
    return tuple(f for f in fields() if role_of(f) is Role.MODEL)
