"""How the settings reach the pod, as data: the env each setting feeds (one row per variable,
naming the setting, the chart value that says the same, and how the value becomes the variable)
and the volumes whose size or claim the settings give.

pod.py builds every Job's env and volumes from these rows (`settings_env`, `pod_volumes`), and the
chart's job.yaml renders the same rows from its values (files/package.yaml's `pod.settingsEnv` and
`pod.volumes`, written by helm/sync_chart.py from `chart_rows` and `chart_volumes`), so a new
variable or volume is one row here and neither side holds a copy of the other.

Light on purpose: config and exit codes only, never torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from dreambooth_job.config import field_types
from dreambooth_job.config import train_config as cfg
from dreambooth_job.config.operator_policy import (
    ALLOW_PRIVATE_NOTIFY_ENV,
    CEILINGS,
    OperatorPolicy,
    ceiling_env,
)
from dreambooth_job.config.operator_policy import ENV_PREFIX as OPERATOR_ENV_PREFIX
from dreambooth_job.config.pod_env import IMAGE_ENV
from dreambooth_job.exit_codes import InvalidInputError
from dreambooth_job.k8s.cluster_settings import AUTO, ClusterSettings
from dreambooth_job.training import sizing

PROMPT_FILE_DIRS_ENV = OPERATOR_ENV_PREFIX + "PROMPT_FILE_DIRS"
ALLOWED_HOSTS_ENV = OPERATOR_ENV_PREFIX + "ALLOWED_HOSTS"
ALLOWED_PREFIXES_ENV = OPERATOR_ENV_PREFIX + "ALLOWED_PREFIXES"

# How a setting becomes its variable; a row is left out while its setting is unset (None, empty,
# 0, False), except UNSET rows, which are there only then.
VALUE = "value"      # the setting as it is
JOINED = "joined"    # a list, comma-separated
SECRET = "secret"    # the setting names a Secret: the variable reads the Secret's key of its own name
FLAG = "flag"        # "true"
UNSET = "unset"      # the row's `value` while the setting is unset
CEILING = "ceiling"  # an operator's ceiling: there when the settings (or the building process) set it


@dataclass(frozen=True)
class EnvWire:
    """One variable of the pod and the setting that feeds it."""

    env: str
    setting: str
    """The ClusterSettings field; with `policy`, the field of ClusterSettings.policy(), the operator's
    policy of the building process under the settings' own."""
    values: str
    """The chart value of the same meaning, a dotted path under .Values (`image`: the reference)."""
    form: str = VALUE
    policy: bool = False
    value: str | None = None
    """UNSET's value."""
    named_by: str | None = None
    """A TrainConfig option whose value names the variable (and the Secret's key) instead of `env`."""
    why: str = ""
    """What the option named by `named_by` is, for the refusal when it is unset."""


def _ceiling_wires() -> tuple[EnvWire, ...]:
    return tuple(EnvWire(ceiling_env(f.name), f.name, f"operator.{values_key(f.name)}", CEILING,
                         policy=True) for f in CEILINGS)


def values_key(name: str) -> str:
    """The chart's key of a field: max_train_steps -> maxTrainSteps."""
    head, *rest = name.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


SETTINGS_ENV: tuple[EnvWire, ...] = (
    # The image that runs, recorded in result.json.
    EnvWire(IMAGE_ENV, "image", "image"),
    # Where nvidia is the default container runtime, a pod that requests no GPU still sees every
    # GPU of the node unless told otherwise.
    EnvWire("NVIDIA_VISIBLE_DEVICES", "gpus", "gpu.count", UNSET, value="void"),
    EnvWire("AWS_ENDPOINT_URL", "s3_endpoint_url", "s3.endpointUrl"),
    # boto3 reads AWS_DEFAULT_REGION; other AWS SDKs and tools read AWS_REGION.
    EnvWire("AWS_REGION", "s3_region", "s3.region"),
    EnvWire("AWS_DEFAULT_REGION", "s3_region", "s3.region"),
    EnvWire("AWS_ACCESS_KEY_ID", "s3_credentials_secret", "s3.credentialsSecret", SECRET),
    EnvWire("AWS_SECRET_ACCESS_KEY", "s3_credentials_secret", "s3.credentialsSecret", SECRET),
    # Operator settings: env of the pod, never train options; the pod checks its config against
    # them again at start (config/policy_checks.py), as `submit`/`batch` did.
    EnvWire(PROMPT_FILE_DIRS_ENV, "prompt_file_dirs", "operator.promptFileDirs", JOINED),
    EnvWire(ALLOWED_HOSTS_ENV, "allowed_hosts", "operator.allowedHosts", JOINED),
    EnvWire(ALLOWED_PREFIXES_ENV, "allowed_prefixes", "operator.allowedPrefixes", JOINED, policy=True),
    *_ceiling_wires(),
    # The building process's allowance holds in its pods too.
    EnvWire(ALLOW_PRIVATE_NOTIFY_ENV, "allow_private_notify", "operator.allowPrivateNotify", FLAG,
            policy=True),
    # The completion call's signing key, from the Secret's key named like --notify-secret-env
    # (outputs/notify.py reads that variable); referenced, never copied.
    EnvWire("", "notify_secret", "notify.secretName", SECRET, named_by="notify_secret_env",
            why="the variable (and the Secret's key) that holds the signing key"),
)


def settings_env(train: cfg.TrainConfig, cluster: ClusterSettings) -> list[dict[str, Any]]:
    """The variables the rows give for `cluster` and `train`; exit 2 for a row
    whose variable an unset option would name."""
    policy, defaults = cluster.policy(), OperatorPolicy()
    env = []
    for wire in SETTINGS_ENV:
        value = getattr(policy if wire.policy else cluster, wire.setting)
        if wire.form == UNSET:
            if not value:
                env.append({"name": wire.env, "value": wire.value})
        elif wire.form == CEILING:
            if wire.setting in cluster.ceilings or value != getattr(defaults, wire.setting):
                env.append({"name": wire.env, "value": value if isinstance(value, str) else f"{value:g}"})
        elif value:
            env.append(_entry(wire, _name(wire, train), value))
    return env


def _name(wire: EnvWire, train: cfg.TrainConfig) -> str:
    if not wire.named_by:
        return wire.env
    name = getattr(train, wire.named_by)
    if not name:
        raise InvalidInputError(f"{wire.setting} needs {field_types.flag_name(wire.named_by)}: {wire.why}")
    return name


def _entry(wire: EnvWire, name: str, value: Any) -> dict[str, Any]:
    if wire.form == SECRET:
        return {"name": name, "valueFrom": {"secretKeyRef": {"name": value, "key": name}}}
    if wire.form == JOINED:
        return {"name": name, "value": ",".join(value)}
    if wire.form == FLAG:
        return {"name": name, "value": "true"}
    return {"name": name, "value": value}


def chart_rows() -> list[dict[str, Any]]:
    """The rows for the chart's template (files/package.yaml's `pod.settingsEnv`): `namedBy` is
    the `job:` key naming the variable, `missing` the install's refusal when it is unset."""
    rows = []
    for wire in SETTINGS_ENV:
        row: dict[str, Any] = {"name": wire.env, "values": wire.values, "form": wire.form}
        if wire.value is not None:
            row["value"] = wire.value
        if wire.named_by:
            key = values_key(wire.named_by)
            row.update(namedBy=key, missing=f"{wire.values} needs job.{key}: {wire.why}")
        rows.append(row)
    return rows


@dataclass(frozen=True)
class VolumeWire:
    """A volume of the pod: the claim the settings name, else an emptyDir of their size limit."""

    name: str
    size_limit: str
    """The ClusterSettings field of the emptyDir's sizeLimit (None: no limit)."""
    size_values: str
    """The chart value of the same meaning, a dotted path under .Values."""
    claim: str | None = None
    """The ClusterSettings field naming an existing PersistentVolumeClaim used instead."""
    claim_values: str | None = None
    medium: str | None = None
    auto: str | None = None
    """The sizing profile's field that a size limit of `auto` stands for."""


VOLUMES: tuple[VolumeWire, ...] = (
    # Base models and class images; a shared claim saves each job the base-model download.
    VolumeWire("cache", "model_cache_size_limit", "modelCache.sizeLimit",
               claim="model_cache_claim", claim_values="modelCache.existingClaim"),
    VolumeWire("tmp", "tmp_size_limit", "tmp.sizeLimit", auto="tmp_size_limit"),
    # The runtime's 64 MiB /dev/shm starves data-loader workers.
    VolumeWire("shm", "shm_size", "shm.sizeLimit", medium="Memory"),
)


def pod_volumes(cluster: ClusterSettings, profile: sizing.Profile) -> list[dict[str, Any]]:
    """The VOLUMES for `cluster`, `auto` sizes from the pod's sizing `profile`."""
    volumes = []
    for wire in VOLUMES:
        claim = getattr(cluster, wire.claim) if wire.claim else None
        if claim:
            volumes.append({"name": wire.name, "persistentVolumeClaim": {"claimName": claim}})
            continue
        limit = getattr(cluster, wire.size_limit)
        if wire.auto and limit == AUTO:
            limit = getattr(profile, wire.auto)
        empty_dir = {k: v for k, v in (("medium", wire.medium), ("sizeLimit", limit)) if v is not None}
        volumes.append({"name": wire.name, "emptyDir": empty_dir})
    return volumes


def chart_volumes() -> list[dict[str, Any]]:
    """The rows for the chart's template (files/package.yaml's `pod.volumes`); `auto` names the
    key of the sizing profile in files/package.yaml's `sizing.profiles`."""
    rows = []
    for wire in VOLUMES:
        row: dict[str, Any] = {"name": wire.name, "sizeLimit": wire.size_values}
        if wire.claim_values:
            row["claim"] = wire.claim_values
        if wire.medium:
            row["medium"] = wire.medium
        if wire.auto:
            row["auto"] = values_key(wire.auto)
        rows.append(row)
    return rows
