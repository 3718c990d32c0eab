"""Logging: one JSON object per line for machines (the default off a terminal), plain lines for
people. Every line carries the job and subject ids, and nothing that looks like a secret.
"""

from __future__ import annotations

import json
import logging
import sys
import time

from dreambooth_job.redaction import redact

# Nothing that looks like a secret reaches a log line, whatever code logs it: the one redaction
# of everything the job writes (redaction.py).
__all__ = ["configure", "redact"]


class _JsonFormatter(logging.Formatter):
    def __init__(self, fields: dict[str, str]):
        super().__init__()
        self.fields = fields

    def format(self, record: logging.LogRecord) -> str:
        entry = {"time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
                 + f".{int(record.msecs):03d}Z",
                 "level": record.levelname.lower(), "logger": record.name, **self.fields,
                 "message": redact(record.getMessage())}
        if isinstance(getattr(record, "progress", None), dict):
            entry["progress"] = record.progress
        if record.exc_info:
            entry["exception"] = redact(self.formatException(record.exc_info))
        return json.dumps(entry)


class _TextFormatter(logging.Formatter):
    def __init__(self, fields: dict[str, str]):
        ids = " ".join(f"{k}={v}" for k, v in fields.items())
        super().__init__(f"%(asctime)s %(levelname)s [{ids}] %(message)s", "%H:%M:%S")

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


def configure(log_format: str, **fields: str) -> None:
    """Send the root logger to stderr in `log_format` (json, text or auto) with `fields` on every line."""
    if log_format == "auto":
        log_format = "text" if sys.stderr.isatty() else "json"
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_JsonFormatter(fields) if log_format == "json" else _TextFormatter(fields))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    # Libraries' own chatter (HTTP connection pools, weight loading) is not the job's story.
    for noisy in ("botocore", "boto3", "urllib3", "s3transfer", "accelerate", "PIL"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    _quiet_model_libraries()


def _quiet_model_libraries() -> None:
    """diffusers and transformers print progress bars and dtype advice of their own; the job
    reports progress itself, and their advice does not apply to how it casts frozen models."""
    for name in ("diffusers", "transformers"):
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        import diffusers.utils.logging as diffusers_logging  # deferred: diffusers is heavy
        import transformers.utils.logging as transformers_logging  # deferred: transformers is heavy
    except ImportError:
        return
    diffusers_logging.set_verbosity_error()
    diffusers_logging.disable_progress_bar()
    transformers_logging.set_verbosity_error()
    transformers_logging.disable_progress_bar()
