"""What a dataclass field says about itself: its flag and env names, scalar type, default, and
whether it takes `auto`. Each helper takes the dataclass declaring the field (`owner`); TrainConfig's
own shortcuts, defaulting `owner` to it, are in introspection.py. A leaf under train_config.py.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any

from dreambooth_job.config import choices as const


def flag_name(name: str) -> str:
    return "--" + name.replace("_", "-")


def env_name(name: str) -> str:
    return const.ENV_PREFIX + name.upper()


def default_of(f: dataclasses.Field) -> Any:
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return f.default


def field_type(f: dataclasses.Field, owner: type) -> type:
    """The field's scalar type: `int` for `int`, `str` for `str | None`, `str` for `list[str]`."""
    hint = typing.get_type_hints(owner)[f.name]
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
    if typing.get_origin(hint) is list:
        return typing.get_args(hint)[0]
    return hint


def is_list_field(f: dataclasses.Field, owner: type) -> bool:
    return typing.get_origin(typing.get_type_hints(owner)[f.name]) is list


def takes_auto(f: dataclasses.Field, owner: type) -> bool:
    """Options whose unset (None) default the run resolves: `auto` on the command line, in the
    environment and in files, and what Jobs pass for them (sources.to_cli_args)."""
    return (f.default is None and not f.metadata["required"]
            and field_type(f, owner) in (int, float, bool))
