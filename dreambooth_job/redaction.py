"""One redaction for everything the job writes: log lines, error messages, result.json, the
checkpoint manifest and trainer state, metric labels.

    >>> redact("https://user:token@host/x?X-Amz-Signature=abc&a=1")
    'https://[REDACTED]@host/x?X-Amz-Signature=[REDACTED]&a=1'

What it removes: the value of any credential-bearing environment variable the process holds, the
user-info part of a URL (`user:password@`, `token@`), the values of presigned-URL query
parameters (AWS SigV4 and SigV2, GCS), and access-key ids. A leak through a new writer is avoided
by passing what it writes through `redact` or `redact_value`, never by a pattern of its own.

Leaf module: standard library only, so the config and the k8s tools can use it without torch.
"""

from __future__ import annotations

import os
import re
from typing import Any

REDACTED = "[REDACTED]"
# Environment variables whose values are credentials, wherever they turn up in a text.
SECRET_ENV = ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_ACCESS_KEY_ID",
              "AWS_SECURITY_TOKEN", "AWS_WEB_IDENTITY_TOKEN", "HF_TOKEN",
              "HUGGING_FACE_HUB_TOKEN", "DREAMBOOTH_PUSHGATEWAY_PASSWORD")
# Query parameters of presigned URLs whose values grant access (names compared ignoring case).
SECRET_QUERY_PARAMS = ("X-Amz-Signature", "X-Amz-Credential", "X-Amz-Security-Token",
                       "X-Goog-Signature", "X-Goog-Credential", "Signature", "AWSAccessKeyId",
                       "x-amz-security-token", "sig", "access_token", "token")
# The user-info of a URL: everything between "scheme://" and the last "@" before the path.
URL_CREDENTIALS = re.compile(r"(?<=://)[^/?#\s]*@")
# The same test for JSON Schema (Go's RE2 in Helm: no look-behind), searched anywhere in a value.
URL_CREDENTIALS_SCHEMA_PATTERN = r"://[^/?#\s]*@"
_QUERY_SECRET = re.compile(
    r"(?i)(?<![A-Za-z0-9_-])(" + "|".join(re.escape(p) for p in SECRET_QUERY_PARAMS)
    + r")=[^&\s\"'#]+")
_ACCESS_KEY_ID = re.compile(r"\b(?:AKIA|ASIA)[A-Z0-9]{16}\b")


def redact(text: str) -> str:
    """`text` with every credential it holds replaced by [REDACTED]."""
    for name in SECRET_ENV:
        value = os.environ.get(name)
        if value and len(value) >= 4:
            text = text.replace(value, REDACTED)
    text = URL_CREDENTIALS.sub(REDACTED + "@", text)
    text = _QUERY_SECRET.sub(lambda m: f"{m.group(1)}={REDACTED}", text)
    return _ACCESS_KEY_ID.sub(REDACTED, text)


def redact_value(value: Any) -> Any:
    """A JSON-like value (dicts, lists, strings, numbers) with every string redacted; a copy."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {key: redact_value(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [redact_value(item) for item in value]
    return value


def has_url_credentials(text: str) -> bool:
    """True when `text` holds a URL with a user-info part (`user:password@host`, `token@host`)."""
    return bool(URL_CREDENTIALS.search(text))
