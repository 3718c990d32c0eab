"""What `TrainConfig` (train_config.py) declares about each option besides its type and default: its
role, help text, bounds and the commands that take it. Every consumer reads these: `validate`,
the run's identity (config/run_identity.py), the Jobs' arguments (config_sources.to_cli_args), the chart's
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
    checkpoint resumed, only when every MODEL option matches (config/run_identity.py); and every Job
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


class Place(enum.StrEnum):
    """What kind of place a string option names; every option that names one declares it, and
    every check of places derives from the declarations: the scheme and credential checks of
    `validate`, the operator's prefix and host lists (config/policy_checks.py), the batch rows' `{id}`
    substitution, the chart schema's refusal of credentials."""

    LOCATION = "location"
    """An s3://bucket/prefix URI or a local path the job reads or writes."""
    MODEL = "model"
    """A location, or a hub id (org/name) the job downloads from the hub."""
    URL = "url"
    """An http(s) URL the job connects to."""


# The longest location, hub id or URL an option takes: S3 keys end at 1024 bytes, and every one
# goes into Job args, log lines, result.json and the run page.
MAX_LOCATION_LENGTH = 1024


def option(role: Role, default: Any = None, *, help: str, flag: str | None = None,
           choices: tuple[str, ...] | None = None, aliases: dict[str, str] | None = None,
           required: bool = False,
           default_factory: Any = None, minimum: float | None = None, maximum: float | None = None,
           exclusive_minimum: float | None = None, exclusive_maximum: float | None = None,
           multiple_of: int | None = None, max_length: int | None = None,
           max_items: int | None = None, pattern: tuple[str, str] | None = None,
           must_contain: str | None = None, evaluation: bool = False,
           place: Place | None = None, set_by_pod: bool = False,
           ceiling: str | None = None) -> Any:
    """A config field: its role, help text and bounds, which `validate` checks and the chart's
    values schema repeats. `flag` overrides the generated `--name/--no-name` form; `evaluation`
    makes it an option of `dreambooth-job evaluate` too. `aliases` maps other accepted spellings
    of `choices` to the choice each means (accepted everywhere, documented as aliases).

    `max_length` bounds a string (each item of a list), `max_items` a list; `pattern` is a regular
    expression the whole string matches and the words that say what it allows. `place` says that
    the option names a place (at most MAX_LOCATION_LENGTH long unless `max_length` says otherwise).
    `set_by_pod`: the Job or the pod decides the value (e.g. a path inside the pod), so a batch
    row, the chart's `job:` values and `submit` never set it. `ceiling` names the OperatorPolicy
    field that bounds the value from above for tenants (DREAMBOOTH_OPERATOR_MAX_...; policy.py)."""
    if not isinstance(role, Role):
        raise TypeError(f"option() takes the field's Role first (MODEL or OPERATIONAL), got {role!r}")
    if place is not None and max_length is None:
        max_length = MAX_LOCATION_LENGTH
    bounds = {"minimum": minimum, "maximum": maximum, "exclusiveMinimum": exclusive_minimum,
              "exclusiveMaximum": exclusive_maximum, "multipleOf": multiple_of}
    metadata = {"role": role, "help": help, "flag": flag, "choices": choices,
                "aliases": dict(aliases or {}), "required": required,
                "bounds": {k: v for k, v in bounds.items() if v is not None},
                "max_length": max_length, "max_items": max_items, "pattern": pattern,
                "must_contain": must_contain, "evaluation": evaluation, "place": place,
                "set_by_pod": set_by_pod, "ceiling": ceiling}
    if default_factory is not None:
        return field(default_factory=default_factory, metadata=metadata)
    return field(default=default, metadata=metadata)


def role_of(f: dataclasses.Field) -> Role:
    return f.metadata["role"]


def place_of(f: dataclasses.Field) -> Place | None:
    return f.metadata.get("place")


def set_by_pod(f: dataclasses.Field) -> bool:
    return bool(f.metadata.get("set_by_pod"))


def accepted_choices(f: dataclasses.Field) -> tuple[str, ...] | None:
    """The values a choice option takes: its choices, then their aliases; None for no choices."""
    choices = f.metadata.get("choices")
    return choices and (*choices, *f.metadata.get("aliases", {}))


def schema_bounds(f: dataclasses.Field) -> dict[str, Any]:
    """The field's bounds as JSON Schema keywords, as the chart's values schema states them. For
    a list, the string bounds are its items' (`items`, merged into the item schema)."""
    bounds = dict(f.metadata["bounds"])
    text: dict[str, Any] = {}
    if f.metadata["must_contain"]:
        text["pattern"] = re.escape(f.metadata["must_contain"])
    if f.metadata["pattern"]:
        text["pattern"] = f"^{f.metadata['pattern'][0]}$"
    if f.metadata["required"]:  # the required options are all strings
        text["minLength"] = 1
    if f.metadata["max_length"] is not None:
        text["maxLength"] = f.metadata["max_length"]
    if f.metadata["max_items"] is not None:
        bounds["maxItems"] = f.metadata["max_items"]
        return {**bounds, "items": text} if text else bounds
    return {**bounds, **text}


def check_bounds(f: dataclasses.Field, value: Any) -> None:
    """Raise InvalidInputError naming the field when `value` breaks one of its declared bounds."""
    bounds = f.metadata["bounds"]
    flag = (f.metadata["flag"] or "--" + f.name.replace("_", "-")).split("/")[0]
    if isinstance(value, list):
        _check_items(f, flag, value)
        return
    if isinstance(value, str):
        _check_text(f, flag, value)
    if value is None:
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


def _check_items(f: dataclasses.Field, flag: str, values: list) -> None:
    most = f.metadata["max_items"]
    if most is not None and len(values) > most:
        raise InvalidInputError(f"{flag} takes at most {most} values, got {len(values)}")
    for value in values:
        if isinstance(value, str):
            _check_text(f, flag, value)


def _check_text(f: dataclasses.Field, flag: str, value: str) -> None:
    """Length first, and never the whole value in the message: a megabyte-long id must not
    become a megabyte-long log line."""
    longest = f.metadata["max_length"]
    if longest is not None and len(value) > longest:
        raise InvalidInputError(f"{flag} must be at most {longest} characters, got {len(value)}")
    if f.metadata["pattern"] is not None:
        pattern, allowed = f.metadata["pattern"]
        if not re.fullmatch(pattern, value):
            raise InvalidInputError(f"{flag} must be {allowed}, got {value!r}")
