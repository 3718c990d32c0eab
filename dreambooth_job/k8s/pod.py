"""The pod that trains: container, env, security, volumes. One builder for every Job
(manifest.build_job for one subject, manifest.build_indexed_job for a batch); the Helm chart's
templates render the same pod, and tests/deploy compares them field by field.

Light on purpose: config and exit codes only, never torch.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

from dreambooth_job.config import introspection
from dreambooth_job.config import sources as config_sources
from dreambooth_job.config import train_config as cfg
from dreambooth_job.config.operator_policy import ENV_PREFIX as OPERATOR_ENV_PREFIX
from dreambooth_job.config.operator_policy import (
    ceiling_env,
)
from dreambooth_job.config.option_fields import set_by_pod
from dreambooth_job.config.pod_env import IMAGE_ENV, JOB_UID_ENV
from dreambooth_job.exit_codes import InvalidInputError
from dreambooth_job.k8s.cluster_settings import (
    CACHE_MOUNT,
    SHM_MOUNT,
    TERMINATION_MARGIN_SECONDS,
    TMP_MOUNT,
    ClusterSettings,
)
from dreambooth_job.k8s.wiring import chart_rows, chart_volumes, pod_volumes, settings_env
from dreambooth_job.training import sizing

CONTAINER_NAME = "train"
# Set by the Job controller on every pod of a Job (Kubernetes >= 1.27); the lease reads it.
JOB_UID_LABEL = "batch.kubernetes.io/controller-uid"
# Env names that extra env (ClusterSettings.env, the chart's extraEnv) may not start with: the
# operator's policy (DREAMBOOTH_OPERATOR_*), the Job the output lease trusts and the image the pod
# records, and the GPU runtime's settings (NVIDIA_VISIBLE_DEVICES would show GPUs the pod did not
# request). Other DREAMBOOTH_ names (the Pushgateway's credentials) are extra env's to set. Extra
# env also comes first, so any name the pod sets itself wins over an extra entry of that name.
RESERVED_ENV_PREFIXES = (OPERATOR_ENV_PREFIX, JOB_UID_ENV, IMAGE_ENV, "NVIDIA_")
# The container sets these itself (cache_dir follows the cache volume), so they are not options
# of the chart's `job:` values nor of the rendered args, and a batch row may not set them: the
# options declared `set_by_pod` (config_fields.option).
OPTIONS_SET_BY_THE_POD = frozenset(f.name for f in introspection.fields() if set_by_pod(f))


def pod_spec(train: cfg.TrainConfig, cluster: ClusterSettings, args: list[str], *,
             env_first: Iterable[dict[str, Any]] = (), mounts: Iterable[dict[str, Any]] = (),
             volumes: Iterable[dict[str, Any]] = ()) -> dict[str, Any]:
    """The pod running `args`; `train` sizes it (sizing profile, grace period, metrics port).
    `env_first` goes before the standard env (after the extra env, which any of them overrides),
    `mounts` and `volumes` after the standard ones."""
    resources = container_resources(train, cluster)
    limits = resources["limits"]
    if cluster.gpus:
        limits[cluster.gpu_resource] = str(cluster.gpus)  # quantities are strings in the API
    container = compact(
        name=CONTAINER_NAME,
        image=cluster.image,
        imagePullPolicy=cluster.image_pull_policy,
        args=args,
        env=[*extra_env(cluster), *env_first, *fixed_env(), *settings_env(train, cluster)],
        ports=([{"name": "metrics", "containerPort": train.metrics_port, "protocol": "TCP"}]
               if train.metrics_port else None),
        resources=compact(requests=resources["requests"], limits=limits),
        securityContext=container_security_context(),
        # Why the pod failed, in its status: the job's one-line error (termination.py), or the
        # log's tail when it died before writing one (OOM kill, crash).
        terminationMessagePolicy="FallbackToLogsOnError",
        volumeMounts=[*volume_mounts(), *mounts],
    )
    return compact(
        restartPolicy="Never",  # required by podFailurePolicy; retries are the Job's, not the kubelet's
        serviceAccountName=cluster.service_account_name,
        # The job never calls the Kubernetes API; IRSA and workload identity do not need the token.
        automountServiceAccountToken=False,
        enableServiceLinks=False,
        priorityClassName=cluster.priority_class_name,
        imagePullSecrets=[{"name": s} for s in cluster.image_pull_secrets],
        nodeSelector=dict(cluster.node_selector),
        tolerations=[dict(t) for t in cluster.tolerations],
        affinity=dict(cluster.affinity),
        terminationGracePeriodSeconds=termination_grace_period(train, cluster),
        securityContext=pod_security_context(cluster),
        containers=[container],
        volumes=[*pod_volumes(cluster, profile_of(train, cluster)), *volumes],
    )


def escape_expansion(arg: str) -> str:
    """`arg` as the kubelet should pass it: it expands `$(NAME)` in args to the value of the
    container's env var NAME, an S3 secret key included, so a tenant's prompt reading
    "$(AWS_SECRET_ACCESS_KEY)" would draw the secret into result.json and the grids. `$$` reaches
    the container as `$`."""
    return arg.replace("$", "$$")


def container_args(train: cfg.TrainConfig, extra_args: tuple[str, ...] = ()) -> list[str]:
    return ["train", *(escape_expansion(a) for a in (*config_sources.to_cli_args(train), *extra_args))]


def profile_of(train: cfg.TrainConfig, cluster: ClusterSettings) -> sizing.Profile:
    """The sizing profile of the pod: the cluster's, or with `auto` the train mode's and the
    family detected from the base model's files where they can be read (sizing.auto_profile)."""
    return sizing.resolve(cluster.sizing, train.train_mode, train.base_model)


def job_grace_seconds(train: cfg.TrainConfig, cluster: ClusterSettings) -> float:
    """--termination-grace-seconds as the Job passes it: the train config's, else the profile's."""
    if train.termination_grace_seconds is not None:
        return train.termination_grace_seconds
    return profile_of(train, cluster).job_grace_seconds


def container_resources(train: cfg.TrainConfig, cluster: ClusterSettings) -> dict[str, dict]:
    """The profile's memory and ephemeral-storage under the cluster's `resources`, key by key (as
    Helm merges values): what the settings name wins."""
    profile = profile_of(train, cluster).resources
    merged = {kind: dict(cluster.resources.get(kind) or {}) for kind in ("requests", "limits")}
    for kind, quantities in merged.items():
        for name, quantity in profile[kind].items():
            quantities.setdefault(name, quantity)
    return merged


def termination_grace_period(train: cfg.TrainConfig, cluster: ClusterSettings) -> int:
    """The budget rounded up plus the margin, or the settings' own if not shorter; never above
    the operator's ceiling (how long a preempted pod may hold its GPU)."""
    budget = job_grace_seconds(train, cluster)
    needed = math.ceil(budget) + TERMINATION_MARGIN_SECONDS
    chosen = cluster.termination_grace_period_seconds
    most = cluster.policy().max_termination_grace_seconds
    if max(budget, (chosen or 0) - TERMINATION_MARGIN_SECONDS) > most:
        raise InvalidInputError(
            f"the pod's grace period ({chosen or needed} s) is above the operator's ceiling of "
            f"{most:g} s plus {TERMINATION_MARGIN_SECONDS} s "
            f"({ceiling_env('max_termination_grace_seconds')})")
    if chosen is None:
        return needed
    if chosen < needed:
        raise InvalidInputError(
            f"termination_grace_period_seconds={chosen} leaves the job no time to checkpoint: "
            f"--termination-grace-seconds is {budget:g}, so at least "
            f"{needed} is needed")
    return chosen


def pod_security_context(cluster: ClusterSettings) -> dict[str, Any]:
    """Non-root with the default seccomp profile always; the ids only where the settings give them."""
    return compact(
        runAsNonRoot=True,
        runAsUser=cluster.run_as_user,
        runAsGroup=cluster.run_as_group,
        fsGroup=cluster.fs_group,
        # A shared model-cache volume holds many GiB: chown it only when its owner is wrong,
        # not recursively at every pod start.
        fsGroupChangePolicy="OnRootMismatch" if cluster.fs_group is not None else None,
        seccompProfile={"type": "RuntimeDefault"},
    )


def container_security_context() -> dict[str, Any]:
    return {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }


def job_uid_env() -> dict[str, Any]:
    """The pod's Job UID for the output lease: a retry of the same Job takes over the lease of its
    killed predecessor at once (podReplacementPolicy: Failed means that pod has ended)."""
    return {"name": JOB_UID_ENV, "valueFrom": {"fieldRef": {
        "fieldPath": f"metadata.labels['{JOB_UID_LABEL}']"}}}


def volume_mounts() -> list[dict[str, Any]]:
    return [{"name": "cache", "mountPath": CACHE_MOUNT},
            {"name": "tmp", "mountPath": TMP_MOUNT},
            {"name": "shm", "mountPath": SHM_MOUNT}]


def fixed_env() -> list[dict[str, Any]]:
    """The env of every pod, whatever the settings: caches on the cache volume, the Job's UID."""
    return [{"name": "XDG_CACHE_HOME", "value": CACHE_MOUNT},
            {"name": "HF_HOME", "value": f"{CACHE_MOUNT}/huggingface"},
            job_uid_env()]


def chart_pod_table() -> dict[str, Any]:
    """The parts of the pod that no setting changes, for the chart's templates to render as they
    are, and the rows that say how settings reach the pod (wiring.py), for them to place values
    by (files/package.yaml's `pod:`), so that the chart holds no copy of either."""
    return {"containerName": CONTAINER_NAME, "env": fixed_env(), "settingsEnv": chart_rows(),
            "volumes": chart_volumes(),
            "reservedEnvPrefixes": list(RESERVED_ENV_PREFIXES),
            "containerSecurityContext": container_security_context(),
            "volumeMounts": volume_mounts()}


def chart_sizing_table() -> dict[str, Any]:
    """The sizing profiles and the `auto` rule for the chart (files/package.yaml's `sizing:`):
    the chart cannot read the base model, so `auto` is the train mode's UNDETECTED profile."""
    return {"undetected": dict(sizing.UNDETECTED),
            "profiles": {p.name: {"family": p.family, "jobGraceSeconds": p.job_grace_seconds,
                                  "resources": p.resources, "tmpSizeLimit": p.tmp_size_limit}
                         for p in sizing.PROFILES.values()}}


def extra_env(cluster: ClusterSettings) -> list[Mapping[str, Any]]:
    """The operator's extra env entries; exit 2 for a name of the pod's own settings."""
    for entry in cluster.env:
        name = str(entry.get("name", ""))
        if name.startswith(RESERVED_ENV_PREFIXES):
            raise InvalidInputError(reserved_env_message("env", name))
    return list(cluster.env)


def reserved_env_message(setting: str, name: str) -> str:
    return (f"{setting} {name}: names starting with {', '.join(RESERVED_ENV_PREFIXES)} are the "
            "operator's and the pod's own settings, never extra env")


def pod_annotations(train: cfg.TrainConfig, cluster: ClusterSettings) -> dict[str, str]:
    annotations = {}
    if cluster.metrics_annotations and train.metrics_port:
        annotations = {"prometheus.io/scrape": "true",
                       "prometheus.io/port": str(train.metrics_port),
                       "prometheus.io/path": "/metrics"}
    return {**annotations, **cluster.pod_annotations}


def compact(**fields: Any) -> dict[str, Any]:
    """The fields that are set: None and empty collections dropped, 0 and False kept."""
    return {k: v for k, v in fields.items() if v is not None and v != {} and v != []}
