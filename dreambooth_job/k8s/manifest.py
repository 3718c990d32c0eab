"""The Kubernetes Job that trains one subject, as a plain dict: the same object the Helm chart renders.

    from dreambooth_job.config import TrainConfig
    from dreambooth_job.k8s.manifest import ClusterSettings, JobSpec, build_job

    train = TrainConfig(instance_data="s3://photos/dog-42/", class_noun="dog", output="s3://runs/dog-42/")
    job = build_job(JobSpec(train=train, cluster=ClusterSettings(image="registry/dreambooth-job:0.1.0")))
    print(yaml.safe_dump(job))            # or hand it to the kubernetes client as it is

The chart in helm/dreambooth-job renders this same Job from values.yaml; tests/deploy renders both
and compares them field by field. The chart cannot import Python, so what it needs from the package
(option flags and defaults, exit codes) is `chart_table()`, written into the chart by
`helm/sync_chart.py`.

Light on purpose: config and exit codes only, never torch.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from dreambooth_job import __version__
from dreambooth_job import config as cfg
from dreambooth_job.exit_codes import ExitCode, InvalidInputError
from dreambooth_job.operator_policy import ENV_PREFIX as OPERATOR_ENV_PREFIX

APP_NAME = "dreambooth-job"
CONTAINER_NAME = "train"
SUBJECT_LABEL = "dreambooth-job/subject"
BATCH_LABEL = "dreambooth-job/batch"
QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
# Set by the Job controller on every pod of a Job (Kubernetes >= 1.27); the lease reads it.
JOB_UID_LABEL = "batch.kubernetes.io/controller-uid"
JOB_UID_ENV = "DREAMBOOTH_JOB_UID"

# The image's numeric USER (Dockerfile); numeric so that the kubelet can verify runAsNonRoot.
RUN_AS_USER = 10001
# Writable paths of the read-only image. The job's --cache-dir defaults to $XDG_CACHE_HOME/...,
# so pointing XDG_CACHE_HOME and HF_HOME at the cache volume puts every download there.
CACHE_MOUNT = "/cache"
TMP_MOUNT = "/tmp"
SHM_MOUNT = "/dev/shm"
# After the job's own SIGTERM budget (--termination-grace-seconds): time to exit and push metrics
# before the kubelet's SIGKILL.
TERMINATION_MARGIN_SECONDS = 5
# Local disk (ephemeral-storage) at the job's peak, the end of training, when all of these are on
# disk at once: GB for a full fine-tune of SD 1.5 in fp32 (sizes from docs/benchmarks.md; an
# estimate). The base model and class images are in the cache volume, the rest in /tmp.
PEAK_LOCAL_DISK_GB = {
    CACHE_MOUNT: {"base model": 4.3, "class images (200 PNGs)": 0.1},
    TMP_MOUNT: {"resume copy": 10.3, "checkpoint being written": 10.3, "saved model": 4.3},
}  # 29.3 GB = 27.3 GiB in all, 24.9 GB = 23.2 GiB of it in /tmp
# The request adds room for logs, photos and samples. The kubelet evicts a pod over its limit, or
# with a volume over its sizeLimit, with 1 s of grace (not terminationGracePeriodSeconds): too
# short for a checkpoint, so both limits stay well above the estimate.
EPHEMERAL_STORAGE_REQUEST = "32Gi"
EPHEMERAL_STORAGE_LIMIT = "48Gi"
TMP_SIZE_LIMIT = "40Gi"
# Exit codes that no retry can fix. Preemption is recognised by the pod's DisruptionTarget
# condition rather than by exit code 143, so a pod that keeps dying on its own still runs out
# of backoffLimit.
NOT_RETRYABLE = (ExitCode.INVALID_INPUT,)

DEFAULT_IMAGE = f"{APP_NAME}:{__version__}"
PROMPT_FILE_DIRS_ENV = OPERATOR_ENV_PREFIX + "PROMPT_FILE_DIRS"
# The container sets these itself (cache_dir follows the cache volume), so they are not options
# of the chart's `job:` values nor of the rendered args.
OPTIONS_SET_BY_THE_POD = frozenset({"cache_dir"})

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_LABEL_VALUE = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$")


def setting(default: Any = None, *, help: str, default_factory: Any = None) -> Any:
    if default_factory is not None:
        return field(default_factory=default_factory, metadata={"help": help})
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True, kw_only=True)
class ClusterSettings:
    """Where and how the Job runs; the training options themselves are the TrainConfig.

    Every field has a value of the same meaning in the chart's values.yaml, named in its help.
    """

    namespace: str | None = setting(
        help="Namespace of the Job (default: the kubeconfig context's). Chart: the release's.")
    image: str = setting(
        DEFAULT_IMAGE, help="Container image, registry/name:tag or name@sha256:... "
                            "Chart: image.repository, image.tag, image.digest.")
    image_pull_policy: str = setting(
        "IfNotPresent", help="Always, IfNotPresent or Never. Chart: image.pullPolicy.")
    image_pull_secrets: tuple[str, ...] = setting(
        (), help="Secrets for pulling the image from a private registry. Chart: imagePullSecrets.")
    gpus: int = setting(
        1, help="GPUs of the pod, as limits of the GPU resource; 0 runs on CPU. Chart: gpu.count.")
    gpu_resource: str = setting(
        "nvidia.com/gpu", help="Extended resource name of a GPU. Chart: gpu.resource.")
    resources: Mapping[str, Mapping[str, Any]] = setting(
        default_factory=lambda: {
            "requests": {"cpu": "8", "memory": "32Gi", "ephemeral-storage": EPHEMERAL_STORAGE_REQUEST},
            "limits": {"memory": "64Gi", "ephemeral-storage": EPHEMERAL_STORAGE_LIMIT}},
        help="CPU, memory and local-disk (ephemeral-storage) requests and limits of the "
             "container; the GPU is added to limits. No CPU limit by default: throttling "
             "starves the data loader. Chart: resources.")
    node_selector: Mapping[str, str] = setting(
        default_factory=dict, help="Node labels to match, e.g. nvidia.com/gpu.product="
                                   "NVIDIA-A100-SXM4-80GB. Chart: nodeSelector.")
    tolerations: tuple[Mapping[str, Any], ...] = setting(
        (), help="Pod tolerations, e.g. for tainted GPU nodes. Chart: tolerations.")
    affinity: Mapping[str, Any] = setting(default_factory=dict, help="Pod affinity. Chart: affinity.")
    priority_class_name: str | None = setting(
        help="PriorityClass of the pod; Kueue orders and preempts by it. Chart: priorityClassName.")
    service_account_name: str | None = setting(
        help="ServiceAccount of the pod, e.g. one annotated for IRSA or workload identity "
             "(default: the namespace's default). Chart: serviceAccount.")
    s3_credentials_secret: str | None = setting(
        help="Existing Secret with AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, referenced, never "
             "copied (default: boto3's chain: workload identity, instance role). "
             "Chart: s3.credentialsSecret.")
    s3_endpoint_url: str | None = setting(
        help="AWS_ENDPOINT_URL of an S3-compatible store (MinIO, Ceph). Chart: s3.endpointUrl.")
    s3_region: str | None = setting(help="AWS_REGION and AWS_DEFAULT_REGION. Chart: s3.region.")
    queue: str | None = setting(
        help="Kueue LocalQueue: the Job gets its label and is created suspended, for Kueue to "
             "start when quota allows. Chart: kueue.queueName.")
    backoff_limit: int = setting(
        3, help="Pod failures before the Job fails; bad input and preemption never count. "
                "Chart: backoffLimit.")
    active_deadline_seconds: int | None = setting(
        6 * 3600, help="Wall-clock limit of the whole Job, retries included. "
                       "Chart: activeDeadlineSeconds.")
    ttl_seconds_after_finished: int | None = setting(
        7 * 24 * 3600, help="Delete the finished Job (never its S3 outputs) after this long. "
                            "Chart: ttlSecondsAfterFinished.")
    termination_grace_period_seconds: int | None = setting(
        help="SIGTERM-to-SIGKILL time of the pod (default: --termination-grace-seconds rounded up "
             f"plus {TERMINATION_MARGIN_SECONDS} s; less is rejected). "
             "Chart: terminationGracePeriodSeconds.")
    model_cache_claim: str | None = setting(
        help="Existing PersistentVolumeClaim for base models, shared so that each is downloaded "
             "once (default: an emptyDir per pod). Chart: modelCache.existingClaim.")
    model_cache_size_limit: str | None = setting(
        help="Size limit of the emptyDir model cache. Chart: modelCache.sizeLimit.")
    tmp_size_limit: str | None = setting(
        TMP_SIZE_LIMIT, help="Size limit of the /tmp emptyDir (None: no limit). Chart: tmp.sizeLimit.")
    shm_size: str = setting(
        "8Gi", help="Size of the memory-backed /dev/shm, counted against the memory limit; the "
                    "runtime's 64 MiB starves data-loader workers. Chart: shm.sizeLimit.")
    metrics_annotations: bool = setting(
        True, help="prometheus.io/scrape, port and path pod annotations when the job serves "
                   "metrics (--metrics-port > 0). Chart: metrics.annotations.")
    labels: Mapping[str, str] = setting(
        default_factory=dict, help="Extra labels of the Job and its pods. Chart: labels.")
    pod_annotations: Mapping[str, str] = setting(
        default_factory=dict, help="Extra annotations of the pods. Chart: podAnnotations.")
    env: tuple[Mapping[str, Any], ...] = setting(
        (), help="Extra container env entries (name with value or valueFrom). Chart: extraEnv.")
    managed_by: str = setting(
        APP_NAME, help="The app.kubernetes.io/managed-by label. Chart: Helm.")
    # Identity of the pod. The defaults are the image's user; null (in --cluster-config) leaves
    # the choice to the platform, as OpenShift's restricted SCC, which assigns a UID per namespace.
    app_name: str = setting(
        APP_NAME, help="The app.kubernetes.io/name label. Chart: nameOverride.")
    run_as_user: int | None = setting(
        RUN_AS_USER, help="UID of the pod; never 0 (runAsNonRoot). Chart: podSecurityContext.runAsUser.")
    run_as_group: int | None = setting(
        RUN_AS_USER, help="Primary GID of the pod. Chart: podSecurityContext.runAsGroup.")
    fs_group: int | None = setting(
        RUN_AS_USER, help="GID that owns the volumes. Chart: podSecurityContext.fsGroup.")
    prompt_file_dirs: tuple[str, ...] = setting(
        (), help="Operator setting: absolute directories in the container whose files --prompt-set "
                 "may read, as DREAMBOOTH_OPERATOR_PROMPT_FILE_DIRS (default: none; built-in sets "
                 "and s3:// files always work). Chart: operator.promptFileDirs.")

    def __post_init__(self) -> None:
        if self.gpus < 0:
            raise InvalidInputError(f"gpus must not be negative, got {self.gpus}")
        if self.backoff_limit < 0:
            raise InvalidInputError(f"backoff_limit must not be negative, got {self.backoff_limit}")
        for name in ("active_deadline_seconds", "ttl_seconds_after_finished",
                     "termination_grace_period_seconds"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise InvalidInputError(f"{name} must not be negative, got {value}")
        for directory in self.prompt_file_dirs:
            if not directory.startswith("/") or "," in directory or "\n" in directory:
                raise InvalidInputError(f"prompt_file_dirs: {directory!r} is not an absolute "
                                        "directory without commas")
        self._check_identity()

    def _check_identity(self) -> None:
        if self.run_as_user is not None and self.run_as_user < 1:
            raise InvalidInputError(f"run_as_user must be a non-root UID (1 or more), got {self.run_as_user}")
        for name in ("run_as_group", "fs_group"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise InvalidInputError(f"{name} must not be negative, got {value}")
        if not _LABEL_VALUE.match(self.app_name):
            raise InvalidInputError(f"app_name {self.app_name!r} is not a label value (at most 63 "
                                    "letters, digits, '-', '_' or '.', alphanumeric at both ends)")


@dataclass(frozen=True, kw_only=True)
class JobSpec:
    """One subject's training run on one cluster."""

    train: cfg.TrainConfig
    cluster: ClusterSettings = field(default_factory=ClusterSettings)
    name: str | None = None
    """The Job's name; None: `job_name(subject, batch)`. The chart uses the release name."""
    extra_args: tuple[str, ...] = ()
    """Appended to the train args verbatim (the chart's `extraArgs`)."""


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


def label_value(text: str) -> str:
    """`text` made a valid label value: allowed characters, at most 63, alphanumeric at both ends."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text)[:63].strip("-_.")


def values_key(name: str) -> str:
    """The chart's `job:` key of a TrainConfig field: max_train_steps -> maxTrainSteps."""
    head, *rest = name.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


# ----------------------------------------------------------------------------------------------
# The Job

def build_job(spec: JobSpec) -> dict[str, Any]:
    """The batch/v1 Job for `spec`, as the dict the API (or `kubectl apply`) takes."""
    cluster = spec.cluster
    subject = subject_of(spec.train)
    # The subject id is always passed explicitly, so that the job's logs, metrics and result.json
    # name the subject exactly as the Job's labels do.
    train = dataclasses.replace(spec.train, subject_id=subject)
    name = spec.name or job_name(subject, train.batch_id)
    if not _DNS_LABEL.match(name):
        raise InvalidInputError(f"job name {name!r} is not a DNS-1123 label of at most 63 characters")
    labels = {
        "app.kubernetes.io/name": cluster.app_name,
        "app.kubernetes.io/instance": name,
        "app.kubernetes.io/version": __version__,
        "app.kubernetes.io/managed-by": cluster.managed_by,
        SUBJECT_LABEL: label_value(subject),
        **({BATCH_LABEL: label_value(train.batch_id)} if train.batch_id else {}),
        **cluster.labels,
    }
    job_labels = {**labels, QUEUE_LABEL: cluster.queue} if cluster.queue else labels
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": _compact(name=name, namespace=cluster.namespace, labels=job_labels),
        "spec": _compact(
            # Created suspended, Kueue starts it once admitted; without Kueue it would never start.
            suspend=True if cluster.queue else None,
            backoffLimit=cluster.backoff_limit,
            activeDeadlineSeconds=cluster.active_deadline_seconds,
            ttlSecondsAfterFinished=cluster.ttl_seconds_after_finished,
            # A replacement pod starts only once the old one has exited, so that it resumes from
            # the checkpoint the old one wrote on SIGTERM rather than racing it, and may take
            # over the output lease of a killed predecessor at once.
            podReplacementPolicy="Failed",
            podFailurePolicy=pod_failure_policy(),
            template={
                "metadata": _compact(labels=dict(labels),
                                     annotations=_pod_annotations(train, cluster)),
                "spec": _pod_spec(train, cluster, spec.extra_args),
            },
        ),
    }


def pod_failure_policy(*, on_not_retryable: str = "FailJob") -> dict[str, Any]:
    """Bad input fails the Job (or, in an Indexed Job, `FailIndex`: the one subject) at once;
    preemption, eviction and node drain are retried without counting; anything else counts."""
    return {"rules": [
        {"action": on_not_retryable,
         "onExitCodes": {"containerName": CONTAINER_NAME, "operator": "In",
                         "values": [int(code) for code in NOT_RETRYABLE]}},
        {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
    ]}


def termination_grace_period(train: cfg.TrainConfig, cluster: ClusterSettings) -> int:
    needed = math.ceil(train.termination_grace_seconds) + TERMINATION_MARGIN_SECONDS
    chosen = cluster.termination_grace_period_seconds
    if chosen is None:
        return needed
    if chosen < needed:
        raise InvalidInputError(
            f"termination_grace_period_seconds={chosen} leaves the job no time to checkpoint: "
            f"--termination-grace-seconds is {train.termination_grace_seconds:g}, so at least "
            f"{needed} is needed")
    return chosen


def container_args(train: cfg.TrainConfig, extra_args: tuple[str, ...] = ()) -> list[str]:
    return ["train", *cfg.to_cli_args(train), *extra_args]


def pod_security_context(cluster: ClusterSettings) -> dict[str, Any]:
    """Non-root with the default seccomp profile always; the ids only where the settings give them."""
    return _compact(
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


def _pod_spec(train: cfg.TrainConfig, cluster: ClusterSettings,
              extra_args: tuple[str, ...]) -> dict[str, Any]:
    limits = dict(cluster.resources.get("limits") or {})
    if cluster.gpus:
        limits[cluster.gpu_resource] = str(cluster.gpus)  # quantities are strings in the API
    container = _compact(
        name=CONTAINER_NAME,
        image=cluster.image,
        imagePullPolicy=cluster.image_pull_policy,
        args=container_args(train, extra_args),
        env=[*_env(cluster), *cluster.env],
        ports=([{"name": "metrics", "containerPort": train.metrics_port, "protocol": "TCP"}]
               if train.metrics_port else None),
        resources=_compact(requests=dict(cluster.resources.get("requests") or {}), limits=limits),
        securityContext=container_security_context(),
        # Why the pod failed, in its status: the job's one-line error (termination.py), or the
        # log's tail when it died before writing one (OOM kill, crash).
        terminationMessagePolicy="FallbackToLogsOnError",
        volumeMounts=[{"name": "cache", "mountPath": CACHE_MOUNT},
                      {"name": "tmp", "mountPath": TMP_MOUNT},
                      {"name": "shm", "mountPath": SHM_MOUNT}],
    )
    cache = ({"persistentVolumeClaim": {"claimName": cluster.model_cache_claim}}
             if cluster.model_cache_claim
             else {"emptyDir": _compact(sizeLimit=cluster.model_cache_size_limit)})
    return _compact(
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
        volumes=[
            {"name": "cache", **cache},
            {"name": "tmp", "emptyDir": _compact(sizeLimit=cluster.tmp_size_limit)},
            {"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": cluster.shm_size}},
        ],
    )


def job_uid_env() -> dict[str, Any]:
    """The pod's Job UID for the output lease: a retry of the same Job takes over the lease of its
    killed predecessor at once (podReplacementPolicy: Failed means that pod has ended)."""
    return {"name": JOB_UID_ENV, "valueFrom": {"fieldRef": {
        "fieldPath": f"metadata.labels['{JOB_UID_LABEL}']"}}}


def _env(cluster: ClusterSettings) -> list[dict[str, Any]]:
    env = [{"name": "XDG_CACHE_HOME", "value": CACHE_MOUNT},
           {"name": "HF_HOME", "value": f"{CACHE_MOUNT}/huggingface"},
           job_uid_env()]
    if not cluster.gpus:
        # Where nvidia is the default container runtime, a pod that requests no GPU still sees
        # every GPU of the node unless told otherwise.
        env.append({"name": "NVIDIA_VISIBLE_DEVICES", "value": "void"})
    if cluster.s3_endpoint_url:
        env.append({"name": "AWS_ENDPOINT_URL", "value": cluster.s3_endpoint_url})
    if cluster.s3_region:
        # boto3 reads AWS_DEFAULT_REGION; other AWS SDKs and tools read AWS_REGION.
        env += [{"name": "AWS_REGION", "value": cluster.s3_region},
                {"name": "AWS_DEFAULT_REGION", "value": cluster.s3_region}]
    if cluster.s3_credentials_secret:
        env += [{"name": key, "valueFrom": {"secretKeyRef": {
                    "name": cluster.s3_credentials_secret, "key": key}}}
                for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")]
    if cluster.prompt_file_dirs:  # operator settings: env of the pod, never train options
        env.append({"name": PROMPT_FILE_DIRS_ENV, "value": ",".join(cluster.prompt_file_dirs)})
    return env


def _pod_annotations(train: cfg.TrainConfig, cluster: ClusterSettings) -> dict[str, str]:
    annotations = {}
    if cluster.metrics_annotations and train.metrics_port:
        annotations = {"prometheus.io/scrape": "true",
                       "prometheus.io/port": str(train.metrics_port),
                       "prometheus.io/path": "/metrics"}
    return {**annotations, **cluster.pod_annotations}


def _compact(**fields: Any) -> dict[str, Any]:
    """The fields that are set: None and empty collections dropped, 0 and False kept."""
    return {k: v for k, v in fields.items() if v is not None and v != {} and v != []}


# ----------------------------------------------------------------------------------------------
# What the chart needs from the package

def chart_table() -> dict[str, Any]:
    """The chart's copy of the package's CLI facts (helm/dreambooth-job/files/package.yaml).

    `options` is in TrainConfig order, so the chart renders args in the order of to_cli_args; each
    row's `role` tells the chart to pass a `model` option even at its default, as to_cli_args does.
    """
    options = []
    for f in cfg.fields():
        if f.name in OPTIONS_SET_BY_THE_POD:
            continue
        option: dict[str, Any] = {"key": values_key(f.name), "role": str(f.metadata["role"])}
        if cfg.base_type(f) is bool:
            declared = f.metadata["flag"] or f"{cfg.flag_name(f.name)}/--no-{f.name.replace('_', '-')}"
            option["flag"], option["negation"] = declared.split("/")
        else:
            option["flag"] = f.metadata["flag"] or cfg.flag_name(f.name)
        option["default"] = cfg.default_of(f)
        options.append(option)
    return {
        "terminationMarginSeconds": TERMINATION_MARGIN_SECONDS,
        "exitCodes": [{"code": int(code), "name": code.name, "meaning": code.description}
                      for code in ExitCode],
        "notRetryableExitCodes": [int(code) for code in NOT_RETRYABLE],
        "options": options,
    }


