"""The example Jobs of manifests/, generated from the builders with example inputs and comments.

    .venv/bin/python helm/sync_chart.py           # writes them, with the chart's generated files
    .venv/bin/python helm/sync_chart.py --check   # exit 1 if they differ from what this writes

`EXAMPLES` maps each file under manifests/ to its text. The objects come from
manifest.build_job and manifest.build_indexed_job, so a change to the pod is a change to the
builder, and the Indexed Job's subject files from config_sources.to_config_values, what a Job
states of its config; the inputs and the comments (numbers included) live here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import yaml

from dreambooth_job.config import train_config as cfg
from dreambooth_job.config.sources import to_config_values
from dreambooth_job.exit_codes import NOT_RETRYABLE
from dreambooth_job.k8s.cluster_settings import (
    DEFAULT_PROFILE,
    PEAK_LOCAL_DISK_GB,
    TERMINATION_MARGIN_SECONDS,
    TMP_MOUNT,
    ClusterSettings,
)
from dreambooth_job.k8s.commented_yaml import Path, commented_yaml
from dreambooth_job.k8s.manifest import IndexedJobSpec, JobSpec, build_indexed_job, build_job

SYNC_COMMAND = ".venv/bin/python helm/sync_chart.py"
S3_SECRET = "dreambooth-job-s3"
POD: Path = ("spec", "template", "spec")
CONTAINER: Path = (*POD, "containers", "train")
GIB = 2 ** 30


def plain_job() -> dict[str, Any]:
    train = cfg.TrainConfig(instance_data="s3://photos/dog-42/", class_noun="dog",
                            output="s3://runs/dog-42/")
    # The base model is a hub id, which `auto` cannot read: the example names its profile.
    cluster = ClusterSettings(s3_credentials_secret=S3_SECRET, managed_by="kubectl",
                              sizing=DEFAULT_PROFILE.name)
    return build_job(JobSpec(train=train, cluster=cluster, name="dog-42"))


BATCH_ID = "night-42"
# The batch's subjects in completion-index order: batch/kustomization.yaml's ConfigMap maps
# subject-<i>.yaml to subjects/<subject id>.yaml (tests/deploy checks).
BATCH_SUBJECTS: tuple[tuple[str, str, dict[str, Any]], ...] = (
    ("dog-42", "dog", {}),
    ("backpack-7", "backpack", {"max_train_steps": 1200}),
    ("cat-3", "cat", {"train_mode": "lora"}),
)


def batch_subject(subject_id: str, class_noun: str, options: dict[str, Any]) -> cfg.TrainConfig:
    return cfg.TrainConfig(instance_data=f"s3://photos/{BATCH_ID}/{subject_id}/",
                           class_noun=class_noun, output=f"s3://runs/{BATCH_ID}/{subject_id}/",
                           subject_id=subject_id, **options)


def indexed_job() -> dict[str, Any]:
    cluster = ClusterSettings(s3_credentials_secret=S3_SECRET, managed_by="kustomize",
                              sizing=DEFAULT_PROFILE.name, backoff_limit=2,
                              active_deadline_seconds=12 * 3600)
    return build_indexed_job(IndexedJobSpec(batch_id=BATCH_ID, completions=len(BATCH_SUBJECTS),
                                            parallelism=2,
                                            name="dreambooth-night-42", cluster=cluster))


def _generated(builder: str) -> str:
    return (f"Generated: `{SYNC_COMMAND}` writes this file from\n"
            f"dreambooth_job.k8s.manifest.{builder} and the inputs and comments in\n"
            "dreambooth_job/k8s/examples.py; edit those, not this file.\n")


PLAIN_HEADER = _generated("build_job") + """
One subject, one GPU, without Helm. Edit the args (and the name) of a copy, then:

  kubectl -n ml create secret generic dreambooth-job-s3 \\
      --from-literal=AWS_ACCESS_KEY_ID=... --from-literal=AWS_SECRET_ACCESS_KEY=...
  kubectl -n ml apply -f manifests/job.yaml
  kubectl -n ml logs -f job/dog-42

With IRSA or workload identity instead of keys: delete the two AWS_* env entries and set
serviceAccountName. The Helm chart and `dreambooth-job submit` create this same Job for the same
inputs (tests/deploy checks it); Kubernetes >= 1.31."""

INDEXED_HEADER = _generated("build_indexed_job") + """
One Job, N subjects: completion index i trains subject-<i>.yaml from the ConfigMap that
kustomization.yaml generates. Each index has its own retries (backoffLimitPerIndex), so one
subject's bad photos fail that index only, and the others train on. Kubernetes >= 1.31.

With Kueue, add the label kueue.x-k8s.io/queue-name: gpu-batch and `suspend: true`: the whole
batch is then admitted as one workload of `parallelism` GPUs."""


def _pod_comments(job: dict[str, Any]) -> dict[Path, str]:
    """Comments on the fields both examples share, their numbers from the builder's inputs."""
    grace = DEFAULT_PROFILE.job_grace_seconds
    peak = sum(sum(parts.values()) for parts in PEAK_LOCAL_DISK_GB.values()) * 1e9 / GIB
    tmp = PEAK_LOCAL_DISK_GB[TMP_MOUNT]
    return {
        (*POD, "terminationGracePeriodSeconds"):
            f"The job's --termination-grace-seconds (the {DEFAULT_PROFILE.name} sizing profile's "
            f"{grace:g}) rounded up,\nplus {TERMINATION_MARGIN_SECONDS} s to exit and push metrics "
            '(docs/user-guide.md, "Preemption").',
        (*CONTAINER, "resources", "requests", "memory"):
            f"Host memory of the {DEFAULT_PROFILE.name} sizing profile: loading the model, "
            "serializing checkpoints.",
        (*CONTAINER, "terminationMessagePolicy"):
            "Why a pod failed, in `kubectl describe` and `dreambooth-job status`: the job's one-line\n"
            "error, or the log's tail when it died before writing one (OOM kill, crash).",
        (*CONTAINER, "resources", "requests", "ephemeral-storage"):
            'Local disk at the SD 1.5 full peak, an estimate (docs/operator-guide.md, "Sizing"): '
            f"{peak:.1f} GiB.",
        (*CONTAINER, "resources", "limits", "ephemeral-storage"):
            "Past it the pod is evicted with 1 s of grace, too short to checkpoint.",
        (*POD, "volumes", "tmp", "emptyDir"):
            f"{' + '.join(tmp).capitalize()}: {sum(tmp.values()) * 1e9 / GIB:.1f} GiB for SD 1.5.",
        ("spec", "podFailurePolicy", "rules", 0):
            f"Exit {', '.join(f'{int(c)} ({c.name})' for c in NOT_RETRYABLE)}: options, photos or "
            "model are wrong; a retry cannot help.",
        ("spec", "podFailurePolicy", "rules", 1):
            "Preemption, eviction, node drain: retry, resuming from the checkpoint, without counting.",
        ("spec", "podReplacementPolicy"):
            "A replacement pod starts only after the old one exited, i.e. after its SIGTERM checkpoint.",
        ("spec", "ttlSecondsAfterFinished"):
            f"The finished Job goes after {job['spec']['ttlSecondsAfterFinished'] // 86400} days; "
            "its outputs in S3 stay.",
        (*POD, "automountServiceAccountToken"): "The job never calls the Kubernetes API.",
    }


def plain_job_yaml() -> str:
    job = plain_job()
    return commented_yaml(job, {
        **_pod_comments(job),
        ("spec", "backoffLimit"): "Pod failures that count; bad input and preemption never do "
                                  "(podFailurePolicy).",
        (*CONTAINER, "args"): "`dreambooth-job train --help` lists every option.",
        (*CONTAINER, "env", "XDG_CACHE_HOME"): "Base models and the job's cache land on the cache volume.",
        (*CONTAINER, "env", "DREAMBOOTH_JOB_UID"):
            "This Job's UID: its retry takes over the output lease of a killed predecessor at once.",
        (*POD, "volumes", "cache"): "An emptyDir per pod; a shared PersistentVolumeClaim saves each\n"
                                    "job the base-model download.",
    }, PLAIN_HEADER)


def indexed_job_yaml() -> str:
    job = indexed_job()
    return commented_yaml(job, {
        **_pod_comments(job),
        ("spec", "completions"): "The number of subject files in the ConfigMap.",
        ("spec", "parallelism"): "GPUs used at once.",
        ("spec", "backoffLimitPerIndex"):
            f"Retries per subject; bad input (exit {', '.join(str(int(c)) for c in NOT_RETRYABLE)}) "
            "fails its index at once (FailIndex below).",
        (*CONTAINER, "args"): "Flags win over the file, so options shared by the whole batch can go here.",
        (*CONTAINER, "env", "SUBJECT_INDEX"):
            "Declared here (not only injected by the Job controller) so that $(SUBJECT_INDEX)\n"
            "in args is expanded.",
        (*CONTAINER, "env", "DREAMBOOTH_JOB_UID"):
            "This Job's UID; with the JOB_COMPLETION_INDEX that Kubernetes sets, an index's retry\n"
            "takes over the output lease of its killed predecessor at once.",
    }, INDEXED_HEADER)


def subject_file_yaml(index: int) -> str:
    """Completion index `index`'s subject file: the options `to_config_values` states, those a
    Job passes as flags, so that an image with other defaults trains the same subject."""
    subject_id, class_noun, options = BATCH_SUBJECTS[index]
    head = (f"# Generated: `{SYNC_COMMAND}` writes this file from\n"
            "# dreambooth_job.config.sources.to_config_values and the inputs in\n"
            "# dreambooth_job/k8s/examples.py; edit those, not this file.\n"
            f"# Completion index {index}. Keys are `dreambooth-job train` options "
            "(snake_case or kebab-case).\n")
    values = to_config_values(batch_subject(subject_id, class_noun, options))
    return head + yaml.safe_dump(values, sort_keys=False, width=100)


def _subject_file(index: int) -> Callable[[], str]:
    return lambda: subject_file_yaml(index)


# Paths relative to the repository root.
EXAMPLES: dict[str, Callable[[], str]] = {
    "manifests/job.yaml": plain_job_yaml,
    "manifests/batch/indexed-job.yaml": indexed_job_yaml,
    **{f"manifests/batch/subjects/{subject_id}.yaml": _subject_file(index)
       for index, (subject_id, _, _) in enumerate(BATCH_SUBJECTS)},
}
