"""Reading files a tenant writes (config files, subjects files) without trusting them.

Each file is read whole up to MAX_FILE_BYTES and must be UTF-8; YAML is parsed by a safe loader
that also refuses aliases. Every failure is an InvalidInputError or yaml.YAMLError with one line
that names the file or the place in it.
"""

from __future__ import annotations

import os
from typing import Any

import yaml

from dreambooth_job.exit_codes import InvalidInputError

MAX_FILE_BYTES = 4 * 1024 * 1024
"""Config and subjects files larger than this are refused unread (thousands of subjects fit)."""


def read_text_file(path: str | os.PathLike, what: str) -> str:
    """A config or subjects file as text: at most MAX_FILE_BYTES, UTF-8, else one-line errors."""
    try:
        with open(path, "rb") as file:
            data = file.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise InvalidInputError(f"cannot read {what} {path}: {exc.strerror}") from None
    if len(data) > MAX_FILE_BYTES:
        raise InvalidInputError(f"{what} {path} is larger than {MAX_FILE_BYTES // 2**20} MiB")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidInputError(f"{what} {path} is not UTF-8 text (byte {exc.start})") from None


class _NoAliasLoader(yaml.SafeLoader):
    """YAML without aliases: each `*name` may repeat a big node, and a few hundred bytes of nested
    aliases expand to billions of items once the values are read (the "billion laughs")."""

    def compose_node(self, parent: yaml.Node | None, index: int) -> yaml.Node | None:
        if self.check_event(yaml.AliasEvent):
            mark = self.peek_event().start_mark
            raise yaml.composer.ComposerError(
                None, None, "aliases (*name) are not allowed; write the value out", mark)
        return super().compose_node(parent, index)


def load_yaml(text: str) -> Any:
    """Parse YAML (or JSON) text; aliases and nesting too deep raise yaml.YAMLError."""
    try:
        return yaml.load(text, Loader=_NoAliasLoader)  # noqa: S506 - a SafeLoader subclass
    except RecursionError:
        raise yaml.YAMLError("nested too deeply") from None


def yaml_reason(exc: yaml.YAMLError) -> str:
    """One line: what is wrong and where ("expected ',' or ']' ... at line 2, column 1")."""
    problem, mark = getattr(exc, "problem", None), getattr(exc, "problem_mark", None)
    if not problem:
        return " ".join(str(exc).split())
    return f"{problem} at line {mark.line + 1}, column {mark.column + 1}" if mark else problem
