"""Logging: one JSON object per line for machines (the default off a terminal), plain lines for
people. Every line carries the job and subject ids, and nothing that looks like a secret.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import time

# Values that must never reach a log line, whatever code logs them: credentials from the
# environment, and anything shaped like a presigned URL's signature or an access key.
_SECRET_ENV = ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_ACCESS_KEY_ID",
               "AWS_SECURITY_TOKEN", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")
_SECRET_PATTERNS = re.compile(
    r"(X-Amz-Signature=[^&\s]+|X-Amz-Credential=[^&\s]+|X-Amz-Security-Token=[^&\s]+|"
    r"\b(?:AKIA|ASIA)[A-Z0-9]{16}\b|(?<=://)[^/@\s:]+:[^/@\s]+(?=@))")


def redact(text: str) -> str:
    for name in _SECRET_ENV:
        value = os.environ.get(name)
        if value and len(value) >= 4:
            text = text.replace(value, "[REDACTED]")
    return _SECRET_PATTERNS.sub("[REDACTED]", text)


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
        import diffusers.utils.logging as diffusers_logging
        import transformers.utils.logging as transformers_logging
    except ImportError:
        return
    diffusers_logging.set_verbosity_error()
    diffusers_logging.disable_progress_bar()
    transformers_logging.set_verbosity_error()
    transformers_logging.disable_progress_bar()
