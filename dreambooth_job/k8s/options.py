"""Click options generated from `ClusterSettings`, and the cluster connection options.

One option per field, named after it (`--priority-class-name`, `--node-selector KEY=VALUE`, ...),
plus `--cluster-config FILE` for a YAML file of the same settings (what an operator keeps per
cluster). Precedence: flag > file > default. Structured settings (resources, tolerations,
affinity, env) take YAML or JSON text: `--tolerations '[{key: gpu, operator: Exists}]'`.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import click
import yaml

from dreambooth_job.exit_codes import InvalidInputError
from dreambooth_job.k8s.cluster_settings import ClusterSettings

_HINTS = typing.get_type_hints(ClusterSettings)


def _kind(name: str) -> str:
    """scalar, bool, strings (tuple[str]), pairs (Mapping[str, str]) or yaml (anything nested)."""
    hint = _HINTS[name]
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is bool:
        return "bool"
    if origin is tuple and args[0] is str:
        return "strings"
    if origin is Mapping and args == (str, str):
        return "pairs"
    if origin in (tuple, Mapping):
        return "yaml"
    return "scalar"


def cluster_options(command: Callable) -> Callable:
    """Decorate a command with one option per ClusterSettings field and `--cluster-config`."""
    for f in reversed(dataclasses.fields(ClusterSettings)):
        flag = "--" + f.name.replace("_", "-")
        help_text = f.metadata.get("help", "")
        kind = _kind(f.name)
        if kind == "bool":
            option = click.option(f"{flag}/--no-{flag[2:]}", f.name, default=None, help=help_text)
        elif kind in ("strings", "pairs"):
            metavar = "KEY=VALUE" if kind == "pairs" else "TEXT"
            option = click.option(flag, f.name, multiple=True, metavar=metavar,
                                  help=f"{help_text} (repeatable)")
        elif kind == "yaml":
            option = click.option(flag, f.name, metavar="YAML", help=f"{help_text} (YAML or JSON)")
        else:
            hint = _HINTS[f.name]
            click_type = int if int in (hint, *typing.get_args(hint)) else str
            option = click.option(flag, f.name, type=click_type, default=None, help=help_text)
        command = option(command)
    return click.option(
        "--cluster-config", "cluster_config", type=click.Path(dir_okay=False),
        help="YAML file of cluster settings (keys as the options above, snake or kebab case).",
    )(command)


def connection_options(command: Callable) -> Callable:
    command = click.option("--context", help="kubeconfig context (default: the current one).")(command)
    return click.option(
        "--kubeconfig", type=click.Path(dir_okay=False), envvar="KUBECONFIG",
        help="kubeconfig file; without one (and no ~/.kube/config) the pod's service account "
             "is used.")(command)


def resolve_cluster_settings(params: dict[str, Any]) -> ClusterSettings:
    """ClusterSettings from `--cluster-config` and the flags of `cluster_options`."""
    values: dict[str, Any] = {}
    if params.get("cluster_config"):
        values.update(_load_file(params["cluster_config"]))
    for f in dataclasses.fields(ClusterSettings):
        raw = params.get(f.name)
        if raw is None or raw == ():
            continue
        values[f.name] = _parse(f.name, raw, "--" + f.name.replace("_", "-"))
    return ClusterSettings(**values)


def _load_file(path: str) -> dict[str, Any]:
    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except OSError as exc:
        raise InvalidInputError(f"cannot read cluster config {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise InvalidInputError(f"cluster config {path} is not valid YAML: "
                                f"{str(exc).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise InvalidInputError(f"cluster config {path} must be a mapping of settings")
    names = {f.name for f in dataclasses.fields(ClusterSettings)}
    values = {}
    for key, raw in data.items():
        name = str(key).replace("-", "_")
        if name not in names:
            raise InvalidInputError(f"cluster config {path}: unknown setting {key!r}")
        values[name] = _check(name, raw, f"cluster config {path}: {key}")
    return values


def _parse(name: str, raw: Any, source: str) -> Any:
    """A flag's text (or tuple of texts) as the field's type."""
    kind = _kind(name)
    if kind == "pairs":
        pairs = {}
        for item in raw:
            key, sep, value = item.partition("=")
            if not sep or not key:
                raise InvalidInputError(f"{source} takes KEY=VALUE, got {item!r}")
            pairs[key] = value
        return pairs
    if kind == "yaml":
        try:
            raw = yaml.safe_load(raw)
        except yaml.YAMLError:
            raise InvalidInputError(f"{source} is not valid YAML/JSON: {raw!r}") from None
    return _check(name, raw, source)


def _check(name: str, value: Any, source: str) -> Any:
    """`value` (from YAML or a parsed flag) checked against the field's shape."""
    kind = _kind(name)
    hint = _HINTS[name]
    if value is None:
        return None
    if kind in ("pairs", "yaml") and typing.get_origin(hint) is Mapping:
        if not isinstance(value, dict):
            raise InvalidInputError(f"{source} must be a mapping, got {value!r}")
        return value
    if kind in ("strings", "yaml"):
        if not isinstance(value, (list, tuple)):
            raise InvalidInputError(f"{source} must be a list, got {value!r}")
        if kind == "yaml" and not all(isinstance(v, dict) for v in value):
            raise InvalidInputError(f"{source} must be a list of mappings, got {value!r}")
        return tuple(value) if kind == "yaml" else tuple(str(v) for v in value)
    if kind == "bool" and not isinstance(value, bool):
        raise InvalidInputError(f"{source} must be true or false, got {value!r}")
    if kind == "scalar":
        wanted = int if int in (hint, *typing.get_args(hint)) else str
        if wanted is int and (isinstance(value, bool) or not isinstance(value, int)):
            raise InvalidInputError(f"{source} must be an integer, got {value!r}")
        if wanted is str and not isinstance(value, str):
            raise InvalidInputError(f"{source} must be text, got {value!r}")
    return value
