"""What the platform operator allows tenants to do: settings a tenant cannot write.

A tenant writes train options (flags, config files, batch rows, chart values under `job:`); the
operator writes these, as environment variables of the pod (the chart's `operator:` values) or of
the process that runs `batch`/`submit`. They are deliberately not `TrainConfig` fields: a field can
be set by a flag or a batch row, and then a tenant could lift its own restrictions.

    DREAMBOOTH_OPERATOR_PROMPT_FILE_DIRS=/etc/dreambooth/prompts   # local dirs --prompt-set may read
    DREAMBOOTH_OPERATOR_BATCH_ROW_OPTIONS=learning_rate,max_train_steps
    DREAMBOOTH_OPERATOR_ALLOWED_PREFIXES=s3://tenant-a/,s3://shared-cache/class-images/
    DREAMBOOTH_OPERATOR_ALLOWED_HOSTS=pushgateway.monitoring.svc
    DREAMBOOTH_OPERATOR_ALLOW_STORE_WITHOUT_CONDITIONAL_WRITES=true  # the lease is then unsafe
    DREAMBOOTH_OPERATOR_ALLOW_PRIVATE_NOTIFY=true  # --notify-url may reach internal addresses

Lists are comma- or newline-separated. Every default keeps the single-tenant behaviour: no local
prompt files, every option in a batch row, every prefix and every host; an object store that
ignores conditional writes is refused, and so is a completion call to an internal address
(loopback, link-local, private, ...: outbound.py) of a host the allow-list does not name.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from dreambooth_job.exit_codes import InvalidInputError

ENV_PREFIX = "DREAMBOOTH_OPERATOR_"
ALLOW_UNCONDITIONAL_STORE_ENV = ENV_PREFIX + "ALLOW_STORE_WITHOUT_CONDITIONAL_WRITES"
ALLOW_PRIVATE_NOTIFY_ENV = ENV_PREFIX + "ALLOW_PRIVATE_NOTIFY"
_BOOLEANS = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False, "": False}


def _split(raw: str | None) -> tuple[str, ...] | None:
    if raw is None or not raw.strip():
        return None
    return tuple(item.strip() for item in raw.replace("\n", ",").split(",") if item.strip())


@dataclass(frozen=True)
class OperatorPolicy:
    prompt_file_dirs: tuple[str, ...] = ()
    """Local directories whose files `--prompt-set` may read (none by default: a local path could
    name a mounted token). Built-in sets and s3:// files are always allowed."""
    batch_row_options: tuple[str, ...] | None = None
    """Options a batch row (or --set) may set, besides id, instance_data and class_noun; None: all."""
    allowed_prefixes: tuple[str, ...] | None = None
    """URI prefixes (s3://bucket/prefix/ or local directories) that options of a batch row may name;
    None: any."""
    allowed_hosts: tuple[str, ...] | None = None
    """Host names that outbound URLs (Pushgateway, notifications) may name; None: any."""
    allow_store_without_conditional_writes: bool = False
    """Run on an object store that ignores If-None-Match (the job refuses to by default, exit 2):
    the output lease can then no longer keep two runs from publishing into one prefix."""
    allow_private_notify: bool = False
    """Let --notify-url reach internal addresses (loopback, link-local, private, ...: outbound.py)
    of any host. Without it they are refused unless `allowed_hosts` names the host."""

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> OperatorPolicy:
        env = os.environ if env is None else env
        return cls(
            prompt_file_dirs=_split(env.get(ENV_PREFIX + "PROMPT_FILE_DIRS")) or (),
            batch_row_options=_split(env.get(ENV_PREFIX + "BATCH_ROW_OPTIONS")),
            allowed_prefixes=_split(env.get(ENV_PREFIX + "ALLOWED_PREFIXES")),
            allowed_hosts=_split(env.get(ENV_PREFIX + "ALLOWED_HOSTS")),
            allow_store_without_conditional_writes=_boolean(env, ALLOW_UNCONDITIONAL_STORE_ENV),
            allow_private_notify=_boolean(env, ALLOW_PRIVATE_NOTIFY_ENV))

    def allows_prompt_file(self, path: str | os.PathLike) -> bool:
        """True when `path`, symlinks resolved, lies inside one of the allowed directories."""
        resolved = Path(path).resolve()
        return any(resolved.is_relative_to(Path(d).resolve()) for d in self.prompt_file_dirs)

    def allows_row_option(self, name: str) -> bool:
        return self.batch_row_options is None or name in self.batch_row_options

    def allows_uri(self, uri: str) -> bool:
        """True when `uri` lies under an allowed prefix, compared segment by segment (so that
        s3://b/tenant-a/ does not allow s3://b/tenant-ab/)."""
        if self.allowed_prefixes is None:
            return True
        return any(_under(uri, prefix) for prefix in self.allowed_prefixes)

    def allows_host(self, url: str) -> bool:
        if self.allowed_hosts is None:
            return True
        host = (urlsplit(url).hostname or "").lower()
        return host in {h.lower() for h in self.allowed_hosts}


def _boolean(env: Mapping[str, str], name: str) -> bool:
    raw = env.get(name, "").strip().lower()
    if raw not in _BOOLEANS:
        raise InvalidInputError(f"{name} must be true or false, got {env[name]!r}")
    return _BOOLEANS[raw]


def _under(uri: str, prefix: str) -> bool:
    if uri.startswith("s3://") != prefix.startswith("s3://"):
        return False
    if uri.startswith("s3://"):
        parts, base = uri[5:].split("/"), prefix[5:].rstrip("/").split("/")
        return ".." not in parts and parts[:len(base)] == base
    return Path(uri).resolve().is_relative_to(Path(prefix).resolve())
