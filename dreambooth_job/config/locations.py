"""What a storage option may name: an `s3://bucket/prefix` URI or a local path; model options also
a hub id (`org/name`, no scheme). Any other scheme (`ftp://`, `gs://`, `http://`) or a typo of
`s3://` (`s3:/x`, `s3:x`) is bad input, found when the config is validated (for `train` and every
row of `batch`), not later in the pod.
"""

from __future__ import annotations

import re

from dreambooth_job.exit_codes import InvalidInputError

# A URI scheme ("ftp://", "gs:/", "http:/") or a typo of s3:// ("s3:/x", "s3:x", "S3://x").
_SCHEME = re.compile(r"^(?:[A-Za-z][A-Za-z0-9+.-]*:/|s3:)", re.IGNORECASE)


def is_s3(value: str | None) -> bool:
    return value is not None and value.startswith("s3://")


def check(flag: str, value: str | None, *, hub_id_ok: bool = False) -> None:
    """Raise InvalidInputError naming `flag` unless `value` is unset, s3://bucket[/prefix], a local
    path or, with `hub_id_ok`, a hub id (which has no scheme either, so it passes as a path would)."""
    if not value:
        return
    expected = "s3://bucket/prefix, a local path" + (" or a hub id org/name" if hub_id_ok else "")
    if is_s3(value):
        if not value[len("s3://"):].split("/", 1)[0]:
            raise InvalidInputError(f"{flag} {value!r} names no bucket: expected {expected}")
    elif _SCHEME.match(value):
        raise InvalidInputError(f"{flag} {value!r} is not a supported location: expected {expected}")
