"""Kubernetes-style YAML with comments above chosen fields, for the generated manifests/.

    text = commented_yaml(job, {("spec", "backoffLimit"): "Pod failures that count."})

PyYAML drops comments, so this writes the block style kubectl users read (two-space indents,
list items under their key, short scalar lists in flow style) itself, and checks that the text
parses back to the same object. A comment's path is the keys down to the field; a list item is
named by its `name` field, or by its index when it has none. A path that names nothing is an
error, so that a comment cannot outlive the field it explains.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

import yaml

Path = tuple[str | int, ...]
FLOW_LIST_WIDTH = 30  # [2], [ALL]; longer lists one item a line


def commented_yaml(obj: Mapping[str, Any], comments: Mapping[Path, str], header: str = "") -> str:
    lines = _comment(header, 0)
    used: set[Path] = set()
    lines += _mapping(obj, (), 0, comments, used)
    unused = sorted(map(str, set(comments) - used))
    if unused:
        raise ValueError(f"comments on fields the object lacks: {', '.join(unused)}")
    text = "\n".join(lines) + "\n"
    if yaml.safe_load(text) != obj:
        raise AssertionError("commented_yaml wrote YAML that does not parse back to the object")
    return text


def scalar(value: Any) -> str:
    """`value` as a YAML scalar: plain where YAML reads it back unchanged, else double-quoted, as
    are strings of digits and dots ("0.1.0"), which a reader could take for numbers."""
    if isinstance(value, str) and re.fullmatch(r"[0-9.]+", value):
        return json.dumps(value)
    if isinstance(value, str):
        plain = yaml.safe_dump(value, default_style=None, width=10_000).removesuffix("\n...\n").strip()
        return plain if not plain.startswith(("'", '"')) and "\n" not in plain else json.dumps(value)
    return json.dumps(value)  # numbers, booleans and null read the same in JSON and YAML


def _comment(text: str, indent: int) -> list[str]:
    return [" " * indent + ("# " + line if line else "#") for line in text.splitlines()]


def _mapping(obj: Mapping[str, Any], path: Path, indent: int, comments: Mapping[Path, str],
             used: set[Path]) -> list[str]:
    lines = []
    for key, value in obj.items():
        here = (*path, key)
        if here in comments:
            used.add(here)
            lines += _comment(comments[here], indent)
        lines += _entry(f"{' ' * indent}{scalar(key)}:", value, here, indent, comments, used)
    return lines


def _entry(prefix: str, value: Any, path: Path, indent: int, comments: Mapping[Path, str],
           used: set[Path]) -> list[str]:
    """`prefix` (`key:` or `- key:`) with `value`, inline when it is a scalar or short list."""
    if isinstance(value, Mapping):
        if not value:
            return [f"{prefix} {{}}"]
        return [prefix, *_mapping(value, path, indent + 2, comments, used)]
    if isinstance(value, list):
        flow = "[" + ", ".join(scalar(v) for v in value) + "]"
        if not value or (not any(isinstance(v, Mapping | list) for v in value)
                         and len(flow) <= FLOW_LIST_WIDTH):
            return [f"{prefix} {flow}"]
        return [prefix, *_sequence(value, path, indent + 2, comments, used)]
    return [f"{prefix} {scalar(value)}"]


def _sequence(items: list[Any], path: Path, indent: int, comments: Mapping[Path, str],
              used: set[Path]) -> list[str]:
    lines = []
    for index, item in enumerate(items):
        here = (*path, item["name"] if isinstance(item, Mapping) and "name" in item else index)
        if here in comments:
            used.add(here)
            lines += _comment(comments[here], indent)
        if isinstance(item, Mapping) and item:
            # The first key on the dash's line, the others aligned under it.
            item_lines = _mapping(item, here, indent + 2, comments, used)
            first = next(i for i, line in enumerate(item_lines) if not line.lstrip().startswith("#"))
            if first:
                raise ValueError(f"a comment on the first field of a list item ({here}) has no place")
            lines += [" " * indent + "- " + item_lines[0].lstrip(), *item_lines[1:]]
        else:
            lines += _entry(" " * indent + "-", item, here, indent, comments, used)
    return lines
