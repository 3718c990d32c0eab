"""Run the job on Kubernetes: build its Job manifest (and, beside it, submit and watch Jobs).

Nothing here imports torch or diffusers: a laptop or a CI runner submits without the training stack.
"""

# Submitting and following Jobs (client, status, feed): the names docs/api.md's "Submitting jobs
# from another system" uses.
from dreambooth_job.k8s.batch import Batch, BatchFileError, load_batch
from dreambooth_job.k8s.client import Connection, SubmittedJob, cancel, submit
from dreambooth_job.k8s.cluster_settings import ClusterSettings
from dreambooth_job.k8s.errors import (
    ApiUnreachableError,
    ClusterConfigError,
    ForbiddenError,
    InvalidSpecError,
    JobExistsError,
    JobNotFoundError,
    JobStillRunningError,
    KubernetesError,
)
from dreambooth_job.k8s.feed import BatchOutcome, submit_batch
from dreambooth_job.k8s.generate_job import GenerateJobSpec, build_generate_job, generate_job_name
from dreambooth_job.k8s.manifest import (
    BATCH_LABEL,
    SUBJECT_LABEL,
    IndexedJobSpec,
    JobSpec,
    build_indexed_job,
    build_job,
    job_name,
)
from dreambooth_job.k8s.status import JobStatus, Phase, batch_status, get_status

__all__ = [
    "BATCH_LABEL",
    "SUBJECT_LABEL",
    "ApiUnreachableError",
    "Batch",
    "BatchFileError",
    "BatchOutcome",
    "ClusterConfigError",
    "ClusterSettings",
    "Connection",
    "ForbiddenError",
    "GenerateJobSpec",
    "IndexedJobSpec",
    "InvalidSpecError",
    "JobExistsError",
    "JobNotFoundError",
    "JobSpec",
    "JobStatus",
    "JobStillRunningError",
    "KubernetesError",
    "Phase",
    "SubmittedJob",
    "batch_status",
    "build_generate_job",
    "build_indexed_job",
    "build_job",
    "cancel",
    "generate_job_name",
    "get_status",
    "job_name",
    "load_batch",
    "submit",
    "submit_batch",
]
