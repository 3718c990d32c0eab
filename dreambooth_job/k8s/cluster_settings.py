"""Where and how the Job runs (`ClusterSettings`), apart from what it trains (the TrainConfig).

    from dreambooth_job.k8s.cluster_settings import ClusterSettings
    cluster = ClusterSettings(image="registry/dreambooth-job:0.1.0", queue="gpu-batch")

Also the sizes the pod is built around (mounts, local disk, the identity of the image's user),
which the Dockerfile and docs/operator-guide.md state too; tests/deploy checks that they agree.
Light on purpose: config and exit codes only, never torch.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from dreambooth_job import __version__
from dreambooth_job.config.operator_policy import OperatorPolicy, ceiling_env, with_ceilings
from dreambooth_job.config.quantities import parse_quantity
from dreambooth_job.exit_codes import InvalidInputError
from dreambooth_job.training import sizing

APP_NAME = "dreambooth-job"
DEFAULT_IMAGE = f"{APP_NAME}:{__version__}"
# The image's numeric USER (Dockerfile); numeric so that the kubelet can verify runAsNonRoot.
RUN_AS_USER = 10001
# Writable paths of the read-only image. The job's --cache-dir defaults to $XDG_CACHE_HOME/...,
# so pointing XDG_CACHE_HOME and HF_HOME at the cache volume puts every download there.
CACHE_MOUNT = "/cache"
TMP_MOUNT = "/tmp"
SHM_MOUNT = "/dev/shm"
# After the job's own SIGTERM budget (--termination-grace-seconds): time to exit and push metrics
# before the kubelet's SIGKILL.
TERMINATION_MARGIN_SECONDS = sizing.POD_MARGIN_SECONDS
# Memory, local disk (ephemeral-storage, the /tmp sizeLimit) and the SIGTERM budget come from the
# sizing profile of the run's family and train mode (sizing.py; docs/operator-guide.md, "Sizing"); `resources`
# and the other settings name only what they override.
DEFAULT_PROFILE = sizing.PROFILES["sd-full"]
# Local disk (ephemeral-storage) at the job's peak, the end of training, when all of these are on
# disk at once: GB for a full fine-tune of SD 1.5 (the sd-full profile; an estimate). The base
# model and class images are in the cache volume, the rest in /tmp.
PEAK_LOCAL_DISK_GB = {
    CACHE_MOUNT: {k: round(v / 1e9, 1) for k, v in DEFAULT_PROFILE.disk_parts.items()
                  if k in ("base model (fp32)", "class images")},
    TMP_MOUNT: {k: round(v / 1e9, 1) for k, v in DEFAULT_PROFILE.disk_parts.items()
                if k not in ("base model (fp32)", "class images")},
}
# The kubelet evicts a pod over its limit, or with a volume over its sizeLimit, with 1 s of grace
# (not terminationGracePeriodSeconds): too short for a checkpoint, so both limits stay well above
# the estimate.
EPHEMERAL_STORAGE_REQUEST = DEFAULT_PROFILE.resources["requests"]["ephemeral-storage"]
EPHEMERAL_STORAGE_LIMIT = DEFAULT_PROFILE.resources["limits"]["ephemeral-storage"]
TMP_SIZE_LIMIT = DEFAULT_PROFILE.tmp_size_limit
# tmp_size_limit's default: the profile's.
AUTO = sizing.AUTO

# An entry of DREAMBOOTH_OPERATOR_ALLOWED_PREFIXES: comma-separated in the env, so none in an entry.
_PREFIX = re.compile(r"^(s3://[^/,\s]+|/)[^,\s]*$")
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
    sizing: str = setting(
        AUTO, help="Sizing profile of memory, local disk and SIGTERM grace: auto (by the train "
                   "mode, and the family and size read from the base model's model_index.json "
                   "and denoiser config in a local directory or an s3:// prefix; a model not "
                   "readable here at once, such as a hub id, gets the train mode's largest "
                   "profile; a generate Job, the profile its run's result.json records) or one of "
                   f"{', '.join(sizing.PROFILES)} (docs/operator-guide.md, \"Sizing\"). Chart: sizing.")
    resources: Mapping[str, Mapping[str, Any]] = setting(
        default_factory=lambda: {"requests": {"cpu": "8"}, "limits": {}},
        help="CPU, memory and local-disk (ephemeral-storage) requests and limits of the "
             "container, each over the sizing profile's; the GPU is added to limits. No CPU "
             "limit by default: throttling starves the data loader. Chart: resources.")
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
        help="SIGTERM-to-SIGKILL time of the pod (default: --termination-grace-seconds, else the "
             f"sizing profile's, rounded up plus {TERMINATION_MARGIN_SECONDS} s; less is rejected). "
             "Chart: terminationGracePeriodSeconds.")
    model_cache_claim: str | None = setting(
        help="Existing PersistentVolumeClaim for base models, shared so that each is downloaded "
             "once (default: an emptyDir per pod). Chart: modelCache.existingClaim.")
    model_cache_size_limit: str | None = setting(
        help="Size limit of the emptyDir model cache. Chart: modelCache.sizeLimit.")
    tmp_size_limit: str | None = setting(
        AUTO, help="Size limit of the /tmp emptyDir (auto: the sizing profile's; None: no limit). "
                   "Chart: tmp.sizeLimit.")
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
    allowed_hosts: tuple[str, ...] = setting(
        (), help="Operator setting: the only hosts --pushgateway and --notify-url may reach, as "
                 "DREAMBOOTH_OPERATOR_ALLOWED_HOSTS; the job exits 2 at start for any other "
                 "(default: any host). Chart: operator.allowedHosts.")
    allowed_prefixes: tuple[str, ...] = setting(
        (), help="Operator setting: the only prefixes (s3://bucket/prefix/ or directories) the "
                 "job's locations may name, as DREAMBOOTH_OPERATOR_ALLOWED_PREFIXES; the job exits "
                 "2 at start for any other (default: that variable of the process that builds "
                 "the Job, else any). Chart: operator.allowedPrefixes.")
    ceilings: Mapping[str, Any] = setting(
        default_factory=dict,
        help="Operator setting: the most a tenant may ask for, by name (max_train_steps: 5000, "
             "max_gpus: 2, max_memory: 128Gi; config/operator_policy.py), in place of the building "
             "process's DREAMBOOTH_OPERATOR_MAX_* and passed to the pod as that variable. "
             "Chart: operator.maxTrainSteps, operator.maxGpus, ...")
    notify_secret: str | None = setting(
        help="Existing Secret holding the key that signs the completion call under the key named "
             "by --notify-secret-env, passed as that variable; referenced, never copied. "
             "Chart: notify.secretName.")

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
        if self.sizing not in sizing.CHOICES:
            raise InvalidInputError(f"sizing {self.sizing!r} is not a sizing profile: choose one of "
                                    f"{', '.join(sizing.CHOICES)}")
        for directory in self.prompt_file_dirs:
            if not directory.startswith("/") or "," in directory or "\n" in directory:
                raise InvalidInputError(f"prompt_file_dirs: {directory!r} is not an absolute "
                                        "directory without commas")
        for prefix in self.allowed_prefixes:
            if not _PREFIX.match(prefix):
                raise InvalidInputError(f"allowed_prefixes: {prefix!r} is not an s3://bucket/ prefix "
                                        "or an absolute directory without commas")
        for host in self.allowed_hosts:
            if not host or any(c in host for c in ",/@") or not host.isprintable() or " " in host:
                raise InvalidInputError(f"allowed_hosts: {host!r} is not a host name")
        self._check_identity()
        self._check_ceilings(self.policy())

    def policy(self) -> OperatorPolicy:
        """The operator's policy for this cluster's pods: the building process's
        (DREAMBOOTH_OPERATOR_*), its prefixes replaced by `allowed_prefixes` when given, and its
        ceilings by `ceilings` (the chart's operator values do the same)."""
        policy = with_ceilings(OperatorPolicy.from_env(), self.ceilings)
        if self.allowed_prefixes:
            policy = dataclasses.replace(policy, allowed_prefixes=self.allowed_prefixes)
        return policy

    def _check_ceilings(self, policy: OperatorPolicy) -> None:
        """No more GPUs, CPU or memory than the operator lets one pod take (DREAMBOOTH_OPERATOR_
        MAX_GPUS, _CPU, _MEMORY of the process that builds the Job; the chart's operator values)."""
        if self.gpus > policy.max_gpus:
            raise InvalidInputError(f"gpus {self.gpus} is above the operator's ceiling of "
                                    f"{policy.max_gpus} ({ceiling_env('max_gpus')})")
        for kind in ("requests", "limits"):
            quantities = self.resources.get(kind) or {}
            for name, ceiling in (("cpu", "max_cpu"), ("memory", "max_memory")):
                most, value = getattr(policy, ceiling), quantities.get(name)
                if most is None or value is None:
                    continue
                if parse_quantity(f"resources.{kind}.{name}", value) > parse_quantity(
                        ceiling_env(ceiling), most):
                    raise InvalidInputError(
                        f"resources.{kind}.{name} {str(value)[:40]} is above the operator's "
                        f"ceiling of {most} ({ceiling_env(ceiling)})")

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


