"""Where option values come from and go to: environment variables, YAML/JSON config files,
and back out as `train` arguments or config-file values for the Jobs (flag > env > file >
default, merged by `resolve_config`). The fields themselves are in train_config.py.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from typing import Any

import yaml

from dreambooth_job.config.choices import AUTO, ENV_PREFIX
from dreambooth_job.config.field_types import default_of, env_name, flag_name
from dreambooth_job.config.introspection import accepts_auto, base_type, fields, fields_by_name, is_list
from dreambooth_job.config.option_fields import Role, role_of
from dreambooth_job.config.tenant_files import load_yaml, read_text_file, yaml_reason
from dreambooth_job.config.train_config import TrainConfig
from dreambooth_job.exit_codes import InvalidInputError

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def _short(raw: Any) -> str:
    text = repr(raw)
    return text if len(text) <= 80 else text[:77] + "..."


def parse_value(name: str, raw: Any, source: str) -> Any:
    """Convert a value from an env var or config file to the field's type, naming the source on error."""
    f = fields_by_name()[name]
    kind = base_type(f)
    if raw is None:
        return None
    if is_list(f):
        if isinstance(raw, str):
            raw = _env_list(name, raw, source)
        if not isinstance(raw, (list, tuple)):
            raise InvalidInputError(f"{source}: {name} must be a list, got {_short(raw)}")
        for item in raw:
            if not isinstance(item, (str, int, float)):
                raise InvalidInputError(f"{source}: every item of {name} must be a single "
                                        f"{kind.__name__}, got {_short(item)}")
        return [str(item) for item in raw]
    if not isinstance(raw, (str, int, float)):
        # A list or mapping (or a YAML date) would otherwise be stringified into the option.
        raise InvalidInputError(f"{source}: {name} must be a single {kind.__name__}, got "
                                f"{type(raw).__name__} {_short(raw)}")
    if accepts_auto(f) and isinstance(raw, str) and raw.strip().lower() == AUTO:
        return None
    try:
        if kind is bool:
            if isinstance(raw, bool):
                return raw
            text = str(raw).strip().lower()
            if text in _TRUE | _FALSE:
                return text in _TRUE
            raise ValueError(raw)
        if kind is int and isinstance(raw, float) and not raw.is_integer():
            raise ValueError(raw)
        if kind in (int, float) and isinstance(raw, bool):
            raise ValueError(raw)
        return kind(raw)
    except (TypeError, ValueError, OverflowError):
        wanted = kind.__name__ + (" or auto" if accepts_auto(f) else "")
        raise InvalidInputError(f"{source}: {name} must be {wanted}, got {_short(raw)}") from None


def _env_list(name: str, raw: str, source: str) -> Any:
    """An env var's list: a JSON list, or one item per line."""
    if not raw.strip().startswith("["):
        return [s for s in raw.splitlines() if s]
    try:
        return json.loads(raw)
    except (ValueError, RecursionError) as exc:
        reason = exc.msg if isinstance(exc, json.JSONDecodeError) else "nested too deeply"
        raise InvalidInputError(f"{source}: {name} is not a valid JSON list ({reason})") from None


def values_from_env(env: Mapping[str, str]) -> dict[str, Any]:
    values = {}
    for f in fields():
        key = env_name(f.name)
        if key in env and env[key] != "":
            values[f.name] = parse_value(f.name, env[key], f"environment variable {key}")
    return values


def load_config_file(path: str | os.PathLike) -> dict[str, Any]:
    """Read a YAML or JSON config file; keys may be snake_case or kebab-case."""
    text = read_text_file(path, "config file")
    try:
        data = load_yaml(text) or {}
    except yaml.YAMLError as exc:
        raise InvalidInputError(f"config file {path} is not valid YAML/JSON: {yaml_reason(exc)}") from None
    if not isinstance(data, dict):
        raise InvalidInputError(f"config file {path} must hold a mapping of option names to values")
    return normalize_keys(data, source=f"config file {path}")


def normalize_keys(data: Mapping[str, Any], source: str) -> dict[str, Any]:
    """Map kebab/snake keys to field names and parse values, rejecting unknown keys by name."""
    values = {}
    for key, raw in data.items():
        name = str(key).replace("-", "_")
        if name not in fields_by_name():
            raise InvalidInputError(f"{source}: unknown option {key!r}")
        values[name] = parse_value(name, raw, source)
    return values


def to_cli_args(config: TrainConfig) -> list[str]:
    """The `train` arguments that reproduce `config` whatever the defaults of the image that runs
    them: every MODEL option, even at its default (`auto` where it is resolved at run time), and
    the OPERATIONAL ones that differ from the default (those defaults are the operator's image's)."""
    args: list[str] = []
    for f in _explicit_fields(config):
        value = getattr(config, f.name)
        if value is None:
            args += [flag_name(f.name), AUTO]
        elif base_type(f) is bool:
            on, _, off = bool_flags(f).partition("/")
            args.append(on if value else off)
        elif is_list(f):
            for item in value:
                args += [f.metadata["flag"] or flag_name(f.name), item]
        else:
            args += [flag_name(f.name), str(value)]
    return args


def to_config_values(config: TrainConfig) -> dict[str, Any]:
    """`config` as a config file's mapping (an Indexed Job's per-subject file), with the same
    options as `to_cli_args`: every MODEL option explicitly, OPERATIONAL ones when not default."""
    return {f.name: AUTO if getattr(config, f.name) is None else getattr(config, f.name)
            for f in _explicit_fields(config)}


# When a Job states an option (to_cli_args, to_config_values, and the chart's args by the `stated`
# of files/package.yaml's options, written from stated_when).
ALWAYS = "always"
WHEN_SET = "whenSet"
WHEN_CHANGED = "whenChanged"


def stated_when(f: dataclasses.Field) -> str:
    """ALWAYS for a MODEL option that the run may resolve: stated even unset (as `auto`), so that
    an image with other defaults trains the same model; it is a number (config.accepts_auto:
    tests/unit/test_option_roles.py). WHEN_SET for the other MODEL options, the required ones,
    which validation refuses to leave unset. WHEN_CHANGED for an OPERATIONAL option: stated when
    set to another value than the default; unset, the pod resolves it the same way."""
    if role_of(f) is Role.MODEL:
        return ALWAYS if accepts_auto(f) else WHEN_SET
    return WHEN_CHANGED


def is_stated(when: str, value: Any, default: Any) -> bool:
    """Whether an option stated `when` is stated at `value` (None: unset)."""
    if when == ALWAYS:
        return True
    return value is not None and (when == WHEN_SET or value != default)


def _explicit_fields(config: TrainConfig) -> list:
    """The fields a Job states (stated_when). The cache directory is the pod's (manifest.py)."""
    return [f for f in fields()
            if f.name != "cache_dir" and is_stated(stated_when(f), getattr(config, f.name), default_of(f))]


def bool_flags(f: dataclasses.Field[Any]) -> str:
    """A boolean option's `--on/--off` pair."""
    return f.metadata["flag"] or f"{flag_name(f.name)}/--no-{f.name.replace('_', '-')}"


def defaults_yaml() -> str:
    """A commented YAML file of every option with its default (`config --print-defaults`)."""
    lines = ["# dreambooth-job train configuration: every option with its default.",
             f"# Each key can also be set as a flag (--kebab-case) or env var ({ENV_PREFIX}UPPER_CASE)."]
    for f in fields():
        lines.append(f"# {f.metadata['help']}" + (" (required)" if f.metadata["required"] else "")
                     + f" [role: {role_of(f)}]")
        default = AUTO if accepts_auto(f) and default_of(f) is None else default_of(f)
        dumped = yaml.safe_dump({f.name: default}, default_flow_style=False, sort_keys=False)
        lines.append(dumped.rstrip())
    return "\n".join(lines) + "\n"


def merged_values(flags: Mapping[str, Any] | None, env: Mapping[str, str] | None,
                  config_file: str | os.PathLike | None) -> dict[str, Any]:
    """TrainConfig's values from its sources, flag > env > file > default; `None` flag values
    count as unset; `env` None reads the process environment."""
    values: dict[str, Any] = {}
    if config_file:
        values.update(load_config_file(config_file))
    values.update(values_from_env(os.environ if env is None else env))
    values.update({k: v for k, v in (flags or {}).items() if v is not None})
    return values


def resolve_config(flags: Mapping[str, Any] | None = None, env: Mapping[str, str] | None = None,
                   config_file: str | os.PathLike | None = None) -> TrainConfig:
    """A TrainConfig from its sources, flag > env > file > default (merged_values)."""
    return TrainConfig(**merged_values(flags, env, config_file))
