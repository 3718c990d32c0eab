"""Subjects files: one row per subject, common defaults on top, every row checked before anything runs.

    defaults:                                  # YAML; CSV takes defaults from --set key=value
      output: s3://runs/night-42/{id}/
      max_train_steps: 800
    subjects:
      - {id: dog, instance_data: "s3://photos/dog/", class_noun: dog}
      - {id: teapot, instance_data: "s3://photos/teapot/", class_noun: teapot, learning_rate: 2.0e-6}

Keys are TrainConfig's own option names (snake_case; kebab-case works too) plus `id`, the
subject id. String values may use `{id}` and `{class_noun}`; in a path or URL option they must
be one path segment. Precedence: row > --set > defaults.
CSV has a header row `id,instance_data,class_noun[,more options]`; JSONL has one object per line,
the first of which may be `{"defaults": {...}}`. The batch id (the Jobs' batch label) is
`batch_id` from the defaults or --set, else the file's name without its extension.

The file is tenant-written: the operator's settings (config/operator_policy.py) limit which options the
file, --set and rows may set, which prefixes their paths and URIs may name, and which hosts their
URLs may reach. Every problem of every row is reported at once.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from dreambooth_job.config.choices import ID_PATTERN as ID_REGEX
from dreambooth_job.config.field_types import flag_name
from dreambooth_job.config.introspection import fields
from dreambooth_job.config.operator_policy import OperatorPolicy
from dreambooth_job.config.option_fields import place_of
from dreambooth_job.config.policy_checks import policy_problems
from dreambooth_job.config.sources import normalize_keys
from dreambooth_job.config.tenant_files import load_yaml, read_text_file, yaml_reason
from dreambooth_job.config.train_config import TrainConfig
from dreambooth_job.exit_codes import InvalidInputError
from dreambooth_job.k8s.pod import OPTIONS_SET_BY_THE_POD

ID_KEYS = ("id", "subject_id")
# Ids become label values and S3 path parts: keep them to what a label value accepts.
ID_PATTERN = re.compile(f"^{ID_REGEX}$")
# What a row always sets, whatever the operator allows (the batch id only names the batch).
ALWAYS_ALLOWED = frozenset({"instance_data", "class_noun", "batch_id", "subject_id"})
# Options the Job or the pod decides (config_fields.option's set_by_pod): never a row's.
SET_BY_THE_POD = OPTIONS_SET_BY_THE_POD
PLACES = {f.name: place_of(f) for f in fields() if place_of(f)}


class BatchFileError(InvalidInputError):
    """The subjects file, or some of its rows, are invalid; `.problems` lists every one."""

    def __init__(self, path: str, problems: list[str]):
        super().__init__(f"{path}: {len(problems)} problem(s), nothing was submitted:\n  "
                         + "\n  ".join(problems))
        self.problems = problems


@dataclass(frozen=True)
class Batch:
    batch_id: str
    source: str
    subjects: list[TrainConfig]
    """One config per row, subject_id and batch_id filled in, each valid on its own."""

    @property
    def ids(self) -> list[str]:
        return [c.resolved_subject_id for c in self.subjects]


def load_batch(path: str | Path, overrides: Mapping[str, Any] | None = None) -> Batch:
    """Read and validate a subjects file (.yaml/.yml, .csv, .jsonl/.ndjson) in full.

    Raises BatchFileError naming every bad row (and bad default) at once.
    """
    path = Path(path)
    text = read_text_file(path, "subjects file")
    suffix = path.suffix.lower()
    reader = {".yaml": _read_yaml, ".yml": _read_yaml, ".json": _read_yaml, ".csv": _read_csv,
              ".jsonl": _read_jsonl, ".ndjson": _read_jsonl}.get(suffix)
    if reader is None:
        raise InvalidInputError(f"{path}: unknown subjects file type {suffix!r} "
                                "(use .yaml, .csv or .jsonl)")
    try:
        raw_defaults, rows = reader(text)
    except yaml.YAMLError as exc:
        raise InvalidInputError(f"{path}: cannot parse: {yaml_reason(exc)}") from None
    except (csv.Error, ValueError, TypeError) as exc:
        raise InvalidInputError(f"{path}: cannot parse: {str(exc).splitlines()[0]}") from None
    return parse_rows(str(path), raw_defaults, rows, overrides or {}, default_batch_id=path.stem)


def parse_rows(source: str, raw_defaults: Mapping[str, Any], rows: list[tuple[str, Any]],
               overrides: Mapping[str, Any], default_batch_id: str,
               policy: OperatorPolicy | None = None) -> Batch:
    """Validate `rows` ((where, mapping) pairs) against the defaults; collect every problem."""
    policy = policy or OperatorPolicy.from_env()
    problems: list[str] = []
    defaults: dict[str, Any] = {}
    for label, values in (("defaults", raw_defaults), ("--set", overrides)):
        for key, value in values.items():  # one by one, so one bad key does not hide the rest
            if value is None or value == "":  # unset, as in a row
                continue
            if str(key) in ID_KEYS:
                problems.append(f"{label}: {key!r} is each row's own id, not a default")
                continue
            try:
                parsed = normalize_keys({key: value}, source=label)
            except InvalidInputError as exc:
                problems.append(exc.message)
                continue
            if "subject_id" in parsed:  # each row's own id; as a default every row would repeat it
                problems.append(f"{label}: subject_id is each row's id, it cannot be set for all rows")
                continue
            problems += _forbidden_options(label, parsed, policy)
            defaults.update(parsed)
    batch_id = str(defaults.pop("batch_id", None) or default_batch_id)
    if not ID_PATTERN.match(batch_id):
        problems.append(f"batch id {batch_id[:80]!r} must be 1-63 letters, digits, '-', '_' or '.'")
    if not rows:
        problems.append("no subjects")

    configs: list[TrainConfig] = []
    seen: dict[str, str] = {}
    for where, row in rows:
        try:
            config = _subject(row, defaults, batch_id, where, policy)
        except InvalidInputError as exc:
            problems.append(exc.message)
            continue
        subject_id = config.resolved_subject_id  # the row's id: _subject sets it
        named = f"{where} (id {subject_id})"
        located = [f"{named}: {p}" for p in policy_problems(config, policy)]
        if located:
            problems += located
            continue
        if subject_id in seen:
            problems.append(f"{named}: id {subject_id!r} repeats {seen[subject_id]}")
            continue
        seen[subject_id] = where
        configs.append(config)
    if problems:
        raise BatchFileError(source, problems)
    return Batch(batch_id=batch_id, source=source, subjects=configs)


def _subject(row: Any, defaults: dict[str, Any], batch_id: str, where: str,
             policy: OperatorPolicy) -> TrainConfig:
    if isinstance(row, str):
        raise InvalidInputError(f"{where}: {row}")
    if not isinstance(row, Mapping):
        raise InvalidInputError(f"{where}: must be a mapping of option names to values")
    row = {str(k): v for k, v in row.items() if v is not None and v != ""}
    ids = [row.pop(k) for k in ID_KEYS if k in row]
    subject_id = str(ids[0]) if ids else ""
    if not subject_id:
        raise InvalidInputError(f"{where}: missing id")
    if not ID_PATTERN.match(subject_id):  # before the id goes into any message in full
        raise InvalidInputError(
            f"{where}: id must be 1-63 letters, digits, '-', '_' or '.', starting and ending "
            f"with a letter or digit, got {len(subject_id)} characters: {subject_id[:40]!r}")
    where = f"{where} (id {subject_id})"
    own = normalize_keys(row, source=where)
    forbidden = _forbidden_options(where, own, policy)
    if forbidden:
        raise InvalidInputError("; ".join(forbidden))
    values = {**defaults, **own}
    if values.pop("batch_id", batch_id) != batch_id:
        raise InvalidInputError(f"{where}: batch_id cannot differ between rows")
    fill = {"{id}": subject_id, "{class_noun}": str(values.get("class_noun") or "")}
    try:
        values = {k: _substitute(k, v, fill) for k, v in values.items()}
        config = TrainConfig(**values, subject_id=subject_id, batch_id=batch_id)
        config.validate(require_inputs=True)
    except InvalidInputError as exc:
        raise InvalidInputError(f"{where}: {exc.message}") from None
    return config


def _forbidden_options(where: str, values: Mapping[str, Any], policy: OperatorPolicy) -> list[str]:
    pod = [f"{where}: option {name!r} is set by the pod, not by a subjects file"
           for name in values if name in SET_BY_THE_POD]
    return pod + [f"{where}: option {name!r} may not be set here (the operator allows "
                  f"{', '.join(policy.batch_row_options or ()) or 'none'}; "
                  "DREAMBOOTH_OPERATOR_BATCH_ROW_OPTIONS)"
                  for name in values if name not in ALWAYS_ALLOWED | SET_BY_THE_POD
                  and not policy.allows_row_option(name)]


def _substitute(name: str, value: Any, fill: dict[str, str]) -> Any:
    # Plain replacement, not str.format: prompts keep their own {identifier} placeholders.
    if isinstance(value, list):
        return [_substitute(name, v, fill) for v in value]
    if not isinstance(value, str):
        return value
    for key, replacement in fill.items():
        # A class noun "../x" would point the row at another tenant's prefix. (A missing one is
        # reported as missing by the validation that follows.)
        unsafe = replacement and not _is_segment(replacement)
        if key in value and name in PLACES and unsafe:
            raise InvalidInputError(
                f"{flag_name(name)} uses {key}, but {replacement!r} is not one path segment "
                "(no '/', '\\', '..' or control characters)")
        value = value.replace(key, replacement)
    return value


def _is_segment(value: str) -> bool:
    return (bool(value.strip()) and not any(c in value for c in "/\\") and ".." not in value
            and value.isprintable())


# ----------------------------------------------------------------------------------------------
# Readers: (defaults, [(where, row), ...]) from each file format.

def _read_yaml(text: str) -> tuple[dict[str, Any], list[tuple[str, Any]]]:
    data = load_yaml(text) or {}
    if isinstance(data, list):
        data = {"subjects": data}
    if not isinstance(data, dict) or not isinstance(data.get("subjects", []), list):
        raise TypeError("expected a mapping with 'defaults' and a 'subjects' list")
    unknown = set(data) - {"defaults", "subjects"}
    if unknown:
        raise ValueError(f"unknown top-level key(s) {sorted(unknown)}: use 'defaults' and 'subjects'")
    defaults = data.get("defaults") or {}
    if not isinstance(defaults, dict):
        raise TypeError("'defaults' must be a mapping")
    return defaults, [(f"subjects[{i}]", row) for i, row in enumerate(data.get("subjects") or [])]


def _read_csv(text: str) -> tuple[dict[str, Any], list[tuple[str, Any]]]:
    reader = csv.DictReader(io.StringIO(text), skipinitialspace=True)
    if not reader.fieldnames or not any(k in reader.fieldnames for k in ID_KEYS):
        raise ValueError("the header row must name the columns, starting with id")
    rows: list[tuple[str, Any]] = []
    for row in reader:
        where = f"line {reader.line_num}"
        if None in row:
            rows.append((where, "more cells than the header has columns"))
        elif any(v and v.strip() for v in row.values()):
            rows.append((where, {k.strip(): v.strip() for k, v in row.items() if v is not None}))
    return {}, rows


def _read_jsonl(text: str) -> tuple[dict[str, Any], list[tuple[str, Any]]]:
    defaults: dict[str, Any] = {}
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except (ValueError, RecursionError) as exc:
            reason = exc.msg if isinstance(exc, json.JSONDecodeError) else "nested too deeply"
            rows.append((f"line {number}", f"not valid JSON ({reason})"))
            continue
        if not rows and not defaults and isinstance(item, dict) and set(item) == {"defaults"}:
            defaults = item["defaults"]
        else:
            rows.append((f"line {number}", item))
    return defaults, rows
