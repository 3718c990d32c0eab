"""Environment variables that the Job's pod spec sets and the job reads: one name for both sides.

A leaf module (no imports), so that `dreambooth_job.k8s` can use it without the job's dependencies.
"""

JOB_UID_ENV = "DREAMBOOTH_JOB_UID"
"""The pod's Job UID (downward API): a retry of the same Job takes over its output lease (lease.py)."""
IMAGE_ENV = "DREAMBOOTH_IMAGE"
"""The image that runs, recorded in result.json (outputs/result.py)."""
