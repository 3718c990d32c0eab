"""The Kubernetes Jobs that train, as plain dicts: the same objects the Helm chart and manifests/ hold.

    from dreambooth_job.config.train_config import TrainConfig
    from dreambooth_job.k8s.cluster_settings import ClusterSettings
    from dreambooth_job.k8s.manifest import JobSpec, build_job

    train = TrainConfig(instance_data="s3://photos/dog-42/", class_noun="dog", output="s3://runs/dog-42/")
    job = build_job(JobSpec(train=train, cluster=ClusterSettings(image="registry/dreambooth-job:0.1.0")))
    print(yaml.safe_dump(job))            # or hand it to the kubernetes client as it is

`build_job` is the one description of a subject's Job; `build_indexed_job` puts the same pod
(k8s/pod.py) in an Indexed Job that trains one subject file per completion index. manifests/job.yaml
and manifests/batch/indexed-job.yaml are generated from them (k8s/examples.py), and the chart in
helm/dreambooth-job renders the same Job from values.yaml (tests/deploy compares them field by
field). The chart cannot import Python, so the descriptions build_job works from (when each option
is stated, the options it resolves, the subject id and label rule, the env each setting feeds:
k8s/wiring.py, the fixed parts of the pod, exit codes) are `chart_table()`, written into the
chart by `helm/sync_chart.py`, which writes the manifests too; the templates only place values by
them.

Light on purpose: config and exit codes only, never torch.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from dataclasses import dataclass, field
from typing import Any

from dreambooth_job import __version__
from dreambooth_job.config import field_types, introspection
from dreambooth_job.config import train_config as cfg
from dreambooth_job.config.operator_policy import CEILINGS, ceiling_env
from dreambooth_job.config.sources import bool_flags, stated_when
from dreambooth_job.config.train_config import label_value
from dreambooth_job.exit_codes import NOT_RETRYABLE, ExitCode, InvalidInputError
from dreambooth_job.k8s.cluster_settings import (
    TERMINATION_MARGIN_SECONDS,
    ClusterSettings,
)
from dreambooth_job.k8s.pod import (
    CONTAINER_NAME,
    OPTIONS_SET_BY_THE_POD,
    chart_pod_table,
    chart_sizing_table,
    compact,
    container_args,
    escape_expansion,
    job_grace_seconds,
    pod_annotations,
    pod_spec,
)
from dreambooth_job.k8s.wiring import values_key

SUBJECT_LABEL = "dreambooth-job/subject"
BATCH_LABEL = "dreambooth-job/batch"
QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
# The Indexed Job: completion index i reads subject-<i>.yaml from a ConfigMap mounted here.
SUBJECTS_MOUNT = "/etc/dreambooth/subjects"
SUBJECT_INDEX_ENV = "SUBJECT_INDEX"
COMPLETION_INDEX_ANNOTATION = "batch.kubernetes.io/job-completion-index"

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")


@dataclass(frozen=True, kw_only=True)
class JobSpec:
    """One subject's training run on one cluster."""

    train: cfg.TrainConfig
    cluster: ClusterSettings = field(default_factory=ClusterSettings)
    name: str | None = None
    """The Job's name; None: `job_name(subject, batch)`. The chart uses the release name."""
    extra_args: tuple[str, ...] = ()
    """Appended to the train args verbatim (the chart's `extraArgs`)."""



@dataclass(frozen=True, kw_only=True)
class IndexedJobSpec:
    """A batch as one Indexed Job: completion index i trains the subject file subject-<i>.yaml of
    the ConfigMap `config_map` (`dreambooth-job train --config`, flags winning over the file)."""

    batch_id: str
    completions: int
    """The number of subject files, keys subject-0.yaml .. subject-<completions - 1>.yaml."""
    parallelism: int | None = None
    """Pods (GPUs) at once; None: every index at once."""
    config_map: str = "dreambooth-subjects"
    cluster: ClusterSettings = field(default_factory=ClusterSettings)
    name: str | None = None
    """The Job's name; None: `job_name("", batch_id)`."""
    pod_options: cfg.TrainConfig = field(default_factory=cfg.TrainConfig)
    """Sizes the pod (sizing profile by its train mode and base model, termination grace, metrics
    port): subject files of another family or mode, or that move --metrics-port, need the same
    values here; the pod's --termination-grace-seconds is passed as a flag over the files'."""
    extra_args: tuple[str, ...] = ()
    """Appended to the args, after the file: flags win over it, for every subject."""


# ----------------------------------------------------------------------------------------------
# Names and labels

def job_name(subject_id: str, batch_id: str | None = None) -> str:
    """A Job name that is a function of the ids: resubmitting finds the existing Job.

    The readable part is lossy ("Dog_42" and "dog-42" both read "dog-42"), so a hash of the exact
    ids keeps distinct subjects apart; the result is a DNS-1123 label of at most 63 characters.
    """
    digest = hashlib.sha256(f"{batch_id or ''}\0{subject_id}".encode()).hexdigest()[:8]
    readable = re.sub(r"[^a-z0-9]+", "-", "-".join(filter(None, (batch_id, subject_id))).lower())
    readable = readable.strip("-")[:63 - len(digest) - 1].rstrip("-")
    return f"{readable}-{digest}" if readable else digest


def subject_of(train: cfg.TrainConfig) -> str:
    """The subject id the job will use (the same rule as the job's own)."""
    return train.resolved_subject_id


# ----------------------------------------------------------------------------------------------
# The Jobs

def build_job(spec: JobSpec) -> dict[str, Any]:
    """The batch/v1 Job for `spec`, as the dict the API (or `kubectl apply`) takes."""
    train = dataclasses.replace(spec.train, **resolved_options(spec.train, spec.cluster))
    subject = subject_of(train)
    name = _checked_name(spec.name or job_name(subject, train.batch_id))
    labels = _labels(name, spec.cluster, subject=subject, batch_id=train.batch_id)
    pod = pod_spec(train, spec.cluster, container_args(train, spec.extra_args))
    return _job(name, spec.cluster, labels, pod_annotations(train, spec.cluster), pod,
                pod_failure_policy(), backoffLimit=spec.cluster.backoff_limit)


# The options build_job resolves before it passes them, and the chart's named template that
# resolves each from values: the subject id, so that the job's logs, metrics and result.json name
# the subject exactly as the Job's labels do, and the SIGTERM budget, the one the pod's grace period
# was sized for.
RESOLVED_OPTIONS = {"subject_id": "dreambooth-job.subjectId",
                    "termination_grace_seconds": "dreambooth-job.graceBudget"}


def resolved_options(train: cfg.TrainConfig, cluster: ClusterSettings) -> dict[str, Any]:
    """RESOLVED_OPTIONS' values for `train` on `cluster`."""
    return {"subject_id": subject_of(train),
            "termination_grace_seconds": job_grace_seconds(train, cluster)}


def build_indexed_job(spec: IndexedJobSpec) -> dict[str, Any]:
    """The batch/v1 Indexed Job for `spec`: the pod of `build_job`, its subject from a file.

    Each index has its own retries (backoffLimitPerIndex: the cluster's backoff_limit), and bad
    input fails only its own index (FailIndex); the others train on.
    """
    if spec.completions < 1 or (spec.parallelism is not None and spec.parallelism < 1):
        raise InvalidInputError(f"an Indexed Job needs completions and parallelism of 1 or more, "
                                f"got {spec.completions} and {spec.parallelism}")
    name = _checked_name(spec.name or job_name("", spec.batch_id))
    cluster, train = spec.cluster, spec.pod_options
    # The budget as a flag (over the files'): the one the pod's grace period was sized for.
    args = ["train", "--config", f"{SUBJECTS_MOUNT}/subject-$({SUBJECT_INDEX_ENV}).yaml",
            *(escape_expansion(a) for a in (
                "--batch-id", spec.batch_id,
                "--termination-grace-seconds", f"{job_grace_seconds(train, cluster):g}",
                *spec.extra_args))]
    # Declared (not only injected by the Job controller as JOB_COMPLETION_INDEX) so that
    # $(SUBJECT_INDEX) in args is expanded: the kubelet expands only declared variables.
    index_env = {"name": SUBJECT_INDEX_ENV, "valueFrom": {"fieldRef": {
        "fieldPath": f"metadata.annotations['{COMPLETION_INDEX_ANNOTATION}']"}}}
    pod = pod_spec(train, cluster, args, env_first=[index_env],
                   mounts=[{"name": "subjects", "mountPath": SUBJECTS_MOUNT, "readOnly": True}],
                   volumes=[{"name": "subjects", "configMap": {"name": spec.config_map}}])
    return _job(name, cluster, _labels(name, cluster, batch_id=spec.batch_id),
                pod_annotations(train, cluster), pod, pod_failure_policy(on_not_retryable="FailIndex"),
                completionMode="Indexed", completions=spec.completions,
                parallelism=spec.parallelism or spec.completions,
                backoffLimitPerIndex=cluster.backoff_limit)


def _job(name: str, cluster: ClusterSettings, labels: dict[str, str], annotations: dict[str, str],
         pod: dict[str, Any], policy: dict[str, Any], **completions_and_retries: Any) -> dict[str, Any]:
    job_labels = {**labels, QUEUE_LABEL: cluster.queue} if cluster.queue else labels
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": compact(name=name, namespace=cluster.namespace, labels=job_labels),
        "spec": compact(
            # Created suspended, Kueue starts it once admitted; without Kueue it would never start.
            suspend=True if cluster.queue else None,
            **completions_and_retries,
            activeDeadlineSeconds=cluster.active_deadline_seconds,
            ttlSecondsAfterFinished=cluster.ttl_seconds_after_finished,
            # A replacement pod starts only once the old one has exited, so that it resumes from
            # the checkpoint the old one wrote on SIGTERM rather than racing it, and may take
            # over the output lease of a killed predecessor at once.
            podReplacementPolicy="Failed",
            podFailurePolicy=policy,
            template={"metadata": compact(labels=dict(labels), annotations=annotations),
                      "spec": pod},
        ),
    }


def _labels(name: str, cluster: ClusterSettings, *, subject: str | None = None,
            batch_id: str | None = None) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": cluster.app_name,
        "app.kubernetes.io/instance": name,
        "app.kubernetes.io/version": __version__,
        "app.kubernetes.io/managed-by": cluster.managed_by,
        **({SUBJECT_LABEL: label_value(subject)} if subject else {}),
        **({BATCH_LABEL: label_value(batch_id)} if batch_id else {}),
        **cluster.labels,
    }


def _checked_name(name: str) -> str:
    if not _DNS_LABEL.match(name):
        raise InvalidInputError(f"job name {name!r} is not a DNS-1123 label of at most 63 characters")
    return name


def pod_failure_policy(*, on_not_retryable: str = "FailJob") -> dict[str, Any]:
    """Bad input fails the Job (or, in an Indexed Job, `FailIndex`: the one subject) at once;
    preemption, eviction and node drain are retried without counting; anything else counts."""
    return {"rules": [
        {"action": on_not_retryable,
         "onExitCodes": {"containerName": CONTAINER_NAME, "operator": "In",
                         "values": [int(code) for code in NOT_RETRYABLE]}},
        {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
    ]}


# ----------------------------------------------------------------------------------------------
# What the chart needs from the package

def chart_table() -> dict[str, Any]:
    """The chart's copy of the package's CLI facts (helm/dreambooth-job/files/package.yaml).

    `options` is in TrainConfig order, so the chart renders args in the order of to_cli_args; each
    row's `stated` is when to_cli_args states it (config_sources.stated_when: `always`, a null
    value as `auto`), and `resolvedBy` the named template that resolves it as build_job does
    (RESOLVED_OPTIONS), its value a `number` or a `string`.
    """
    options = []
    for f in introspection.fields():
        if f.name in OPTIONS_SET_BY_THE_POD:
            continue
        option: dict[str, Any] = {"key": values_key(f.name), "stated": stated_when(f)}
        if introspection.base_type(f) is bool:
            option["flag"], option["negation"] = bool_flags(f).split("/")
        else:
            option["flag"] = f.metadata["flag"] or field_types.flag_name(f.name)
        if f.name in RESOLVED_OPTIONS:
            option["resolvedBy"] = RESOLVED_OPTIONS[f.name]
            option["resolvedAs"] = "string" if introspection.base_type(f) is str else "number"
        option["default"] = field_types.default_of(f)
        options.append(option)
    return {
        "terminationMarginSeconds": TERMINATION_MARGIN_SECONDS,
        "exitCodes": [{"code": int(code), "name": code.name, "meaning": code.description}
                      for code in ExitCode],
        "notRetryableExitCodes": [int(code) for code in NOT_RETRYABLE],
        "options": options,
        "pod": chart_pod_table(),
        "labels": {"lastPathComponent": cfg.LAST_PATH_COMPONENT, "unsafe": cfg.LABEL_UNSAFE,
                   "maxLength": cfg.LABEL_MAX_LENGTH, "trimmed": cfg.LABEL_TRIMMED,
                   "subjectIdFallback": cfg.SUBJECT_ID_FALLBACK},
        "sizing": chart_sizing_table(),
        "ceilings": chart_ceilings_table(),
    }


def chart_ceilings_table() -> list[dict[str, Any]]:
    """The operator's ceilings for the chart (files/package.yaml's `ceilings`): each one's
    `operator:` key, variable and default, the `job:` option that declares it (config_fields'
    `ceiling=`) and the container resource it bounds."""
    bounded = {f.metadata["ceiling"]: values_key(f.name)
               for f in introspection.fields() if f.metadata["ceiling"]}
    return [{"key": values_key(f.name), "env": ceiling_env(f.name), "default": f.default,
             "option": bounded.get(f.name), "resource": f.metadata["resource"]}
            for f in CEILINGS]


