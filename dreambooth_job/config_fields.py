"""What `TrainConfig` (config.py) declares about each option besides its type and default: its
role, help text, bounds and the commands that take it. Every consumer reads these: `validate`,
the run's identity (run_identity.py), the Jobs' arguments (config_sources.to_cli_args), the chart's
values schema (helm/sync_chart.py) and `dreambooth-job evaluate`'s options.
"""

from __future__ import annotations

import dataclasses
import enum
import re
from dataclasses import field
from typing import Any

from dreambooth_job.exit_codes import InvalidInputError


class Role(enum.StrEnum):
    """What changing an option does to a run; every option declares one (docs/options.md).

    One rule for "the same run" follows from it: a completed output is left alone, and a
    checkpoint resumed, only when every MODEL option matches (run_identity.py); and every Job
    the project writes passes every MODEL option explicitly, so that a pod whose image has other
    defaults still trains what the submitter saw (config_sources.to_cli_args).
    """

    MODEL = "model"
    """Changes the trained weights, or the optimizer state a checkpoint holds, or the weight
    files a completed run publishes (their precision and formats)."""
    OPERATIONAL = "operational"
    """Logging, metrics, cadence, cache paths, ids, limits, and speed switches that give the
    same weights up to floating-point rounding."""


MODEL, OPERATIONAL = Role.MODEL, Role.OPERATIONAL


def option(role: Role, default: Any = None, *, help: str, flag: str | None = None,
           choices: tuple[str, ...] | None = None, required: bool = False,
           default_factory: Any = None, minimum: float | None = None, maximum: float | None = None,
           exclusive_minimum: float | None = None, exclusive_maximum: float | None = None,
           multiple_of: int | None = None,
           must_contain: str | None = None, evaluation: bool = False) -> Any:
    """A config field: its role, help text and bounds, which `validate` checks and the chart's
    values schema repeats. `flag` overrides the generated `--name/--no-name` form; `evaluation`
    makes it an option of `dreambooth-job evaluate` too."""
    if not isinstance(role, Role):
        raise TypeError(f"option() takes the field's Role first (MODEL or OPERATIONAL), got {role!r}")
    bounds = {"minimum": minimum, "maximum": maximum, "exclusiveMinimum": exclusive_minimum,
              "exclusiveMaximum": exclusive_maximum, "multipleOf": multiple_of}
    metadata = {"role": role, "help": help, "flag": flag, "choices": choices, "required": required,
                "bounds": {k: v for k, v in bounds.items() if v is not None},
                "must_contain": must_contain, "evaluation": evaluation}
    if default_factory is not None:
        return field(default_factory=default_factory, metadata=metadata)
    return field(default=default, metadata=metadata)


def role_of(f: dataclasses.Field) -> Role:
    return f.metadata["role"]


def schema_bounds(f: dataclasses.Field) -> dict[str, Any]:
    """The field's bounds as JSON Schema keywords, as the chart's values schema states them."""
    bounds = dict(f.metadata["bounds"])
    if f.metadata["must_contain"]:
        bounds["pattern"] = re.escape(f.metadata["must_contain"])
    if f.metadata["required"]:  # the required options are all strings
        bounds["minLength"] = 1
    return bounds


def check_bounds(f: dataclasses.Field, value: Any) -> None:
    """Raise InvalidInputError naming the field when `value` breaks one of its declared bounds."""
    bounds, flag = f.metadata["bounds"], "--" + f.name.replace("_", "-")
    if value is None or isinstance(value, list):
        return
    low, high = bounds.get("minimum"), bounds.get("maximum")
    if (low is not None and value < low) or (high is not None and value > high):
        if low is not None and high is not None:
            problem = f"must be between {low} and {high}"
        elif high is not None:
            problem = f"must be at most {high}"
        else:
            problem = "must not be negative" if low == 0 else f"must be at least {low}"
        raise InvalidInputError(f"{flag} {problem}, got {value}")
    above = bounds.get("exclusiveMinimum")
    if above is not None and not value > above:
        wanted = "positive" if above == 0 else f"greater than {above}"
        raise InvalidInputError(f"{flag} must be {wanted}, got {value}")
    below = bounds.get("exclusiveMaximum")
    if below is not None and not value < below:
        raise InvalidInputError(f"{flag} must be below {below}, got {value}")
    step = bounds.get("multipleOf")
    if step is not None and value % step:
        raise InvalidInputError(f"{flag} must be a multiple of {step}, got {value}")
    text = f.metadata["must_contain"]
    if text is not None and text not in value:
        raise InvalidInputError(f"{flag} must contain {text}")
