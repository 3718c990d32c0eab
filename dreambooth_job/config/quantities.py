"""Kubernetes resource quantities ("500m", "8", "96Gi", "1.5e9") as numbers, so that a pod's
requests and limits can be held against the operator's ceilings (operator_policy.max_cpu and
max_memory). A leaf: no imports beyond the exit codes.

    >>> parse_quantity("memory", "96Gi") == 96 * 2**30
    True
    >>> parse_quantity("cpu", "500m")
    0.5
"""

from __future__ import annotations

import re

from dreambooth_job.exit_codes import InvalidInputError

_SUFFIXES = {"": 1, "m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15, "E": 1e18,
             "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}
QUANTITY_SCHEMA_PATTERN = (
    r"^([0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE]([+-]?[0-9]+)|(Ki|Mi|Gi|Ti|Pi|Ei|[mkMGTPE]))?$")
_QUANTITY = re.compile(QUANTITY_SCHEMA_PATTERN)


def parse_quantity(name: str, value: object) -> float:
    """`value` (a quantity string or a number) as a number; InvalidInputError naming `name` when
    it is not a quantity."""
    text = str(value).strip()
    match = _QUANTITY.match(text) if len(text) <= 64 else None
    if match is None or isinstance(value, bool):
        raise InvalidInputError(f"{name} must be a Kubernetes quantity (e.g. 8, 500m, 64Gi), "
                                f"got {text[:40]!r}")
    number, exponent, suffix = match.groups()
    if exponent:  # float() of the text: a huge exponent is inf (above every ceiling), no error
        return float(f"{number}e{exponent}")
    return float(number) * _SUFFIXES[suffix or ""]
