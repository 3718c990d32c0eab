"""result.json as `status` and `report` read it: a typed, bounded record of the few fields they use.

    record = read_record("s3://runs/tenant-a/dog/")   # None: no completed run there
    record.final_loss, record.scores.get("dino"), record.outputs["lora"], record.samples

The file is written by the tenant's job into the tenant's prefix, so the tenant can rewrite it
with anything. One such file must not stop `status` or `report` for the other subjects of a
batch: a file over MAX_BYTES, not UTF-8 JSON, nested deeper than MAX_DEPTH (`json.loads` raises
RecursionError on a deep enough array), with a list or mapping over MAX_ITEMS, or with a used
field of the wrong type raises MalformedResult, whose one-line message the caller shows as
"result.json unreadable: <reason>" for that subject before going on with the next.
Fields the readers do not use are never looked at; nothing here raises anything else.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from dreambooth_job.evaluation import SCORE_NAMES
from dreambooth_job.outputs.result import COMPLETION_MARKER, RESULT_FILE
from dreambooth_job.storage import places as storage

MAX_BYTES = 4 * 2**20
"""A real result.json is a few kB (the config, the photo names, the file list)."""
MAX_DEPTH = 32
MAX_ITEMS = 10_000
"""Per list or mapping anywhere in the file."""
MAX_TEXT = 4096
"""Per string field used (output URIs)."""
UNREADABLE = "result.json unreadable"


class MalformedResult(ValueError):
    """result.json cannot be used; the message is one line, without the file's content."""


@dataclass(frozen=True)
class RunRecord:
    final_loss: float | None = None
    scores: dict[str, float] = field(default_factory=dict)
    """The fine-tuned model's scores by name, the base model's as "base_<name>" (or a flat
    mapping's numbers, another tool's result.json)."""
    metrics: dict[str, Any] | None = None
    """The metrics block as written (bounded, a mapping), for `status -o json`."""
    model: str | None = None
    lora: tuple[str, ...] = ()
    single_file: str | None = None
    samples: tuple[str, ...] = ()
    """The sample grids' URIs as recorded: names only, never trusted as locations (report.py)."""

    @property
    def outputs(self) -> dict[str, Any]:
        """What the run published: `model` and `single_file` (URI or None), `lora` (URIs)."""
        return {"model": self.model, "single_file": self.single_file, "lora": list(self.lora)}


def read_record(output_uri: str) -> RunRecord | None:
    """The record of the completed run under `output_uri`; None when the run is not complete
    (no completion marker). MalformedResult when the run is complete but its result.json cannot
    be read or used; errors reaching the store (JobError, OSError) pass through."""
    if not storage.exists(storage.join(output_uri, COMPLETION_MARKER)):
        return None
    try:
        data = storage.read_bytes(storage.join(output_uri, RESULT_FILE), max_bytes=MAX_BYTES)
    except FileNotFoundError:
        raise MalformedResult("missing beside the completion marker") from None
    except OSError as exc:  # a directory, no permission
        raise MalformedResult(f"cannot be read ({_line(exc)})") from None
    return parse_record(data)


def parse_record(data: bytes | dict[str, Any]) -> RunRecord:
    """The record of result.json's bytes (or of a mapping already parsed); MalformedResult when
    the file is over a bound or a used field has the wrong type."""
    if isinstance(data, bytes | bytearray):
        if len(data) > MAX_BYTES:
            raise MalformedResult(f"larger than {MAX_BYTES // 2**20} MiB")
        try:
            data = json.loads(data.decode("utf-8"))
        except RecursionError:
            raise MalformedResult("not JSON (nested too deep to parse)") from None
        except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, int digits over the limit
            raise MalformedResult(f"not JSON ({_line(exc)})") from None
    _check_bounds(data)
    if not isinstance(data, dict):
        raise MalformedResult(f"the top level is {_kind(data)}, not a mapping")
    training = _mapping(data, "training")
    outputs = _mapping(data, "outputs")
    metrics = _mapping(data, "metrics") if data.get("metrics") is not None else None
    loss = training.get("final_loss")
    return RunRecord(
        final_loss=None if loss is None else _number(loss, "training.final_loss"),
        scores=_scores(metrics or {}), metrics=metrics,
        model=_text(outputs, "model"), single_file=_text(outputs, "single_file"),
        lora=_texts(outputs, "lora"), samples=_texts(outputs, "samples"))


def _check_bounds(value: Any) -> None:
    """Depth and container lengths, walked without recursion."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if not isinstance(item, dict | list):
            continue
        if depth > MAX_DEPTH:
            raise MalformedResult(f"nested deeper than {MAX_DEPTH} levels")
        if len(item) > MAX_ITEMS:
            raise MalformedResult(f"a list or mapping of {len(item)} items, over {MAX_ITEMS}")
        stack.extend((child, depth + 1) for child in _children(item))


def _children(item: dict | list) -> Iterator[Any]:
    return iter(item.values()) if isinstance(item, dict) else iter(item)


def _scores(metrics: dict[str, Any]) -> dict[str, float]:
    """`train --evaluate` writes {"base": row, "finetuned": row, "protocol": ...}: the rows'
    scores; a flat mapping's numbers are taken as they are. Non-numbers (None, "unavailable")
    are no score."""
    if "finetuned" in metrics:
        rows = {"": _mapping(metrics, "finetuned", "metrics."),
                "base_": _mapping(metrics, "base", "metrics.")}
        names: tuple[str, ...] | None = SCORE_NAMES
    else:
        rows, names = {"": metrics}, None
    return {prefix + name: _number(value, f"metrics.{name}") for prefix, row in rows.items()
            for name, value in row.items()
            if (names is None or name in names) and _is_number(value)}


def _mapping(data: dict[str, Any], key: str, where: str = "") -> dict[str, Any]:
    value = data.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise MalformedResult(f"{where}{key} is {_kind(value)}, not a mapping")
    return value


def _number(value: Any, where: str) -> float:
    if not _is_number(value):
        raise MalformedResult(f"{where} is {_kind(value)}, not a number")
    try:
        return float(value)
    except OverflowError:
        raise MalformedResult(f"{where} is a number too large for a float") from None


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _text(outputs: dict[str, Any], key: str) -> str | None:
    value = outputs.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > MAX_TEXT:
        raise MalformedResult(f"outputs.{key} is {_kind(value)}, not a string of at most {MAX_TEXT} "
                              "characters")
    return value


def _texts(outputs: dict[str, Any], key: str) -> tuple[str, ...]:
    value = outputs.get(key)
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) and len(v) <= MAX_TEXT for v in value):
        raise MalformedResult(f"outputs.{key} is {_kind(value)}, not a list of strings of at most "
                              f"{MAX_TEXT} characters")
    return tuple(value)


def _kind(value: Any) -> str:
    if isinstance(value, str):
        return f"a string of {len(value)} characters" if len(value) > 40 else f"the string {value!r}"
    names = {bool: "a boolean", int: "an integer", float: "a number", list: "a list", dict: "a mapping"}
    return "null" if value is None else names.get(type(value), type(value).__name__)


def _line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:200]


def unreadable(exc: BaseException) -> str:
    """The one line a row shows for a result.json that could not be read or used."""
    message = getattr(exc, "message", None) or str(exc) or type(exc).__name__
    return f"{UNREADABLE}: {' '.join(str(message).split())[:300]}"
