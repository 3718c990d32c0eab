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
    DREAMBOOTH_OPERATOR_MAX_TRAIN_STEPS=5000                         # ceilings: see CEILINGS
    DREAMBOOTH_OPERATOR_ALLOW_PRIVATE_NOTIFY=true  # --notify-url may reach internal addresses

Lists are comma- or newline-separated. Every default keeps the single-tenant behaviour: no local
prompt files, every option in a batch row, every prefix and every host; an object store that
ignores conditional writes is refused, and so is a completion call to an internal address
(loopback, link-local, private, ...: config/outbound.py) of a host the allow-list does not name.

The ceilings (the `max_*` fields) bound what a tenant may ask for, whoever runs the job: a train
option that declares `ceiling=` (config/train_config.py) above its ceiling is exit 2 at
`submit`/`batch` and at the job's start (config/policy_checks.py), and the Job builders refuse a pod
above the resource ceilings (k8s/cluster_settings.py). Their defaults leave every sizing profile's
run possible."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from dreambooth_job.config.quantities import parse_quantity
from dreambooth_job.exit_codes import InvalidInputError

ENV_PREFIX = "DREAMBOOTH_OPERATOR_"
ALLOW_UNCONDITIONAL_STORE_ENV = ENV_PREFIX + "ALLOW_STORE_WITHOUT_CONDITIONAL_WRITES"
ALLOW_PRIVATE_NOTIFY_ENV = ENV_PREFIX + "ALLOW_PRIVATE_NOTIFY"
_BOOLEANS = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False, "": False}


# The largest sizing profile's SIGTERM budget (sdxl-full, dreambooth_job/training/sizing.py): the one
# grace period every run the profiles size needs. Kept as a number so that this module stays a
# leaf; tests/unit/test_operator_policy.py checks it against sizing.PROFILES.
LARGEST_PROFILE_GRACE_SECONDS = 600


def ceiling(default: float | str | None, *, help: str, resource: str | None = None) -> Any:
    """A ceiling field; `resource` names the container resource (cpu, memory) it bounds."""
    return field(default=default, metadata={"ceiling": True, "help": help, "resource": resource})


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
    max_termination_grace_seconds: float = ceiling(
        LARGEST_PROFILE_GRACE_SECONDS,
        help="The largest --termination-grace-seconds (the pod's grace period is it plus the "
             "margin): how long a preempted pod may hold its GPU. Default: the largest sizing "
             "profile's.")
    max_gradient_accumulation_steps: int = ceiling(
        64, help="The largest --gradient-accumulation-steps: one optimizer step, which the "
                 "grace period waits for, runs this many micro-batches.")
    max_train_steps: int = ceiling(
        100_000, help="The largest --max-train-steps (DreamBooth runs take 400 to 2,000).")
    max_resolution: int = ceiling(
        2048, help="The largest --resolution (SDXL's native resolution is 1024).")
    max_lora_rank: int = ceiling(
        128, help="The largest --lora-rank: the LoRA sizing profiles cover adapters up to "
                  "rank 128 (sizing.LORA_SIZED_RANK).")
    max_gpus: int = ceiling(8, help="The most GPUs of one pod (gpus, the chart's gpu.count).")
    max_cpu: str | None = ceiling(
        "64", resource="cpu", help="The largest CPU request or limit of one pod (resources; a quantity).")
    max_memory: str | None = ceiling(
        "512Gi", resource="memory",
        help="The largest memory request or limit of one pod (resources; a quantity); the "
             "largest sizing profile's limit is 96Gi.")
    allow_private_notify: bool = False
    """Let --notify-url reach internal addresses (loopback, link-local, private, ...: config/outbound.py)
    of any host. Without it they are refused unless `allowed_hosts` names the host."""

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> OperatorPolicy:
        env = os.environ if env is None else env
        # Any: each ceiling's value has its own field's type (a number, or a quantity string).
        ceilings: dict[str, Any] = {f.name: _ceiling(env, f) for f in CEILINGS
                                    if env.get(ceiling_env(f.name), "").strip()}
        return cls(
            prompt_file_dirs=_split(env.get(ENV_PREFIX + "PROMPT_FILE_DIRS")) or (),
            batch_row_options=_split(env.get(ENV_PREFIX + "BATCH_ROW_OPTIONS")),
            allowed_prefixes=_split(env.get(ENV_PREFIX + "ALLOWED_PREFIXES")),
            allowed_hosts=_split(env.get(ENV_PREFIX + "ALLOWED_HOSTS")),
            allow_store_without_conditional_writes=_boolean(env, ALLOW_UNCONDITIONAL_STORE_ENV),
            **ceilings,
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


def ceiling_env(name: str) -> str:
    """The variable of a ceiling: max_train_steps -> DREAMBOOTH_OPERATOR_MAX_TRAIN_STEPS."""
    return ENV_PREFIX + name.upper()


def _ceiling(env: Mapping[str, str], f: Any) -> float | str:
    return parse_ceiling(f.name, env[ceiling_env(f.name)], ceiling_env(f.name))


def parse_ceiling(name: str, raw: Any, source: str) -> float | str:
    """A ceiling's value from text or a number: a quantity for max_cpu and max_memory (compared
    by config/quantities.py), else a number of 0 or more (an integer for the integer options)."""
    f = _CEILINGS_BY_NAME.get(name)
    if f is None:
        raise InvalidInputError(f"{source}: {name!r} is not a ceiling (one of "
                                f"{', '.join(_CEILINGS_BY_NAME)})")
    text = str(raw).strip()
    if f.type == "str | None":
        parse_quantity(source, text)
        return text
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value < float("inf") or (f.type == "int" and not value.is_integer()):
        kind = "an integer" if f.type == "int" else "a number"
        raise InvalidInputError(f"{source} must be {kind} of 0 or more, got {text[:40]!r}")
    return int(value) if f.type == "int" else value





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


CEILINGS = tuple(f for f in fields(OperatorPolicy) if f.metadata.get("ceiling"))
_CEILINGS_BY_NAME = {f.name: f for f in CEILINGS}


def with_ceilings(policy: OperatorPolicy, ceilings: Mapping[str, Any]) -> OperatorPolicy:
    """`policy` with `ceilings` (by name, as ClusterSettings.ceilings and the chart's operator
    values give them) in place of its own: they are the operator's settings of that cluster."""
    # Any: each value has its own field's type (a number, or a quantity string).
    parsed: dict[str, Any] = {name: parse_ceiling(name, raw, f"ceilings.{name}")
                              for name, raw in ceilings.items()}
    return dataclasses.replace(policy, **parsed)
