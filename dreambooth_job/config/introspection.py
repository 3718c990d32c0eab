"""Field introspection of `TrainConfig`, shared by the CLI, env and file loaders, the manifest
builder and the run identity: its fields, and a field's scalar type and `auto` rule, with the
declaring dataclass defaulting to TrainConfig (field_types.py has the helpers themselves).
"""

from __future__ import annotations

import dataclasses
import functools

from dreambooth_job.config import field_types
from dreambooth_job.config.option_fields import Role, role_of
from dreambooth_job.config.train_config import TrainConfig


def fields() -> tuple[dataclasses.Field, ...]:
    return dataclasses.fields(TrainConfig)


@functools.cache
def fields_by_name() -> dict[str, dataclasses.Field]:
    return {f.name: f for f in fields()}


def base_type(f: dataclasses.Field, owner: type | None = None) -> type:
    """The field's scalar type: `int` for `int`, `str` for `str | None`, `str` for `list[str]`.
    `owner`: the dataclass declaring `f`, when not TrainConfig (generation/generate_config.py's)."""
    return field_types.field_type(f, owner or TrainConfig)


def is_list(f: dataclasses.Field, owner: type | None = None) -> bool:
    return field_types.is_list_field(f, owner or TrainConfig)


def accepts_auto(f: dataclasses.Field, owner: type | None = None) -> bool:
    """Options whose unset (None) default the run resolves (field_types.takes_auto)."""
    return field_types.takes_auto(f, owner or TrainConfig)


def model_fields() -> tuple[dataclasses.Field, ...]:
    """The fields whose values make a run another run (Role.MODEL)."""
    return tuple(f for f in fields() if role_of(f) is Role.MODEL)
